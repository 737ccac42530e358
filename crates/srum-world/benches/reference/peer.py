"""The PyTorch side of the side-by-side comparison (issue #6), mirroring `benches/peer.rs`.

    peer.py --model DIR --json OUT [--threads N] [--dump FILE] [--device cpu|cuda] [--iters K]

With `--dump`, first runs the model on the inputs our Rust peer saved and compares with its
outputs; when either differs by more than 1e-4 it stops there with exit status 1. Then times,
in f32, the operations of `benches/peer.rs`, each the median of K runs after one warm-up run:

- `train_step_anchor`, `train_step_reference`: one `Trainer::step` (batch 32, rewards uniform in
  [-1, 1] per latent token) with `TrainerConfig::default()`, the published recipe, and the anchor
  or the frozen-reference constraint;
- `sample`: `generate` with `EulerSamplerConfig::default()` for 64 prompts (noise, 20 Euler steps,
  guidance 4 inside the interval (0.4, 1], decoding to images on the host);
- `understand`: yes/no logits of 64 (image, prompt) pairs, read back to the host;
- `reward_map_512`, `reward_map_1024`: the NumPy reference rule for one map from a global score and
  5 boxes, at image resolution.
- `reward_map_latent_512`, `reward_map_latent_1024`: the same map bilinearly resized to the latent
  grid (side / 16), which is what training consumes.
"""

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reward_map import compose, resize  # noqa: E402
from tiny_umm import TIME_FEATURES, load_model, read_safetensors  # noqa: E402

# TrainerConfig::default(): the published SRUM recipe.
LR, BETAS, EPS, WEIGHT_DECAY, WARMUP = 2e-5, (0.9, 0.95), 1e-15, 0.0, 100
LAMBDA, CLIP = 0.5, 1.0
# EulerSamplerConfig::default().
STEPS, GUIDANCE, INTERVAL = 20, 4.0, (0.4, 1.0)
TRAIN_BATCH, BATCH = 32, 64
TOLERANCE = 1e-4


# FLOP counting: 2 m n k per matrix multiply (Linear layers and both attention products);
# element-wise work, softmax, norms and the optimizer are not counted. A training step counts its
# forward 3 times (the backward of a matmul is two matmuls of the same size: the gradients of its
# input and of its weight), plus once more for the frozen reference forward of the
# reference-model constraint.
def forward_flops(cfg, b, generation):
    d, f, c = cfg["d_model"], cfg["d_ff"], 3 * cfg["patch"] ** 2
    nt, ni = cfg["max_text"] + 1, (cfg["image_size"] // cfg["patch"]) ** 2
    seq = nt + ni
    block = 4 * seq * d * d + 2 * seq * seq * d + 2 * seq * d * f
    head = ni * d * c + TIME_FEATURES * d if generation else d * 2
    return 2 * b * (cfg["n_layers"] * block + ni * c * d + head)


def euler_steps():
    """`(t, t - t_next, guided)` of each step, in f32 as the Rust sampler computes them (which
    steps fall inside the guidance interval depends on it: 1 - 12/20 is just below f32 0.4)."""
    f = np.float32
    times = [f(1) - f(i) / f(STEPS) for i in range(STEPS + 1)]
    lo, hi = f(INTERVAL[0]), f(INTERVAL[1])
    return [
        (float(t), float(t - u), bool(GUIDANCE != 1.0 and lo < t <= hi))
        for t, u in zip(times, times[1:])
    ]


def random_prompts(gen, cfg, b, device):
    """Token ids `[b, m]` and padding `[b, m + 1]` of `b` prompts of random length: the cost does
    not depend on the words, padded slots are computed and masked all the same."""
    m = cfg["max_text"]
    lengths = torch.randint(1, m + 1, (b, 1), generator=gen)
    slots = torch.arange(m)[None, :]
    ids = torch.where(slots < lengths, torch.randint(2, cfg["vocab"], (b, m), generator=gen), 0)
    pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool), slots >= lengths], 1)
    return ids.to(device), pad.to(device)


def empty_prompts(cfg, b, device):
    """The unconditional branch: only `[CLS]` is attended."""
    m = cfg["max_text"]
    pad = torch.ones(b, m + 1, dtype=torch.bool, device=device)
    pad[:, 0] = False
    return torch.zeros(b, m, dtype=torch.long, device=device), pad


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(iters, device, f):
    f()
    sync(device)
    runs = []
    for _ in range(max(iters, 1)):
        start = time.perf_counter()
        f()
        sync(device)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


class Trainer:
    """`Trainer::step` of src/train/trainer.rs with the default config, in PyTorch."""

    def __init__(self, model, reference_constraint):
        self.model = model
        self.params = model.trainable_parameters()
        self.optim = torch.optim.AdamW(
            self.params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY
        )
        self.reference = None
        if reference_constraint:
            self.reference = copy.deepcopy(model).requires_grad_(False)
        self.steps = 0

    def step(self, x_gen, reward, ids, pad):
        b = x_gen.shape[0]
        # Logit-normal timesteps; the training shift of the recipe is 1 (no shift).
        t = torch.sigmoid(torch.randn(b, device=x_gen.device))
        eps = torch.randn_like(x_gen)
        x_t = x_gen + (eps - x_gen) * t[:, None, None]
        target = eps - x_gen
        if self.reference is None:
            constraint = target  # the anchor is the generated image itself
        else:
            with torch.no_grad():
                constraint = self.reference.velocity(x_t, t, ids, pad)
        v = self.model.velocity(x_t, t, ids, pad)
        loss = ((v - target).square() * reward[:, :, None]).mean()
        loss = loss + LAMBDA * (v - constraint).square().mean()
        if not math.isfinite(loss.item()):
            return
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, CLIP)
        if not math.isfinite(norm.item()):
            return
        for group in self.optim.param_groups:
            group["lr"] = LR * min(1.0, (self.steps + 1) / WARMUP)
        self.optim.step()
        self.steps += 1


@torch.inference_mode()
def sample(model, cfg, noise, cond, uncond):
    """`generate`: guided Euler sampling from `noise`, decoded to `[b, 3, S, S]` host images."""
    b = noise.shape[0]
    x = noise
    for t, dt, guided in euler_steps():
        tb = torch.full((b,), t, device=x.device)
        v = model.velocity(x, tb, *cond)
        if guided:
            v_u = model.velocity(x, tb, *uncond)
            v = v_u + GUIDANCE * (v - v_u)
        x = x - v * dt
    p, g = cfg["patch"], cfg["image_size"] // cfg["patch"]
    images = ((x + 1) / 2).clamp(0, 1).reshape(b, g, g, 3, p, p).permute(0, 3, 1, 4, 2, 5)
    return images.reshape(b, 3, g * p, g * p).cpu()


def equivalence(model, dump, device, tolerance=TOLERANCE):
    d = {k: v.to(device) for k, v in read_safetensors(dump).items()}
    pad = d["pad"].bool()
    with torch.inference_mode():
        v = model.velocity(d["x_t"], d["t"], d["ids"], pad)
        logits = model.understand(d["images"], d["ids"], pad)
    dv = (v - d["velocity"]).abs().max().item()
    dl = (logits - d["logits"]).abs().max().item()
    return {
        "velocity_max_abs": dv,
        "logits_max_abs": dl,
        "passed": dv <= tolerance and dl <= tolerance,
        "tolerance": tolerance,
    }


def matmul_peak(device):
    """FLOP/s of a large f32 matmul: 2048^3 on the CPU, 8192^3 on a GPU (2048 is too small to
    fill one)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n**3 / median_seconds(5, device, lambda: a @ b)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--dump")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--tolerance", type=float, default=TOLERANCE,
                    help="bound of the equivalence check (max abs difference)")
    ap.add_argument("--only", help="comma-separated operations to time (default: all)")
    ap.add_argument("--tf32", action="store_true",
                    help="let PyTorch use TF32 tensor cores for f32 matmuls (GPU)")
    a = ap.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    # A fair f32 comparison: no TF32 tensor-core shortcuts on the GPU.
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    device = torch.device(a.device)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model, cfg = load_model(a.model, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    check = equivalence(model, a.dump, device, a.tolerance) if a.dump else None
    if check:
        print(
            f"equivalence: velocity {check['velocity_max_abs']:.2e}, "
            f"logits {check['logits_max_abs']:.2e} (bound {a.tolerance:g})",
            file=sys.stderr,
        )
        if not check["passed"]:
            sys.exit("equivalence check failed: PyTorch and our model disagree")

    n, c = (cfg["image_size"] // cfg["patch"]) ** 2, 3 * cfg["patch"] ** 2

    def f_gen(b):
        return forward_flops(cfg, b, generation=True)

    ops = {}
    only = set(a.only.split(",")) if a.only else None
    known = {"train_step_anchor", "train_step_reference", "sample", "understand"}
    if only is not None and not only <= known:
        sys.exit(f"--only {','.join(sorted(only - known))}: not one of {', '.join(sorted(known))}")

    def want(op):
        return only is None or op in only

    def record(op, seconds, items, flops):
        print(f"{op}: {seconds:.4f} s ({items} items)", file=sys.stderr)
        ops[op] = {"seconds": seconds, "items": items, "flops": flops}

    for op, reference in [("train_step_anchor", False), ("train_step_reference", True)]:
        if not want(op):
            continue
        trainer = Trainer(copy.deepcopy(model), reference)
        x_gen = torch.randn(TRAIN_BATCH, n, c, device=device)
        reward = torch.rand(TRAIN_BATCH, n, device=device) * 2 - 1
        text = random_prompts(gen, cfg, TRAIN_BATCH, device)
        s = median_seconds(a.iters, device, lambda: trainer.step(x_gen, reward, *text))
        record(op, s, TRAIN_BATCH, (4 if reference else 3) * f_gen(TRAIN_BATCH))

    cond = random_prompts(gen, cfg, BATCH, device)
    uncond = empty_prompts(cfg, BATCH, device)
    if want("sample"):
        s = median_seconds(
            min(a.iters, 3),
            device,
            lambda: sample(model, cfg, torch.randn(BATCH, n, c, device=device), cond, uncond),
        )
        passes = sum(2 if guided else 1 for *_, guided in euler_steps())
        record("sample", s, BATCH, passes * f_gen(BATCH))

    if want("understand"):
        size = cfg["image_size"]
        images = torch.ones(BATCH, 3, size, size, device=device)
        with torch.inference_mode():
            s = median_seconds(a.iters, device, lambda: model.understand(images, *cond).cpu())
        record("understand", s, BATCH, forward_flops(cfg, BATCH, generation=False))

    for side in (512, 1024) if only is None else ():
        # The judgement of benches/peer.rs: global 0.3, five overlapping boxes.
        regions = [
            (
                (
                    0.1 * side * k,
                    0.05 * side * k,
                    0.1 * side * k + 0.4 * side,
                    0.05 * side * k + 0.5 * side,
                ),
                0.4 * k - 0.8,
            )
            for k in range(5)
        ]
        s = median_seconds(a.iters * 4, device, lambda: compose(0.3, regions, side, side))
        record(f"reward_map_{side}", s, 1, None)
        grid = side // 16
        s = median_seconds(
            a.iters * 4, device, lambda: resize(compose(0.3, regions, side, side), grid, grid)
        )
        record(f"reward_map_latent_{side}", s, 1, None)

    write(a, name, ops, check, device)


def write(a, name, ops, check, device):
    """Writes the timings to --json."""
    out = {
        "implementation": f"PyTorch {torch.__version__}, NumPy {np.__version__}",
        "device": name,
        "threads": torch.get_num_threads(),
        "ops": ops,
        "equivalence": check,
        "matmul_peak_flops": matmul_peak(device),
    }
    Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
