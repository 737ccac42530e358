//! Text-to-image with any [`UnifiedModel`]: noise, guided Euler sampling, decoding.

use burn::tensor::backend::Backend;
use rand::Rng;

use super::{EulerSampler, Guidance, host_normal};
use crate::error::Result;
use crate::image::PixelImage;
use crate::model::UnifiedModel;

/// Generates one `(width, height)` image per prompt, in batches of `batch`. Noise comes from
/// `rng`, so a seed gives the same images on every backend.
pub fn generate<B: Backend, M: UnifiedModel<B>, R: Rng>(
    model: &M,
    prompts: &[String],
    (width, height): (usize, usize),
    sampler: &EulerSampler,
    batch: usize,
    rng: &mut R,
    device: &B::Device,
) -> Result<Vec<PixelImage>> {
    let (h, w) = model.latent_grid(width, height);
    let c = model.latent_channels();
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(batch.max(1)) {
        let b = chunk.len();
        let noise = host_normal::<B, _, 3>(rng, [b, h * w, c], device);
        let cond = model.condition(chunk)?;
        let uncond = model.unconditional(b)?;
        let latents = sampler.sample(noise, |x, t, g| {
            Ok(match g {
                Guidance::Conditional => model.velocity(x, t, &cond),
                Guidance::Unconditional => model.velocity(x, t, &uncond),
            })
        })?;
        out.extend(PixelImage::from_tensor(
            model.decode_latents(latents, width, height)?,
        )?);
    }
    Ok(out)
}
