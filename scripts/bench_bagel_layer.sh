#!/usr/bin/env bash
# One BAGEL-7B-MoT decoder layer at full width (hidden 3584, intermediate 18944, 28/4 heads, both experts) on
# this machine's CPU: burn flex (crates/srum-bagel/examples/layer_bench.rs) vs the official PyTorch layer
# (scripts/bench_bagel_layer.py), same packed 1088-token sample, same thread count, one after the other.
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
$py - "$out" "$cpu, $(nproc) cores, $threads threads (load before: $load)" <<'PY' |
import json, sys
d = sys.argv[1]
r = {k: json.load(open(f"{d}/{k}.json")) for k in ("burn-defaults", "pytorch-defaults", "burn-kept", "pytorch-kept")}
b = r["burn-kept"]
print(f"Machine: {sys.argv[2]}; {b['tokens']} tokens; median of {b['iters']} runs after one warm-up\n")
print(f"| f32, one MoT layer | allocator | burn flex (s) | {r['pytorch-kept']['side']} (s) | burn / PyTorch |")
print("|---|---|---:|---:|---:|")
for k, name in (("forward_s", "forward"), ("forward_backward_s", "forward + backward"),
                ("denoise_s", "denoising step, text CFG (2 x 1026 tokens)")):
    for a, label in (("defaults", "glibc defaults"), ("kept", "freed buffers kept")):
        bb, pp = r[f"burn-{a}"][k], r[f"pytorch-{a}"][k]
        print(f"| {name} | {label} | {bb:.2f} | {pp:.2f} | {bb / pp:.2f}x |")
print("\nPeak resident memory of the whole process (weights, gradients and both measurements), MiB:\n")
print("| allocator | burn flex | PyTorch | burn / PyTorch |")
print("|---|---:|---:|---:|")
for a, label in (("defaults", "glibc defaults"), ("kept", "freed buffers kept")):
    bb, pp = r[f"burn-{a}"]["peak_rss_mib"], r[f"pytorch-{a}"]["peak_rss_mib"]
    print(f"| {label} | {bb:.0f} | {pp:.0f} | {bb / pp:.2f}x |")
PY
  tee "$out/table.md"
