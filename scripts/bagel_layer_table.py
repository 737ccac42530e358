#!/usr/bin/env python3
"""The table of scripts/bench_bagel_layer.sh: burn against the official PyTorch layer, per allocator setting, with
FLOP/s against this machine's measured f32 matmul peak and each side's peak memory.

    .venv-bagel/bin/python scripts/bagel_layer_table.py target/bench-bagel-layer "MACHINE" [--threads 2]

Reads {burn,pytorch}-{defaults,kept}.json from the folder. FLOPs count 2 m n k per matrix product: every token's
projections and MLP in its own expert (BAGEL-7B-MoT's sizes), and both attention products over the (query, key)
pairs the mask lets through (a causal 62-token text split, then 1026 image rows that see the text and themselves;
in the denoising step 1026 rows that see the 62 cached prompt keys and themselves, then 1026 that see only
themselves). A backward counts twice a forward. Element-wise work, norms and softmax are not counted. The peak is
PyTorch's f32 product at the layer's largest shape ([1024, 3584] x [3584, 18944]) on the same threads, best of 10: a
measured reference, not the hardware's peak.
"""

import argparse
import json
import time

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM = 3584, 18944, 28, 4, 128
TEXT, LATENTS = 62, 1024


def token_flops():
    """One token through its expert's q/k/v/o projections and SwiGLU MLP."""
    kv = KV_HEADS * HEAD_DIM
    return 2 * (2 * HIDDEN * HIDDEN + 2 * HIDDEN * kv + 3 * HIDDEN * INTER)


def attention_flops(pairs):
    """Scores and the weighted sum of values over `pairs` (query, key) pairs, every head."""
    return 2 * 2 * pairs * HEADS * HEAD_DIM


def flops():
    block = LATENTS + 2
    train_pairs = TEXT * (TEXT + 1) // 2 + block * (TEXT + block)
    forward = (TEXT + block) * token_flops() + attention_flops(train_pairs)
    denoise = 2 * block * token_flops() + attention_flops(block * (TEXT + block) + block * block)
    return {"forward_s": forward, "forward_backward_s": 3 * forward, "denoise_s": denoise}


def matmul_peak(threads):
    """The best of 10 runs of PyTorch's f32 product at the layer's largest shape (the generation expert's MLP up
    projection of the 1024 latents): a measured reference for the machine's matmul rate, not its hardware peak
    (burn's gemm can exceed it)."""
    import torch
    torch.set_num_threads(threads)
    m, k, n = LATENTS, HIDDEN, INTER
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    best = float("inf")
    for _ in range(10):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("machine")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    r = {k: json.load(open(f"{a.folder}/{k}.json")) for k in
         ("burn-defaults", "pytorch-defaults", "burn-kept", "pytorch-kept")}
    peak = matmul_peak(a.threads)
    work = flops()
    b = r["burn-kept"]
    print(f"Machine: {a.machine}; median of {b['iters']} runs after one warm-up; f32 matmul reference (PyTorch "
          f"[1024, 3584] x [3584, 18944], best of 10, {a.threads} threads): {peak / 1e9:.1f} GFLOP/s\n")
    print(f"| f32, one MoT layer | allocator | burn flex (s) | {r['pytorch-kept']['side']} (s) | burn / PyTorch "
          "| burn GFLOP/s (% of reference) | PyTorch GFLOP/s (% of reference) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for k, name in (("forward_s", f"forward, {b['tokens']} tokens"), ("forward_backward_s", "forward + backward"),
                    ("denoise_s", "denoising step, text CFG (2 x 1026 tokens)")):
        for s, label in (("defaults", "glibc defaults"), ("kept", "freed buffers kept")):
            bb, pp = r[f"burn-{s}"].get(k), r[f"pytorch-{s}"].get(k)
            if bb is None or pp is None:
                continue
            rate = [work[k] / t for t in (bb, pp)]
            cells = " | ".join(f"{x / 1e9:.0f} ({100 * x / peak:.0f}%)" for x in rate)
            print(f"| {name} | {label} | {bb:.2f} | {pp:.2f} | {bb / pp:.2f}x | {cells} |")
    print("\nPeak resident memory of the whole process (weights, gradients and every measurement), MiB:\n")
    print("| allocator | burn flex | PyTorch | burn / PyTorch |")
    print("|---|---:|---:|---:|")
    for s, label in (("defaults", "glibc defaults"), ("kept", "freed buffers kept")):
        bb, pp = r[f"burn-{s}"]["peak_rss_mib"], r[f"pytorch-{s}"]["peak_rss_mib"]
        print(f"| {label} | {bb:.0f} | {pp:.0f} | {bb / pp:.2f}x |")
    print(f"\nFLOPs counted: forward {work['forward_s'] / 1e9:.1f} G, forward + backward "
          f"{work['forward_backward_s'] / 1e9:.1f} G, denoising step {work['denoise_s'] / 1e9:.1f} G.")


if __name__ == "__main__":
    main()
