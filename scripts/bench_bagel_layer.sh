#!/usr/bin/env bash
# One BAGEL-7B-MoT decoder layer at full width (hidden 3584, intermediate 18944, 28/4 heads, both experts) on
# this machine's CPU: burn flex (crates/srum-bagel/examples/layer_bench.rs) vs the official PyTorch layer
# (scripts/bench_bagel_layer.py), same packed 1088-token sample, same thread count, one after the other.
#
#   scripts/bench_bagel_layer.sh [BAGEL_SRC]     (default /tmp/bagel-src: github ByteDance-Seed/Bagel 056b5fd)
#   env: THREADS (default: nproc), ITERS (timed runs after one warm-up, default 3)
#
# Needs .venv-bagel (torch, transformers 4.49; see scripts/bagel_fixtures.py) and about 8 GB of free memory.
# Run it on an idle machine. Results: target/bench-bagel-layer/{burn,pytorch}.json and table.md.
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
RAYON_NUM_THREADS=$threads target/release/examples/layer_bench --iters "$iters" --json "$out/burn.json"
OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads $py scripts/bench_bagel_layer.py --bagel-src "$src" \
  --threads "$threads" --iters "$iters" --json "$out/pytorch.json"

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)
$py - "$out/burn.json" "$out/pytorch.json" "$cpu, $(nproc) cores, $threads threads (load before: $load)" <<'PY' |
import json, sys
b, p = (json.load(open(f)) for f in sys.argv[1:3])
print(f"Machine: {sys.argv[3]}; {b['tokens']} tokens; median of {b['iters']} runs after one warm-up\n")
print(f"| f32, one MoT layer | burn flex (s) | {p['side']} (s) | burn / PyTorch |")
print("|---|---:|---:|---:|")
for k, name in (("forward_s", "forward"), ("forward_backward_s", "forward + backward")):
    print(f"| {name} | {b[k]:.2f} | {p[k]:.2f} | {b[k] / p[k]:.2f}x |")
PY
  tee "$out/table.md"
