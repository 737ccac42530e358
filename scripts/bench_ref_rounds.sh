#!/usr/bin/env bash
# The reference model against its PyTorch peer in alternating rounds: each round runs our peer, then PyTorch's, on
# the train steps, sampling and understanding, so that both sides of a round see the same machine; odd rounds
# start with ours, even rounds with PyTorch's. A shared
# virtual machine drifts by tens of percent within minutes; one run of each side (scripts/bench_vs_pytorch.sh) can
# land on either side of a drift. Prints each round's ratios and their median.
#
#   scripts/bench_ref_rounds.sh [MODEL_DIR]    (default crates/srum-world/assets/tiny-umm)
#   env: ROUNDS (default 5), ITERS (timed runs per operation and round, default 10), THREADS (default nproc)
#
# Needs the venv of scripts/bench_vs_pytorch.sh (.venv-bench). Each round's PyTorch side first checks the
# equivalence on the inputs our side saved (bound 1e-4) and the script stops if it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-crates/srum-world/assets/tiny-umm}
rounds=${ROUNDS:-5}
iters=${ITERS:-10}
threads=${THREADS:-$(nproc)}
out=target/bench-ref-rounds
mkdir -p "$out"
py=.venv-bench/bin/python
exe=$(scripts/peer_exe.sh "$py")
ops=train_step_anchor,train_step_reference,sample,understand
export GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615:glibc.malloc.top_pad=67108864
ours() {
  RAYON_NUM_THREADS=$threads "$exe" --model "$model" --threads "$threads" --iters "$iters" --only "$ops" \
    --json "$out/ours-$1.json" --dump "$out/dump-$1.safetensors"
}
theirs() {
  OMP_NUM_THREADS=$threads $py crates/srum-world/benches/reference/peer.py --model "$model" --threads "$threads" \
    --iters "$iters" --only "$ops" --json "$out/pytorch-$1.json" --dump "$out/dump-$1.safetensors"
}
# Odd rounds ours first, even rounds PyTorch's first (its equivalence check reads the previous round's inputs).
for r in $(seq 1 "$rounds"); do
  if (( r % 2 )); then
    ours "$r"; theirs "$r"
  else
    cp "$out/dump-$((r - 1)).safetensors" "$out/dump-$r.safetensors"
    theirs "$r"; ours "$r"
  fi
done
$py - "$out" "$rounds" "$(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) cores, $threads threads" <<'PY' |
import json, statistics, sys
d, rounds, machine = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = [(json.load(open(f"{d}/ours-{r}.json"))["ops"], json.load(open(f"{d}/pytorch-{r}.json"))["ops"])
        for r in range(1, rounds + 1)]
print(f"Machine: {machine}; {rounds} rounds (odd: ours first, even: PyTorch's first); seconds are medians within "
      "a round\n")
print("| operation | ours (s), by round | PyTorch (s), by round | ratio by round | median ratio | best / best |")
print("|---|---|---|---|---:|---:|")
for op in runs[0][0]:
    ours = [o[op]["seconds"] for o, _ in runs]
    theirs = [p[op]["seconds"] for _, p in runs]
    ratios = [a / b for a, b in zip(ours, theirs)]
    fmt = lambda v, k: ", ".join(f"{x:.{k}g}" for x in v)
    print(f"| {op} | {fmt(ours, 3)} | {fmt(theirs, 3)} | {fmt(ratios, 3)} | {statistics.median(ratios):.2f} "
          f"| {min(ours) / min(theirs):.2f} |")
PY
  tee "$out/table.md"
