"""PyTorch re-implementation of `TinyUmm` (src/tiny/model.rs), for the comparison of issue #6.

It loads the same model directory (`model.json` + `model.safetensors`) and computes the same
functions as the Rust model, following burn 0.21's layer semantics:

- `Linear` stores its weight as `[d_input, d_output]` (y = x W + b), the transpose of torch's
  layout; we keep burn's layout so the safetensors names and shapes load unchanged.
- `LayerNorm`: biased variance, eps 1e-5, parameters `gamma` / `beta`.
- `gelu` is the exact erf form, `0.5 x (1 + erf(x / sqrt 2))`.
- `MultiHeadAttention`: q, k, v, output `Linear`s of `d_model -> d_model`; heads split as
  `[b, l, d] -> [b, l, h, d/h] -> [b, h, l, d/h]`; scores `q k^T / sqrt(d/h)`; `mask_pad` writes
  -1e4 into the scores of padded keys before the softmax (dropout is 0). We use
  `scaled_dot_product_attention` with a boolean mask instead, which gives those keys weight
  exactly 0 as well: exp(-1e4 - max) underflows to 0 in f32, and no row is fully masked (image
  tokens are never padding).
"""

import json
import math
import struct
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

TIME_FEATURES = 16
PATCH_CLASSES = 9
# Parameters that only the understanding path uses (`param_roles` in model.rs): never trained.
UNDERSTANDING_ONLY = ("answer_head.", "patch_head.")
# `Prediction::Clean`'s least divisor.
CLEAN_T_MIN = 0.05


def understanding_only(name):
    """Parameters SRUM never trains: the answer and patch heads, and the task experts of the
    images being judged."""
    return name.startswith(UNDERSTANDING_ONLY) or ".understanding." in name


class Linear(nn.Module):
    """burn's `Linear`: weight `[d_input, d_output]`."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_in, d_out))
        self.bias = nn.Parameter(torch.empty(d_out))

    def forward(self, x):
        # F.linear takes torch's [d_output, d_input]; the transposed view costs nothing.
        return F.linear(x, self.weight.t(), self.bias)


class LayerNorm(nn.Module):
    """burn's `LayerNorm` (eps 1e-5), with its parameter names."""

    def __init__(self, d):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(d))
        self.beta = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.gamma, self.beta, 1e-5)


class Embedding(nn.Module):
    def __init__(self, n, d):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, d))

    def forward(self, ids):
        return F.embedding(ids, self.weight)


class MultiHeadAttention(nn.Module):
    def __init__(self, d, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.query = Linear(d, d)
        self.key = Linear(d, d)
        self.value = Linear(d, d)
        self.output = Linear(d, d)

    def forward(self, x, keep):
        """`x`: `[b, l, d]`; `keep`: `[b, 1, 1, l]` bool, true where the key may be attended."""
        b, seq, d = x.shape

        def heads(lin):
            return lin(x).view(b, seq, self.n_heads, d // self.n_heads).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(
            heads(self.query), heads(self.key), heads(self.value), attn_mask=keep
        )
        return self.output(ctx.transpose(1, 2).reshape(b, seq, d))


class Expert(nn.Module):
    """A pre-norm feed-forward expert, as `tiny::model::Expert`."""

    def __init__(self, d, d_ff):
        super().__init__()
        self.ln = LayerNorm(d)
        self.up = Linear(d, d_ff)
        self.down = Linear(d_ff, d)

    def forward(self, x):
        return x + self.down(F.gelu(self.up(self.ln(x))))


class Block(nn.Module):
    """Shared attention over text and image tokens, then one feed-forward expert per modality
    (with task experts, the images being judged have their own)."""

    def __init__(self, d, n_heads, d_ff, task_experts=False):
        super().__init__()
        self.ln_attn = LayerNorm(d)
        self.attn = MultiHeadAttention(d, n_heads)
        self.ln_text = LayerNorm(d)
        self.text_up = Linear(d, d_ff)
        self.text_down = Linear(d_ff, d)
        self.ln_image = LayerNorm(d)
        self.image_up = Linear(d, d_ff)
        self.image_down = Linear(d_ff, d)
        self.understanding = Expert(d, d_ff) if task_experts else None

    def forward(self, text, image, keep, understand):
        nt = text.shape[1]
        x = torch.cat([text, image], 1)
        x = x + self.attn(self.ln_attn(x), keep)
        text, image = x[:, :nt], x[:, nt:]
        text = text + self.text_down(F.gelu(self.text_up(self.ln_text(text))))
        if understand and self.understanding is not None:
            image = self.understanding(image)
        else:
            image = image + self.image_down(F.gelu(self.image_up(self.ln_image(image))))
        return text, image


def patchify(images, patch):
    """`[b, 3, H, W]` in [0, 1] to `[b, (H/p)(W/p), 3 p^2]` in [-1, 1], as `image::patchify`:
    patches row-major over the grid, channels ordered (colour, row in patch, column in patch)."""
    b, c, h, w = images.shape
    gh, gw, p = h // patch, w // patch, patch
    x = images.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, gh * gw, c * p * p) * 2.0 - 1.0


def time_features(t):
    """`[b]` to `[b, 16]`: sin then cos of `t * 2^i * pi`, i = 0..8."""
    freqs = torch.tensor(
        [2.0**i * math.pi for i in range(TIME_FEATURES // 2)], dtype=t.dtype, device=t.device
    )
    x = t[:, None] * freqs
    return torch.cat([x.sin(), x.cos()], 1)


class TinyUmm(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, c = cfg["d_model"], 3 * cfg["patch"] ** 2
        n_img = (cfg["image_size"] // cfg["patch"]) ** 2
        self.cfg = cfg
        self.tok_embed = Embedding(cfg["vocab"], d)
        self.text_pos = nn.Parameter(torch.empty(cfg["max_text"] + 1, d))
        self.cls = nn.Parameter(torch.empty(1, d))
        self.patch_in = Linear(c, d)
        self.image_pos = nn.Parameter(torch.empty(n_img, d))
        self.time_in = Linear(TIME_FEATURES, d)
        self.blocks = nn.ModuleList(
            Block(d, cfg["n_heads"], cfg["d_ff"], bool(cfg.get("task_experts")))
            for _ in range(cfg["n_layers"])
        )
        self.ln_out = LayerNorm(d)
        self.velocity_head = Linear(d, c)
        self.answer_head = Linear(d, 2)
        self.patch_head = Linear(d, PATCH_CLASSES)

    def embed_text(self, ids):
        """`[CLS]` + token embeddings + positions: `[b, 1 + max_text, d]`."""
        cls = self.cls.expand(ids.shape[0], 1, -1)
        return torch.cat([cls, self.tok_embed(ids)], 1) + self.text_pos

    def run(self, text, image, pad, understand):
        """The backbone; `pad`: `[b, 1 + max_text]` bool, true where the text slot is padding."""
        b, ni = image.shape[:2]
        no_pad = torch.zeros(b, ni, dtype=torch.bool, device=pad.device)
        keep = ~torch.cat([pad, no_pad], 1)[:, None, None, :]
        for block in self.blocks:
            text, image = block(text, image, keep, understand)
        return self.ln_out(text), self.ln_out(image)

    def velocity(self, x_t, t, ids, pad):
        """`x_t`: `[b, n, c]`, `t`: `[b]`, `ids`: `[b, m]` int64, `pad`: `[b, m + 1]` bool."""
        time = self.time_in(time_features(t))[:, None, :]
        image = self.patch_in(x_t) + self.image_pos + time
        _, i = self.run(self.embed_text(ids), image, pad, understand=False)
        out = self.velocity_head(i)
        if self.cfg.get("prediction") == "clean":
            return (x_t - out) / t.clamp_min(CLEAN_T_MIN)[:, None, None]
        return out

    def understand(self, images, ids, pad):
        """Yes/no logits `[b, 2]` for images `[b, 3, S, S]` in [0, 1]."""
        image = self.patch_in(patchify(images, self.cfg["patch"])) + self.image_pos
        t, _ = self.run(self.embed_text(ids), image, pad, understand=True)
        return self.answer_head(t[:, 0])

    def trainable_parameters(self):
        """The default trainable set: generation and shared parameters."""
        return [p for n, p in self.named_parameters() if not understanding_only(n)]


_DTYPES = {
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path):
    """`{name: tensor}` of a safetensors file. Read here rather than with the `safetensors`
    package, so a GPU machine with only PyTorch (and no network) can run the check."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    body = bytearray(data[8 + n :])
    return {
        name: torch.frombuffer(
            body,
            dtype=_DTYPES[h["dtype"]],
            count=math.prod(h["shape"]),
            offset=h["data_offsets"][0],
        )
        .reshape(h["shape"])
        .clone()
        for name, h in header.items()
    }


def load_model(model_dir, device="cpu"):
    """Loads a `tiny-umm` model directory; returns `(model, config dict)`."""
    model_dir = Path(model_dir)
    card = json.loads((model_dir / "model.json").read_text())
    if card["kind"] != "tiny-umm":
        raise ValueError(f"{model_dir}: model kind {card['kind']!r}, expected 'tiny-umm'")
    cfg = card["config"]
    model = TinyUmm(cfg)
    model.load_state_dict(read_safetensors(model_dir / "model.safetensors"), strict=True)
    for n, p in model.named_parameters():
        p.requires_grad_(not understanding_only(n))
    return model.to(device), cfg
