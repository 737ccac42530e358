//! Stage 2 of SRUM: reward-weighted training of the generator, under the objective of its kind.

mod checkpoint;
mod config;
mod ema;
mod loss;
mod objective;
#[cfg(feature = "collective")]
mod parallel;
mod params;
mod precision;
mod schedule;
mod trainer;

pub use checkpoint::{
    LATEST, latest_version, load_weights, save_weights, weights_from_safetensors, write_dir_atomic,
    write_file_atomic,
};
pub use config::{AdamWSettings, TrainerConfig};
pub use ema::Ema;
pub use loss::{Constraint, LossTerms, flow_matching_loss, reward_weighted_loss, srum_loss};
pub use objective::{
    FlowMatching, NextTokenCrossEntropy, Objective, StepDraws, StepInput, token_cross_entropy,
    token_kl,
};
#[cfg(feature = "collective")]
pub use parallel::{CollectiveConfig, DataParallel, ExchangeTiming, PeerId};
pub use params::{NamedParam, collect_params, materialize};
pub use precision::{Precision, default_float_dtype, in_dtype};
pub use schedule::{LrDecay, learning_rate};
pub use trainer::{SrumBatch, StepOutcome, StepReport, Trainer, TrainerState};
