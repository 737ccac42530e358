#!/usr/bin/env python3
"""Reference fixtures for the Rust BAGEL port (crates/srum-bagel), made with the OFFICIAL PyTorch code.

Run by hand, never by CI. The official BAGEL source (github ByteDance-Seed/Bagel) is imported from the folder
given with --bagel-src; nothing of it is copied here. The model is built with tiny random weights, every weight is
rounded to bfloat16 (so the bf16 ema.safetensors holds exactly the weights used) and the official code is run in
float32 on the CPU, with a few run-time patches (listed in PATCHES below and in crates/srum-bagel/tests/data/README.md).

    .venv-bagel/bin/python scripts/bagel_fixtures.py --bagel-src /tmp/bagel-src \
        --out crates/srum-bagel/tests/data/tiny-gqa --hidden 64 --intermediate 96 --layers 2 --heads 4 \
        --kv-heads 2 --head-dim 16 --vocab 160 --prompt-len 7 --latent-h 3 --latent-w 5 --max-latent-size 8 --seed 0

    .venv-bagel/bin/python scripts/bagel_fixtures.py --bagel-src /tmp/bagel-src --verify crates/srum-bagel/tests/data/tiny-gqa

Generating a folder also verifies it (re-loads the files, re-runs the official code from them, and runs an
independent plain-tensor implementation of the documented semantics against the stored outputs).
"""

import argparse
import contextlib
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
    "VAE: not built; BagelConfig gets the official load_ae AutoEncoderParams (z_channels 16, downsample 8) and the "
    "training forward gets the clean latent directly as padded_latent (what vae_model.encode would return).",
    "data/dataset_base.py: its imports data.dataset_info, data.transforms and data.video_utils (dataset "
    "building; pyarrow, decord, cv2, torchvision) are stand-in modules; PackedDataset.set_sequence_status, "
    "pack_sequence and to_tensor and SimpleCustomBatch are called unchanged on a minimal `self`.",
    "visual_und: the model is built with visual_und=True (the checkpoint layout, ViT included); for the training "
    "forward model.config.visual_und is set to False for the call (SRUM trains with visual_und False; the official "
    "forward would otherwise require ViT tokens).",
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
    groups = hq // hkv
    cq = [int(x) for x in cu_seqlens_q.tolist()]
    ck = [int(x) for x in cu_seqlens_k.tolist()]
    out = q.new_zeros(q.shape)
    for i in range(len(cq) - 1):
        qi = q[cq[i]:cq[i + 1]].transpose(0, 1)  # [Hq, Lq, D]
        ki = k[ck[i]:ck[i + 1]].repeat_interleave(groups, dim=1).transpose(0, 1)
        vi = v[ck[i]:ck[i + 1]].repeat_interleave(groups, dim=1).transpose(0, 1)
        lq, lk = qi.shape[1], ki.shape[1]
        mask = None
        if causal:  # bottom-right aligned: query i sees key j iff j <= i + (lk - lq)
            mask = torch.ones(lq, lk, dtype=torch.bool).tril(diagonal=lk - lq)
        oi = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=softmax_scale)
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

    qwen2_navit.sdpa_kernel = lambda *a, **k: contextlib.nullcontext()
    for mod in (qwen2_navit, siglip_navit, bagel_mod):
        mod.torch = TorchFp32Proxy(torch)
    O.__dict__.update(
        bagel_mod=bagel_mod, BagelConfig=BagelConfig, Bagel=Bagel, Qwen2Config=Qwen2Config,
        Qwen2ForCausalLM=Qwen2ForCausalLM, SiglipVisionConfig=SiglipVisionConfig,
        SiglipVisionModel=SiglipVisionModel, NaiveCache=NaiveCache, AutoEncoderParams=AutoEncoderParams,
        get_2d_sincos_pos_embed=get_2d_sincos_pos_embed, data_utils=data_utils, DataConfig=DataConfig,
        PackedDataset=PackedDataset, SimpleCustomBatch=SimpleCustomBatch,
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


def run_official(model, fx, inp):
    """Runs every case through the official code. inp: the input tensors (cases names). Returns the outputs."""
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


def spec_check(W, fx, cases):
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
    inp = {k: cases[k] for k in INPUT_NAMES}
    torch.manual_seed(fx["seed"])
    out = run_official(model, fx, inp)
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
    missing_outputs = sorted(set(cases) - set(out) - set(INPUT_NAMES))
    assert not missing_outputs, missing_outputs
    diffs = spec_check(W, fx, cases)
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
    a = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    random.seed(a.seed)
    import_official(a.bagel_src)

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

    os.makedirs(a.out, exist_ok=True)
    name = a.name or os.path.basename(os.path.normpath(a.out))
    for fname, obj in (("llm_config.json", llm_config_json(a)), ("vit_config.json", vit_config_json(a)),
                       ("config.json", bagel_config_json(a))):
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
        },
        "weights": "ema.safetensors: bf16, every Bagel.state_dict() entry under its official name; the reference "
                   "ran in fp32 with exactly these values (bf16 -> f32 is exact)",
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
    out = run_official(model, fx, inp)

    # greedy decoding must be robust to 1e-4 errors: check the top-1 / top-2 logit gaps
    top2 = out["greedy.logits"].topk(2, dim=-1).values
    gap = (top2[:, 0] - top2[:, 1]).min().item()
    if gap < 1e-2:
        sys.exit(f"greedy decoding has a near tie (min top-2 gap {gap:.2e}); choose another --seed")
    fx["greedy_min_top2_gap"] = round(gap, 6)
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
    for f in os.listdir(a.out):
        os.chmod(os.path.join(a.out, f), 0o644)

    # the saved bf16 weights are exactly the weights used
    W2 = load_weights_f32(os.path.join(a.out, "ema.safetensors"))
    assert W2.keys() == W.keys() and all(torch.equal(W2[k], W[k]) for k in W)
    verify(a.out)
    total = sum(os.path.getsize(os.path.join(a.out, f)) for f in os.listdir(a.out))
    print(f"wrote {a.out} ({total} bytes); greedy tokens {out['greedy.tokens'].tolist()}, min top-2 gap {gap:.3g}")
    for k, v in cases.items():
        print(f"  {k:70s} {str(v.dtype).replace('torch.', ''):8s} {list(v.shape)}")


if __name__ == "__main__":
    main()
