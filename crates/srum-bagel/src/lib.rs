//! BAGEL-7B-MoT (ByteDance-Seed) on burn: the Qwen2 mixture-of-transformers backbone, the
//! flow-matching generation head, the text head, the SigLIP ViT with its connector and the
//! FLUX autoencoder, loaded from the official checkpoint folder and checked against the official
//! PyTorch code through fixtures.
//!
//! - [`BagelModel`]: the whole model behind srum's traits (understanding, codec, generator),
//!   with [`BagelTemplates`] for the system prompts; [`BagelModel::save_dir`] writes the
//!   official layout.
//! - [`BagelConfig`], [`VitConfig`], [`VaeConfig`]: sizes, read from a checkpoint folder.
//! - [`load_bagel`], [`load_vae`], [`save_weights`]: weights by official tensor name.
//! - [`Bagel`]: [`Bagel::forward_packed`] and [`Bagel::flow_loss`] (training, on a
//!   [`PackedSequence`]), [`Bagel::velocity`] and [`Bagel::sample_latent`] (inference against a
//!   [`KvCache`]), [`Bagel::prefill_text`], [`Bagel::extend_image`], [`Bagel::greedy_until`].
//! - [`DecoderLayer::forward_train`]: one decoder layer alone on a [`Plan`], for benchmarks.
//! - [`verify_fixture`]: compare a model with a fixture folder written by `scripts/bagel_fixtures.py`.
#![warn(missing_docs)]

mod attention;
mod backbone;
mod bagel;
mod cache;
mod checkpoint;
mod config;
mod error;
mod generation;
mod layer;
mod load;
mod lora;
mod memory;
mod mlp;
mod objective;
mod rope;
mod routing;
mod sample;
mod sequence;
mod text;
mod unified;
mod vae;
mod verify;
mod vit;

pub use attention::LayerKv;
pub use backbone::{Hidden, Plan};
pub use bagel::{Bagel, FlowLoss, LanguageModel, PackedOutput};
pub use cache::KvCache;
pub use config::BagelConfig;
pub use error::{BagelError, Result};
pub use generation::{patchify, unpatchify};
pub use layer::{DecoderLayer, DecoderLayerConfig};
pub use load::{
    KNOWN_UNUSED_PREFIXES, load_bagel, load_tokenizer, load_vae, load_weights, save_weights,
};
pub use lora::{LoraAdapter, LoraConfig};
pub use memory::{
    MemoryPrecision, ParamCounts, StepMemory, StepShape, Trained, activation_bytes, lora_params,
    param_counts, step_memory,
};
pub use objective::PackedFlowMatching;
pub use routing::Expert;
pub use sample::rollout_sampler;
pub use sequence::{PackedSequence, SplitKind};
pub use unified::{
    BagelCondition, BagelModel, BagelTemplates, CHECKPOINT_FILES, GEN_THINK_SYSTEM_PROMPT,
    VLM_THINK_SYSTEM_PROMPT, bagel_param_role,
};
pub use vae::{AutoEncoder, VaeConfig};
pub use verify::{Comparison, FixtureReport, verify_fixture};
pub use vit::{Connector, VitConfig, VitModel, vit_patchify, vit_positions};
