//! Embedding `srum` in your own loop, without the CLI: both SRUM stages in miniature on the toy
//! model. `round::rollout` samples images, `round::self_judge` has the model's own
//! understanding score them (`SelfEvaluator`) and turns the scores into reward maps
//! (`RewardComposer`), and `round::train_on` feeds them to `Trainer::step`. Swap `ToyUmm` for
//! your `UnifiedModel` implementation and keep the loop.
//!
//! `cargo run --example custom_pipeline`

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use rand::SeedableRng;
use srum::flow::{EulerSampler, EulerSamplerConfig};
use srum::judge::{ConnectedComponents, SelfEvaluator, SelfEvaluatorConfig};
use srum::model::ImageSize;
use srum::reward::RewardComposer;
use srum::round;
use srum::train::{Trainer, TrainerConfig};
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
    for r in 0..3 {
        // Stage 1: rollout and self-evaluation, on the model without autodiff. Between these
        // calls is where a pipeline of its own saves images, filters or re-weights samples.
        let generator = trainer.model().valid();
        let rollouts = round::rollout(
            &generator,
            &prompts,
            1,
            size,
            &sampler,
            8,
            &mut rng,
            &device,
            |_| {},
        )?;
        let samples = round::self_judge(
            &generator,
            &evaluator,
            &composer,
            rollouts,
            size,
            8,
            &device,
            |_| {},
        )?;
        let regions: usize = samples
            .iter()
            .map(|s| s.judged.judgement.regions.len())
            .sum();
        println!(
            "round {r}: {} images judged, {regions} regions scored",
            samples.len()
        );

        // Stage 2: reward-weighted training on the model's own images.
        let pool: Vec<usize> = (0..samples.len()).collect();
        round::train_on(&mut trainer, &samples, &pool, 5, 8, &mut rng, |s| {
            println!(
                "{r:>5}  {:>4}  {:<8.5}  {:<8.5}  {:<10.5}  {:<9.5}  {:<8.2e}  {:.0}",
                s.optimizer_step,
                s.loss,
                s.reward_loss,
                s.constraint_loss,
                s.grad_norm().unwrap_or(f32::NAN),
                s.lr,
                s.samples_per_sec
            );
            Ok(())
        })?;
    }
    let dir = std::env::temp_dir().join("srum-toy-checkpoint");
    trainer.save_checkpoint(&dir)?;
    println!("checkpoint written to {}", dir.display());
    Ok(())
}
