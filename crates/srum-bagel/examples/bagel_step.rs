//! One SRUM round's three costs on a BAGEL checkpoint folder: a rollout image (guided
//! sampling, VAE decode), a judgement (ViT, greedy answer) and a training step (SRUM loss,
//! backward, AdamW), each timed, with the process's peak resident memory (CPU; a GPU's peak is
//! read outside, see `scripts/gpu_bagel.sh`).
//!
//! ```text
//! cargo run --release -p srum-bagel --example bagel_step -- --checkpoint crates/srum-bagel/tests/data/tiny-gqa --size 32x48 --steps 5
//! cargo run --release -p srum-bagel --features cuda --example bagel_step -- --checkpoint BAGEL-7B-MoT --backend cuda --dtype bf16 --size 512x512
//! ```

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use srum::flow::{EulerSampler, generate};
use srum::image::PixelImage;
use srum::model::{ImageCodec, ImageSize, TrainableSet, Understanding};
use srum::reward::RewardMap;
use srum::train::{Precision, SrumBatch, Trainer, TrainerConfig};
use srum_bagel::{BagelModel, BagelTemplates, rollout_sampler};

#[path = "shared/proc_memory.rs"]
mod proc_memory;
use proc_memory::{mib, peak_rss};

struct Args {
    checkpoint: PathBuf,
    backend: String,
    dtype: String,
    size: ImageSize,
    steps: Option<usize>,
    answer_tokens: usize,
    generation_only: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        checkpoint: PathBuf::new(),
        backend: "flex".into(),
        dtype: "f32".into(),
        size: ImageSize::square(512),
        steps: None,
        answer_tokens: 64,
        generation_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--checkpoint" => a.checkpoint = PathBuf::from(value()?),
            "--backend" => a.backend = value()?,
            "--dtype" => a.dtype = value()?,
            "--size" => {
                let v = value()?;
                let (w, h) = v
                    .split_once('x')
                    .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
                    .ok_or(format!("--size {v}: expected WxH"))?;
                a.size = ImageSize::new(w, h);
            }
            "--steps" => a.steps = Some(value()?.parse().map_err(|e| format!("--steps: {e}"))?),
            "--answer-tokens" => {
                a.answer_tokens = value()?
                    .parse()
                    .map_err(|e| format!("--answer-tokens: {e}"))?
            }
            "--generation-only" => a.generation_only = true,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.checkpoint.as_os_str().is_empty() {
        return Err("--checkpoint DIR is required".into());
    }
    Ok(a)
}

fn round<B: AutodiffBackend>(a: &Args, device: &B::Device) -> Result<(), String> {
    let templates = BagelTemplates {
        max_answer_tokens: a.answer_tokens,
        ..BagelTemplates::default()
    };
    let t0 = Instant::now();
    let model = BagelModel::<B>::load(&a.checkpoint, templates, device)
        .and_then(|m| m.with_generation_size(a.size))
        .map_err(|e| e.to_string())?;
    let load_s = t0.elapsed().as_secs_f64();
    let inner = model.valid();
    let mut cfg = rollout_sampler();
    if let Some(s) = a.steps {
        cfg.steps = s;
    }
    let sampler = EulerSampler::new(cfg);
    let prompt = "a red circle above a blue square".to_string();
    let mut rng = srum::flow::image_rng(0, 0);

    let t = Instant::now();
    let images = generate(
        &inner,
        std::slice::from_ref(&prompt),
        a.size,
        &sampler,
        1,
        &mut rng,
        device,
    )
    .map_err(|e| e.to_string())?;
    let rollout_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let question = format!("Does this image show {prompt}? Answer yes or no.");
    let answer = inner
        .answer(
            PixelImage::to_tensor::<B::InnerBackend>(&images, device).map_err(|e| e.to_string())?,
            &[question],
        )
        .map_err(|e| e.to_string())?;
    let judge_s = t.elapsed().as_secs_f64();

    let latents = inner
        .encode_images(
            PixelImage::to_tensor::<B::InnerBackend>(&images, device).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
    let grid = inner.latent_grid(a.size);
    let batch = SrumBatch::from_maps(
        vec![prompt],
        burn::tensor::Tensor::from_inner(latents),
        grid,
        &[RewardMap::filled(grid, 1.0)],
    )
    .map_err(|e| e.to_string())?;
    let config = TrainerConfig {
        trainable: if a.generation_only {
            TrainableSet::GenerationOnly
        } else {
            TrainableSet::GenerationAndShared
        },
        // A bf16 backend makes bf16 tensors: the trainer keeps f32 masters of what it trains.
        precision: if a.dtype == "bf16" {
            Precision::Bf16
        } else {
            Precision::F32
        },
        ..TrainerConfig::default()
    };
    let mut trainer = Trainer::new(model, config, device).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let report = trainer.step(batch).map_err(|e| e.to_string())?;
    let train_s = t.elapsed().as_secs_f64();
    println!(
        "{{\"backend\":\"{} {}\",\"size\":\"{}x{}\",\"sampler_steps\":{},\"load_s\":{load_s:.3},\"rollout_s\":{rollout_s:.3},\"judge_s\":{judge_s:.3},\"answer_chars\":{},\"train_step_s\":{train_s:.3},\"loss\":{},\"peak_rss_mib\":{:.1}}}",
        a.backend,
        a.dtype,
        a.size.width,
        a.size.height,
        sampler.config.steps,
        answer.first().map_or(0, |s| s.chars().count()),
        report.loss,
        mib(peak_rss())
    );
    Ok(())
}

fn run(a: &Args) -> Result<(), String> {
    match (a.backend.as_str(), a.dtype.as_str()) {
        ("flex", "f32") => round::<Autodiff<Flex>>(a, &Default::default()),
        #[cfg(feature = "cuda")]
        ("cuda", "f32") => round::<Autodiff<burn::backend::Cuda<f32>>>(a, &Default::default()),
        #[cfg(feature = "cuda")]
        ("cuda", "bf16") => {
            round::<Autodiff<burn::backend::Cuda<half::bf16>>>(a, &Default::default())
        }
        #[cfg(feature = "wgpu")]
        ("wgpu", "f32") => round::<Autodiff<burn::backend::Wgpu>>(a, &Default::default()),
        (b, d) => Err(format!(
            "--backend {b} --dtype {d} is not in this build: flex runs f32; cuda (f32, bf16) \
             needs --features cuda; wgpu (f32) needs --features wgpu"
        )),
    }
}

fn main() {
    let code = match parse().and_then(|a| run(&a)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bagel_step: {e}");
            2
        }
    };
    std::process::exit(code);
}
