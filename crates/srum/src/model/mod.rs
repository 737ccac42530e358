//! The contract a unified multimodal model implements to be trained with SRUM.
//!
//! A unified model has one backbone with two abilities: *generation* (prompt to image, by flow
//! matching on latent tokens) and *understanding* (image and question to text). SRUM lets the
//! second reward the first. The [`Trainer`](crate::train::Trainer) only ever updates the
//! parameters the model declares as trainable for generation (see [`ParamRoles`]); everything
//! declared [`ParamRole::Understanding`] is bit-for-bit untouched, weight decay included.

mod card;
mod roles;

pub use card::ModelCard;

pub use roles::{ParamRole, ParamRoles, TrainableSet};

use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};

use crate::error::Result;

/// A unified multimodal model: a generator and an understanding model sharing one backbone.
///
/// Images cross this trait as float tensors `[batch, 3, H, W]` with values in `[0, 1]`.
/// Latents are token sequences `[batch, tokens, channels]`, tokens row-major over the
/// latent grid `(h, w)` (the order [`RewardMap`](crate::reward::RewardMap)s are flattened in).
/// A model without a VAE patchifies pixels; a BAGEL-like model runs its VAE and patchifier.
pub trait UnifiedModel<B: Backend>: Module<B> {
    /// Prompt conditioning the velocity network consumes (embeddings, masks, KV cache ...).
    type Condition: Clone;

    /// Conditioning for a batch of prompts. Fails on prompts the model cannot read.
    fn condition(&self, prompts: &[String]) -> Result<Self::Condition>;

    /// The unconditional (empty-prompt) conditioning for classifier-free guidance.
    fn unconditional(&self, batch: usize) -> Result<Self::Condition>;

    /// Predicted velocity `v_theta(x_t, t, prompt)`.
    ///
    /// Shapes: `x_t`: `[batch, tokens, channels]`, `t`: `[batch]` in `[0, 1]`;
    /// returns `[batch, tokens, channels]`.
    fn velocity(
        &self,
        x_t: Tensor<B, 3>,
        t: Tensor<B, 1>,
        condition: &Self::Condition,
    ) -> Tensor<B, 3>;

    /// Channels per latent token.
    fn latent_channels(&self) -> usize;

    /// The latent token grid `(h, w)` for an image of `width x height` pixels.
    fn latent_grid(&self, width: usize, height: usize) -> (usize, usize);

    /// Image to latent tokens (VAE encode + patchify, or plain patchify).
    ///
    /// Shapes: `images`: `[batch, 3, H, W]` in `[0, 1]`; returns `[batch, h * w, channels]`.
    fn encode_images(&self, images: Tensor<B, 4>) -> Result<Tensor<B, 3>>;

    /// Latent tokens back to an image of `width x height` pixels.
    ///
    /// Shapes: `latents`: `[batch, h * w, channels]`; returns `[batch, 3, height, width]` in `[0, 1]`.
    fn decode_latents(
        &self,
        latents: Tensor<B, 3>,
        width: usize,
        height: usize,
    ) -> Result<Tensor<B, 4>>;

    /// Understanding: a text answer to each question about its image (greedy, deterministic).
    ///
    /// Shapes: `images`: `[batch, 3, H, W]`; `questions.len() == batch`.
    fn answer(&self, images: Tensor<B, 4>, questions: &[String]) -> Result<Vec<String>>;

    /// Understanding, for models that expose token probabilities: `(P(yes), P(no))` for each
    /// question about its image. `None` when the model does not support it (the default).
    fn yes_no_probabilities(
        &self,
        images: Tensor<B, 4>,
        questions: &[String],
    ) -> Option<Result<Vec<(f32, f32)>>> {
        let _ = (images, questions);
        None
    }

    /// Which parameters serve generation, understanding, or both.
    /// Parameters not listed are [`ParamRole::Shared`].
    fn param_roles(&self) -> ParamRoles;
}
