#!/usr/bin/env python3
"""One BAGEL-7B-MoT decoder layer at full width on the CPU, with the OFFICIAL PyTorch code: the peer of
crates/srum-bagel/examples/layer_bench.rs (scripts/bench_bagel_layer.sh runs both).

    OMP_NUM_THREADS=2 .venv-bagel/bin/python scripts/bench_bagel_layer.py --bagel-src /tmp/bagel-src \
        [--threads 2] [--iters 3] [--json target/bench-bagel-layer/pytorch.json]

The official source (github ByteDance-Seed/Bagel 056b5fd) is imported with the run-time patches of
scripts/bagel_fixtures.py (its import_official: a stand-in flash_attn module, which the dense-mask training path
never calls; sdpa_kernel a no-op, since EFFICIENT_ATTENTION is a CUDA choice; the bfloat16 casts made float32).

Timed: Qwen2MoTDecoderLayer.forward_train (the layer in train mode, as Qwen2Model.forward_train calls it) on one
packed sample laid out as the Rust side's: text split of 62 tokens (causal) + noisy split of
<|vision_start|>, 32x32 = 1024 latents, <|vision_end|> (1088 tokens; 64 understanding, 1024 generation), with
the dense float mask of data_utils.prepare_attention_mask_per_sample passed as a list (the `nested_attention_masks`
path of Bagel.forward, i.e. scaled_dot_product_attention per sample), RoPE cos/sin from the official
Qwen2RotaryEmbedding computed beforehand. "forward" runs under torch.no_grad (the Rust forward has no autodiff);
"forward + backward" is forward, sum, backward to every weight and the input. "denoising step" is one Euler step's
work at the layer under text classifier-free guidance, as Bagel._forward_flow runs it: forward_inference in "gen"
mode on the noisy-latent block (<|vision_start|>, 1024 latents, <|vision_end|>: 1026 tokens, not causal) after the
prompt's 62 cached keys and values (update_past_key_values False), then again after an empty cache (the text-CFG
context of a prompt without a system prompt); the prompt's cache is filled by forward_inference before the clock
starts. flash_attn_varlen_func, which forward_inference calls, is a CUDA kernel; here it is scripts/bagel_fixtures.py's
stand-in: scaled_dot_product_attention per segment with grouped-query heads (enable_gqa, no copied key/value heads),
PyTorch's fused attention on the CPU
(attention is about 3 % of the step's FLOPs). On a GPU with flash-attn installed its own kernel is used; the
official `sdpa_kernel` choice stays a no-op there too (the training forward's dense-mask SDPA picks its own kernel).
Float32 (or --dtype bf16 with the official bfloat16 casts; --device cuda on a GPU), random weights (normal, std
0.02; norms one), standard normal input. One warm-up run, then --iters timed
runs; the median is reported.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bagel_fixtures as bf  # noqa: E402

TEXT = 62
SIDE = 32


def peak_rss_mib():
    """Peak resident memory of this process (VmHWM), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bagel-src", default="/tmp/bagel-src")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the GPU side of scripts/gpu_bagel.sh)")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    # Every tensor the official code makes (masks, indexes, caches) on the device.
    torch.set_default_device(a.device)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    # The real flash-attn, on a GPU that has it, imported before import_official puts its stand-in in its place.
    real_flash_attn = None
    if a.device != "cpu":
        try:
            from flash_attn.flash_attn_interface import flash_attn_varlen_func as real_flash_attn
        except ImportError:
            pass
    bf.import_official(a.bagel_src)
    from modeling.bagel import qwen2_navit
    if a.dtype == "bf16":
        qwen2_navit.torch = torch  # the official bfloat16 casts, which the f32 comparison neutralises

    config = bf.O.Qwen2Config(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=1,
        num_attention_heads=28, num_key_value_heads=4, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        max_position_embeddings=32768, qk_norm=True, layer_module="Qwen2MoTDecoderLayer", freeze_und=False,
        tie_word_embeddings=False)
    layer = qwen2_navit.Qwen2MoTDecoderLayer(config, layer_idx=0)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02)
    layer.to(dtype)
    layer.train()
    rotary = qwen2_navit.Qwen2RotaryEmbedding(config=config)

    n_lat = SIDE * SIDE
    split_lens = [TEXT, n_lat + 2]
    n = sum(split_lens)
    mask = bf.O.data_utils.prepare_attention_mask_per_sample(split_lens, ["causal", "noise"]).to(dtype)
    gen = torch.arange(TEXT + 1, TEXT + 1 + n_lat)
    und = torch.tensor(list(range(TEXT + 1)) + [n - 1])
    positions = torch.tensor(list(range(TEXT)) + [TEXT] * (n_lat + 2))
    x0 = torch.randn(n, config.hidden_size, dtype=dtype)
    with torch.no_grad():
        cos, sin = rotary(x0, positions.unsqueeze(0))
    pe = (cos.squeeze(0), sin.squeeze(0))

    def run(x):
        return layer(packed_sequence=x, sample_lens=[n], attention_mask=[mask], packed_position_embeddings=pe,
                     packed_und_token_indexes=und, packed_gen_token_indexes=gen)

    def forward():
        with torch.no_grad():
            s = run(x0).sum().item()
        assert s == s

    params = list(layer.parameters())

    def forward_backward():
        x = x0.clone().requires_grad_(True)
        run(x).sum().backward()
        g = x.grad.abs().sum().item()
        assert g > 0 and all(p.grad is not None for p in params)

    # One denoising step with text CFG (see the module's doc); on a GPU with flash-attn installed, its kernel.
    if real_flash_attn is not None:
        qwen2_navit.flash_attn_varlen_func = real_flash_attn
    n_blk = n_lat + 2
    layer.eval()  # forward_inference's attention dispatches on the module's mode
    with torch.no_grad():
        cache = bf.O.NaiveCache(1)
        prompt = torch.randn(TEXT, config.hidden_size, dtype=dtype)
        pcos, psin = rotary(prompt, torch.arange(TEXT).unsqueeze(0))
        layer.forward_inference(
            packed_query_sequence=prompt, query_lens=torch.tensor([TEXT]),
            packed_query_position_embeddings=(pcos.squeeze(0), psin.squeeze(0)),
            packed_query_indexes=torch.arange(TEXT), past_key_values=cache, key_values_lens=torch.tensor([0]),
            packed_key_value_indexes=torch.arange(0), update_past_key_values=True, is_causal=True, mode="und")
        assert cache.key_cache[0].shape[0] == TEXT
        block = torch.randn(n_blk, config.hidden_size, dtype=dtype)
        branches = []
        for prefix, past in ((TEXT, cache), (0, bf.O.NaiveCache(1))):
            bcos, bsin = rotary(block, torch.full((1, n_blk), prefix))
            branches.append(dict(
                query_lens=torch.tensor([n_blk]), packed_query_position_embeddings=(bcos.squeeze(0), bsin.squeeze(0)),
                packed_query_indexes=torch.arange(prefix, prefix + n_blk), past_key_values=past,
                key_values_lens=torch.tensor([prefix]), packed_key_value_indexes=torch.arange(prefix),
                update_past_key_values=False, is_causal=False, mode="gen",
                packed_vae_token_indexes=torch.arange(1, n_blk - 1), packed_text_indexes=torch.tensor([0, n_blk - 1])))

    layer.train()

    def denoise():
        layer.eval()
        with torch.no_grad():
            s = sum(layer.forward_inference(packed_query_sequence=block, **b)[0].sum().item() for b in branches)
        assert s == s

    def timed(f):
        f()
        runs = []
        for _ in range(a.iters):
            for p in params:
                p.grad = None
            t = time.perf_counter()
            f()
            runs.append(time.perf_counter() - t)
        return statistics.median(runs), runs

    print(f"pytorch {torch.__version__}: 1 MoT layer, {sum(p.numel() for p in params) / 1e6:.1f}M parameters, "
          f"tokens {n}, threads {torch.get_num_threads()}, iters {a.iters}", file=sys.stderr)
    fwd, fwd_runs = timed(forward)
    print(f"forward: median {fwd:.3f} s, runs {[round(r, 3) for r in fwd_runs]}", file=sys.stderr)
    fb, fb_runs = timed(forward_backward)
    print(f"forward+backward: median {fb:.3f} s, runs {[round(r, 3) for r in fb_runs]}", file=sys.stderr)
    dn, dn_runs = timed(denoise)
    layer.train()
    print(f"denoising step (cond + uncond): median {dn:.3f} s, runs {[round(r, 3) for r in dn_runs]}",
          file=sys.stderr)
    out = {"side": f"pytorch {torch.__version__} {a.device} {a.dtype}", "tokens": n, "threads": torch.get_num_threads(),
           "iters": a.iters, "forward_s": fwd, "forward_runs_s": fwd_runs, "forward_backward_s": fb,
           "forward_backward_runs_s": fb_runs, "denoise_s": dn, "denoise_runs_s": dn_runs,
           "peak_rss_mib": peak_rss_mib()}
    if a.device != "cpu":
        out["peak_gpu_allocated_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    print(json.dumps(out))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
