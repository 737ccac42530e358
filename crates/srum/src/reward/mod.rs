//! Stage 2 inputs: turning a [`Judgement`] into a dense [`RewardMap`].
//!
//! The default rule is the reference implementation's (see `SRUM.md`): every pixel starts
//! at 0.5, each valid region lifts the pixels it covers to `max(current, (s + 1) / 2)`, and
//! the whole map is scaled by `(g + 1) / 2` for the global score `g`.

mod composer;
mod heatmap;
mod judgement;
mod picture;
mod resize;

pub use composer::{Combine, ComposeStats, RewardComposer, RewardComposerConfig, RewardMode};
pub use heatmap::heat_colour;
pub use judgement::{BBox, Judgement, ScoredRegion};
pub use picture::reward_picture;
pub use resize::{RewardMap, resize_bilinear};
