#!/usr/bin/env bash
# Side by side with PyTorch on this machine's CPU: same model, same thread count, same operations.
# Two tables: the reference model (TinyUmm) against its PyTorch peer, then the headline, one
# BAGEL-7B-MoT decoder layer at full width against the official PyTorch layer.
#
#   scripts/bench_vs_pytorch.sh [MODEL_DIR]     (default crates/srum-world/assets/tiny-umm)
#   env: THREADS (default: nproc), ITERS (timed runs per operation, default 5), ITERS_BAGEL (timed
#        runs of the BAGEL layer, default 3),
#        BAGEL_SRC (the official BAGEL source; default: cloned into target/bagel-src at the pinned
#        commit), SKIP_BAGEL=1 (the first table only)
#
# Each table comes after its equivalence check, and the script fails when one fails: the PyTorch
# model, given the inputs our peer saved, must agree with our outputs to 1e-4 and the NumPy
# reward-map rule must reproduce every PyTorch-computed fixture map to 1e-6; for BAGEL, the official
# code writes a fresh fixture (random tiny weights, every component) in this run and the port must
# reproduce each of its outputs to 1e-4 (`srum bagel verify`).
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

exe=$(scripts/peer_exe.sh "$py")

# Both sides with freed buffers kept in the heap (srum::allocator's settings, which the `srum`
# binary applies itself): glibc's defaults make each side fault in fresh pages for every large
# tensor. scripts/bench_bagel_layer.sh below also measures glibc's defaults.
export GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615:glibc.malloc.top_pad=67108864
RAYON_NUM_THREADS=$threads "$exe" --model "$model" --threads "$threads" --iters "$iters" \
  --json "$out/ours.json" --dump "$out/dump.safetensors"
OMP_NUM_THREADS=$threads $py crates/srum-world/benches/reference/peer.py --model "$model" --threads "$threads" \
  --iters "$iters" --json "$out/pytorch.json" --dump "$out/dump.safetensors"

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)
$py crates/srum-world/benches/reference/table.py "$out/ours.json" "$out/pytorch.json" \
  --machine "$cpu, $(nproc) cores (load average before the run: $load)" |
  tee "$out/table.md"

unset GLIBC_TUNABLES

# The headline: BAGEL-7B-MoT's decoder layer. The official code and a venv with transformers 4.49
# (its vendored SigLIP imports a module later releases removed) are set up once.
[ "${SKIP_BAGEL:-0}" = 1 ] && exit 0
src=${BAGEL_SRC:-target/bagel-src}
if [ ! -f "$src/modeling/bagel/bagel.py" ]; then
  git clone --quiet https://github.com/ByteDance-Seed/Bagel "$src"
  git -C "$src" checkout --quiet 056b5fd51a88c1eb4547318609e25d40080fcf87
fi
if [ ! -x .venv-bagel/bin/python ]; then
  python3 -m venv .venv-bagel
  .venv-bagel/bin/pip install --quiet torch numpy safetensors einops pillow transformers==4.49.0
fi
fixture="$out/bagel-fixture"
rm -rf "$fixture"
.venv-bagel/bin/python scripts/bagel_fixtures.py --bagel-src "$src" --out "$fixture" --seed "$RANDOM"
cargo run --quiet --release -p srum-cli -- bagel verify --fixtures "$fixture"
THREADS=$threads ITERS=${ITERS_BAGEL:-3} scripts/bench_bagel_layer.sh "$src"
