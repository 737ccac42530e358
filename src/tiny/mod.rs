//! The reference unified model for the synthetic world: [`TinyUmm`], its tokenizer, its
//! pretraining, and its checkpoint directory (`model.json`, `model.safetensors`,
//! `tokenizer.json`).

mod model;
mod pretrain;
mod statements;
mod tokenizer;

pub use model::{
    Block, Expert, PATCH_CLASSES, Prediction, PromptScore, TextBatch, TinyUmm, TinyUmmConfig,
    UnderstandingHeads, atoms, mask_to_region, prompt_score, sincos_2d,
};
pub use pretrain::{
    PretrainConfig, PretrainReport, SAMPLE_CLEAR, SAMPLE_REDRAWN, UnderstandingMix,
    complete_renders, pretrain,
};
pub use statements::{StatementTally, statement_kind, statement_report};
pub use tokenizer::{PAD, UNK, WORDS, build_tokenizer, encode, load_tokenizer};

use std::path::Path;

use burn::tensor::backend::Backend;

use crate::error::{Result, SrumError};
use crate::model::ModelCard;

/// Kind tag of [`TinyUmm`] in a [`ModelCard`].
pub const TINY_KIND: &str = "tiny-umm";

impl<B: Backend> TinyUmm<B> {
    /// Writes `model.json`, `model.safetensors` and `tokenizer.json` into `dir`.
    pub fn save_dir(&self, config: &TinyUmmConfig, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        ModelCard::write(dir, TINY_KIND, config)?;
        let tok = self
            .tokenizer()
            .to_string(true)
            .map_err(|e| SrumError::Model(e.to_string()))?;
        crate::train::write_file_atomic(&dir.join("tokenizer.json"), tok.as_bytes())?;
        crate::train::save_weights(self, dir.join("model.safetensors"))
    }

    /// Loads a model saved by [`TinyUmm::save_dir`].
    pub fn load_dir(dir: impl AsRef<Path>, device: &B::Device) -> Result<(Self, TinyUmmConfig)> {
        let dir = dir.as_ref();
        let card_path = dir.join("model.json");
        let bad = |message: String| SrumError::Checkpoint {
            path: card_path.clone(),
            message,
        };
        let config: TinyUmmConfig = ModelCard::read_config(dir, TINY_KIND)?;
        if config.patch == 0
            || config.image_size == 0
            || !config.image_size.is_multiple_of(config.patch)
            || config.n_heads == 0
            || !config.d_model.is_multiple_of(config.n_heads)
            || config.image_size > 512
            || config.d_model > 4096
            || config.n_layers > 64
        {
            return Err(bad("config: impossible sizes".into()));
        }
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"))?;
        let model = crate::train::load_weights(
            config.init::<B>(tokenizer, device),
            dir.join("model.safetensors"),
        )?;
        Ok((model, config))
    }
}
