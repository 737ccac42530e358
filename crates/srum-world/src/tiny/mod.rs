//! The reference unified model for the synthetic world: [`TinyUmm`], its tokenizer, its
//! pretraining, and its checkpoint directory (`model.json`, `model.safetensors`,
//! `tokenizer.json`).

mod attention;
mod model;
mod ops;
mod pretrain;
mod statements;
mod tokenizer;

pub use attention::{SelfAttention, pad_mask};
pub use model::{
    Block, Expert, MAX_NEIGHBOUR_KERNEL, PATCH_CLASSES, Prediction, PromptScore, TextBatch,
    TinyUmm, TinyUmmConfig, UnderstandingHeads, atoms, mask_to_region, neighbour_kernel_fits,
    prompt_score, sincos_2d,
};
pub use pretrain::{
    PretrainConfig, PretrainReport, SAMPLE_CLEAR, SAMPLE_REDRAWN, UnderstandingMix,
    complete_renders, pretrain,
};
pub use statements::{StatementTally, statement_kind, statement_report};
pub use tokenizer::{PAD, UNK, WORDS, build_tokenizer, encode, load_tokenizer, parse_tokenizer};

use std::path::Path;

use burn::tensor::backend::Backend;

use srum::error::{Result, SrumError};
use srum::model::ModelCard;

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
        srum::train::write_file_atomic(&dir.join("tokenizer.json"), tok.as_bytes())?;
        srum::train::save_weights(self, dir.join("model.safetensors"))
    }

    /// Loads a model saved by [`TinyUmm::save_dir`].
    pub fn load_dir(dir: impl AsRef<Path>, device: &B::Device) -> Result<(Self, TinyUmmConfig)> {
        let dir = dir.as_ref();
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| SrumError::io(&path, e))
        };
        Self::from_files(
            dir,
            &read("model.json")?,
            &read("tokenizer.json")?,
            &read("model.safetensors")?,
            device,
        )
    }

    /// The checkpoint shipped inside this crate (`assets/tiny-umm`): the model `srum demo`
    /// improves, so that an installed binary needs no files beside it.
    pub fn shipped(device: &B::Device) -> Result<(Self, TinyUmmConfig)> {
        Self::from_files(
            Path::new(SHIPPED),
            include_bytes!("../../assets/tiny-umm/model.json"),
            include_bytes!("../../assets/tiny-umm/tokenizer.json"),
            include_bytes!("../../assets/tiny-umm/model.safetensors"),
            device,
        )
    }

    /// A model from the bytes of its three files; `dir` names them in errors.
    fn from_files(
        dir: &Path,
        card: &[u8],
        tokenizer: &[u8],
        weights: &[u8],
        device: &B::Device,
    ) -> Result<(Self, TinyUmmConfig)> {
        let card_path = dir.join("model.json");
        let config: TinyUmmConfig =
            ModelCard::parse(card, &card_path)?.into_config(TINY_KIND, &card_path)?;
        if config.patch == 0
            || config.image_size == 0
            || !config.image_size.is_multiple_of(config.patch)
            || config.n_heads == 0
            || !config.d_model.is_multiple_of(config.n_heads)
            || config.image_size > 512
            || config.d_model > 4096
            || config.n_layers > 64
            || config
                .neighbour_kernel
                .is_some_and(|k| !model::neighbour_kernel_fits(k))
        {
            return Err(SrumError::Checkpoint {
                path: card_path,
                message: "config: impossible sizes".into(),
            });
        }
        let tokenizer = parse_tokenizer(tokenizer, &dir.join("tokenizer.json"))?;
        let model = srum::train::weights_from_safetensors(
            config.init::<B>(tokenizer, device),
            weights,
            &dir.join("model.safetensors"),
        )?;
        Ok((model, config))
    }
}

/// How the shipped checkpoint is named where a path is asked for (`srum demo --checkpoint`)
/// and in its errors.
pub const SHIPPED: &str = "shipped:tiny-umm";
