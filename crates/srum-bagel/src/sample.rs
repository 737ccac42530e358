//! Text-to-image sampling as the official `generate_image`: Euler steps from noise with text
//! classifier-free guidance against a second context, on srum's [`EulerSampler`].

use burn::tensor::{ElementConversion, Tensor, backend::Backend};
use srum::flow::{EulerSampler, EulerSamplerConfig, Guidance};

use crate::bagel::Bagel;
use crate::cache::KvCache;
use crate::error::{BagelError, Result};

/// The sampler settings of the SRUM rollout (BAGEL's `InterleaveInferencer` as SRUM calls it):
/// 50 timesteps (49 Euler steps), shift 3.0, text guidance 4.0 on `t` in `(0.4, 1.0]`, global
/// renorm with no lower bound.
pub fn rollout_sampler() -> EulerSamplerConfig {
    EulerSamplerConfig {
        steps: 49,
        shift: 3.0,
        guidance_scale: 4.0,
        guidance_interval: (0.4, 1.0),
        cfg_renorm: true,
        cfg_renorm_min: 0.0,
    }
}

impl<B: Backend> Bagel<B> {
    /// Denoises `noise` into the latent tokens of an `h x w`-patch image: the conditional
    /// velocity after `cond` (the prompt's context), the unconditional one after `uncond` (the
    /// official text-CFG context: what preceded the prompt, often nothing).
    ///
    /// Shapes: `noise`: `[h * w, latent_dim]`; returns the same.
    pub fn sample_latent(
        &self,
        cond: &KvCache<B>,
        uncond: &KvCache<B>,
        noise: Tensor<B, 2>,
        grid: (usize, usize),
        sampler: &EulerSampler,
    ) -> Result<Tensor<B, 2>> {
        let x = sampler
            .sample(noise.unsqueeze::<3>(), |x, t, g| {
                let cache = match g {
                    Guidance::Conditional => cond,
                    Guidance::Unconditional => uncond,
                };
                let t = t.into_scalar().elem::<f32>();
                self.velocity(cache, x.squeeze_dim::<2>(0), t, grid)
                    .map(|v| v.unsqueeze::<3>())
                    .map_err(srum::SrumError::from)
            })
            .map_err(|e| BagelError::Input(e.to_string()))?;
        Ok(x.squeeze_dim::<2>(0))
    }
}
