//! Which parameters belong to which ability, and which of them SRUM trains.

use std::collections::HashMap;

use burn::module::{Module, ParamId, list_param_ids};
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

/// The ability a parameter serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParamRole {
    /// Used only to generate (velocity head, latent projections, VAE decoder ...).
    Generation,
    /// Used by both abilities (the language backbone, prompt embeddings ...).
    Shared,
    /// Used only to understand (vision encoder, answer head ...).
    Understanding,
    /// Never trained by SRUM: a fixed image codec (a VAE) or a fixed table.
    Frozen,
}

/// The parameters the trainer may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainableSet {
    /// Generation and shared parameters: the reference recipe, which trains the whole language
    /// backbone (default).
    #[default]
    GenerationAndShared,
    /// Generation-only parameters: the judge stays bit-for-bit the judge that produced the rewards.
    GenerationOnly,
}

impl TrainableSet {
    /// Whether a parameter with `role` is trained.
    pub fn trains(self, role: ParamRole) -> bool {
        match (self, role) {
            (_, ParamRole::Understanding | ParamRole::Frozen) => false,
            (_, ParamRole::Generation) => true,
            (TrainableSet::GenerationAndShared, ParamRole::Shared) => true,
            (TrainableSet::GenerationOnly, ParamRole::Shared) => false,
        }
    }
}

/// Parameter roles by [`ParamId`]; unlisted parameters are [`ParamRole::Shared`].
///
/// ```text
/// ParamRoles::default()
///     .with_module(ParamRole::Generation, &self.velocity_head)
///     .with_module(ParamRole::Understanding, &self.answer_head)
/// ```
#[derive(Debug, Clone, Default)]
pub struct ParamRoles {
    roles: HashMap<ParamId, ParamRole>,
}

impl ParamRoles {
    /// Marks every parameter of `module` with `role`.
    pub fn with_module<B: Backend, M: Module<B>>(mut self, role: ParamRole, module: &M) -> Self {
        for id in list_param_ids(module) {
            self.roles.insert(id, role);
        }
        self
    }

    /// Marks one parameter.
    pub fn with_param(mut self, role: ParamRole, id: ParamId) -> Self {
        self.roles.insert(id, role);
        self
    }

    /// The role of a parameter.
    pub fn role(&self, id: ParamId) -> ParamRole {
        self.roles.get(&id).copied().unwrap_or(ParamRole::Shared)
    }
}
