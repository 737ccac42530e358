//! A memory model of one SRUM training step on BAGEL: bytes of frozen and trained weights,
//! master copies, gradients and optimizer state, counted exactly from the configuration, and
//! an estimate of the activations the backward keeps.

use crate::config::BagelConfig;
use crate::lora::LoraConfig;
use crate::vae::VaeConfig;

/// Number formats of weights, gradients and optimizer state, as the memory model counts them.
/// srum's trainer runs `F32` and `Bf16MasterF32` (its `Precision::Bf16`); all-bf16 is here
/// for comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryPrecision {
    /// Everything in f32.
    F32,
    /// Everything in bf16, optimizer moments included.
    Bf16,
    /// bf16 weights, activations and gradients; an f32 master copy and f32 AdamW moments for
    /// the trained parameters.
    Bf16MasterF32,
}

impl MemoryPrecision {
    fn weight_bytes(self) -> u64 {
        match self {
            Self::F32 => 4,
            Self::Bf16 | Self::Bf16MasterF32 => 2,
        }
    }

    fn master_bytes(self) -> u64 {
        match self {
            Self::Bf16MasterF32 => 4,
            Self::F32 | Self::Bf16 => 0,
        }
    }

    fn moment_bytes(self) -> u64 {
        match self {
            Self::Bf16 => 2,
            Self::F32 | Self::Bf16MasterF32 => 4,
        }
    }
}

/// What a step trains.
#[derive(Debug, Clone, PartialEq)]
pub enum Trained {
    /// The generation expert and heads (`TrainableSet::GenerationOnly`).
    GenerationExpert,
    /// The whole language model but `lm_head` (`TrainableSet::GenerationAndShared`, the
    /// reference recipe).
    LanguageModel,
    /// LoRA adapters only.
    Lora(LoraConfig),
}

/// One training step's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct StepShape {
    /// What is trained.
    pub trained: Trained,
    /// Number formats.
    pub precision: MemoryPrecision,
    /// Latent tokens per image (1,024 at 512 pixels, 4,096 at 1,024).
    pub image_tokens: usize,
    /// Prompt tokens per image, with its `bos` and `eos`.
    pub prompt_tokens: usize,
    /// Images per step.
    pub batch: usize,
    /// Keep only each decoder layer's input for the backward and recompute the layer.
    pub checkpointing: bool,
}

/// Parameter counts of a BAGEL model by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParamCounts {
    /// The understanding expert of every layer (attention, q/k norms, MLP, layer norms).
    pub understanding_expert: u64,
    /// The generation expert of every layer.
    pub generation_expert: u64,
    /// `embed_tokens`, the final understanding norm.
    pub embeddings: u64,
    /// `lm_head`.
    pub lm_head: u64,
    /// `norm_moe_gen`, time embedder, `vae2llm`, `llm2vae`.
    pub generation_heads: u64,
    /// The fixed sin-cos tables (`latent_pos_embed`, `vit_pos_embed`).
    pub position_tables: u64,
    /// ViT and connector.
    pub vit: u64,
    /// The autoencoder.
    pub vae: u64,
}

impl ParamCounts {
    /// Every parameter.
    pub fn total(&self) -> u64 {
        self.understanding_expert
            + self.generation_expert
            + self.embeddings
            + self.lm_head
            + self.generation_heads
            + self.position_tables
            + self.vit
            + self.vae
    }
}

fn expert_params(c: &BagelConfig) -> u64 {
    let (h, i) = (c.hidden_size as u64, c.intermediate_size as u64);
    let d = c.head_dim() as u64;
    let kv = c.num_key_value_heads as u64 * d;
    let attn = (h * h + h) + 2 * (h * kv + kv) + h * h + if c.qk_norm { 2 * d } else { 0 };
    (attn + 3 * h * i + 2 * h) * c.num_hidden_layers as u64
}

fn vae_params(v: &VaeConfig) -> u64 {
    let conv = |i: usize, o: usize, k: usize| (i * o * k * k + o) as u64;
    let gn = |c: usize| 2 * c as u64;
    let res = |i: usize, o: usize| {
        gn(i) + conv(i, o, 3) + gn(o) + conv(o, o, 3) + if i != o { conv(i, o, 1) } else { 0 }
    };
    let mid = |c: usize| 2 * res(c, c) + gn(c) + 4 * conv(c, c, 1);
    let levels = v.ch_mult.len();
    let mut n = conv(v.in_channels, v.ch, 3);
    let mut c = v.ch;
    for (l, m) in v.ch_mult.iter().enumerate() {
        for _ in 0..v.num_res_blocks {
            n += res(c, v.ch * m);
            c = v.ch * m;
        }
        if l + 1 != levels {
            n += conv(c, c, 3);
        }
    }
    let top = c;
    n += mid(top) + gn(top) + conv(top, 2 * v.z_channels, 3);
    // Decoder.
    n += conv(v.z_channels, top, 3) + mid(top);
    let mut c = top;
    for l in (0..levels).rev() {
        for _ in 0..=v.num_res_blocks {
            n += res(c, v.ch * v.ch_mult[l]);
            c = v.ch * v.ch_mult[l];
        }
        if l != 0 {
            n += conv(c, c, 3);
        }
    }
    n + gn(c) + conv(c, v.in_channels, 3)
}

/// Exact parameter counts of the model `config` builds and the autoencoder `vae` builds.
pub fn param_counts(config: &BagelConfig, vae: &VaeConfig) -> ParamCounts {
    let c = config;
    let (h, v) = (c.hidden_size as u64, c.vocab_size as u64);
    let f = c.frequency_embedding_size as u64;
    let p = c.patch_latent_dim() as u64;
    let m = c.max_latent_size as u64;
    let mut counts = ParamCounts {
        understanding_expert: expert_params(c),
        generation_expert: expert_params(c),
        embeddings: v * h + h,
        lm_head: v * h,
        generation_heads: h + (f * h + h + h * h + h) + (p * h + h) + (h * p + p),
        position_tables: m * m * h,
        vit: 0,
        vae: vae_params(vae),
    };
    if let Some(vc) = &c.vit {
        let (vh, vi) = (vc.hidden_size as u64, vc.intermediate_size as u64);
        let s = vc.max_patches_per_side as u64;
        let layer = 4 * (vh * vh + vh) + 4 * vh + (vh * vi + vi) + (vi * vh + vh);
        counts.vit = (vc.patch_dim() as u64 * vh + vh)
            + s * s * vh
            + layer * vc.num_hidden_layers as u64
            + 2 * vh
            + (vh * h + h)
            + (h * h + h);
        let side = c.vit_max_num_patch_per_side as u64;
        counts.position_tables += side * side * h;
    }
    counts
}

/// Parameters of the LoRA adapters `lora` puts on `config`'s layers.
pub fn lora_params(config: &BagelConfig, lora: &LoraConfig) -> u64 {
    let c = config;
    let (h, i) = (c.hidden_size as u64, c.intermediate_size as u64);
    let kv = (c.num_key_value_heads * c.head_dim()) as u64;
    let r = lora.rank as u64;
    let mut per_layer = 0;
    for (expert, suffix) in [("self_attn", ""), ("self_attn", "_moe_gen")] {
        for (proj, i_, o_) in [
            ("q_proj", h, h),
            ("k_proj", h, kv),
            ("v_proj", h, kv),
            ("o_proj", h, h),
        ] {
            if lora.targets(&format!(
                "language_model.model.layers.0.{expert}.{proj}{suffix}"
            )) {
                per_layer += r * (i_ + o_);
            }
        }
    }
    for mlp in ["mlp", "mlp_moe_gen"] {
        for (proj, i_, o_) in [("gate_proj", h, i), ("up_proj", h, i), ("down_proj", i, h)] {
            if lora.targets(&format!("language_model.model.layers.0.{mlp}.{proj}")) {
                per_layer += r * (i_ + o_);
            }
        }
    }
    per_layer * c.num_hidden_layers as u64
}

/// Bytes of one SRUM training step by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepMemory {
    /// Weights that are not trained (the VAE included).
    pub frozen_weights: u64,
    /// Weights that are trained, in the compute format.
    pub trained_weights: u64,
    /// f32 master copies of the trained weights.
    pub master_weights: u64,
    /// One gradient per trained weight.
    pub gradients: u64,
    /// AdamW's two moments per trained weight.
    pub optimizer: u64,
    /// What the backward keeps of the forward (an estimate; see [`activation_bytes`]).
    pub activations: u64,
}

impl StepMemory {
    /// The sum.
    pub fn total(&self) -> u64 {
        self.frozen_weights
            + self.trained_weights
            + self.master_weights
            + self.gradients
            + self.optimizer
            + self.activations
    }
}

/// Estimated activation bytes the backward of one step keeps, from the tensors the port's
/// forward saves per decoder layer: about 14 `T x hidden` (norms, projections' inputs, q/k
/// norms, RoPE), 5 `T x intermediate` (the SwiGLU) and 2 attention-score tensors
/// `heads x queries x keys` (softmax and its input) per layer, `T` = prompt + image tokens.
/// With checkpointing only each layer's input is kept, plus one layer's worth for the
/// recompute. The peak comes during the backward, where one layer's gradient temporaries
/// (2 score-sized tensors, 3 `T x intermediate`, 4 `T x hidden`) sit beside what is kept.
pub fn activation_bytes(config: &BagelConfig, shape: &StepShape, element_bytes: u64) -> u64 {
    let (h, i) = (config.hidden_size as u64, config.intermediate_size as u64);
    let heads = config.num_attention_heads as u64;
    let (tp, ti) = (shape.prompt_tokens as u64, shape.image_tokens as u64);
    let t = tp + ti;
    // The prompt attends causally to itself, the image to the prompt and itself.
    let scores = heads * (tp * tp + ti * (tp + ti));
    let per_layer = 14 * t * h + 5 * t * i + 2 * scores;
    let layers = config.num_hidden_layers as u64;
    let kept = if shape.checkpointing {
        layers * t * h + per_layer
    } else {
        layers * per_layer
    };
    let transient = 2 * scores + 3 * t * i + 4 * t * h;
    (kept + transient) * element_bytes * shape.batch as u64
}

/// The memory of one SRUM step of `config` (with its autoencoder `vae`) shaped as `shape`.
pub fn step_memory(config: &BagelConfig, vae: &VaeConfig, shape: &StepShape) -> StepMemory {
    let counts = param_counts(config, vae);
    let p = shape.precision;
    let (trained, extra) = match &shape.trained {
        Trained::GenerationExpert => (counts.generation_expert + counts.generation_heads, 0),
        Trained::LanguageModel => (
            counts.generation_expert
                + counts.generation_heads
                + counts.understanding_expert
                + counts.embeddings,
            0,
        ),
        Trained::Lora(l) => {
            let n = lora_params(config, l);
            (n, n)
        }
    };
    // Adapters add parameters; everything else is the model's.
    let frozen = counts.total() + extra - trained;
    let element = p.weight_bytes();
    StepMemory {
        frozen_weights: frozen * element,
        trained_weights: trained * element,
        master_weights: trained * p.master_bytes(),
        gradients: trained * element,
        optimizer: 2 * trained * p.moment_bytes(),
        activations: activation_bytes(config, shape, element),
    }
}
