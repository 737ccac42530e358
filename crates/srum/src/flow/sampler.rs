//! Euler ODE sampling from noise (`t = 1`) to data (`t = 0`) with classifier-free guidance.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use serde::{Deserialize, Serialize};

use super::sampling_schedule;
use crate::error::{Result, SrumError};

/// Which conditioning a velocity evaluation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guidance {
    /// The prompt.
    Conditional,
    /// The empty prompt (classifier-free guidance's unconditional branch).
    Unconditional,
}

/// Settings of the [`EulerSampler`]. Defaults follow BAGEL's inference, at 20 steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EulerSamplerConfig {
    /// Euler steps (BAGEL's `num_timesteps` minus one). Default 20.
    pub steps: usize,
    /// Timestep shift applied to the schedule. Default 1.0.
    pub shift: f32,
    /// Guidance weight `w` in `v_u + w (v_c - v_u)`; 1.0 disables guidance. Default 4.0.
    pub guidance_scale: f32,
    /// Guidance applies when the step's start time `t` is in `(lo, hi]`. Default `(0.4, 1.0)`.
    pub guidance_interval: (f32, f32),
    /// Rescale the guided velocity so its norm (per image) does not exceed the conditional one
    /// (BAGEL's "global" CFG renorm). Default false.
    pub cfg_renorm: bool,
    /// Lower bound of the renorm factor. Default 0.0.
    pub cfg_renorm_min: f32,
}

impl Default for EulerSamplerConfig {
    fn default() -> Self {
        Self {
            steps: 20,
            shift: 1.0,
            guidance_scale: 4.0,
            guidance_interval: (0.4, 1.0),
            cfg_renorm: false,
            cfg_renorm_min: 0.0,
        }
    }
}

impl EulerSamplerConfig {
    /// Rejects impossible settings.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(SrumError::config("steps", "must be at least 1"));
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return Err(SrumError::config(
                "shift",
                format!("must be > 0, got {}", self.shift),
            ));
        }
        if !self.guidance_scale.is_finite() {
            return Err(SrumError::config("guidance_scale", "must be finite"));
        }
        let (lo, hi) = self.guidance_interval;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(SrumError::config(
                "guidance_interval",
                format!("want finite from < to, got ({lo}, {hi})"),
            ));
        }
        Ok(())
    }
}

/// Deterministic Euler sampler: the same noise gives the same image.
#[derive(Debug, Clone, Copy, Default)]
pub struct EulerSampler {
    /// Its settings.
    pub config: EulerSamplerConfig,
}

impl EulerSampler {
    /// A sampler with these settings.
    pub fn new(config: EulerSamplerConfig) -> Self {
        Self { config }
    }

    /// Integrates `dx/dt = v(x, t)` from `noise` at `t = 1` down to `t = 0`.
    ///
    /// `velocity(x, t, branch)` evaluates the model; it is called once per step, or twice when
    /// guidance is active at that step.
    ///
    /// Shapes: `noise`: `[batch, tokens, channels]`; `t` passed to `velocity`: `[batch]`;
    /// returns `[batch, tokens, channels]`.
    pub fn sample<B, F>(&self, noise: Tensor<B, 3>, velocity: F) -> Result<Tensor<B, 3>>
    where
        B: Backend,
        F: FnMut(Tensor<B, 3>, Tensor<B, 1>, Guidance) -> Result<Tensor<B, 3>>,
    {
        self.sample_from(noise, 1.0, velocity)
    }

    /// Integrates from `x` at time `t_start` down to `t = 0`: a first step to the next time of
    /// the schedule below `t_start`, then the schedule's own steps. SDEdit-style completion of
    /// a partly noised image, on the same grid as a full sample (`t_start = 1` is
    /// [`sample`](Self::sample)).
    ///
    /// Shapes: `x`: `[batch, tokens, channels]`; returns `[batch, tokens, channels]`.
    pub fn sample_from<B, F>(
        &self,
        x: Tensor<B, 3>,
        t_start: f32,
        mut velocity: F,
    ) -> Result<Tensor<B, 3>>
    where
        B: Backend,
        F: FnMut(Tensor<B, 3>, Tensor<B, 1>, Guidance) -> Result<Tensor<B, 3>>,
    {
        let cfg = &self.config;
        cfg.validate()?;
        if !(t_start > 0.0 && t_start <= 1.0) {
            return Err(SrumError::config(
                "t_start",
                format!("must be in (0, 1], got {t_start}"),
            ));
        }
        let device = x.device();
        let [batch, _, _] = x.dims();
        let times: Vec<f32> = std::iter::once(t_start)
            .chain(
                sampling_schedule(cfg.steps, cfg.shift)
                    .into_iter()
                    .filter(|&t| t < t_start),
            )
            .collect();
        let mut x = x;
        for w in times.windows(2) {
            let (t, t_next) = (w[0], w[1]);
            let t_batch =
                Tensor::<B, 1>::from_data(TensorData::new(vec![t; batch], [batch]), &device);
            let v_cond = velocity(x.clone(), t_batch.clone(), Guidance::Conditional)?;
            let (lo, hi) = cfg.guidance_interval;
            let guided = cfg.guidance_scale != 1.0 && t > lo && t <= hi;
            let v = if guided {
                let v_uncond = velocity(x.clone(), t_batch, Guidance::Unconditional)?;
                let v =
                    v_uncond.clone() + (v_cond.clone() - v_uncond).mul_scalar(cfg.guidance_scale);
                if cfg.cfg_renorm {
                    let norm = |v: Tensor<B, 3>| v.powi_scalar(2).sum_dim(2).sum_dim(1).sqrt();
                    let scale =
                        (norm(v_cond) / (norm(v.clone()) + 1e-8)).clamp(cfg.cfg_renorm_min, 1.0);
                    v * scale
                } else {
                    v
                }
            } else {
                v_cond
            };
            x = x - v.mul_scalar(t - t_next);
        }
        Ok(x)
    }
}
