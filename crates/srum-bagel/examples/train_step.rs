//! SRUM training steps through srum's `Trainer` on a BAGEL of a chosen shape with random
//! weights (BAGEL-7B-MoT's by default) or on an official folder: the time per step and the
//! peak memory, beside the memory model's prediction for the same step.
//!
//! ```text
//! # on the CPU, small shapes:
//! cargo run --release -p srum-bagel --example train_step -- --shape medium --size 512x512 --precision bf16 --checkpointing
//! # on a GPU, BAGEL-7B-MoT's shape (the GPU's peak is read outside, see scripts/gpu_bagel.sh):
//! cargo run --release -p srum-bagel --features cuda --example train_step -- --backend cuda --shape 7b --size 1024x1024 --precision bf16 --checkpointing --generation-only
//! ```

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::{AutodiffBackend, set_default_float_dtype};
use burn::tensor::{DType, Distribution, Tensor};
use srum::model::{ImageCodec, ImageSize, TrainableSet};
use srum::reward::RewardMap;
use srum::train::{AdamWSettings, Precision, SrumBatch, Trainer, TrainerConfig};
use srum_bagel::{
    BagelConfig, BagelModel, BagelTemplates, LoraConfig, MemoryPrecision, PackedFlowMatching,
    StepShape, Trained, VaeConfig, VitConfig, step_memory,
};

#[path = "shared/proc_memory.rs"]
mod proc_memory;
use proc_memory::{mib, peak_rss};

struct Args {
    backend: String,
    shape: String,
    checkpoint: Option<PathBuf>,
    tokenizer: PathBuf,
    size: ImageSize,
    precision: Precision,
    checkpointing: bool,
    lora_rank: Option<usize>,
    generation_only: bool,
    steps: usize,
    batch: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        backend: "flex".into(),
        shape: "7b".into(),
        checkpoint: None,
        tokenizer: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/tiny-gqa/tokenizer.json"),
        size: ImageSize::square(512),
        precision: Precision::F32,
        checkpointing: false,
        lora_rank: None,
        generation_only: false,
        steps: 3,
        batch: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--backend" => a.backend = value()?,
            "--shape" => a.shape = value()?,
            "--checkpoint" => a.checkpoint = Some(PathBuf::from(value()?)),
            "--tokenizer" => a.tokenizer = PathBuf::from(value()?),
            "--size" => {
                let v = value()?;
                let (w, h) = v
                    .split_once('x')
                    .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
                    .ok_or(format!("--size {v}: expected WxH"))?;
                a.size = ImageSize::new(w, h);
            }
            "--precision" => {
                a.precision = match value()?.as_str() {
                    "f32" => Precision::F32,
                    "bf16" => Precision::Bf16,
                    other => return Err(format!("--precision f32|bf16, not {other}")),
                }
            }
            "--checkpointing" => a.checkpointing = true,
            "--lora-rank" => a.lora_rank = Some(number(value()?)?),
            "--generation-only" => a.generation_only = true,
            "--steps" => a.steps = number(value()?)?,
            "--batch" => a.batch = number(value()?)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.steps == 0 || a.batch == 0 {
        return Err("--steps and --batch must be at least 1".into());
    }
    Ok(a)
}

/// The backbone, ViT and VAE of a named shape: `7b` is BAGEL-7B-MoT's (hidden 3584, 28
/// layers, SigLIP ViT, FLUX VAE); `medium` and `tiny` are the memory model's CPU checks.
fn shape(name: &str) -> Result<(BagelConfig, VaeConfig), String> {
    let small_vae = VaeConfig::new()
        .with_ch(32)
        .with_ch_mult(vec![1, 2, 2, 2])
        .with_num_res_blocks(1);
    match name {
        "7b" => Ok((
            BagelConfig::new().with_vit(Some(VitConfig::new())),
            VaeConfig::new(),
        )),
        "medium" => Ok((
            BagelConfig::new()
                .with_vocab_size(4096)
                .with_hidden_size(512)
                .with_intermediate_size(1536)
                .with_num_hidden_layers(8)
                .with_num_attention_heads(8)
                .with_num_key_value_heads(2)
                .with_max_latent_size(64),
            small_vae,
        )),
        "tiny" => Ok((
            BagelConfig::new()
                .with_vocab_size(256)
                .with_hidden_size(64)
                .with_intermediate_size(192)
                .with_num_hidden_layers(2)
                .with_num_attention_heads(4)
                .with_num_key_value_heads(2)
                .with_max_latent_size(64),
            small_vae,
        )),
        other => Err(format!("--shape 7b|medium|tiny, not {other}")),
    }
}

fn steps<B: AutodiffBackend>(a: &Args, device: &B::Device) -> Result<(), String> {
    if a.precision == Precision::Bf16 {
        set_default_float_dtype::<B>(device, DType::BF16).map_err(|e| e.to_string())?;
    }
    let base = peak_rss();
    let templates = BagelTemplates::default();
    let (model, config, vae) = match &a.checkpoint {
        Some(dir) => {
            let m = BagelModel::<B>::load(dir, templates, device).map_err(|e| e.to_string())?;
            let (c, v) = (m.bagel().config().clone(), m.vae().config().clone());
            (m, c, v)
        }
        None => {
            let (mut config, vae) = shape(&a.shape)?;
            let tokenizer = tokenizers::Tokenizer::from_file(&a.tokenizer)
                .map_err(|e| format!("{}: {e}", a.tokenizer.display()))?;
            let id = |t: &str| {
                tokenizer
                    .token_to_id(t)
                    .ok_or(format!("{}: no {t}", a.tokenizer.display()))
            };
            config.bos_token_id = id("<|im_start|>")?;
            config.eos_token_id = id("<|im_end|>")?;
            config.start_of_image_id = id("<|vision_start|>")?;
            config.end_of_image_id = id("<|vision_end|>")?;
            let m = BagelModel::new(config.init(device), vae.init(device), tokenizer, templates)
                .map_err(|e| e.to_string())?;
            (m, config, vae)
        }
    };
    let model = model
        .with_generation_size(a.size)
        .map_err(|e| e.to_string())?;
    let (model, trained) = match a.lora_rank {
        Some(rank) => {
            let lora = LoraConfig {
                rank,
                alpha: rank as f64,
                ..LoraConfig::default()
            };
            let m = model.with_lora(lora.clone()).map_err(|e| e.to_string())?;
            (m, Trained::Lora(lora))
        }
        None if a.generation_only => (model, Trained::GenerationExpert),
        None => (model, Trained::LanguageModel),
    };
    let grid = model.latent_grid(a.size);
    let channels = model.latent_channels();
    let prompt = "a red circle above a blue square";
    let prompt_tokens = model.encode_text(prompt).map_err(|e| e.to_string())?.len() + 2;

    let trainer_config = TrainerConfig {
        // The recipe's, except the warmup: the first steps take full updates.
        warmup_steps: 0,
        optimizer: AdamWSettings::default(),
        trainable: match trained {
            Trained::LanguageModel => TrainableSet::GenerationAndShared,
            _ => TrainableSet::GenerationOnly,
        },
        precision: a.precision,
        ..TrainerConfig::default()
    };
    let objective = PackedFlowMatching::new().with_checkpointing(a.checkpointing);
    let mut trainer = Trainer::with_objective(model, objective, trainer_config, device)
        .map_err(|e| e.to_string())?;
    let maps: Vec<RewardMap> = (0..a.batch)
        .map(|i| RewardMap::filled(grid, if i % 2 == 0 { 1.0 } else { -0.5 }))
        .collect();
    let mut times = Vec::with_capacity(a.steps);
    let mut loss = 0.0;
    for _ in 0..a.steps {
        let x = Tensor::<B, 3>::random(
            [a.batch, grid.tokens(), channels],
            Distribution::Normal(0.0, 1.0),
            device,
        );
        let prompts = vec![prompt.to_string(); a.batch];
        let batch = SrumBatch::from_maps(prompts, x, grid, &maps).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let r = trainer.step(batch).map_err(|e| e.to_string())?;
        // The step's work is done when its loss is on the host; a GPU's queue is drained.
        times.push(t.elapsed().as_secs_f64());
        loss = r.loss;
    }
    let peak = peak_rss().saturating_sub(base);
    let predicted = step_memory(
        &config,
        &vae,
        &StepShape {
            trained: trained.clone(),
            precision: match a.precision {
                Precision::F32 => MemoryPrecision::F32,
                Precision::Bf16 => MemoryPrecision::Bf16MasterF32,
            },
            image_tokens: grid.tokens() + 2,
            prompt_tokens,
            batch: a.batch,
            checkpointing: a.checkpointing,
        },
    );
    let mut later = times[1..].to_vec();
    later.sort_by(f64::total_cmp);
    let median = later.get(later.len() / 2).copied().unwrap_or(times[0]);
    println!(
        "{{\"backend\":\"{}\",\"shape\":\"{}\",\"size\":\"{}x{}\",\"tokens\":{},\"batch\":{},\"trained\":\"{}\",\"precision\":\"{:?}\",\"checkpointing\":{},\"steps\":{},\"first_step_s\":{:.3},\"step_s\":{median:.3},\"loss\":{loss},\"peak_rss_mib\":{:.0},\"predicted_mib\":{:.0},\"predicted_activations_mib\":{:.0}}}",
        a.backend,
        a.checkpoint
            .as_ref()
            .map_or(a.shape.clone(), |p| p.display().to_string()),
        a.size.width,
        a.size.height,
        prompt_tokens + grid.tokens() + 2,
        a.batch,
        match &trained {
            Trained::GenerationExpert => "generation expert".to_string(),
            Trained::LanguageModel => "language model".to_string(),
            Trained::Lora(l) => format!("LoRA r{}", l.rank),
        },
        a.precision,
        a.checkpointing,
        a.steps,
        times[0],
        mib(peak),
        mib(predicted.total()),
        mib(predicted.activations),
    );
    Ok(())
}

fn run(a: &Args) -> Result<(), String> {
    match a.backend.as_str() {
        "flex" => steps::<Autodiff<Flex>>(a, &Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => steps::<Autodiff<burn::backend::Cuda>>(a, &Default::default()),
        #[cfg(feature = "wgpu")]
        "wgpu" => steps::<Autodiff<burn::backend::Wgpu>>(a, &Default::default()),
        b => Err(format!(
            "--backend {b} is not in this build: flex always; cuda needs --features cuda, wgpu \
             --features wgpu"
        )),
    }
}

fn main() {
    let code = match parse().and_then(|a| run(&a)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("train_step: {e}");
            2
        }
    };
    std::process::exit(code);
}
