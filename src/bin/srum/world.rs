//! `srum pretrain`, `srum generate`, `srum eval`: the reference model and the synthetic world.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use srum::flow::{EulerSampler, EulerSamplerConfig, Guidance, host_normal};
use srum::image::PixelImage;
use srum::model::UnifiedModel;
use srum::tiny::{PretrainConfig, TinyUmm, TinyUmmConfig, build_tokenizer, pretrain};

type Ad = Autodiff<Flex>;

fn bar(len: u64, what: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(&format!("{what} {{bar:40}} {{pos}}/{{len}} [{{elapsed}} < {{eta}}] {{msg}}"))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(len).with_style(style)
}

#[derive(clap::Args)]
pub struct PretrainArgs {
    /// Output model directory (model.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    out: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = 4000)]
    steps: usize,
    /// Images per step for each ability.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many minutes even if steps remain.
    #[arg(long)]
    time_budget_min: Option<f64>,
    /// Backbone width.
    #[arg(long, default_value_t = 96)]
    d_model: usize,
    /// Blocks.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// JSON lines of per-step losses.
    #[arg(long)]
    metrics: Option<PathBuf>,
}

pub fn run_pretrain(a: PretrainArgs) -> Result<ExitCode, String> {
    if a.steps == 0 || a.batch == 0 || !(a.lr.is_finite() && a.lr > 0.0) || a.d_model == 0 || a.layers == 0 || a.d_model % 4 != 0 {
        return Err("--steps, --batch, --lr, --layers must be positive and --d-model a positive multiple of 4".into());
    }
    let device = Default::default();
    let tokenizer = build_tokenizer().map_err(|e| e.to_string())?;
    let config = TinyUmmConfig::new()
        .with_d_model(a.d_model)
        .with_n_layers(a.layers)
        .with_d_ff(2 * a.d_model)
        .with_vocab(tokenizer.get_vocab_size(true));
    <Flex as burn::tensor::backend::Backend>::seed(&device, a.seed);
    let model = config.init::<Ad>(tokenizer, &device);
    let pc = PretrainConfig {
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        seed: a.seed,
        time_budget_s: a.time_budget_min.map(|m| m * 60.0),
    };
    let pb = bar(a.steps as u64, "pretraining");
    let mut metrics = match &a.metrics {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let start = Instant::now();
    let (mut g, mut u, mut acc) = (0f32, 0f32, 0f32);
    let model = pretrain(model, &pc, &device, |r| {
        let k = 0.02;
        (g, u, acc) = if r.step == 1 {
            (r.generation_loss, r.understanding_loss, r.understanding_accuracy)
        } else {
            (g + k * (r.generation_loss - g), u + k * (r.understanding_loss - u), acc + k * (r.understanding_accuracy - acc))
        };
        pb.set_position(r.step as u64);
        pb.set_message(format!("gen {g:.4} und {u:.4} acc {acc:.3}"));
        if let Some(f) = metrics.as_mut() {
            use std::io::Write;
            let _ = writeln!(f, "{}", serde_json::to_string(r).unwrap_or_default());
        }
    })
    .map_err(|e| e.to_string())?;
    pb.finish();
    model.valid().save_dir(&config, &a.out).map_err(|e| e.to_string())?;
    eprintln!(
        "pretrained in {:.1} min (seed {}); smoothed losses: generation {g:.4}, understanding {u:.4}, train accuracy {acc:.3}; saved to {}",
        start.elapsed().as_secs_f64() / 60.0,
        a.seed,
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
