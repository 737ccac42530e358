#!/usr/bin/env bash
# Side by side with PyTorch on this machine's CPU: same model, same thread count, same operations.
#
#   scripts/bench_vs_pytorch.sh [MODEL_DIR]     (default crates/srum-world/assets/tiny-umm)
#   env: THREADS (default: nproc), ITERS (timed runs per operation, default 5)
#
# Fails when the PyTorch model, given the inputs our peer saved, disagrees with our outputs by more
# than 1e-4, or when the NumPy reward-map rule misses a PyTorch-computed fixture map by over 1e-6.
# Run it on an idle machine: with every core busy elsewhere, multi-threaded timings are noise.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-crates/srum-world/assets/tiny-umm}
threads=${THREADS:-$(nproc)}
iters=${ITERS:-5}
out=target/bench-vs-pytorch
mkdir -p "$out"
load=$(cut -d' ' -f1-3 /proc/loadavg)

# PyTorch from PyPI: its CPU-only index is not reachable from every machine, and the PyPI wheel
# (with its CUDA libraries, which it needs to import even on a CPU) runs on the CPU as well.
if [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install --quiet torch numpy
fi
py=.venv-bench/bin/python

$py crates/srum-world/benches/reference/reward_map.py

exe=$(cargo bench -p srum-world --bench peer --no-run --message-format=json |
  $py -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "peer" and m.get("executable"):
        print(m["executable"])')

RAYON_NUM_THREADS=$threads "$exe" --model "$model" --threads "$threads" --iters "$iters" \
  --json "$out/ours.json" --dump "$out/dump.safetensors"
OMP_NUM_THREADS=$threads $py crates/srum-world/benches/reference/peer.py --model "$model" --threads "$threads" \
  --iters "$iters" --json "$out/pytorch.json" --dump "$out/dump.safetensors"

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)
$py crates/srum-world/benches/reference/table.py "$out/ours.json" "$out/pytorch.json" \
  --machine "$cpu, $(nproc) cores (load average before the run: $load)" |
  tee "$out/table.md"
