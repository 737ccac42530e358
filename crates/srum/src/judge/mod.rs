//! Stage 1 of SRUM: the model judges its own images.
//!
//! [`SelfEvaluator`] proposes regions ([`RegionProposer`]), asks the model the
//! [`JudgeTemplates`] questions (or decomposed yes/no questions), parses the answers
//! ([`parse_global`], [`parse_regions`]) and returns one [`Judgement`](crate::reward::Judgement)
//! per image, ready for the [`RewardComposer`](crate::reward::RewardComposer).

mod decompose;
mod evaluator;
mod parse;
mod proposals;
mod templates;

pub use decompose::{Decomposer, Decomposition, SimpleDecomposer};
pub use evaluator::{JudgeMode, JudgeOutput, SelfEvaluator, SelfEvaluatorConfig};
pub use parse::{
    AnswerKind, ParsedRegion, ParsedScore, answer_text, parse_global, parse_regions, parse_to_json,
};
pub use proposals::{ConnectedComponents, GridProposer, RegionProposer, border_colour};
pub use templates::{JudgeTemplates, quote_prompt, region_lines};
