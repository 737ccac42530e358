//! The synthetic world: coloured shapes on white, a compositional prompt grammar with the
//! T2I-CompBench categories that make sense here, and an oracle scorer for evaluation.
//!
//! Everything is deterministic for a seed, small enough for a laptop CPU (32x32 RGB), and scored
//! exactly, so SRUM can be measured end to end without downloading anything.

mod drawing;
mod eval;
mod grammar;
mod oracle;
mod scene;

pub use drawing::{DrawingReport, drawing_prompts, drawing_report};
pub use eval::{
    Agreement, GenerationEval, MATCH_QUESTION, UnderstandingReport, evaluate_generation,
    self_oracle_agreement, shown_scene, spearman, understanding_accuracy, understanding_report,
};
pub use grammar::{
    Category, Np, PromptSpec, Relation, Split, all_prompts, rollout_prompts, split_prompts,
};
pub use oracle::{Detection, Oracle, OracleReport};
pub use scene::{Color, Object, Scene, Shape};
