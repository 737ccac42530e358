//! How well [`TinyUmm`] judges each kind of atomic statement it reads a prompt as (see
//! [`atoms`]): objects, exact counts and relations. The prompt-level accuracy hides which kind
//! fails; this is the breakdown that found the judge answering relations at chance.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{TinyUmm, atoms};
use crate::world::{PromptSpec, shown_scene};
use srum::error::{Result, SrumError};

/// Answers to one kind of statement, split by the right answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementTally {
    /// True statements answered yes.
    pub yes_correct: usize,
    /// True statements asked.
    pub yes: usize,
    /// False statements answered no.
    pub no_correct: usize,
    /// False statements asked.
    pub no: usize,
}

impl StatementTally {
    /// Fraction answered correctly (0 when nothing was asked).
    pub fn accuracy(&self) -> f32 {
        (self.yes_correct + self.no_correct) as f32 / (self.yes + self.no).max(1) as f32
    }
}

/// The kind of an atomic statement, as [`statement_report`] names it.
pub fn statement_kind(statement: &PromptSpec) -> &'static str {
    match statement {
        PromptSpec::Objects(_) => "object",
        PromptSpec::Count(..) => "count",
        PromptSpec::Relation(..) | PromptSpec::Complex(..) => "relation",
    }
}

/// The judge's answers (`P(yes) > 0.5`) to every atomic statement of `n` prompts cycled from
/// `prompts`, each shown on the scene [`shown_scene`] draws (as the prompt-level accuracy
/// does); the right answer is the statement's truth in the scene
/// rendered. Keyed by [`statement_kind`].
pub fn statement_report<B: Backend>(
    model: &TinyUmm<B>,
    prompts: &[PromptSpec],
    n: usize,
    seed: u64,
) -> Result<BTreeMap<String, StatementTally>> {
    if prompts.is_empty() {
        return Err(SrumError::Shape(
            "the statement report needs at least one prompt".into(),
        ));
    }
    let size = model.image_size();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut images, mut texts, mut asked) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..n {
        let p = &prompts[k % prompts.len()];
        let scene = shown_scene(p, k, &mut rng, size);
        let image = scene.render(size);
        for a in atoms(&p.text()) {
            let spec = PromptSpec::parse(&a)?;
            asked.push((statement_kind(&spec), spec.holds_in(&scene)));
            images.push(image.clone());
            texts.push(a);
        }
    }
    let p = model.atom_probability(&images, &texts)?;
    let mut out: BTreeMap<String, StatementTally> = BTreeMap::new();
    for ((kind, truth), p) in asked.into_iter().zip(p) {
        let t = out.entry(kind.to_string()).or_default();
        let said_yes = p > 0.5;
        if truth {
            t.yes += 1;
            t.yes_correct += usize::from(said_yes);
        } else {
            t.no += 1;
            t.no_correct += usize::from(!said_yes);
        }
    }
    Ok(out)
}
