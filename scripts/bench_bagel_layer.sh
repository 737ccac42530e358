#!/usr/bin/env bash
# One BAGEL-7B-MoT decoder layer at full width (hidden 3584, intermediate 18944, 28/4 heads, both experts) on
# this machine's CPU: burn flex (crates/srum-bagel/examples/layer_bench.rs) vs the official PyTorch layer
# (scripts/bench_bagel_layer.py), same packed 1088-token sample, same thread count, one after the other: forward,
# forward + backward, and one denoising step with text CFG (two 1026-token blocks after a cached prompt and after
# nothing). The table (scripts/bagel_layer_table.py) adds FLOP/s against the measured matmul peak.
#
#   scripts/bench_bagel_layer.sh [BAGEL_SRC]     (default /tmp/bagel-src: github ByteDance-Seed/Bagel 056b5fd)
#   env: THREADS (default: nproc), ITERS (timed runs after one warm-up, default 3)
#
# Needs .venv-bagel (torch, transformers 4.49; see scripts/bagel_fixtures.py) and about 8 GB of free memory.
# Results: target/bench-bagel-layer/{burn,pytorch}-{defaults,kept}.json and table.md.
# Run it on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-/tmp/bagel-src}
threads=${THREADS:-$(nproc)}
iters=${ITERS:-3}
out=target/bench-bagel-layer
mkdir -p "$out"
py=.venv-bagel/bin/python
load=$(cut -d' ' -f1-3 /proc/loadavg)

cargo build --release -p srum-bagel --example layer_bench
# Two allocator settings, the same for both sides: glibc's defaults, and freed buffers kept in
# the heap (what `srum` and layer_bench do by default, through srum::allocator; PyTorch gets the
# same settings through GLIBC_TUNABLES).
kept=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615:glibc.malloc.top_pad=67108864
RAYON_NUM_THREADS=$threads target/release/examples/layer_bench --iters "$iters" --glibc-defaults \
  --json "$out/burn-defaults.json"
OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads $py scripts/bench_bagel_layer.py --bagel-src "$src" \
  --threads "$threads" --iters "$iters" --json "$out/pytorch-defaults.json"
RAYON_NUM_THREADS=$threads target/release/examples/layer_bench --iters "$iters" --json "$out/burn-kept.json"
GLIBC_TUNABLES=$kept OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads $py scripts/bench_bagel_layer.py \
  --bagel-src "$src" --threads "$threads" --iters "$iters" --json "$out/pytorch-kept.json"

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)
$py scripts/bagel_layer_table.py "$out" "$cpu, $(nproc) cores, $threads threads (load before: $load)" \
  --threads "$threads" | tee "$out/table.md"
