//! One SRUM round, written once: the model generates (rollout), its own understanding judges
//! what it made (stage 1), the judgements become dense reward maps, and the generator learns
//! from them (stage 2). The `srum demo` and `srum iterate` commands and the
//! `custom_pipeline` example all run this loop; a pipeline of its own calls the same three
//! functions and does what it likes between them (save images, filter samples, swap rewards).

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::error::{Result, SrumError};
use crate::flow::{EulerSampler, generate};
use crate::image::PixelImage;
use crate::judge::{JudgeOutput, RegionProposer, SelfEvaluator};
use crate::model::{FlowGenerator, Generator, ImageCodec, ImageSize, Understanding};
use crate::reward::{RewardComposer, RewardMap};
use crate::train::{Objective, SrumBatch, StepReport, Trainer};

/// An image the model generated for a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// The prompt it was generated for.
    pub prompt: String,
    /// The image.
    pub image: PixelImage,
}

/// A rolled-out image with what the model's own understanding made of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The prompt it was generated for.
    pub prompt: String,
    /// The image.
    pub image: PixelImage,
    /// The self-evaluation, with its raw answers.
    pub judged: JudgeOutput,
    /// The dense reward on the generator's latent grid that training weights tokens by.
    pub map: RewardMap,
}

/// Rollout: `candidates` images of `size` for every prompt (a prompt's candidates are
/// adjacent), generated `batch` at a time with noise from `rng`. `progress` is told how many
/// images each batch added.
#[allow(clippy::too_many_arguments)]
pub fn rollout<B, M, R>(
    model: &M,
    prompts: &[String],
    candidates: usize,
    size: ImageSize,
    sampler: &EulerSampler,
    batch: usize,
    rng: &mut R,
    device: &B::Device,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Rollout>>
where
    B: Backend,
    M: FlowGenerator<B> + ImageCodec<B>,
    R: Rng,
{
    if candidates == 0 || batch == 0 {
        return Err(SrumError::config(
            "candidates",
            "rollout needs at least one candidate per prompt and a batch of at least 1",
        ));
    }
    let all: Vec<String> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), candidates))
        .collect();
    let mut out = Vec::with_capacity(all.len());
    for chunk in all.chunks(batch) {
        let images = generate(model, chunk, size, sampler, batch, rng, device)?;
        progress(images.len());
        out.extend(chunk.iter().zip(images).map(|(p, image)| Rollout {
            prompt: p.clone(),
            image,
        }));
    }
    Ok(out)
}

/// Stage 1: the model judges its own rollouts, `batch` images at a time, and `composer` turns
/// each judgement into a reward map on the grid the model generates `size` images on. The
/// judge sees pixels and prompts only.
#[allow(clippy::too_many_arguments)]
pub fn self_judge<B, M, P>(
    model: &M,
    evaluator: &SelfEvaluator<P>,
    composer: &RewardComposer,
    rollouts: Vec<Rollout>,
    size: ImageSize,
    batch: usize,
    device: &B::Device,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Sample>>
where
    B: Backend,
    M: Understanding<B> + ImageCodec<B>,
    P: RegionProposer,
{
    let grid = model.latent_grid(size);
    let mut out = Vec::with_capacity(rollouts.len());
    for chunk in rollouts.chunks(batch.max(1)) {
        let images: Vec<PixelImage> = chunk.iter().map(|r| r.image.clone()).collect();
        let prompts: Vec<String> = chunk.iter().map(|r| r.prompt.clone()).collect();
        let judged = evaluator.judge(
            model,
            PixelImage::to_tensor::<B>(&images, device)?,
            &prompts,
        )?;
        progress(judged.len());
        for (r, judged) in chunk.iter().zip(judged) {
            let (map, _) = composer.compose_latent(&judged.judgement, size, grid);
            out.push(Sample {
                prompt: r.prompt.clone(),
                image: r.image.clone(),
                judged,
                map,
            });
        }
    }
    Ok(out)
}

/// Stage 2: `steps` calls of [`Trainer::step`] on batches of `batch` samples drawn from
/// `pool` (indices into `samples`) without replacement, reshuffled by `rng` whenever it runs
/// out. The images are encoded by the model being trained. `on_step` sees every report.
#[allow(clippy::too_many_arguments)]
pub fn train_on<B, M, O, Opt, R>(
    trainer: &mut Trainer<B, M, O, Opt>,
    samples: &[Sample],
    pool: &[usize],
    steps: usize,
    batch: usize,
    rng: &mut R,
    mut on_step: impl FnMut(&StepReport) -> Result<()>,
) -> Result<()>
where
    B: AutodiffBackend,
    M: Generator<B> + AutodiffModule<B>,
    M::InnerModule: ImageCodec<B::InnerBackend>,
    O: Objective<B, M>,
    Opt: Optimizer<M, B>,
    R: Rng,
{
    if pool.is_empty() || batch == 0 {
        return Err(SrumError::Training(
            "nothing to train on: the sample pool or the batch is empty".into(),
        ));
    }
    if let Some(&bad) = pool.iter().find(|&&i| i >= samples.len()) {
        return Err(SrumError::Training(format!(
            "sample {bad} of the pool is not among the {} samples",
            samples.len()
        )));
    }
    let Some(first) = samples.first() else {
        return Err(SrumError::Training("no samples".into()));
    };
    let size = ImageSize::new(first.image.width, first.image.height);
    let device = trainer.device().clone();
    let mut order: Vec<usize> = Vec::new();
    for _ in 0..steps {
        let mut idx = Vec::with_capacity(batch);
        while idx.len() < batch {
            if order.is_empty() {
                order = pool.to_vec();
                order.shuffle(rng);
            }
            idx.extend(order.pop());
        }
        let images: Vec<PixelImage> = idx.iter().map(|&i| samples[i].image.clone()).collect();
        let maps: Vec<RewardMap> = idx.iter().map(|&i| samples[i].map.clone()).collect();
        let prompts: Vec<String> = idx.iter().map(|&i| samples[i].prompt.clone()).collect();
        let inner = trainer.model().valid();
        let grid = inner.latent_grid(size);
        let latents = inner.encode_images(PixelImage::to_tensor(&images, &device)?)?;
        let batch = SrumBatch::from_maps(prompts, Tensor::from_inner(latents), grid, &maps)?;
        let report = trainer.step(batch)?;
        on_step(&report)?;
    }
    Ok(())
}
