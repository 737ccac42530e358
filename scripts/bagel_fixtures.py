#!/usr/bin/env python3
"""Reference fixtures for the Rust BAGEL port (crates/srum-bagel), made with the OFFICIAL PyTorch code.

Run by hand, never by CI. The official BAGEL source (github ByteDance-Seed/Bagel) is imported from the folder
given with --bagel-src; nothing of it is copied here. The model is built with tiny random weights, every weight is
rounded to bfloat16 (so the bf16 ema.safetensors holds exactly the weights used) and the official code is run in
float32 on the CPU, with a few run-time patches (listed in PATCHES below and in crates/srum-bagel/tests/data/README.md).

    .venv-bagel/bin/python scripts/bagel_fixtures.py --bagel-src /tmp/bagel-src \
        --out crates/srum-bagel/tests/data/tiny-gqa --hidden 64 --intermediate 96 --layers 2 --heads 4 \
        --kv-heads 2 --head-dim 16 --vocab 160 --prompt-len 7 --latent-h 3 --latent-w 5 --max-latent-size 8 --seed 0 \
        --vit-grid-h 3 --vit-grid-w 4 --gen-steps 6 --vae-ch 32 --vae-ch-mult 1,1,1,1 --vae-res-blocks 0

    .venv-bagel/bin/python scripts/bagel_fixtures.py --bagel-src /tmp/bagel-src --verify crates/srum-bagel/tests/data/tiny-gqa

    .venv-bagel/bin/python scripts/bagel_fixtures.py --bagel-src /tmp/bagel-src --check-export DIR

(--check-export: the official velocity for a folder the Rust port exported, see tests/data/README.md.)

Generating a folder also verifies it (re-loads the files, re-runs the official code from them, and runs an
independent plain-tensor implementation of the documented semantics against the stored outputs).
"""

import argparse
import contextlib
import copy
import importlib.machinery
import json
import math
import os
import random
import shlex
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

OFFICIAL_COMMIT = "056b5fd51a88c1eb4547318609e25d40080fcf87"
FORMAT_VERSION = 1
LATENT_PATCH_SIZE = 2
LATENT_CHANNEL = 16  # the official VAE's z_channels (modeling/autoencoder.py load_ae)
VAE_DOWNSAMPLE = 8  # the official VAE's downsample (load_ae)
LATENT_DOWNSAMPLE = VAE_DOWNSAMPLE * LATENT_PATCH_SIZE  # image pixels per latent patch side (16)
PATCH_DIM = LATENT_PATCH_SIZE * LATENT_PATCH_SIZE * LATENT_CHANNEL  # 64
TIME_FREQ_DIM = 256  # TimestepEmbedder frequency_embedding_size (official default)

PATCHES = [
    "flash_attn: a stand-in module `flash_attn` with flash_attn_varlen_func = torch SDPA per packed segment "
    "(K/V heads repeated for GQA: query head h uses KV head h // (num_heads / num_kv_heads); causal masks are "
    "bottom-right aligned as in flash-attn >= 2.1; default softmax scale 1/sqrt(head_dim)).",
    "sdpa_kernel: modeling.bagel.qwen2_navit.sdpa_kernel replaced by a no-op context manager "
    "(SDPBackend.EFFICIENT_ATTENTION is a CUDA choice).",
    "bfloat16 casts: the module-level name `torch` of modeling.bagel.qwen2_navit, modeling.bagel.siglip_navit and "
    "modeling.bagel.bagel is replaced by a proxy of torch whose `bfloat16` is torch.float32 (all else forwarded), "
    "so the 22 `.to(torch.bfloat16)` casts (19 in qwen2_navit, 3 in siglip_navit) are no-ops and the run is fp32.",
    "noise: during the training forward, `torch.randn_like` as seen by modeling.bagel.bagel returns the stored "
    "noise (`loss.noise`) instead of a fresh draw.",
    "taylorseer: model.language_model.model.enable_taylorseer = False is set before _forward_flow "
    "(the official generate_image sets it; _forward_flow reads it).",
    "tokenizer: a stand-in whose encode(prompt) returns the prompt's token id list (no real tokenizer at this vocab).",
    "VAE in the LLM cases: BagelConfig gets the official load_ae AutoEncoderParams (z_channels 16, downsample 8) and "
    "the training forward gets the clean latent directly as padded_latent (what vae_model.encode would return). The "
    "vae and gen cases use a separate TINY official AutoEncoder (modeling/autoencoder.py) built from vae_config.json "
    "with the weights of ae.safetensors.",
    "data/dataset_base.py: its imports data.dataset_info, data.transforms and data.video_utils (dataset "
    "building; pyarrow, decord, cv2, torchvision) are stand-in modules; PackedDataset.set_sequence_status, "
    "pack_sequence and to_tensor and SimpleCustomBatch are called unchanged on a minimal `self`.",
    "visual_und: the model is built with visual_und=True (the checkpoint layout, ViT included); for the training "
    "forward model.config.visual_und is set to False for the call (SRUM trains with visual_und False; the official "
    "forward would otherwise require ViT tokens).",
    "ViT: SiglipFlashAttention2 calls the flash_attn stand-in (causal=False, cu_seqlens [0, n]); its 3 bf16 casts are "
    "no-ops (the torch proxy). The vit case calls model.vit_model, model.connector and model.vit_pos_embed directly "
    "with the tensors prepare_vit_images would build (data_utils.patchify, get_flattened_position_ids_extrapolate).",
    "VAE noise: during the sampled encode (vae.latent_sample), the module-level name `torch` of modeling.autoencoder is "
    "a proxy whose randn_like returns the stored meta.vae.sample_noise (all else forwarded); the mean-mode encode sets "
    "ae.reg.sample = False for the call.",
    "inferencer: the und and gen cases call the official InterleaveInferencer's init_gen_context, update_context_text, "
    "update_context_image (vae=False) and gen_image in the order interleave_inference uses, with the FakeTokenizer "
    "(prompts are id lists, so interleave_inference's own str / PIL.Image dispatch loop is mirrored, not called), "
    "vit_transform a callable that returns vit.image, vae_transform None (never used: understanding takes no VAE "
    "tokens). Understanding decodes with prepare_start_tokens + generate_text (do_sample False, end_token_id None) "
    "instead of gen_text (which stops at eos and detokenizes).",
    "gen noise: for the gen_image call, model.prepare_vae_latent is wrapped (an instance attribute) so that its "
    "packed_init_noises (a fresh torch.randn draw) is replaced by the stored gen.noise; model.generate_image, "
    "model._forward_flow and ae.decode are wrapped to record their results (passed through unchanged).",
]


# ----------------------------------------------------------------------------------------------------------------
# Run-time patches
# ----------------------------------------------------------------------------------------------------------------

def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                           dropout_p=0.0, softmax_scale=None, causal=False, **unused):
    """Stand-in for flash_attn.flash_attn_varlen_func: q [Tq, Hq, D], k/v [Tk, Hkv, D] -> [Tq, Hq, D]."""
    assert dropout_p == 0.0
    assert not unused.get("window_size") and not unused.get("alibi_slopes"), unused
    hq, hkv = q.shape[1], k.shape[1]
    assert hq % hkv == 0
    cq = [int(x) for x in cu_seqlens_q.tolist()]
    ck = [int(x) for x in cu_seqlens_k.tolist()]
    out = q.new_zeros(q.shape)
    for i in range(len(cq) - 1):
        qi = q[cq[i]:cq[i + 1]].transpose(0, 1)  # [Hq, Lq, D]
        ki = k[ck[i]:ck[i + 1]].transpose(0, 1)  # [Hkv, Lk, D], shared by Hq / Hkv query heads each
        vi = v[ck[i]:ck[i + 1]].transpose(0, 1)
        lq, lk = qi.shape[1], ki.shape[1]
        mask = None
        if causal:  # bottom-right aligned: query i sees key j iff j <= i + (lk - lq)
            mask = torch.ones(lq, lk, dtype=torch.bool).tril(diagonal=lk - lq)
        oi = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=softmax_scale, enable_gqa=True)
        out[cq[i]:cq[i + 1]] = oi.transpose(0, 1)
    return out


class TorchFp32Proxy(types.ModuleType):
    """Stands for `torch` inside an official module: `bfloat16` means float32; everything else is torch."""

    def __init__(self, real):
        super().__init__("torch")
        self.__dict__["_real"] = real
        self.__dict__["bfloat16"] = real.float32

    def __getattr__(self, name):
        return getattr(self.__dict__["_real"], name)


class FakeTokenizer:
    """prepare_prompts calls tokenizer.encode(prompt); a prompt here already is its token id list."""

    def encode(self, prompt):
        return [int(t) for t in prompt]


O = types.SimpleNamespace()  # the official modules, filled by import_official


def import_official(bagel_src):
    import transformers  # noqa: F401  (imported before the stand-in so its flash-attn probe sees nothing)
    fa = types.ModuleType("flash_attn")
    fa.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    fa.flash_attn_varlen_func = flash_attn_varlen_func
    sys.modules["flash_attn"] = fa
    sys.path.insert(0, os.path.abspath(bagel_src))
    from modeling.bagel import bagel as bagel_mod
    from modeling.bagel import qwen2_navit, siglip_navit
    from modeling.bagel import (BagelConfig, Bagel, Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig,
                                SiglipVisionModel)
    from modeling.bagel.qwen2_navit import NaiveCache
    from modeling.autoencoder import AutoEncoderParams
    from modeling.bagel.modeling_utils import get_2d_sincos_pos_embed
    from data import data_utils
    # data/dataset_base.py imports the dataset registry (pyarrow, decord, cv2, torchvision) for building
    # datasets, which packing one sample never uses: stand-in modules for those three imports.
    for sub, names in (("dataset_info", ("DATASET_INFO", "DATASET_REGISTRY")), ("transforms", ("ImageTransform",)),
                       ("video_utils", ("FrameSampler",))):
        stub = types.ModuleType("data." + sub)
        for n in names:
            setattr(stub, n, {} if n.isupper() else None)
        sys.modules["data." + sub] = stub
    from data.dataset_base import DataConfig, PackedDataset, SimpleCustomBatch
    from modeling import autoencoder as ae_mod
    import inferencer

    qwen2_navit.sdpa_kernel = lambda *a, **k: contextlib.nullcontext()
    for mod in (qwen2_navit, siglip_navit, bagel_mod):
        mod.torch = TorchFp32Proxy(torch)
    O.__dict__.update(
        bagel_mod=bagel_mod, BagelConfig=BagelConfig, Bagel=Bagel, Qwen2Config=Qwen2Config,
        Qwen2ForCausalLM=Qwen2ForCausalLM, SiglipVisionConfig=SiglipVisionConfig,
        SiglipVisionModel=SiglipVisionModel, NaiveCache=NaiveCache, AutoEncoderParams=AutoEncoderParams,
        get_2d_sincos_pos_embed=get_2d_sincos_pos_embed, data_utils=data_utils, DataConfig=DataConfig,
        PackedDataset=PackedDataset, SimpleCustomBatch=SimpleCustomBatch, ae_mod=ae_mod,
        AutoEncoder=ae_mod.AutoEncoder, InterleaveInferencer=inferencer.InterleaveInferencer,
    )


@contextlib.contextmanager
def fixed_randn_like(noise):
    proxy = O.bagel_mod.torch

    def randn_like(t, **kw):
        assert tuple(t.shape) == tuple(noise.shape), (t.shape, noise.shape)
        return noise.clone().to(t.dtype)

    proxy.__dict__["randn_like"] = randn_like
    try:
        yield
    finally:
        del proxy.__dict__["randn_like"]


class TorchOverride(types.ModuleType):
    """Stands for `torch` inside an official module, with a few names overridden; everything else is torch."""

    def __init__(self, real, **overrides):
        super().__init__("torch")
        self.__dict__["_real"] = real
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self.__dict__["_real"], name)


@contextlib.contextmanager
def fixed_randn_like_ae(noise):
    """torch.randn_like as seen by modeling.autoencoder (DiagonalGaussian) returns the stored noise."""

    def randn_like(t, **kw):
        assert tuple(t.shape) == tuple(noise.shape), (t.shape, noise.shape)
        return noise.clone().to(t.dtype)

    real = O.ae_mod.torch
    O.ae_mod.torch = TorchOverride(real, randn_like=randn_like)
    try:
        yield
    finally:
        O.ae_mod.torch = real


@contextlib.contextmanager
def wrapped_methods(obj, **wrappers):
    """Instance attributes that shadow obj's methods: wrappers[name](original bound method) -> replacement."""
    for name, make in wrappers.items():
        assert name not in obj.__dict__, name
        object.__setattr__(obj, name, make(getattr(obj, name)))
    try:
        yield
    finally:
        for name in wrappers:
            object.__delattr__(obj, name)


# ----------------------------------------------------------------------------------------------------------------
# Configuration files and model
# ----------------------------------------------------------------------------------------------------------------

def llm_config_json(a):
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "hidden_size": a.hidden,
        "initializer_range": 0.02,
        "intermediate_size": a.intermediate,
        "max_position_embeddings": a.max_position_embeddings,
        "max_window_layers": a.layers,
        "model_type": "qwen2",
        "num_attention_heads": a.heads,
        "num_hidden_layers": a.layers,
        "num_key_value_heads": a.kv_heads,
        "rms_norm_eps": a.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": a.rope_theta,
        "sliding_window": a.max_position_embeddings,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": a.vocab,
    }


def vit_config_json(a):
    # As in the official checkpoint, the file names one layer more than the model builds: the official loaders
    # (app.py, inferencer setup) do `vit_config.num_hidden_layers -= 1` (vit_select_layer -2).
    return {
        "attention_dropout": 0.0,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": a.vit_hidden,
        "image_size": a.vit_image_size,
        "intermediate_size": a.vit_intermediate,
        "layer_norm_eps": 1e-6,
        "model_type": "siglip_vision_model",
        "num_attention_heads": a.vit_heads,
        "num_channels": 3,
        "num_hidden_layers": a.vit_layers + 1,
        "patch_size": a.vit_patch,
    }


def bagel_config_json(a):
    return {
        "model_type": "bagel",
        "visual_gen": True,
        "visual_und": True,
        "latent_patch_size": LATENT_PATCH_SIZE,
        "max_latent_size": a.max_latent_size,
        "vit_max_num_patch_per_side": a.vit_max_patch_per_side,
        "connector_act": "gelu_pytorch_tanh",
        "interpolate_pos": False,
        "timestep_shift": a.timestep_shift,
    }


def special_tokens(vocab):
    # The real tokenizer's <|im_start|>, <|im_end|>, <|vision_start|>, <|vision_end|> (data_utils.add_special_tokens
    # names them bos_token_id, eos_token_id, start_of_image, end_of_image); here the last four ids of the vocab.
    return {"bos_token_id": vocab - 4, "eos_token_id": vocab - 3, "start_of_image": vocab - 2, "end_of_image": vocab - 1}


def build_model(folder, fx):
    """The Bagel model as the official app.py builds it, from the folder's config files."""
    llm_config = O.Qwen2Config.from_json_file(os.path.join(folder, "llm_config.json"))
    llm_config.qk_norm = True
    llm_config.tie_word_embeddings = False
    llm_config.layer_module = "Qwen2MoTDecoderLayer"
    llm_config.freeze_und = False
    vit_config = O.SiglipVisionConfig.from_json_file(os.path.join(folder, "vit_config.json"))
    vit_config.rope = False
    vit_config.num_hidden_layers -= 1
    vae_config = O.AutoEncoderParams(
        resolution=256, in_channels=3, downsample=VAE_DOWNSAMPLE, ch=128, out_ch=3, ch_mult=[1, 2, 4, 4],
        num_res_blocks=2, z_channels=LATENT_CHANNEL, scale_factor=0.3611, shift_factor=0.1159)
    c = fx["config"]
    config = O.BagelConfig(
        visual_gen=True, visual_und=True, llm_config=llm_config, vit_config=vit_config, vae_config=vae_config,
        latent_patch_size=c["latent_patch_size"], max_latent_size=c["max_latent_size"],
        vit_max_num_patch_per_side=c["vit_max_num_patch_per_side"], connector_act=c["connector_act"],
        interpolate_pos=False, timestep_shift=c["timestep_shift"])
    language_model = O.Qwen2ForCausalLM(llm_config)
    vit_model = O.SiglipVisionModel(vit_config)
    model = O.Bagel(language_model, vit_model, config)
    model.vit_model.vision_model.embeddings.convert_conv2d_to_linear(vit_config)
    return model.float()


def vae_config_json(a):
    return {"resolution": 256, "in_channels": 3, "downsample": VAE_DOWNSAMPLE, "ch": a.vae_ch, "out_ch": 3,
            "ch_mult": list(a.vae_ch_mult), "num_res_blocks": a.vae_res_blocks, "z_channels": LATENT_CHANNEL,
            "scale_factor": 0.3611, "shift_factor": 0.1159}


def build_vae(folder):
    """The official AutoEncoder with the (tiny) parameters of the folder's vae_config.json."""
    with open(os.path.join(folder, "vae_config.json")) as f:
        params = O.AutoEncoderParams(**json.load(f))
    return O.AutoEncoder(params).float().eval()


def random_vae_weights(ae, seed):
    """Random weights for every AutoEncoder state-dict entry (generator seeded with seed + 3), rounded to bf16."""
    g = torch.Generator().manual_seed(seed + 3)
    out = {}
    for name, t in ae.state_dict().items():
        mod = ae.get_submodule(name.rsplit(".", 1)[0])
        shape = tuple(t.shape)
        if isinstance(mod, torch.nn.GroupNorm):
            val = (1.0 + 0.1 * torch.randn(shape, generator=g)) if name.endswith(".weight") else \
                0.02 * torch.randn(shape, generator=g)
        else:
            assert isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)), name
            if name.endswith(".bias"):
                val = 0.02 * torch.randn(shape, generator=g)
            else:
                fan_in = math.prod(shape[1:])  # in_ch * kh * kw
                val = (1.0 / math.sqrt(fan_in)) * torch.randn(shape, generator=g)
        out[name] = to_bf16_and_back(val)
    return out


def tokenizer_json(vocab):
    """A character-level Hugging Face tokenizer for the fixture vocabulary (see tests/data/README.md)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models
    st = special_tokens(vocab)
    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    v = {"<unk>": 0}
    for ch in chars:
        v[ch] = len(v)
    assert len(v) <= st["bos_token_id"], "vocab too small for the character tokenizer"
    for i in range(len(v), st["bos_token_id"]):
        v[f"<|unused_{i}|>"] = i  # never produced: the model has no merges
    names = {"bos_token_id": "<|im_start|>", "eos_token_id": "<|im_end|>", "start_of_image": "<|vision_start|>",
             "end_of_image": "<|vision_end|>"}
    for key in ("bos_token_id", "eos_token_id", "start_of_image", "end_of_image"):
        v[names[key]] = st[key]
    assert sorted(v.values()) == list(range(vocab))
    tok = Tokenizer(models.BPE(vocab=v, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(names[k], special=True, normalized=False)
                            for k in ("bos_token_id", "eos_token_id", "start_of_image", "end_of_image")])
    text = tok.to_str(pretty=True) + "\n"
    check_tokenizer(text, vocab)
    return text


def check_tokenizer(text, vocab):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(text)
    st = special_tokens(vocab)
    for s in ("a red circle", "".join(chr(c) for c in range(32, 127)) + "\nx\n"):
        ids = tok.encode(s).ids
        assert len(ids) == len(s) and all(tok.id_to_token(i) == ch for i, ch in zip(ids, s)), (s, ids)
        assert tok.decode(ids, skip_special_tokens=False) == s, (s, tok.decode(ids))
    s = "<|im_start|>a red circle<|im_end|><|vision_start|><|vision_end|>"
    ids = tok.encode(s).ids
    assert ids == [st["bos_token_id"]] + tok.encode("a red circle").ids + \
        [st["eos_token_id"], st["start_of_image"], st["end_of_image"]], ids
    assert tok.decode(ids, skip_special_tokens=False) == s
    assert tok.decode(ids, skip_special_tokens=True) == "a red circle"
    assert tok.encode("\u00e9").ids == [0]  # not in the vocabulary: <unk>
    assert tok.get_vocab_size(with_added_tokens=True) == vocab


def to_bf16_and_back(t):
    return t.to(torch.bfloat16).to(torch.float32)


def random_weights(model, seed):
    """Random weights for every state-dict entry, rounded to bf16 and back. Returns {name: f32 tensor}."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in model.state_dict().items():
        shape = tuple(t.shape)
        if name.endswith("pos_embed.pos_embed"):
            val = t.detach().clone().float()  # the official fixed 2D sin-cos table (a frozen nn.Parameter)
        elif name.endswith(".bias"):
            val = 0.02 * torch.randn(shape, generator=g)
        elif len(shape) == 1:  # RMSNorm / LayerNorm weights
            val = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("embed_tokens.weight"):
            val = 1.0 * torch.randn(shape, generator=g)
        elif name.endswith("position_embedding.weight"):
            val = 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("lm_head.weight"):
            val = (2.0 / math.sqrt(shape[1])) * torch.randn(shape, generator=g)
        else:
            assert len(shape) == 2, name
            std = min(0.15, max(0.02, 1.0 / math.sqrt(shape[1])))
            val = std * torch.randn(shape, generator=g)
        out[name] = to_bf16_and_back(val)
    return out


# ----------------------------------------------------------------------------------------------------------------
# The cases, run through the official code
# ----------------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def hooks(pairs):
    handles = [m.register_forward_hook(fn) for m, fn in pairs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def run_official(model, fx, inp, ae=None):
    """Runs every case through the official code. inp: the input tensors (cases names). Returns the outputs.
    The vit, und, vae and gen cases run when their inputs are there (ae: the tiny official AutoEncoder)."""
    c = fx["config"]
    st = c["special_tokens"]
    L = c["num_hidden_layers"]
    lm = model.language_model
    tok = FakeTokenizer()
    out = {}

    # ---- text prefill (forward_cache_update_text on prepare_prompts) + greedy decoding (generate_text) ----
    model.eval()
    prompt = inp["meta.text.prompt_ids"].tolist()
    cache = O.NaiveCache(L)
    gi, newlens, new_rope = model.prepare_prompts(
        curr_kvlens=[0], curr_rope=[0], prompts=[prompt], tokenizer=tok, new_token_ids=st)
    got = {}
    layer_hooks = [(lm.model.layers[l], (lambda l: lambda m, a, o: got.__setitem__(l, o[0].detach().clone()))(l))
                   for l in range(L)]
    final_hook = (lm.model, lambda m, a, o: got.__setitem__("final", o.packed_query_sequence.detach().clone()))
    with hooks(layer_hooks + [final_hook]):
        cache = model.forward_cache_update_text(cache, **gi)
    out["text.input_ids"] = gi["packed_text_ids"].clone()
    out["meta.text.position_ids"] = gi["packed_text_position_ids"].clone()
    for l in range(L):
        out[f"text.hidden.{l}"] = got[l]
    out["text.hidden.final"] = got["final"]
    with torch.no_grad():
        out["text.logits"] = lm.lm_head(got["final"])

    k = c["greedy_new_tokens"]
    gi2 = model.prepare_start_tokens(newlens, new_rope, st)
    out["meta.greedy.start_token"] = gi2["packed_start_tokens"].clone()
    out["meta.greedy.start_position"] = gi2["packed_query_position_ids"].clone()
    logits = []
    with hooks([(lm.lm_head, lambda m, a, o: logits.append(o.detach().clone()))]):
        seq = model.generate_text(past_key_values=cache, max_length=k + 1, do_sample=False, temperature=1.0,
                                  end_token_id=None, **gi2)
    # seq[0] is the start token (bos) itself, seq[1..] the k new tokens.
    out["greedy.tokens"] = seq[1:, 0].clone().long()
    out["greedy.logits"] = torch.cat(logits[:k], dim=0)
    assert torch.equal(out["greedy.logits"].argmax(-1), out["greedy.tokens"])

    # ---- velocity: _forward_flow with the prompt prefilled into the cache, CFG off, one image ----
    h, w = [int(x) for x in inp["flow.grid"].tolist()]
    cache = O.NaiveCache(L)
    gi, newlens, new_rope = model.prepare_prompts(
        curr_kvlens=[0], curr_rope=[0], prompts=[inp["meta.flow.prompt_ids_raw"].tolist()], tokenizer=tok,
        new_token_ids=st)
    cache = model.forward_cache_update_text(cache, **gi)
    out["flow.prompt_ids"] = gi["packed_text_ids"].clone()
    out["meta.flow.prompt_position_ids"] = gi["packed_text_position_ids"].clone()
    gv = model.prepare_vae_latent(curr_kvlens=newlens, curr_rope=new_rope,
                                  image_sizes=[(h * LATENT_DOWNSAMPLE, w * LATENT_DOWNSAMPLE)], new_token_ids=st)
    gv.pop("packed_init_noises")
    for key in ("packed_text_ids", "packed_text_indexes", "packed_vae_token_indexes", "packed_vae_position_ids",
                "packed_indexes", "packed_position_ids", "packed_seqlens", "key_values_lens",
                "packed_key_value_indexes"):
        out[f"meta.flow.{key}"] = gv[key].clone().long()
    x_t = inp["flow.x_t"]
    t = float(inp["flow.timestep"][0])
    timestep = torch.tensor([t] * x_t.shape[0])  # as generate_image builds it: one t per latent token
    vae_idx = gv["packed_vae_token_indexes"]
    got = {}
    layer_hooks = [(lm.model.layers[l],
                    (lambda l: lambda m, a, o: got.__setitem__(l, o[0][vae_idx].detach().clone()))(l))
                   for l in range(L)]
    final_hook = (lm.model, lambda m, a, o: got.__setitem__("final", o.packed_query_sequence[vae_idx].clone()))
    lm.model.enable_taylorseer = False
    with hooks(layer_hooks + [final_hook]):
        v = model._forward_flow(x_t=x_t, timestep=timestep, past_key_values=cache, cfg_text_scale=1.0,
                                cfg_img_scale=1.0, **gv)
    out["flow.velocity"] = v.detach().clone()
    for l in range(L):
        out[f"flow.hidden.{l}"] = got[l]
    out["flow.hidden.final"] = got["final"]

    # ---- SRUM training loss: official Bagel.forward on one sample packed by the official PackedDataset ----
    h_l, w_l = [int(x) for x in inp["loss.grid"].tolist()]
    data, split_lens = pack_training_sample(fx, inp["meta.loss.prompt_ids_raw"].tolist(), (h_l, w_l))
    hw = h_l * w_l
    data["packed_timesteps"] = inp["loss.timestep"].repeat(hw)  # one raw (pre-sigmoid) timestep per latent token
    data.pop("padded_images")
    data["padded_latent"] = inp["loss.padded_latent"]  # what vae_model.encode(padded_images) would return
    model.train()
    model.zero_grad(set_to_none=True)
    model.config.visual_und = False
    got = {}
    layer_hooks = [(lm.model.layers[l], (lambda l: lambda m, a, o: got.__setitem__(l, o.detach().clone()))(l))
                   for l in range(L)]
    vae2llm_hook = (model.vae2llm, lambda m, a, o: got.__setitem__("x_t", a[0].detach().clone()))
    llm2vae_hook = (model.llm2vae, lambda m, a, o: got.__setitem__("v", o.detach().clone()))
    time_hook = (model.time_embedder, lambda m, a, o: got.__setitem__("t", a[0].detach().clone()))
    try:
        with hooks(layer_hooks + [vae2llm_hook, llm2vae_hook, time_hook]), fixed_randn_like(inp["loss.noise"]):
            res = model(**data)
    finally:
        model.config.visual_und = True
    mse = res["mse"]
    reward = inp["loss.reward"]
    lam = c["srum_lambda"]
    value = (reward[:, None] * mse).mean() + lam * mse.mean()
    value.backward()
    out["loss.mse"] = mse.detach().clone()
    out["loss.value"] = value.detach().reshape(1).clone()
    out["loss.x0"] = O.data_utils.patchify(inp["loss.padded_latent"][0], LATENT_PATCH_SIZE).clone()
    out["loss.x_t"] = got["x_t"]
    out["loss.t"] = got["t"][:1].clone()
    out["loss.velocity"] = got["v"]
    for l in range(L):
        out[f"loss.hidden.{l}"] = got[l]
    params = dict(model.named_parameters())
    for name in c["loss_grad_names"]:
        p = params[name]
        out[f"loss.grad.{name}"] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
    model.zero_grad(set_to_none=True)
    model.eval()
    # the official fixed 2D sin-cos table before bf16 rounding (the checkpoint holds it rounded)
    out["meta.latent_pos_embed_sincos_f32"] = torch.from_numpy(
        O.get_2d_sincos_pos_embed(c["hidden_size"], c["max_latent_size"])).float()

    for key in ("sample_lens",):
        out[f"meta.loss.{key}"] = torch.tensor(data[key], dtype=torch.long)
    for key in ("packed_text_ids", "packed_text_indexes", "packed_position_ids", "packed_vae_token_indexes",
                "packed_latent_position_ids", "mse_loss_indexes"):
        out[f"meta.loss.{key}"] = data[key].clone().long()
    out["meta.loss.attention_mask"] = data["nested_attention_masks"][0].clone()
    out["meta.loss.split_lens"] = torch.tensor(split_lens, dtype=torch.long)
    if "vit.image" in inp:
        assert ae is not None
        out.update(run_image_cases(model, ae, fx, inp))
    return out


def run_image_cases(model, ae, fx, inp):
    """The vit, und, vae and gen cases through the official code (after the LLM cases; they draw nothing from
    torch's global generator that reaches an output: prepare_vae_latent's draw is replaced by gen.noise)."""
    c = fx["config"]
    st = c["special_tokens"]
    lm = model.language_model
    tok = FakeTokenizer()
    out = {}
    model.eval()
    ae.eval()

    # ---- ViT + connector: the tensors prepare_vit_images builds, through forward_cache_update_vit's calls ----
    image = inp["vit.image"]
    P = c["vit"]["patch_size"]
    H, W = image.shape[1], image.shape[2]
    vit_tokens = O.data_utils.patchify(image, P)
    vit_ids = model.get_flattened_position_ids(H, W, P, max_num_patches_per_side=c["vit_max_num_patch_per_side"])
    n = vit_tokens.shape[0]
    with torch.no_grad():
        feats = model.vit_model(packed_pixel_values=vit_tokens, packed_flattened_position_ids=vit_ids,
                                cu_seqlens=torch.tensor([0, n], dtype=torch.int32), max_seqlen=n)
        conn = model.connector(feats)
        emb = conn + model.vit_pos_embed(vit_ids)
    out["meta.vit.tokens"] = vit_tokens.clone()
    out["meta.vit.position_ids"] = vit_ids.clone().long()
    out["vit.features"] = feats.detach().clone()
    out["vit.connector"] = conn.detach().clone()
    out["vit.embed"] = emb.detach().clone()

    # ---- understanding: interleave_inference([image, question], understanding_output=True, think=True) ----
    inf = O.InterleaveInferencer(model=model, vae_model=ae, tokenizer=tok, vae_transform=None,
                                 vit_transform=lambda img: image, new_token_ids=st)
    ctx = inf.init_gen_context()
    ctx = inf.update_context_text(inp["meta.und.system_ids_raw"].tolist(), ctx)  # the (think) system prompt
    got = {}
    final_hook = (lm.model, lambda m, a, o: got.__setitem__("final", o.packed_query_sequence.detach().clone()))
    with hooks([final_hook]):
        ctx = inf.update_context_image(image, ctx, vae=False, vit=True)  # vae = not understanding_output
    out["und.image_hidden.final"] = got["final"]
    ctx = inf.update_context_text(inp["meta.und.question_ids_raw"].tolist(), ctx)
    k = c["greedy_new_tokens"]
    gi = model.prepare_start_tokens(ctx["kv_lens"], ctx["ropes"], st)
    out["meta.und.start_position"] = gi["packed_query_position_ids"].clone()
    logits = []
    with hooks([(lm.lm_head, lambda m, a, o: logits.append(o.detach().clone()))]):
        seq = model.generate_text(past_key_values=ctx["past_key_values"], max_length=k + 1, do_sample=False,
                                  temperature=1.0, end_token_id=None, **gi)
    out["und.tokens"] = seq[1:, 0].clone().long()
    out["und.logits"] = torch.cat(logits[:k], dim=0)
    assert torch.equal(out["und.logits"].argmax(-1), out["und.tokens"])

    # ---- VAE: the tiny official AutoEncoder ----
    x = inp["vae.image"]
    with torch.no_grad():
        out["vae.moments"] = ae.encoder(x).clone()
        ae.reg.sample = False
        try:
            out["vae.latent"] = ae.encode(x).clone()
        finally:
            ae.reg.sample = True
        with fixed_randn_like_ae(inp["meta.vae.sample_noise"]):
            out["vae.latent_sample"] = ae.encode(x).clone()
        out["vae.decoded"] = ae.decode(out["vae.latent"]).clone()

    # ---- text-to-image with CFG: interleave_inference([prompt], think=False) -> gen_image -> generate_image ----
    g = c["gen"]
    h, w = [int(v) for v in inp["flow.grid"].tolist()]
    image_shape = (h * LATENT_DOWNSAMPLE, w * LATENT_DOWNSAMPLE)
    gen_ctx = inf.init_gen_context()
    cfg_text_ctx = copy.deepcopy(gen_ctx)
    cfg_img_ctx = copy.deepcopy(gen_ctx)
    prompt = inp["meta.gen.prompt_ids_raw"].tolist()
    cfg_text_ctx = copy.deepcopy(gen_ctx)  # a text input: the text-CFG context is the context before it (empty)
    gen_ctx = inf.update_context_text(prompt, gen_ctx)
    cfg_img_ctx = inf.update_context_text(prompt, cfg_img_ctx)
    noise = inp["gen.noise"]
    rec = {"v": [], "t": []}

    def prepare_vae_latent(orig):
        def f(*a, **kw):
            gi = orig(*a, **kw)
            assert gi["packed_init_noises"].shape == noise.shape, gi["packed_init_noises"].shape
            gi["packed_init_noises"] = noise.clone()
            return gi
        return f

    def recorder(key):
        def make(orig):
            def f(*a, **kw):
                r = orig(*a, **kw)
                rec.setdefault(key, r)
                return r
            return f
        return make

    def forward_flow(orig):
        def f(*a, **kw):
            v = orig(*a, **kw)
            rec["v"].append(v.detach().clone())
            rec["t"].append(kw["timestep"][0].clone())
            return v
        return f

    with wrapped_methods(model, prepare_vae_latent=prepare_vae_latent, generate_image=recorder("latent"),
                         _forward_flow=forward_flow), wrapped_methods(ae, decode=recorder("decoded")):
        inf.gen_image(image_shape, gen_ctx, cfg_text_scale=g["cfg_text_scale"], cfg_img_scale=g["cfg_img_scale"],
                      cfg_text_precontext=cfg_text_ctx, cfg_img_precontext=cfg_img_ctx,
                      cfg_interval=g["cfg_interval"], cfg_renorm_min=g["cfg_renorm_min"],
                      cfg_renorm_type=g["cfg_renorm_type"], num_timesteps=g["num_timesteps"],
                      timestep_shift=g["timestep_shift"], enable_taylorseer=False)
    assert len(rec["v"]) == g["num_timesteps"] - 1
    out["gen.latent"] = rec["latent"][0].clone()
    out["gen.velocity.0"] = rec["v"][0]
    out["meta.gen.timesteps"] = torch.stack(rec["t"]).float()
    out["gen.decoded"] = rec["decoded"].clone()
    return out


def pack_training_sample(fx, prompt_ids, grid):
    """One T2I sample packed by the official PackedDataset.pack_sequence / to_tensor / SimpleCustomBatch."""
    c = fx["config"]
    st = c["special_tokens"]
    h, w = grid
    data_config = O.DataConfig(
        grouped_datasets={}, text_cond_dropout_prob=0.0, vit_cond_dropout_prob=0.0, vae_cond_dropout_prob=0.0,
        vae_image_downsample=LATENT_DOWNSAMPLE, max_latent_size=c["max_latent_size"],
        vit_patch_size=c["vit"]["patch_size"], max_num_patch_per_side=c["vit_max_num_patch_per_side"])
    ds = types.SimpleNamespace(use_flex=False, data_config=data_config,
                               get_flattened_position_ids=O.data_utils.get_flattened_position_ids_extrapolate,
                               **st)
    # The sequence plan of data/t2i_dataset.py: the prompt (no loss, cfg-droppable; dropout set to 0 here), then
    # the image to denoise (loss 1). Only the image tensor's shape is used (the VAE is bypassed).
    sample = {
        "image_tensor_list": [torch.zeros(3, h * LATENT_DOWNSAMPLE, w * LATENT_DOWNSAMPLE)],
        "text_ids_list": [list(prompt_ids)],
        "sequence_plan": [
            {"type": "text", "enable_cfg": 1, "loss": 0, "special_token_loss": 0, "special_token_label": None},
            {"type": "vae_image", "enable_cfg": 0, "loss": 1, "special_token_loss": 0, "special_token_label": None},
        ],
    }
    status = O.PackedDataset.set_sequence_status(ds)
    status = O.PackedDataset.pack_sequence(ds, sample, status)
    data = O.PackedDataset.to_tensor(ds, status)
    data["batch_data_indexes"] = []
    data = O.SimpleCustomBatch([data]).to_dict()
    data.pop("batch_data_indexes")
    split_lens = [len(prompt_ids) + 2, h * w + 2]
    expect = O.data_utils.prepare_attention_mask_per_sample(split_lens, ["causal", "noise"])
    assert torch.equal(data["nested_attention_masks"][0], expect)
    return data, split_lens


# ----------------------------------------------------------------------------------------------------------------
# An independent implementation of the documented semantics (plain tensors, no official code), as a check on
# tests/data/README.md: what the Rust port implements from that text must give the official numbers.
# ----------------------------------------------------------------------------------------------------------------

class Spec:
    def __init__(self, W, fx):
        self.W = W
        c = fx["config"]
        self.c = c
        self.L = c["num_hidden_layers"]
        self.H = c["num_attention_heads"]
        self.Hkv = c["num_key_value_heads"]
        self.D = c["hidden_size"] // self.H
        self.eps = c["rms_norm_eps"]
        self.theta = c["rope_theta"]

    def rms(self, x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def lin(self, x, name, bias):
        y = x @ self.W[name + ".weight"].T
        return y + self.W[name + ".bias"] if bias else y

    def by_expert(self, gen, f_und, f_gen):
        """Per token: f_gen where gen is true, f_und elsewhere (both evaluated, then selected)."""
        a, b = f_und(), f_gen()
        return torch.where(gen.view(-1, *([1] * (a.dim() - 1))), b, a)

    def rope(self, x, pos):
        inv = 1.0 / (self.theta ** (torch.arange(0, self.D, 2, dtype=torch.float32) / self.D))
        f = pos.float()[:, None] * inv[None, :]
        emb = torch.cat([f, f], dim=-1)
        cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]
        x1, x2 = x[..., : self.D // 2], x[..., self.D // 2:]
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    def time_embed(self, t):
        half = TIME_FREQ_DIM // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None] * freqs[None]
        e = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        e = F.silu(self.lin(e, "time_embedder.mlp.0", True))
        return self.lin(e, "time_embedder.mlp.2", True)

    def forward(self, x, pos, gen, allowed, collect=None):
        """x [N, hidden] input embeddings, pos [N] RoPE positions, gen [N] bool (generation expert),
        allowed [N, N] bool (row attends to column). Returns the final normed hidden states."""
        N = x.shape[0]
        g = self.H // self.Hkv
        for l in range(self.L):
            p = f"language_model.model.layers.{l}."
            a = p + "self_attn."
            hn = self.by_expert(gen, lambda: self.rms(x, self.W[p + "input_layernorm.weight"]),
                                lambda: self.rms(x, self.W[p + "input_layernorm_moe_gen.weight"]))

            def proj(kind, heads):
                def one(sfx):
                    y = self.lin(hn, a + f"{kind}_proj{sfx}", True).view(N, heads, self.D)
                    if kind in ("q", "k"):
                        y = self.rms(y, self.W[a + f"{kind}_norm{sfx}.weight"])
                    return y
                return self.by_expert(gen, lambda: one(""), lambda: one("_moe_gen"))

            q = self.rope(proj("q", self.H), pos)
            k = self.rope(proj("k", self.Hkv), pos)
            v = proj("v", self.Hkv)
            k = k.repeat_interleave(g, dim=1)
            v = v.repeat_interleave(g, dim=1)
            s = torch.einsum("nhd,mhd->hnm", q, k) / math.sqrt(self.D)
            s = s.masked_fill(~allowed[None], float("-inf"))
            o = torch.einsum("hnm,mhd->nhd", torch.softmax(s, dim=-1), v).reshape(N, self.H * self.D)
            o = self.by_expert(gen, lambda: self.lin(o, a + "o_proj", False),
                               lambda: self.lin(o, a + "o_proj_moe_gen", False))
            x = x + o

            def mlp(sfx, norm):
                hh = self.rms(x, self.W[p + norm + ".weight"])
                m = p + "mlp" + sfx + "."
                return self.lin(F.silu(self.lin(hh, m + "gate_proj", False)) * self.lin(hh, m + "up_proj", False),
                                m + "down_proj", False)

            x = x + self.by_expert(gen, lambda: mlp("", "post_attention_layernorm"),
                                   lambda: mlp("_moe_gen", "post_attention_layernorm_moe_gen"))
            if collect is not None:
                collect.append(x)
        return self.by_expert(gen, lambda: self.rms(x, self.W["language_model.model.norm.weight"]),
                              lambda: self.rms(x, self.W["language_model.model.norm_moe_gen.weight"]))

    def embed(self, ids):
        return self.W["language_model.model.embed_tokens.weight"][ids]

    def image_sequence(self, prompt_packed, x_t, t, grid):
        """[prompt (causal)] + [soi, h*w latent tokens, eoi] (full within the image split, sees the prompt)."""
        st = self.c["special_tokens"]
        h, w = grid
        n, hw = len(prompt_packed), h * w
        N = n + hw + 2
        ids = torch.tensor(list(prompt_packed) + [st["start_of_image"]] + [0] * hw + [st["end_of_image"]])
        x = self.embed(ids)
        rows = torch.arange(h).repeat_interleave(w)
        cols = torch.arange(w).repeat(h)
        pos_ids = rows * self.c["max_latent_size"] + cols
        lat = (self.lin(x_t, "vae2llm", True) + self.time_embed(t.expand(hw))
               + self.W["latent_pos_embed.pos_embed"][pos_ids])
        x = torch.cat([x[: n + 1], lat, x[n + 1 + hw:]], dim=0)
        pos = torch.tensor(list(range(n)) + [n] * (hw + 2))
        gen = torch.zeros(N, dtype=torch.bool)
        gen[n + 1: n + 1 + hw] = True
        allowed = torch.zeros(N, N, dtype=torch.bool)
        allowed[:n, :n] = torch.ones(n, n, dtype=torch.bool).tril()
        allowed[n:, :] = True
        return x, pos, gen, allowed, slice(n + 1, n + 1 + hw)


def spec_check(W, fx, cases, Wv=None):
    """Recomputes the stored outputs from the documented semantics; returns {name: max abs diff}."""
    s = Spec(W, fx)
    c = fx["config"]
    st = c["special_tokens"]
    diffs = {}

    def cmp(name, val):
        diffs[name] = (val.detach() - cases[name]).abs().max().item()

    with torch.no_grad():
        ids = cases["text.input_ids"]
        n = len(ids)
        col = []
        fin = s.forward(s.embed(ids), torch.arange(n), torch.zeros(n, dtype=torch.bool),
                        torch.ones(n, n, dtype=torch.bool).tril(), col)
        for l in range(s.L):
            cmp(f"text.hidden.{l}", col[l])
        cmp("text.hidden.final", fin)
        cmp("text.logits", s.lin(fin, "language_model.lm_head", False))
        # greedy: the prompt, then bos at position n, then each new token, all causal (understanding expert)
        toks = cases["greedy.tokens"].tolist()
        seq = torch.tensor(ids.tolist() + [st["bos_token_id"]] + toks[:-1])
        N = len(seq)
        fin = s.forward(s.embed(seq), torch.arange(N), torch.zeros(N, dtype=torch.bool),
                        torch.ones(N, N, dtype=torch.bool).tril())
        lg = s.lin(fin[n:], "language_model.lm_head", False)
        cmp("greedy.logits", lg)
        diffs["greedy.tokens(mismatches)"] = float((lg.argmax(-1) != cases["greedy.tokens"]).sum().item())
        # velocity
        grid = [int(v) for v in cases["flow.grid"].tolist()]
        x, pos, gen, allowed, sl = s.image_sequence(cases["flow.prompt_ids"].tolist(), cases["flow.x_t"],
                                                    cases["flow.timestep"], grid)
        col = []
        fin = s.forward(x, pos, gen, allowed, col)
        for l in range(s.L):
            cmp(f"flow.hidden.{l}", col[l][sl])
        cmp("flow.hidden.final", fin[sl])
        cmp("flow.velocity", s.lin(fin[sl], "llm2vae", True))
        if "vit.image" in cases:
            spec_check_images(W, Wv, fx, cases, cmp, diffs)

    # training loss and its gradients
    Wg = {k: v.clone().requires_grad_(True) for k, v in W.items()}
    s = Spec(Wg, fx)
    shift = c["timestep_shift"]
    t = torch.sigmoid(cases["loss.timestep"])
    t = shift * t / (1 + (shift - 1) * t)
    cmp("loss.t", t)
    h, w = [int(v) for v in cases["loss.grid"].tolist()]
    lat = cases["loss.padded_latent"][0][:, : 2 * h, : 2 * w]
    x0 = lat.reshape(LATENT_CHANNEL, h, 2, w, 2).permute(1, 3, 2, 4, 0).reshape(h * w, PATCH_DIM)
    cmp("loss.x0", x0)
    noise = cases["loss.noise"]
    x_t = (1 - t) * x0 + t * noise
    cmp("loss.x_t", x_t)
    text = [st["bos_token_id"]] + cases["meta.loss.prompt_ids_raw"].tolist() + [st["eos_token_id"]]
    x, pos, gen, allowed, sl = s.image_sequence(text, x_t, t, (h, w))
    # the official training mask: additionally, no token outside the noisy image split sees it
    allowed[:, sl.start - 1: sl.stop + 1] = False
    allowed[sl.start - 1: sl.stop + 1, sl.start - 1: sl.stop + 1] = True
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    diffs["meta.loss.attention_mask(mismatches)"] = float((mask != cases["meta.loss.attention_mask"]).sum().item())
    col = []
    fin = s.forward(x, pos, gen, allowed, col)
    for l in range(s.L):
        cmp(f"loss.hidden.{l}", col[l])
    v = s.lin(fin[sl], "llm2vae", True)
    cmp("loss.velocity", v)
    mse = (v - (noise - x0)) ** 2
    cmp("loss.mse", mse)
    value = (cases["loss.reward"][:, None] * mse).mean() + c["srum_lambda"] * mse.mean()
    cmp("loss.value", value.reshape(1))
    value.backward()
    for name in c["loss_grad_names"]:
        gr = Wg[name].grad
        cmp(f"loss.grad.{name}", gr if gr is not None else torch.zeros_like(Wg[name]))
    return diffs


def spec_vit(W, c, tokens, ids):
    """SigLIP (no RoPE): patch Linear + position embedding, pre-LN layers (full attention), post LayerNorm."""
    v = c["vit"]
    D, Hh = v["hidden_size"], v["num_attention_heads"]
    hd = D // Hh
    p = "vit_model.vision_model."

    def lin(x, name):
        return x @ W[name + ".weight"].T + W[name + ".bias"]

    def ln(x, name):
        return F.layer_norm(x, (D,), W[name + ".weight"], W[name + ".bias"], eps=1e-6)

    def gelu(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))

    x = lin(tokens, p + "embeddings.patch_embedding") + W[p + "embeddings.position_embedding.weight"][ids]
    n = x.shape[0]
    for l in range(v["num_hidden_layers_built"]):
        q = p + f"encoder.layers.{l}."
        hh = ln(x, q + "layer_norm1")
        qs, ks, vs = (lin(hh, q + f"self_attn.{k}_proj").view(n, Hh, hd) for k in "qkv")
        att = torch.softmax(torch.einsum("nhd,mhd->hnm", qs, ks) / math.sqrt(hd), dim=-1)
        x = x + lin(torch.einsum("hnm,mhd->nhd", att, vs).reshape(n, D), q + "self_attn.out_proj")
        x = x + lin(gelu(lin(ln(x, q + "layer_norm2"), q + "mlp.fc1")), q + "mlp.fc2")
    feats = ln(x, p + "post_layernorm")
    conn = lin(gelu(lin(feats, "connector.fc1")), "connector.fc2")
    return feats, conn, conn + W["vit_pos_embed.pos_embed"][ids]


class SpecVae:
    """The AutoEncoder of modeling/autoencoder.py in plain torch ops (vae_config in fixture.json)."""

    def __init__(self, Wv, vc):
        self.W, self.vc = Wv, vc

    def conv(self, x, name, stride=1, pad=None):
        w = self.W[name + ".weight"]
        k = w.shape[-1]
        return F.conv2d(x, w, self.W[name + ".bias"], stride=stride, padding=(k // 2) if pad is None else pad)

    def gn(self, x, name):
        return F.group_norm(x, 32, self.W[name + ".weight"], self.W[name + ".bias"], eps=1e-6)

    @staticmethod
    def swish(x):
        return x * torch.sigmoid(x)

    def res(self, x, p):
        h = self.conv(self.swish(self.gn(x, p + "norm1")), p + "conv1")
        h = self.conv(self.swish(self.gn(h, p + "norm2")), p + "conv2")
        if p + "nin_shortcut.weight" in self.W:
            x = self.conv(x, p + "nin_shortcut")
        return x + h

    def attn(self, x, p):
        b, ch, hh, ww = x.shape
        h = self.gn(x, p + "norm")
        q, k, v = (self.conv(h, p + n).reshape(b, ch, hh * ww).transpose(1, 2) for n in "qkv")
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(ch), dim=-1) @ v
        return x + self.conv(a.transpose(1, 2).reshape(b, ch, hh, ww), p + "proj_out")

    def mid(self, x, p):
        return self.res(self.attn(self.res(x, p + "mid.block_1."), p + "mid.attn_1."), p + "mid.block_2.")

    def encoder(self, x):
        levels, nrb = len(self.vc["ch_mult"]), self.vc["num_res_blocks"]
        h = self.conv(x, "encoder.conv_in")
        for i in range(levels):
            for b in range(nrb):
                h = self.res(h, f"encoder.down.{i}.block.{b}.")
            if i != levels - 1:  # pad right and bottom by one, 3x3 stride 2, no padding
                h = self.conv(F.pad(h, (0, 1, 0, 1)), f"encoder.down.{i}.downsample.conv", stride=2, pad=0)
        h = self.mid(h, "encoder.")
        return self.conv(self.swish(self.gn(h, "encoder.norm_out")), "encoder.conv_out")

    def decoder(self, z):
        levels, nrb = len(self.vc["ch_mult"]), self.vc["num_res_blocks"]
        h = self.mid(self.conv(z, "decoder.conv_in"), "decoder.")
        for i in reversed(range(levels)):
            for b in range(nrb + 1):
                h = self.res(h, f"decoder.up.{i}.block.{b}.")
            if i != 0:
                h = self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), f"decoder.up.{i}.upsample.conv")
        return self.conv(self.swish(self.gn(h, "decoder.norm_out")), "decoder.conv_out")

    def decode(self, z):
        return self.decoder(z / self.vc["scale_factor"] + self.vc["shift_factor"])


def spec_check_images(W, Wv, fx, cases, cmp, diffs):
    """The vit, und, vae and gen cases from the documented semantics."""
    s = Spec(W, fx)
    c = fx["config"]
    st = c["special_tokens"]
    P = c["vit"]["patch_size"]
    img = cases["vit.image"]
    gh, gw = img.shape[1] // P, img.shape[2] // P
    tokens = img.reshape(3, gh, P, gw, P).permute(1, 3, 2, 4, 0).reshape(gh * gw, P * P * 3)
    cmp("meta.vit.tokens", tokens)
    ids = (torch.arange(gh)[:, None] * c["vit_max_num_patch_per_side"] + torch.arange(gw)[None, :]).flatten()
    diffs["meta.vit.position_ids(mismatches)"] = float((ids != cases["meta.vit.position_ids"]).sum().item())
    feats, conn, emb = spec_vit(W, c, tokens, ids)
    cmp("vit.features", feats)
    cmp("vit.connector", conn)
    cmp("vit.embed", emb)

    # und: [bos sys eos] causal at 0..ns-1; [soi, n vit, eoi] full, all at position ns; [bos q eos] causal from
    # ns+1; then decoding from bos (all und, causal over everything before)
    n = gh * gw
    sys_ids = [st["bos_token_id"]] + cases["meta.und.system_ids_raw"].tolist() + [st["eos_token_id"]]
    q_ids = [st["bos_token_id"]] + cases["meta.und.question_ids_raw"].tolist() + [st["eos_token_id"]]
    toks = cases["und.tokens"].tolist()
    dec = [st["bos_token_id"]] + toks[:-1]
    ns, nq = len(sys_ids), len(q_ids)
    x = torch.cat([s.embed(torch.tensor(sys_ids)), s.embed(torch.tensor([st["start_of_image"]])), emb,
                   s.embed(torch.tensor([st["end_of_image"]])), s.embed(torch.tensor(q_ids + dec))])
    N = x.shape[0]
    pos = torch.tensor(list(range(ns)) + [ns] * (n + 2) + list(range(ns + 1, ns + 1 + nq + len(dec))))
    allowed = torch.ones(N, N, dtype=torch.bool).tril()
    allowed[ns: ns + n + 2, ns: ns + n + 2] = True
    fin = s.forward(x, pos, torch.zeros(N, dtype=torch.bool), allowed)
    cmp("und.image_hidden.final", fin[ns: ns + n + 2])
    lg = s.lin(fin[ns + n + 2 + nq:], "language_model.lm_head", False)
    cmp("und.logits", lg)
    diffs["und.tokens(mismatches)"] = float((lg.argmax(-1) != cases["und.tokens"]).sum().item())
    diffs["meta.und.start_position(mismatches)"] = float(cases["meta.und.start_position"].item() != ns + 1 + nq)

    # vae
    vc = c["vae"]
    vae = SpecVae(Wv, vc)
    mom = vae.encoder(cases["vae.image"])
    cmp("vae.moments", mom)
    mean, logvar = mom.chunk(2, dim=1)
    cmp("vae.latent", vc["scale_factor"] * (mean - vc["shift_factor"]))
    z = mean + torch.exp(0.5 * logvar) * cases["meta.vae.sample_noise"]
    cmp("vae.latent_sample", vc["scale_factor"] * (z - vc["shift_factor"]))
    cmp("vae.decoded", vae.decode(cases["vae.latent"]))

    # gen: Euler from t = 1 to 0 on the shifted schedule; CFG against the empty context inside the interval
    g = c["gen"]
    h, w = [int(v) for v in cases["flow.grid"].tolist()]
    prompt = [st["bos_token_id"]] + cases["meta.gen.prompt_ids_raw"].tolist() + [st["eos_token_id"]]
    S, sh = g["num_timesteps"], g["timestep_shift"]
    ts = torch.linspace(1, 0, S)
    ts = sh * ts / (1 + (sh - 1) * ts)
    dts = ts[:-1] - ts[1:]
    cmp("meta.gen.timesteps", ts[:-1])
    x_t = cases["gen.noise"]

    def velocity(prefix, x_t, t):
        x, pos, gen, allowed, sl = s.image_sequence(prefix, x_t, t.reshape(1), (h, w))
        return s.lin(s.forward(x, pos, gen, allowed)[sl], "llm2vae", True)

    for i in range(S - 1):
        t = ts[i]
        v = velocity(prompt, x_t, t)
        lo, hi = g["cfg_interval"]
        if g["cfg_text_scale"] > 1.0 and lo < t <= hi:
            vu = velocity([], x_t, t)
            v_ = vu + g["cfg_text_scale"] * (v - vu)
            v = v_ * (torch.norm(v) / (torch.norm(v_) + 1e-8)).clamp(min=g["cfg_renorm_min"], max=1.0)
        if i == 0:
            cmp("gen.velocity.0", v)
        x_t = x_t - v * dts[i]
    cmp("gen.latent", x_t)
    lat = x_t.reshape(1, h, w, 2, 2, LATENT_CHANNEL).permute(0, 5, 1, 3, 2, 4).reshape(1, LATENT_CHANNEL, 2 * h, 2 * w)
    cmp("gen.decoded", vae.decode(lat))


# ----------------------------------------------------------------------------------------------------------------
# Generation and verification
# ----------------------------------------------------------------------------------------------------------------

def draw_inputs(a):
    g = torch.Generator().manual_seed(a.seed + 1)
    n_ordinary = a.vocab - 4  # the last four ids are the special tokens

    def prompt(n):
        return torch.randint(0, n_ordinary, (n,), generator=g, dtype=torch.long)

    inp = {
        "meta.text.prompt_ids": prompt(a.prompt_len),
        "meta.flow.prompt_ids_raw": prompt(a.flow_prompt_len or a.prompt_len),
        "meta.loss.prompt_ids_raw": prompt(a.loss_prompt_len or a.prompt_len),
        "flow.grid": torch.tensor([a.latent_h, a.latent_w], dtype=torch.long),
        "loss.grid": torch.tensor([a.loss_latent_h or a.latent_h, a.loss_latent_w or a.latent_w], dtype=torch.long),
    }
    hw = a.latent_h * a.latent_w
    inp["flow.x_t"] = torch.randn(hw, PATCH_DIM, generator=g)
    inp["flow.timestep"] = torch.tensor([a.flow_t], dtype=torch.float32)
    hl, wl = inp["loss.grid"].tolist()
    inp["loss.padded_latent"] = torch.randn(1, LATENT_CHANNEL, hl * LATENT_PATCH_SIZE, wl * LATENT_PATCH_SIZE,
                                            generator=g)
    inp["loss.noise"] = torch.randn(hl * wl, PATCH_DIM, generator=g)
    # like the official pack_sequence: a standard-normal draw; the forward takes sigmoid, then the shift
    inp["loss.timestep"] = torch.randn(1, generator=g) if a.loss_timestep is None else \
        torch.tensor([a.loss_timestep], dtype=torch.float32)
    inp["loss.reward"] = torch.rand(hl * wl, generator=g)
    return inp


def draw_image_inputs(a):
    """The inputs of the vit, und, vae and gen cases, from a generator seeded with seed + 2 (so every earlier
    input, drawn from seed + 1, is unchanged)."""
    g = torch.Generator().manual_seed(a.seed + 2)
    n_ordinary = a.vocab - 4

    def prompt(n):
        return torch.randint(0, n_ordinary, (n,), generator=g, dtype=torch.long)

    P = a.vit_patch
    h, w = a.latent_h, a.latent_w
    inp = {}
    inp["vit.image"] = 2.0 * torch.rand(3, a.vit_grid_h * P, a.vit_grid_w * P, generator=g) - 1.0
    inp["meta.und.system_ids_raw"] = prompt(a.und_system_len)
    inp["meta.und.question_ids_raw"] = prompt(a.und_question_len)
    inp["vae.image"] = 2.0 * torch.rand(1, 3, h * LATENT_DOWNSAMPLE, w * LATENT_DOWNSAMPLE, generator=g) - 1.0
    inp["meta.vae.sample_noise"] = torch.randn(1, LATENT_CHANNEL, h * LATENT_PATCH_SIZE, w * LATENT_PATCH_SIZE,
                                               generator=g)
    inp["meta.gen.prompt_ids_raw"] = prompt(a.gen_prompt_len)
    inp["gen.noise"] = torch.randn(h * w, PATCH_DIM, generator=g)
    return inp


IMAGE_INPUT_NAMES = ["vit.image", "meta.und.system_ids_raw", "meta.und.question_ids_raw", "vae.image",
                     "meta.vae.sample_noise", "meta.gen.prompt_ids_raw", "gen.noise"]


INPUT_NAMES = ["meta.text.prompt_ids", "meta.flow.prompt_ids_raw", "meta.loss.prompt_ids_raw", "flow.grid",
               "loss.grid", "flow.x_t", "flow.timestep", "loss.padded_latent", "loss.noise", "loss.timestep",
               "loss.reward"]


SAFETENSORS_DTYPES = {torch.float32: ("F32", torch.int32), torch.int64: ("I64", torch.int64),
                      torch.bfloat16: ("BF16", torch.int16)}


def save_safetensors(path, tensors, metadata):
    """A safetensors file with a deterministic layout (header keys and data sorted by name), so a regenerated
    folder is byte-identical (safetensors' own writer may order the header differently from run to run)."""
    import struct
    assert sys.byteorder == "little"
    header = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        code, as_int = SAFETENSORS_DTYPES[t.dtype]
        blob = t.view(as_int).numpy().tobytes()  # little-endian (asserted below), as safetensors requires
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for blob in blobs:
            f.write(blob)


def load_weights_f32(path):
    from safetensors.torch import load_file
    sd = load_file(path)
    bad = [k for k, v in sd.items() if v.dtype != torch.bfloat16]
    assert not bad, f"not bf16: {bad}"
    return {k: v.float() for k, v in sd.items()}


def load_vae(folder):
    ae = build_vae(folder)
    Wv = load_weights_f32(os.path.join(folder, "ae.safetensors"))
    ae.load_state_dict(Wv, strict=True)
    sd = ae.state_dict()
    assert sd.keys() == Wv.keys() and all(torch.equal(sd[k], Wv[k]) for k in Wv)
    return ae.eval()


def verify(folder, tol_official=0.0, tol_spec=1e-5):
    from safetensors.torch import load_file
    with open(os.path.join(folder, "fixture.json")) as f:
        fx = json.load(f)
    cases = load_file(os.path.join(folder, "cases.safetensors"))
    W = load_weights_f32(os.path.join(folder, "ema.safetensors"))
    model = build_model(folder, fx)
    missing, unexpected = model.load_state_dict(W, strict=True)
    model.eval()
    sd = model.state_dict()
    for k, v in W.items():
        assert torch.equal(sd[k], v), k
    input_names = list(INPUT_NAMES)
    ae = Wv = None
    if "vit.image" in cases:  # a folder with the image cases
        input_names += IMAGE_INPUT_NAMES
        ae = load_vae(folder)
        Wv = load_weights_f32(os.path.join(folder, "ae.safetensors"))
        with open(os.path.join(folder, "tokenizer.json")) as f:
            check_tokenizer(f.read(), fx["config"]["vocab_size"])
    inp = {k: cases[k] for k in input_names}
    torch.manual_seed(fx["seed"])
    out = run_official(model, fx, inp, ae)
    worst_official = 0.0
    for k, v in out.items():
        ref = cases[k]
        assert ref.dtype == v.dtype and ref.shape == v.shape, (k, ref.dtype, v.dtype, ref.shape, v.shape)
        if torch.equal(v, ref):
            d = 0.0
        else:
            same_inf = torch.isinf(v) & (v == ref)
            d = torch.where(same_inf, 0.0, (v.double() - ref.double()).abs()).max().item()
        worst_official = max(worst_official, d)
        assert d <= tol_official, f"official rerun differs on {k}: {d}"
    missing_outputs = sorted(set(cases) - set(out) - set(input_names))
    assert not missing_outputs, missing_outputs
    diffs = spec_check(W, fx, cases, Wv)
    for k, d in diffs.items():
        if k.endswith("(mismatches)"):
            assert d == 0, (k, d)
        else:
            scale = cases[k].abs().max().item()  # relative to the tensor's largest magnitude
            assert d <= tol_spec * scale, f"independent implementation differs on {k}: {d} (scale {scale})"
            diffs[k] = d / scale if scale > 0 else 0.0
    worst_spec = max(d for k, d in diffs.items() if not k.endswith("(mismatches)"))
    print(f"verified {folder}: official rerun from the saved files max |diff| = {worst_official:.3g}; "
          f"independent implementation max |diff| / max|ref| = {worst_spec:.3g} over {len(diffs)} tensors")
    return fx, cases


def flow_velocity(model, fx, prompt_raw, grid, x_t, t):
    """The flow case's computation: prefill [bos] + prompt + [eos], then _forward_flow (CFG off) at timestep t."""
    c = fx["config"]
    st = c["special_tokens"]
    h, w = grid
    cache = O.NaiveCache(c["num_hidden_layers"])
    gi, newlens, new_rope = model.prepare_prompts(
        curr_kvlens=[0], curr_rope=[0], prompts=[list(prompt_raw)], tokenizer=FakeTokenizer(), new_token_ids=st)
    cache = model.forward_cache_update_text(cache, **gi)
    gv = model.prepare_vae_latent(curr_kvlens=newlens, curr_rope=new_rope,
                                  image_sizes=[(h * LATENT_DOWNSAMPLE, w * LATENT_DOWNSAMPLE)], new_token_ids=st)
    gv.pop("packed_init_noises")
    timestep = torch.tensor([float(t)] * x_t.shape[0])
    model.language_model.model.enable_taylorseer = False
    return model._forward_flow(x_t=x_t, timestep=timestep, past_key_values=cache, cfg_text_scale=1.0,
                               cfg_img_scale=1.0, **gv)


def check_export(folder):
    """--check-export: the official velocity from a Rust export against the velocity the port computed.
    Returns the exit status (0 pass, 1 fail)."""
    from safetensors.torch import load_file
    with open(os.path.join(folder, "config.json")) as f:
        cj = json.load(f)
    with open(os.path.join(folder, "llm_config.json")) as f:
        lj = json.load(f)
    assert cj.get("visual_gen", True) and cj.get("visual_und", True), "the export must have both experts"
    assert not cj.get("interpolate_pos", False), "interpolate_pos true is not supported"
    assert cj.get("latent_patch_size", LATENT_PATCH_SIZE) == LATENT_PATCH_SIZE
    keys = ("bos_token_id", "eos_token_id", "start_of_image", "end_of_image")
    missing = [k for k in keys if k not in cj]
    if missing:  # as the official add_special_tokens does: the ids the tokenizer gives these tokens
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        names = {"bos_token_id": "<|im_start|>", "eos_token_id": "<|im_end|>",
                 "start_of_image": "<|vision_start|>", "end_of_image": "<|vision_end|>"}
        for k in missing:
            cj[k] = tok.token_to_id(names[k])
            assert cj[k] is not None, f"neither config.json nor tokenizer.json has {names[k]}"
    fx = {"config": {
        "latent_patch_size": cj.get("latent_patch_size", LATENT_PATCH_SIZE), "max_latent_size": cj["max_latent_size"],
        "vit_max_num_patch_per_side": cj["vit_max_num_patch_per_side"],
        "connector_act": cj.get("connector_act", "gelu_pytorch_tanh"), "timestep_shift": cj.get("timestep_shift", 1.0),
        "num_hidden_layers": lj["num_hidden_layers"], "special_tokens": {k: int(cj[k]) for k in keys}}}
    model = build_model(folder, fx)
    W = load_weights_f32(os.path.join(folder, "ema.safetensors"))  # asserts every tensor is bf16
    want = set(model.state_dict())
    lacking, extra = sorted(want - set(W)), sorted(set(W) - want)
    assert not lacking and not extra, f"ema.safetensors: missing {lacking[:8]}, unexpected {extra[:8]}"
    model.load_state_dict(W, strict=True)
    model.eval()
    ck = load_file(os.path.join(folder, "check.safetensors"))
    for name, dt in (("prompt_ids", torch.int64), ("grid", torch.int64), ("x_t", torch.float32),
                     ("timestep", torch.float32), ("velocity", torch.float32)):
        assert name in ck and ck[name].dtype == dt, (name, ck.get(name, torch.empty(0)).dtype)
    grid = [int(v) for v in ck["grid"].tolist()]
    assert len(grid) == 2 and ck["x_t"].shape == (grid[0] * grid[1], PATCH_DIM) == ck["velocity"].shape
    assert max(grid) <= fx["config"]["max_latent_size"]
    v = flow_velocity(model, fx, ck["prompt_ids"].tolist(), grid, ck["x_t"], float(ck["timestep"][0]))
    diff = (v - ck["velocity"]).abs().max().item()
    tol = 1e-4 * max(1.0, ck["velocity"].abs().max().item())
    ok = diff <= tol
    print(f"check-export {folder}: prompt {len(ck['prompt_ids'])} ids, grid {grid[0]} x {grid[1]}, "
          f"t {float(ck['timestep'][0]):.6g}: max |official - port velocity| = {diff:.3g} (tolerance {tol:.3g}): "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def default_grad_names(L):
    last = L - 1
    p = "language_model.model.layers."
    return [
        f"{p}0.self_attn.q_proj.weight",  # understanding expert: gradient only through the prompt's K/V
        f"{p}{last}.self_attn.q_proj_moe_gen.weight",
        f"{p}0.mlp_moe_gen.gate_proj.weight",
        "vae2llm.weight",
        "time_embedder.mlp.0.weight",
        f"{p}{last}.self_attn.k_proj.weight",  # understanding expert, direct: image queries read prompt keys
        f"{p}0.self_attn.q_norm_moe_gen.weight",
        "llm2vae.weight",
        "language_model.model.norm_moe_gen.weight",
        "language_model.model.embed_tokens.weight",
        f"{p}{last}.self_attn.q_proj.weight",  # exactly zero: last-layer prompt queries never reach the loss
        "language_model.model.norm.weight",  # exactly zero: the final understanding norm is not on the loss path
    ]


def describe(a):
    return {
        "text": f"official prefill (Bagel.prepare_prompts + forward_cache_update_text, mode und) of a "
                f"{a.prompt_len}-token prompt wrapped as [bos] + prompt + [eos]; per-layer hidden states, final norm, "
                f"lm_head logits at every position",
        "greedy": "official Bagel.prepare_start_tokens + generate_text (do_sample False, end_token_id None: never "
                  "stops early) on the text case's cache: bos fed at position n, then each new token",
        "flow": "official Bagel._forward_flow (CFG off) after the flow prompt was prefilled by "
                "forward_cache_update_text; query = [start_of_image] + h*w latent tokens + [end_of_image] from "
                "prepare_vae_latent; velocity of the latent tokens and their per-layer hidden states",
        "loss": "official Bagel.forward (training, MoT) on one T2I sample packed by the official "
                "PackedDataset.pack_sequence (prompt split causal, noisy image split 'noise'), VAE bypassed via "
                "padded_latent, noise fixed; SRUM loss mean(R * mse) + lambda * mean(mse) (anchor constraint, "
                "x_anchor = x0) and its gradients",
        "vit": f"official SigLIP ViT (model.vit_model, flash_attn stand-in causal=False over one segment), connector "
               f"and vit_pos_embed on a {a.vit_grid_h} x {a.vit_grid_w} patch grid image in [-1, 1] (patchified by "
               f"data_utils.patchify, extrapolated position ids), as forward_cache_update_vit computes them",
        "und": "official understanding flow of InterleaveInferencer.interleave_inference([image, question], "
               "understanding_output=True, think=True): system-prompt text update, the vit case's image through "
               "prepare_vit_images + forward_cache_update_vit, question text update, then prepare_start_tokens + "
               "generate_text greedy (do_sample False, end_token_id None)",
        "vae": "the official AutoEncoder (modeling/autoencoder.py) with the tiny vae_config.json and the random "
               "weights of ae.safetensors: encoder moments, encode in mean mode and with fixed noise, decode",
        "gen": f"official text-to-image of InterleaveInferencer.interleave_inference([prompt], think=False) -> "
               f"gen_image -> Bagel.generate_image: {a.gen_steps} timesteps, timestep_shift {a.gen_timestep_shift}, "
               f"cfg_text_scale {a.gen_cfg_text_scale} (empty text-CFG context), cfg_img_scale 1.0, cfg_interval "
               f"[0.4, 1.0], cfg_renorm global (min 0), init noise fixed; the latent and its tiny-VAE decode "
               f"(unpatchified as decode_image does, before its clamp)",
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bagel-src", required=True, help="the official BAGEL source folder (commit %s)" % OFFICIAL_COMMIT)
    ap.add_argument("--out", help="fixture folder to write")
    ap.add_argument("--verify", help="only verify an existing fixture folder")
    ap.add_argument("--name", help="fixture name (default: the folder's name)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--intermediate", type=int, default=96)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=160)
    ap.add_argument("--rope-theta", type=float, default=1000000.0)
    ap.add_argument("--rms-norm-eps", type=float, default=1e-6)
    ap.add_argument("--max-position-embeddings", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=7, help="raw prompt tokens of the text case (before bos/eos)")
    ap.add_argument("--flow-prompt-len", type=int, default=None, help="default: --prompt-len")
    ap.add_argument("--loss-prompt-len", type=int, default=None, help="default: --prompt-len")
    ap.add_argument("--latent-h", type=int, default=3, help="latent grid height in latent patches (flow and loss)")
    ap.add_argument("--latent-w", type=int, default=5)
    ap.add_argument("--loss-latent-h", type=int, default=None, help="default: --latent-h")
    ap.add_argument("--loss-latent-w", type=int, default=None, help="default: --latent-w")
    ap.add_argument("--max-latent-size", type=int, default=8)
    ap.add_argument("--timestep-shift", type=float, default=1.0, help="BagelConfig.timestep_shift (training)")
    ap.add_argument("--flow-t", type=float, default=0.63, help="the t passed to _forward_flow")
    ap.add_argument("--loss-timestep", type=float, default=None,
                    help="raw (pre-sigmoid) training timestep; default: a standard-normal draw")
    ap.add_argument("--greedy-tokens", type=int, default=6)
    ap.add_argument("--srum-lambda", type=float, default=0.5)
    ap.add_argument("--vit-hidden", type=int, default=32)
    ap.add_argument("--vit-intermediate", type=int, default=48)
    ap.add_argument("--vit-layers", type=int, default=1, help="ViT layers built (vit_config.json says one more)")
    ap.add_argument("--vit-heads", type=int, default=2)
    ap.add_argument("--vit-patch", type=int, default=14)
    ap.add_argument("--vit-image-size", type=int, default=56)
    ap.add_argument("--vit-max-patch-per-side", type=int, default=4)
    ap.add_argument("--vit-grid-h", type=int, default=3, help="ViT patch grid of the vit / und image (rows)")
    ap.add_argument("--vit-grid-w", type=int, default=4, help="ViT patch grid of the vit / und image (columns)")
    ap.add_argument("--und-system-len", type=int, default=4, help="raw ids of the und case's system prompt")
    ap.add_argument("--und-question-len", type=int, default=5, help="raw ids of the und case's question")
    ap.add_argument("--gen-prompt-len", type=int, default=6, help="raw ids of the gen case's prompt")
    ap.add_argument("--gen-steps", type=int, default=6, help="num_timesteps of the gen case (steps run: one less)")
    ap.add_argument("--gen-timestep-shift", type=float, default=3.0)
    ap.add_argument("--gen-cfg-text-scale", type=float, default=4.0)
    ap.add_argument("--vae-ch", type=int, default=32, help="tiny VAE base channels (GroupNorm(32): ch*mult %% 32 == 0)")
    ap.add_argument("--vae-ch-mult", default="1,2,2,2",
                    help="tiny VAE channel multipliers, comma-separated (4 levels: 3 downsamplings = 8x)")
    ap.add_argument("--vae-res-blocks", type=int, default=1, help="tiny VAE num_res_blocks")
    ap.add_argument("--check-export", metavar="DIR",
                    help="check a Rust export: DIR holds llm_config.json, vit_config.json, config.json, "
                         "ema.safetensors and check.safetensors (see tests/data/README.md)")
    a = ap.parse_args()
    a.vae_ch_mult = [int(x) for x in a.vae_ch_mult.split(",")]

    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    random.seed(a.seed)
    import_official(a.bagel_src)

    if a.check_export:
        sys.exit(check_export(a.check_export))
    if a.verify:
        verify(a.verify)
        return
    if not a.out:
        ap.error("--out or --verify is required")
    if a.hidden != a.heads * a.head_dim:
        ap.error("--hidden must equal --heads * --head-dim (Qwen2 derives head_dim = hidden / heads)")
    if a.heads % a.kv_heads:
        ap.error("--heads must be a multiple of --kv-heads")
    if a.head_dim % 2 or a.hidden % 4:
        ap.error("--head-dim must be even (RoPE) and --hidden a multiple of 4 (2D sin-cos)")
    if max(a.latent_h, a.latent_w, a.loss_latent_h or 0, a.loss_latent_w or 0) > a.max_latent_size:
        ap.error("the latent grid must fit in --max-latent-size")
    if a.vocab < 8:
        ap.error("--vocab too small")
    if a.vocab - 4 < 97:
        ap.error("--vocab must leave room for the 97 tokens of the character tokenizer below the special ids")
    n_side = a.vit_image_size // a.vit_patch
    if (a.vit_grid_h - 1) * a.vit_max_patch_per_side + a.vit_grid_w > n_side * n_side or \
            max(a.vit_grid_w, a.vit_grid_h) > a.vit_max_patch_per_side:
        ap.error("the ViT grid must fit --vit-max-patch-per-side and the ViT position embedding")
    if len(a.vae_ch_mult) != 4 or any(a.vae_ch * m % 32 for m in a.vae_ch_mult):
        ap.error("--vae-ch-mult needs 4 levels (8x) and every channel count a multiple of 32 (GroupNorm(32))")
    if a.vae_res_blocks < 1 and len(set(a.vae_ch_mult)) > 1:
        ap.error("--vae-res-blocks 0 only works with equal multipliers (the official Encoder)")

    os.makedirs(a.out, exist_ok=True)
    name = a.name or os.path.basename(os.path.normpath(a.out))
    for fname, obj in (("llm_config.json", llm_config_json(a)), ("vit_config.json", vit_config_json(a)),
                       ("config.json", bagel_config_json(a)), ("vae_config.json", vae_config_json(a))):
        with open(os.path.join(a.out, fname), "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    fx = {
        "name": name,
        "format_version": FORMAT_VERSION,
        "seed": a.seed,
        "official_repo": "https://github.com/ByteDance-Seed/Bagel",
        "official_commit": OFFICIAL_COMMIT,
        "command": shlex.join([".venv-bagel/bin/python", "scripts/bagel_fixtures.py"] + sys.argv[1:]),
        "config": {
            "hidden_size": a.hidden, "intermediate_size": a.intermediate, "num_hidden_layers": a.layers,
            "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads, "head_dim": a.head_dim,
            "vocab_size": a.vocab, "rope_theta": a.rope_theta, "rms_norm_eps": a.rms_norm_eps,
            "max_position_embeddings": a.max_position_embeddings, "hidden_act": "silu",
            "qk_norm": True, "layer_module": "Qwen2MoTDecoderLayer", "tie_word_embeddings": False,
            "latent_patch_size": LATENT_PATCH_SIZE, "latent_channel": LATENT_CHANNEL,
            "vae_downsample": VAE_DOWNSAMPLE, "latent_downsample": LATENT_DOWNSAMPLE, "patch_latent_dim": PATCH_DIM,
            "max_latent_size": a.max_latent_size, "timestep_shift": a.timestep_shift,
            "timestep_frequency_embedding_size": TIME_FREQ_DIM, "interpolate_pos": False,
            "vit_max_num_patch_per_side": a.vit_max_patch_per_side, "connector_act": "gelu_pytorch_tanh",
            "vit": {"hidden_size": a.vit_hidden, "intermediate_size": a.vit_intermediate,
                    "num_hidden_layers_built": a.vit_layers, "num_attention_heads": a.vit_heads,
                    "patch_size": a.vit_patch, "image_size": a.vit_image_size, "rope": False},
            "special_tokens": special_tokens(a.vocab),
            "greedy_new_tokens": a.greedy_tokens,
            "srum_lambda": a.srum_lambda,
            "srum_constraint": "anchor, x_anchor = x0: loss = mean(R * mse) + lambda * mean(mse)",
            "loss_grad_names": default_grad_names(a.layers),
            "flow_grid": [a.latent_h, a.latent_w],
            "loss_grid": [a.loss_latent_h or a.latent_h, a.loss_latent_w or a.latent_w],
            "vit_grid": [a.vit_grid_h, a.vit_grid_w],
            "und": {"system_len": a.und_system_len, "question_len": a.und_question_len, "think": True,
                    "new_tokens": a.greedy_tokens},
            "gen": {"prompt_len": a.gen_prompt_len, "grid": [a.latent_h, a.latent_w],
                    "image_shape": [a.latent_h * LATENT_DOWNSAMPLE, a.latent_w * LATENT_DOWNSAMPLE],
                    "num_timesteps": a.gen_steps, "timestep_shift": a.gen_timestep_shift,
                    "cfg_text_scale": a.gen_cfg_text_scale, "cfg_img_scale": 1.0, "cfg_interval": [0.4, 1.0],
                    "cfg_renorm_type": "global", "cfg_renorm_min": 0.0, "enable_taylorseer": False},
            "vae": vae_config_json(a),
        },
        "weights": "ema.safetensors: bf16, every Bagel.state_dict() entry under its official name; the reference "
                   "ran in fp32 with exactly these values (bf16 -> f32 is exact)",
        "vae_weights": "ae.safetensors: bf16, every official AutoEncoder state_dict() entry (encoder.*, decoder.*, "
                       "the names of BAGEL's ae.safetensors) for the tiny vae_config.json; reference in fp32",
        "tokenizer": "tokenizer.json: Hugging Face tokenizers JSON, BPE without merges on single characters (no "
                     "normalizer, no pre-tokenizer, Fuse decoder): <unk> 0, '\\n' 1, ' '..'~' 2..96, unused "
                     "placeholders, the four special tokens at vocab-4..vocab-1",
        "tolerance": 1e-4,
        "cases": describe(a),
        "patches": PATCHES,
    }
    with open(os.path.join(a.out, "fixture.json"), "w") as f:
        json.dump(fx, f, indent=2)
        f.write("\n")

    model = build_model(a.out, fx)
    W = random_weights(model, a.seed)
    model.load_state_dict(W, strict=True)
    model.eval()
    inp = draw_inputs(a)
    inp.update(draw_image_inputs(a))
    ae = build_vae(a.out)
    Wv = random_vae_weights(ae, a.seed)
    ae.load_state_dict(Wv, strict=True)
    ae.eval()
    out = run_official(model, fx, inp, ae)

    # greedy decoding must be robust to 1e-4 errors: check the top-1 / top-2 logit gaps
    top2 = out["greedy.logits"].topk(2, dim=-1).values
    gap = (top2[:, 0] - top2[:, 1]).min().item()
    if gap < 1e-2:
        sys.exit(f"greedy decoding has a near tie (min top-2 gap {gap:.2e}); choose another --seed")
    fx["greedy_min_top2_gap"] = round(gap, 6)
    top2 = out["und.logits"].topk(2, dim=-1).values
    und_gap = (top2[:, 0] - top2[:, 1]).min().item()
    if und_gap < 1e-2:
        sys.exit(f"understanding decoding has a near tie (min top-2 gap {und_gap:.2e}); choose other sizes or --seed")
    fx["und_min_top2_gap"] = round(und_gap, 6)
    with open(os.path.join(a.out, "fixture.json"), "w") as f:
        json.dump(fx, f, indent=2)
        f.write("\n")

    cases = dict(inp)
    cases.update(out)
    cases = {k: v.detach().contiguous() for k, v in sorted(cases.items())}
    for k, v in cases.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
    save_safetensors(os.path.join(a.out, "ema.safetensors"), {k: v.to(torch.bfloat16) for k, v in W.items()},
                     {"format": "pt"})
    save_safetensors(os.path.join(a.out, "cases.safetensors"), cases, {"format": "pt", "fixture": name})
    save_safetensors(os.path.join(a.out, "ae.safetensors"), {k: v.to(torch.bfloat16) for k, v in Wv.items()},
                     {"format": "pt"})
    with open(os.path.join(a.out, "tokenizer.json"), "w") as f:
        f.write(tokenizer_json(a.vocab))
    for f in os.listdir(a.out):
        os.chmod(os.path.join(a.out, f), 0o644)

    # the saved bf16 weights are exactly the weights used
    W2 = load_weights_f32(os.path.join(a.out, "ema.safetensors"))
    assert W2.keys() == W.keys() and all(torch.equal(W2[k], W[k]) for k in W)
    W2 = load_weights_f32(os.path.join(a.out, "ae.safetensors"))
    assert W2.keys() == Wv.keys() and all(torch.equal(W2[k], Wv[k]) for k in Wv)
    verify(a.out)
    total = sum(os.path.getsize(os.path.join(a.out, f)) for f in os.listdir(a.out))
    print(f"wrote {a.out} ({total} bytes); greedy tokens {out['greedy.tokens'].tolist()}, min top-2 gap {gap:.3g}; "
          f"und tokens {out['und.tokens'].tolist()}, min top-2 gap {und_gap:.3g}")
    for k, v in cases.items():
        print(f"  {k:70s} {str(v.dtype).replace('torch.', ''):8s} {list(v.shape)}")


if __name__ == "__main__":
    main()
