//! Text-to-image with any flow-matching generator: noise, guided Euler sampling, decoding.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{EulerSampler, Guidance, extend_normals, host_normal};
use crate::error::Result;
use crate::image::PixelImage;
use crate::model::{FlowGenerator, ImageCodec, ImageSize};

/// Generates one image of `size` per prompt, in batches of `batch`. Noise comes from
/// `rng`, so a seed gives the same images on every backend.
pub fn generate<B: Backend, M: FlowGenerator<B> + ImageCodec<B>, R: Rng>(
    model: &M,
    prompts: &[String],
    size: ImageSize,
    sampler: &EulerSampler,
    batch: usize,
    rng: &mut R,
    device: &B::Device,
) -> Result<Vec<PixelImage>> {
    let n = model.latent_grid(size).tokens();
    let c = model.latent_channels();
    generate_with(model, prompts, size, sampler, batch, |b| {
        host_normal::<B, _, 3>(rng, [b, n, c], device)
    })
}

/// The noise generator of image number `index` of a run seeded with `seed`: a ChaCha stream
/// of its own, so an image does not depend on which other images share its batch, its
/// shard or its machine.
pub fn image_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}

/// Like [`generate`], but image `i` of `prompts` gets the noise of [`image_rng`]`(seed,
/// first_index + i)`. Splitting a run into shards (`first_index` = the shard's start) gives
/// the same images as running it whole.
#[allow(clippy::too_many_arguments)]
pub fn generate_indexed<B: Backend, M: FlowGenerator<B> + ImageCodec<B>>(
    model: &M,
    prompts: &[String],
    size: ImageSize,
    sampler: &EulerSampler,
    batch: usize,
    seed: u64,
    first_index: u64,
    device: &B::Device,
) -> Result<Vec<PixelImage>> {
    let n = model.latent_grid(size).tokens();
    let c = model.latent_channels();
    let mut next = first_index;
    generate_with(model, prompts, size, sampler, batch, |b| {
        let mut values = Vec::with_capacity(b * n * c);
        for _ in 0..b {
            values = extend_normals(values, &mut image_rng(seed, next), n * c);
            next += 1;
        }
        Tensor::from_data(TensorData::new(values, [b, n, c]), device)
    })
}

/// Batches of `batch` prompts, each started from the noise `noise(b)` returns.
fn generate_with<B: Backend, M: FlowGenerator<B> + ImageCodec<B>>(
    model: &M,
    prompts: &[String],
    size: ImageSize,
    sampler: &EulerSampler,
    batch: usize,
    mut noise: impl FnMut(usize) -> Tensor<B, 3>,
) -> Result<Vec<PixelImage>> {
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(batch.max(1)) {
        let b = chunk.len();
        let noise = noise(b);
        let cond = model.condition(chunk)?;
        let uncond = model.unconditional(b)?;
        let latents = sampler.sample(noise, |x, t, g| {
            Ok(match g {
                Guidance::Conditional => model.velocity(x, t, &cond),
                Guidance::Unconditional => model.velocity(x, t, &uncond),
            })
        })?;
        out.extend(PixelImage::from_tensor(
            model.decode_latents(latents, size)?,
        )?);
    }
    Ok(out)
}
