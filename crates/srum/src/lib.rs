//! SRUM for burn: a unified multimodal model rewards its own image generation with its own
//! understanding.
//!
//! - [`model`]: the [`UnifiedModel`](model::UnifiedModel) contract a user implements.
//! - [`flow`]: rectified-flow noising, timesteps and the Euler sampler.
//! - [`reward`]: [`Judgement`](reward::Judgement)s into dense [`RewardMap`](reward::RewardMap)s.
//! - [`train`]: the SRUM loss and the [`Trainer`](train::Trainer).
//! - [`judge`]: the self-evaluator: region proposals, questions, robust parsing.
//! - [`round`]: the loop of one SRUM round: rollout, self-judgement, reward-weighted training.
//! - [`data`]: record files (scorer and training formats).
//! - [`image`]: host-side RGB images.
//! - [`allocator`]: glibc settings that keep freed tensor buffers for reuse.
#![warn(missing_docs)]

pub mod allocator;
pub mod data;
pub mod error;
pub mod flow;
pub mod image;
pub mod judge;
pub mod model;
pub mod reward;
pub mod round;
pub mod train;

pub use error::{LineError, Result, SrumError};
