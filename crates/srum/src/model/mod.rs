//! What a unified multimodal model offers SRUM, as capability traits.
//!
//! SRUM applies to unified models of various designs: one network that answers questions
//! about images ([`Understanding`]), maps images to tokens and back ([`ImageCodec`]), and
//! generates those tokens from a prompt ([`Generator`]), whether by flow matching
//! ([`FlowGenerator`], BAGEL) or token by token ([`TokenGenerator`], Janus-Pro, Emu3).
//! [`UnifiedModel`] is their sum. Stage 1 (self-judgement) needs only [`Understanding`];
//! stage 2 needs a [`Generator`] and an [`Objective`](crate::train::Objective) for it.
//!
//! The [`Trainer`](crate::train::Trainer) only ever updates the parameters the model declares
//! as trainable for generation (see [`ParamRoles`]); everything declared
//! [`ParamRole::Understanding`] is bit-for-bit untouched, weight decay included.

mod card;
mod roles;
mod size;

pub use card::ModelCard;
pub use roles::{ParamRole, ParamRoles, TrainableSet};
pub use size::{ImageSize, LatentGrid};

use burn::module::Module;
use burn::tensor::{Int, Tensor, backend::Backend};

use crate::error::Result;

/// Understanding: text answers about images.
///
/// Images cross this trait as float tensors `[batch, 3, H, W]` with values in `[0, 1]`.
pub trait Understanding<B: Backend> {
    /// A text answer to each question about its image (greedy, deterministic).
    ///
    /// Shapes: `images`: `[batch, 3, H, W]`; `questions.len() == batch`.
    fn answer(&self, images: Tensor<B, 4>, questions: &[String]) -> Result<Vec<String>>;

    /// For models that expose token probabilities: `(P(yes), P(no))` for each question about
    /// its image. `None` when the model does not support it (the default).
    fn yes_no_probabilities(
        &self,
        images: Tensor<B, 4>,
        questions: &[String],
    ) -> Option<Result<Vec<(f32, f32)>>> {
        let _ = (images, questions);
        None
    }
}

/// Images to generation tokens and back: a VAE and patchifier, a VQ tokenizer, or plain
/// patches.
///
/// Tokens are `[batch, tokens, channels]`, row-major over the [`LatentGrid`] (the order
/// [`RewardMap`](crate::reward::RewardMap)s are flattened in). A discrete tokenizer's codes
/// are one channel holding each token's code index.
pub trait ImageCodec<B: Backend> {
    /// Channels per token.
    fn latent_channels(&self) -> usize;

    /// The token grid of an image of `size`.
    fn latent_grid(&self, size: ImageSize) -> LatentGrid;

    /// Images to tokens.
    ///
    /// Shapes: `images`: `[batch, 3, H, W]` in `[0, 1]`; returns `[batch, h * w, channels]`.
    fn encode_images(&self, images: Tensor<B, 4>) -> Result<Tensor<B, 3>>;

    /// Tokens back to images of `size`.
    ///
    /// Shapes: `latents`: `[batch, h * w, channels]`; returns `[batch, 3, height, width]` in
    /// `[0, 1]`.
    fn decode_latents(&self, latents: Tensor<B, 3>, size: ImageSize) -> Result<Tensor<B, 4>>;
}

/// Generation: prompt conditioning, and which parameters the generator trains.
pub trait Generator<B: Backend>: Module<B> {
    /// Prompt conditioning the generator consumes (embeddings, masks, KV cache ...).
    type Condition: Clone;

    /// Conditioning for a batch of prompts. Fails on prompts the model cannot read.
    fn condition(&self, prompts: &[String]) -> Result<Self::Condition>;

    /// The unconditional (empty-prompt) conditioning for classifier-free guidance.
    fn unconditional(&self, batch: usize) -> Result<Self::Condition>;

    /// Which parameters serve generation, understanding, or both.
    /// Parameters not listed are [`ParamRole::Shared`].
    fn param_roles(&self) -> ParamRoles;
}

/// A generator by rectified flow matching on continuous tokens (BAGEL).
pub trait FlowGenerator<B: Backend>: Generator<B> {
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
}

/// A generator of discrete image tokens, one after another (Janus-Pro, Emu3).
pub trait TokenGenerator<B: Backend>: Generator<B> {
    /// Size of the image-token vocabulary.
    fn vocab_size(&self) -> usize;

    /// Next-token logits under teacher forcing: row `i` predicts token `i` from the prompt and
    /// tokens `0..i`.
    ///
    /// Shapes: `tokens`: `[batch, n]` code indices; returns `[batch, n, vocab]`.
    fn next_token_logits(
        &self,
        tokens: Tensor<B, 2, Int>,
        condition: &Self::Condition,
    ) -> Tensor<B, 3>;
}

/// A unified multimodal model: understanding, an image codec and a generator on one backbone.
/// Implemented for every type that has the three.
pub trait UnifiedModel<B: Backend>: Understanding<B> + ImageCodec<B> + Generator<B> {}

impl<B: Backend, M: Understanding<B> + ImageCodec<B> + Generator<B>> UnifiedModel<B> for M {}
