//! Criterion benchmarks of the operations SRUM spends its time in, on the shipped reference
//! model (`assets/tiny-umm`) and the flex CPU backend:
//!
//! - `trainer_step/{anchor,reference}`: one `Trainer::step`, batch 32, the published recipe;
//! - `rollout/sample`: 20 guided Euler steps for a batch of 64 images;
//! - `self_judgement/judge`: `SelfEvaluator::judge` (proposals and questions) on 64 images;
//! - `reward_map/{dense,latent}_{512,1024}`: one map from a global score and 5 boxes, at image
//!   resolution, and straight at the latent grid (32x32 and 64x64, BAGEL's grids).
//!
//! `cargo bench --bench srum` (add `-- reward_map` to run one group). Side-by-side numbers
//! against PyTorch come from `scripts/bench_vs_pytorch.sh` instead, which runs both peers in one
//! go; see docs/PERFORMANCE.md.

use std::hint::black_box;
use std::time::Duration;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use srum::flow::{EulerSampler, EulerSamplerConfig, generate_indexed};
use srum::image::PixelImage;
use srum::judge::{ConnectedComponents, SelfEvaluator, SelfEvaluatorConfig};
use srum::model::{ImageCodec, ImageSize, LatentGrid};
use srum::reward::RewardComposer;
use srum::train::{Constraint, SrumBatch, Trainer, TrainerConfig};
use srum_world::tiny::TinyUmm;
use srum_world::world::{PromptSpec, Split, split_prompts};

mod common;

type B = Autodiff<Flex>;

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/tiny-umm");

fn prompts(rng: &mut ChaCha8Rng, n: usize) -> Vec<String> {
    let all: Vec<String> = split_prompts(Split::Train, 0)
        .iter()
        .map(|p| p.text())
        .collect();
    (0..n)
        .map(|_| all[rng.random_range(0..all.len())].clone())
        .collect()
}

fn model() -> (TinyUmm<B>, usize) {
    let (m, c) = TinyUmm::<B>::load_dir(MODEL, &Default::default())
        .unwrap_or_else(|e| panic!("{MODEL}: {e}"));
    (m, c.image_size)
}

fn trainer_step(c: &mut Criterion) {
    let device = Default::default();
    let (model, size) = model();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let LatentGrid { rows: h, cols: w } = model.latent_grid(ImageSize::square(size));
    let (n, ch, b) = (h * w, model.latent_channels(), 32);
    let mut g = c.benchmark_group("trainer_step");
    g.throughput(Throughput::Elements(b as u64));
    g.sample_size(20);
    for (name, constraint) in [
        ("anchor", Constraint::Anchor),
        ("reference", Constraint::ReferenceModel),
    ] {
        let cfg = TrainerConfig {
            constraint,
            ..TrainerConfig::default()
        };
        let mut trainer = Trainer::new(model.clone(), cfg, &device).expect("trainer");
        let latents: Vec<f32> = (0..b * n * ch)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let reward: Vec<f32> = (0..b * n).map(|_| rng.random_range(0.0..1.0)).collect();
        let batch = SrumBatch {
            prompts: prompts(&mut rng, b),
            latents: Tensor::from_data(TensorData::new(latents, [b, n, ch]), &device),
            anchor: None,
            reward: Tensor::from_data(TensorData::new(reward, [b, n]), &device),
        };
        g.bench_function(name, |bench| {
            bench.iter(|| black_box(trainer.step(batch.clone()).expect("step")))
        });
    }
    g.finish();
}

fn rollout(c: &mut Criterion) {
    let (model, size) = model();
    let model = model.valid();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let ps = prompts(&mut rng, 64);
    let sampler = EulerSampler::new(EulerSamplerConfig::default());
    let mut g = c.benchmark_group("rollout");
    g.throughput(Throughput::Elements(64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    g.bench_function("sample", |bench| {
        bench.iter(|| {
            black_box(
                generate_indexed(
                    &model,
                    &ps,
                    ImageSize::square(size),
                    &sampler,
                    64,
                    0,
                    0,
                    &Default::default(),
                )
                .expect("generate"),
            )
        })
    });
    g.finish();
}

fn self_judgement(c: &mut Criterion) {
    let (model, size) = model();
    let model = model.valid();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let ps = prompts(&mut rng, 64);
    let images: Vec<PixelImage> = ps
        .iter()
        .map(|p| {
            PromptSpec::parse(p)
                .expect("grammar prompt")
                .sample_scene(&mut rng, size)
                .render(size)
        })
        .collect();
    let images = PixelImage::to_tensor::<Flex>(&images, &Default::default()).expect("image tensor");
    let evaluator = SelfEvaluator::new(
        SelfEvaluatorConfig::default(),
        ConnectedComponents::default(),
    )
    .expect("evaluator");
    let mut g = c.benchmark_group("self_judgement");
    g.throughput(Throughput::Elements(64));
    g.sample_size(10);
    g.bench_function("judge", |bench| {
        bench.iter(|| black_box(evaluator.judge(&model, images.clone(), &ps).expect("judge")))
    });
    g.finish();
}

fn reward_map(c: &mut Criterion) {
    let composer = RewardComposer::default();
    let mut g = c.benchmark_group("reward_map");
    g.throughput(Throughput::Elements(1));
    for side in [512usize, 1024] {
        let j = common::five_box_judgement(side);
        g.bench_function(format!("dense_{side}"), |bench| {
            bench.iter(|| black_box(composer.compose(&j, ImageSize::new(side, side))))
        });
        let grid = side / 16;
        g.bench_function(format!("latent_{side}"), |bench| {
            bench.iter(|| {
                black_box(composer.compose_latent(
                    &j,
                    ImageSize::new(side, side),
                    LatentGrid::new(grid, grid),
                ))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, reward_map, trainer_step, rollout, self_judgement);
criterion_main!(benches);
