//! Trainer settings; the defaults are the published SRUM recipe.

use burn::config::Config;
use burn::module::AutodiffModule;
use burn::optim::AdamW;
use burn::optim::AdamWConfig;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::tensor::backend::AutodiffBackend;

use super::{Constraint, LrDecay, Precision};
use crate::error::{Result, SrumError};
use crate::flow::TimestepSampling;
use crate::model::TrainableSet;

/// Settings of the AdamW optimizer the [`Trainer`](super::Trainer) builds unless it is given
/// another; the defaults are the published recipe's.
#[derive(Config, Debug, PartialEq)]
pub struct AdamWSettings {
    /// Decay of the first-moment estimate.
    #[config(default = 0.9)]
    pub beta_1: f32,
    /// Decay of the second-moment estimate.
    #[config(default = 0.95)]
    pub beta_2: f32,
    /// Added to the root of the second moment, for numerical stability.
    #[config(default = 1e-15)]
    pub epsilon: f32,
    /// Decoupled weight decay (applied only to trained parameters).
    #[config(default = 0.0)]
    pub weight_decay: f32,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        Self::new()
    }
}

impl AdamWSettings {
    /// burn's AdamW with these settings. Gradient clipping is the trainer's own (global
    /// norm over the trained parameters), so none is set here.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(&self) -> OptimizerAdaptor<AdamW, M, B> {
        AdamWConfig::new()
            .with_beta_1(self.beta_1)
            .with_beta_2(self.beta_2)
            .with_epsilon(self.epsilon)
            .with_weight_decay(self.weight_decay)
            .init::<B, M>()
    }

    /// Rejects impossible values, naming the field.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, field: &'static str, v: String| {
            if ok {
                Ok(())
            } else {
                Err(SrumError::config(field, v))
            }
        };
        check(
            (0.0..1.0).contains(&self.beta_1),
            "optimizer.beta_1",
            format!("must be in [0, 1), got {}", self.beta_1),
        )?;
        check(
            (0.0..1.0).contains(&self.beta_2),
            "optimizer.beta_2",
            format!("must be in [0, 1), got {}", self.beta_2),
        )?;
        check(
            self.epsilon.is_finite() && self.epsilon > 0.0,
            "optimizer.epsilon",
            format!("must be > 0, got {}", self.epsilon),
        )?;
        check(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "optimizer.weight_decay",
            format!("must be >= 0, got {}", self.weight_decay),
        )
    }
}

/// Settings of the [`Trainer`](super::Trainer). `TrainerConfig::default()` is the published
/// recipe: AdamW (lr 2e-5, betas 0.9/0.95, eps 1e-15, no weight decay), 100 warmup steps then
/// constant, lambda 0.5 with the anchor constraint, grad-norm clip 1.0, no EMA, logit-normal
/// timesteps without shift, generation and shared parameters trained.
#[derive(Config, Debug, PartialEq)]
pub struct TrainerConfig {
    /// Peak learning rate.
    #[config(default = 2e-5)]
    pub lr: f64,
    /// The AdamW optimizer's settings (unused when the trainer is given another optimizer).
    #[config(default = "AdamWSettings::new()")]
    pub optimizer: AdamWSettings,
    /// Linear warmup length in optimizer steps.
    #[config(default = 100)]
    pub warmup_steps: u64,
    /// Schedule after warmup.
    #[config(default = "LrDecay::Constant")]
    pub decay: LrDecay,
    /// Weight `lambda` of the constraint term.
    #[config(default = 0.5)]
    pub lambda: f32,
    /// Which constraint term.
    #[config(default = "Constraint::Anchor")]
    pub constraint: Constraint,
    /// Global gradient-norm clip (`None`: no clipping).
    #[config(default = "Some(1.0)")]
    pub grad_clip_norm: Option<f32>,
    /// `step` calls (micro-batches) per optimizer update.
    #[config(default = 1)]
    pub grad_accum_steps: usize,
    /// EMA decay of the trained weights (`None`: no EMA; the published script has it off).
    #[config(default = "None")]
    pub ema_decay: Option<f32>,
    /// How training timesteps are drawn.
    #[config(default = "TimestepSampling::LogitNormal { mean: 0.0, std: 1.0 }")]
    pub timesteps: TimestepSampling,
    /// Timestep shift for training (BAGEL trains with 1.0).
    #[config(default = 1.0)]
    pub timestep_shift: f32,
    /// Which parameters are trained.
    #[config(default = "TrainableSet::GenerationAndShared")]
    pub trainable: TrainableSet,
    /// Seed of the noise and timestep stream.
    #[config(default = 42)]
    pub seed: u64,
    /// Training stops with an error after this many skipped (non-finite) steps in a row.
    #[config(default = 10)]
    pub max_consecutive_skips: usize,
    /// The precision of the forward, backward and update: f32 throughout, or bf16 compute
    /// with f32 masters of the trained parameters ([`Precision::Bf16`]).
    #[config(default = "Precision::F32")]
    pub precision: Precision,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl TrainerConfig {
    /// Reads settings from JSON that names only the fields it changes; the rest keep their
    /// defaults (the published recipe). Nested settings merge the same way
    /// (`{"optimizer": {"weight_decay": 0.01}}` keeps the default betas). An unknown field is an
    /// error naming it, so a typo never silently leaves a default in place. The result is
    /// validated.
    pub fn from_json_partial(bytes: &[u8]) -> Result<Self> {
        let given: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| SrumError::Data(e.to_string()))?;
        let serde_json::Value::Object(given) = given else {
            return Err(SrumError::Data("must be a JSON object".into()));
        };
        let mut merged = serde_json::to_value(Self::default())
            .map_err(|e| SrumError::Training(format!("default config: {e}")))?;
        let serde_json::Value::Object(fields) = &mut merged else {
            return Err(SrumError::Training(
                "default config is not an object".into(),
            ));
        };
        merge_partial(fields, given, "")?;
        let config: Self =
            serde_json::from_value(merged).map_err(|e| SrumError::Data(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects impossible values, naming the field.
    pub fn validate(&self) -> Result<()> {
        let pos = |ok: bool, field: &'static str, v: String| {
            if ok {
                Ok(())
            } else {
                Err(SrumError::config(field, v))
            }
        };
        pos(
            self.lr.is_finite() && self.lr > 0.0,
            "lr",
            format!("must be > 0, got {}", self.lr),
        )?;
        self.optimizer.validate()?;
        pos(
            self.lambda.is_finite() && self.lambda >= 0.0,
            "lambda",
            format!("must be finite and >= 0, got {}", self.lambda),
        )?;
        if let Some(c) = self.grad_clip_norm {
            pos(
                c.is_finite() && c > 0.0,
                "grad_clip_norm",
                format!("must be > 0, got {c}"),
            )?;
        }
        pos(
            self.grad_accum_steps >= 1,
            "grad_accum_steps",
            "must be at least 1".into(),
        )?;
        if let Some(d) = self.ema_decay {
            pos(
                (0.0..1.0).contains(&d),
                "ema_decay",
                format!("must be in [0, 1), got {d}"),
            )?;
        }
        pos(
            self.timestep_shift.is_finite() && self.timestep_shift > 0.0,
            "timestep_shift",
            format!("must be > 0, got {}", self.timestep_shift),
        )?;
        pos(
            self.max_consecutive_skips >= 1,
            "max_consecutive_skips",
            "must be at least 1".into(),
        )?;
        if let super::LrDecay::Cosine { min_lr, .. } = self.decay {
            pos(
                min_lr.is_finite() && min_lr >= 0.0,
                "decay.min_lr",
                format!("must be >= 0, got {min_lr}"),
            )?;
        }
        if let TimestepSampling::LogitNormal { mean, std } = self.timesteps {
            pos(
                mean.is_finite() && std.is_finite() && std > 0.0,
                "timesteps",
                "logit-normal needs finite mean and std > 0".into(),
            )?;
        }
        Ok(())
    }
}

/// Fields that hold settings of their own, merged field by field rather than replaced.
const NESTED: &[&str] = &["optimizer"];

/// Writes `given` over `fields`, descending into [`NESTED`] settings; an unknown field is an
/// error naming its full path.
fn merge_partial(
    fields: &mut serde_json::Map<String, serde_json::Value>,
    given: serde_json::Map<String, serde_json::Value>,
    prefix: &str,
) -> Result<()> {
    for (k, v) in given {
        let path = format!("{prefix}{k}");
        let Some(slot) = fields.get_mut(&k) else {
            let known: Vec<&str> = fields.keys().map(String::as_str).collect();
            return Err(SrumError::Data(format!(
                "unknown field `{path}`; known fields: {}",
                known.join(", ")
            )));
        };
        match (slot, v) {
            (serde_json::Value::Object(inner), serde_json::Value::Object(v))
                if prefix.is_empty() && NESTED.contains(&k.as_str()) =>
            {
                merge_partial(inner, v, &format!("{path}."))?;
            }
            (slot, v) => *slot = v,
        }
    }
    Ok(())
}
