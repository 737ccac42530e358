//! Embedding `srum` in your own loop, without the CLI: both SRUM stages in miniature on the toy
//! model. The generator samples images, `SelfEvaluator` has the model's own understanding score
//! them, `RewardComposer` turns the scores into reward maps, and `Trainer::step` learns from
//! them. Swap `ToyUmm` for your `UnifiedModel` implementation and keep the loop.
//!
//! `cargo run --example custom_pipeline`

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use rand::SeedableRng;
use srum::flow::{EulerSampler, EulerSamplerConfig, Guidance, host_normal};
use srum::judge::{ConnectedComponents, SelfEvaluator, SelfEvaluatorConfig};
use srum::model::{FlowGenerator, Generator, ImageCodec, ImageSize};
use srum::reward::RewardComposer;
use srum::train::{SrumBatch, Trainer, TrainerConfig};
use srum_world::toy::ToyUmmConfig;

type B = Autodiff<Flex>;

fn main() -> srum::Result<()> {
    let device = Default::default();
    let side = 8;
    let size = ImageSize::square(side);
    let model = ToyUmmConfig::new().with_image_size(side).init::<B>(&device);
    let prompts: Vec<String> = [
        "a red circle",
        "a blue square left of a green circle",
        "two yellow triangles",
        "a red square above a blue circle",
    ]
    .iter()
    .cycle()
    .take(8)
    .map(|s| s.to_string())
    .collect();
    let evaluator = SelfEvaluator::new(
        SelfEvaluatorConfig::default(),
        ConnectedComponents::default(),
    )?;
    let sampler = EulerSampler::new(EulerSamplerConfig {
        steps: 10,
        guidance_scale: 2.0,
        ..Default::default()
    });
    let composer = RewardComposer::default();
    let config = TrainerConfig::new().with_lr(1e-3).with_warmup_steps(5);
    let mut trainer = Trainer::new(model, config, &device)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);

    println!("round  step  loss      reward    constraint  grad_norm  lr        samples/s");
    for round in 0..3 {
        // Stage 1: rollout and self-evaluation, on the model without autodiff.
        let generator = trainer.model().valid();
        let grid = generator.latent_grid(size);
        let (n, c) = (grid.tokens(), generator.latent_channels());
        let noise = host_normal(&mut rng, [prompts.len(), n, c], &device);
        let cond = generator.condition(&prompts)?;
        let uncond = generator.unconditional(prompts.len())?;
        let latents = sampler.sample(noise, |x, t, g| {
            Ok(match g {
                Guidance::Conditional => generator.velocity(x, t, &cond),
                Guidance::Unconditional => generator.velocity(x, t, &uncond),
            })
        })?;
        let images = generator.decode_latents(latents, size)?;
        let judged = evaluator.judge(&generator, images.clone(), &prompts)?;
        let maps: Vec<_> = judged
            .iter()
            .map(|j| composer.compose_latent(&j.judgement, size, grid).0)
            .collect();
        let regions: usize = judged.iter().map(|j| j.judgement.regions.len()).sum();
        println!(
            "round {round}: {} images judged, {regions} regions scored",
            judged.len()
        );

        // Stage 2: reward-weighted training on the model's own images.
        let x_gen = Tensor::from_inner(generator.encode_images(images)?);
        let batch = SrumBatch::from_maps(prompts.clone(), x_gen, grid, &maps)?;
        for _ in 0..5 {
            let r = trainer.step(batch.clone())?;
            println!(
                "{round:>5}  {:>4}  {:<8.5}  {:<8.5}  {:<10.5}  {:<9.5}  {:<8.2e}  {:.0}",
                r.optimizer_step,
                r.loss,
                r.reward_loss,
                r.constraint_loss,
                r.grad_norm().unwrap_or(f32::NAN),
                r.lr,
                r.samples_per_sec
            );
        }
    }
    let dir = std::env::temp_dir().join("srum-toy-checkpoint");
    trainer.save_checkpoint(&dir)?;
    println!("checkpoint written to {}", dir.display());
    Ok(())
}
