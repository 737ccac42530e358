//! The SRUM loss: reward-weighted flow matching plus a constraint that keeps the generator
//! near where it started.

use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

/// Which constraint term `L_constraint` the loss uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Constraint {
    /// `mean(|v - (eps - x_anchor)|^2)` with the anchor ("good") image: the reference code's
    /// term. With the published recipe the anchor is the generated image itself (default).
    #[default]
    Anchor,
    /// `mean(|v - v_ref|^2)` against a frozen copy of the generator taken at the start of
    /// training, run without autodiff: the paper's "stay near the pre-trained model" framing.
    ReferenceModel,
}

/// `mean(R * |v - target|^2)` over batch, tokens and channels.
///
/// Shapes: `velocity`, `target`: `[batch, tokens, channels]`; `reward`: `[batch, tokens]`;
/// returns `[1]`.
pub fn reward_weighted_loss<B: Backend>(
    velocity: Tensor<B, 3>,
    target: Tensor<B, 3>,
    reward: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let sq = (velocity - target).powi_scalar(2);
    (sq * reward.unsqueeze_dim::<3>(2)).mean()
}

/// `mean(|v - target|^2)`: the unweighted flow-matching error (the anchor term when `target`
/// is `eps - x_anchor`, the reference term when it is `v_ref`).
///
/// Shapes: `velocity`, `target`: `[batch, tokens, channels]`; returns `[1]`.
pub fn flow_matching_loss<B: Backend>(
    velocity: Tensor<B, 3>,
    target: Tensor<B, 3>,
) -> Tensor<B, 1> {
    (velocity - target).powi_scalar(2).mean()
}

/// The loss terms of one step.
#[derive(Debug, Clone)]
pub struct LossTerms<B: Backend> {
    /// `reward + lambda * constraint`.
    pub total: Tensor<B, 1>,
    /// The reward-weighted term.
    pub reward: Tensor<B, 1>,
    /// The constraint term, before `lambda`.
    pub constraint: Tensor<B, 1>,
}

/// `L = mean(R * |v - (eps - x_gen)|^2) + lambda * mean(|v - c|^2)`, where `c` is the
/// constraint target (`eps - x_anchor` or `v_ref`).
///
/// Shapes: `velocity`, `target`, `constraint_target`: `[batch, tokens, channels]`;
/// `reward`: `[batch, tokens]`.
pub fn srum_loss<B: Backend>(
    velocity: Tensor<B, 3>,
    target: Tensor<B, 3>,
    reward: Tensor<B, 2>,
    constraint_target: Tensor<B, 3>,
    lambda: f32,
) -> LossTerms<B> {
    let reward_term = reward_weighted_loss(velocity.clone(), target, reward);
    let constraint = flow_matching_loss(velocity, constraint_target);
    LossTerms {
        total: reward_term.clone() + constraint.clone().mul_scalar(lambda),
        reward: reward_term,
        constraint,
    }
}
