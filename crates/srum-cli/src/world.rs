//! `srum pretrain`, `srum generate`, `srum eval`: the reference model and the synthetic world.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use crate::backend::{Ad, Back};
use crate::model::{Loaded, ModelArgs};
use burn::module::AutodiffModule;
use indicatif::{ProgressBar, ProgressStyle};
use srum::flow::{EulerSampler, EulerSamplerConfig};
use srum::model::{FlowGenerator, ImageCodec, ImageSize};
use srum_world::tiny::{
    Prediction, PretrainConfig, PromptScore, TinyUmm, TinyUmmConfig, UnderstandingMix,
    build_tokenizer, pretrain,
};

pub fn bar(len: u64, what: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(&format!(
        "{what} {{bar:40}} {{pos}}/{{len}} [{{elapsed}} < {{eta}}] {{msg}}"
    ))
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
    /// Patch side in pixels (a latent token is one patch); must divide the 32-pixel image.
    #[arg(long, default_value_t = 4)]
    patch: usize,
    /// JSON lines of per-step losses (with the seconds since the start).
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Also save the weights after these steps (comma-separated), each to `OUT.stepN`: points
    /// along one schedule, for measuring what training length does. With --ema they are the
    /// step's weights, not the average.
    #[arg(long, value_delimiter = ',')]
    save_at: Vec<usize>,
    /// Understanding pairs per step (default: --batch).
    #[arg(long)]
    understanding_batch: Option<usize>,
    /// Continue from this model directory's weights instead of random ones (same architecture).
    #[arg(long)]
    init: Option<PathBuf>,
    /// What the generation head predicts: the clean image (`clean`) or the velocity.
    #[arg(long, value_enum, default_value_t = PredictionArg::Clean)]
    prediction: PredictionArg,
    /// One image expert for both abilities instead of one per task (BAGEL routes by task).
    #[arg(long)]
    shared_image_expert: bool,
    /// With --init: train only the understanding-only parameters (the judge's image experts and
    /// heads) on the understanding mix; everything generation uses stays bit for bit as loaded.
    #[arg(long, requires = "init")]
    understanding_only: bool,
    /// Train the generator alone (no understanding batch or loss): for measuring it apart
    /// from what the judge's training does to the shared weights.
    #[arg(long, conflicts_with = "understanding_only")]
    generation_only: bool,
    /// Shift of the training timesteps (`s t / (1 + (s - 1) t)`): above 1 trains more at high
    /// noise, where a sample's layout is decided.
    #[arg(long, default_value_t = 1.0)]
    timestep_shift: f32,
    /// Save an exponential moving average of the weights with this decay (e.g. 0.999)
    /// instead of the last step's.
    #[arg(long)]
    ema: Option<f32>,
    /// Measure the generation loss on the clean estimate, not the velocity (weighs high-noise
    /// times as much as nearly clean ones).
    #[arg(long)]
    clean_space_loss: bool,
    /// With --clean-space-loss: weigh times below T0 up, by (T0 / t)^2, so nearly clean
    /// times, where edges are drawn, are not left out.
    #[arg(long, value_name = "T0", requires = "clean_space_loss")]
    low_noise_boost: Option<f32>,
    /// Weigh the generation loss on and around objects (non-white pixels, grown by two) by
    /// 1 + W: what tells shapes apart is a few pixels at their edges.
    #[arg(long, value_name = "W")]
    object_weight: Option<f32>,
    /// Start the image position embeddings at 2D sine-cosine values (only the initial value).
    #[arg(long)]
    sincos_positions: bool,
    /// Condition the generator on time by adaptive layer norm in every block (DiT's adaLN-zero)
    /// instead of adding the time embedding to the tokens once.
    #[arg(long)]
    adaptive_norm: bool,
    /// A depthwise 3x3 convolution over the patch grid in every block, for generation, so
    /// each patch sees its neighbours.
    #[arg(long)]
    neighbour_mixing: bool,
    /// Condition the generator on the whole prompt as one pooled vector too, added to the
    /// time embedding (the attention to the prompt's tokens stays).
    #[arg(long)]
    prompt_condition: bool,
    /// With --neighbour-mixing: a full convolution (channels mixed) instead of a depthwise one.
    #[arg(long, requires = "neighbour_mixing")]
    neighbour_dense: bool,
    /// With --neighbour-mixing: the convolution's side over the patch grid (odd).
    #[arg(long, default_value_t = 3, value_parser = odd_kernel, requires = "neighbour_mixing")]
    neighbour_kernel: usize,
    /// Add the per-patch object-centre head, an auxiliary target for counting.
    #[arg(long)]
    centre_head: bool,
    /// Add the locate head: where a relation's two objects are, an auxiliary target.
    #[arg(long)]
    locate_head: bool,
    /// Add the ground head: which of the statement's objects covers each patch, an auxiliary
    /// target for binding words to objects.
    #[arg(long)]
    ground_head: bool,
    /// With --locate-head: train it on object statements too (where the asked object is).
    #[arg(long, requires = "locate_head")]
    locate_objects: bool,
    /// Understanding batch weights: objects,counts,relations,regions,estimates,blank\[,samples\].
    #[arg(long, default_value = "7,3,4,2,2,2", value_parser = UnderstandingMix::parse)]
    mix: UnderstandingMix,
    /// Split every step into this many shards on parallel threads (gradients summed); use
    /// the machine's cores. 1 draws exactly what earlier versions drew.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    shards: u16,
    /// How the judge's graded answer (the global score) is made from its statements' `P(yes)`:
    /// `all` (the least: every statement must hold) or `parts` (the share of the prompt's
    /// parts that hold). Written to `model.json`; it changes no weight. Default: the --init
    /// model's rule, else `all`.
    #[arg(long, value_enum)]
    prompt_score: Option<PromptScoreArg>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PromptScoreArg {
    All,
    Parts,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum PredictionArg {
    Clean,
    Velocity,
}

pub fn run_pretrain(a: PretrainArgs) -> Result<ExitCode, String> {
    if a.steps == 0
        || a.batch == 0
        || !(a.lr.is_finite() && a.lr > 0.0)
        || a.d_model == 0
        || a.layers == 0
        || !a.d_model.is_multiple_of(4)
        || a.patch == 0
        || !32usize.is_multiple_of(a.patch)
    {
        return Err("--steps, --batch, --lr, --layers must be positive, --d-model a positive multiple of 4 and --patch a divisor of 32".into());
    }
    if let Some(s) = a.save_at.iter().find(|&&s| s == 0 || s > a.steps) {
        return Err(format!(
            "--save-at {s}: a snapshot step must be in 1..={} (--steps)",
            a.steps
        ));
    }
    let device = Default::default();
    let tokenizer = build_tokenizer().map_err(|e| e.to_string())?;
    let config = TinyUmmConfig::new()
        .with_d_model(a.d_model)
        .with_n_layers(a.layers)
        .with_patch(a.patch)
        .with_d_ff(2 * a.d_model)
        .with_vocab(tokenizer.get_vocab_size(true))
        .with_prediction(Some(match a.prediction {
            PredictionArg::Clean => Prediction::Clean,
            PredictionArg::Velocity => Prediction::Velocity,
        }))
        .with_task_experts(Some(!a.shared_image_expert))
        .with_sincos_positions(Some(a.sincos_positions))
        .with_centre_head(Some(a.centre_head))
        .with_locate_head(Some(a.locate_head))
        .with_ground_head(Some(a.ground_head))
        .with_adaptive_norm(Some(a.adaptive_norm))
        .with_neighbour_mixing(Some(a.neighbour_mixing))
        .with_prompt_condition(Some(a.prompt_condition))
        .with_neighbour_dense(Some(a.neighbour_dense))
        .with_neighbour_kernel(Some(a.neighbour_kernel));
    let flag_rule = a.prompt_score.map(|r| match r {
        PromptScoreArg::All => PromptScore::All,
        PromptScoreArg::Parts => PromptScore::Parts,
    });
    <Back as burn::tensor::backend::Backend>::seed(&device, a.seed);
    let (model, config) = match &a.init {
        Some(dir) => {
            let (m, c) = TinyUmm::<Ad>::load_dir(dir, &device).map_err(|e| e.to_string())?;
            // The graded answer's rule changes no weight: the flag may set it anew, and
            // without it the loaded model keeps its own.
            let c = c.resolved();
            let config = config.with_prompt_score(flag_rule.or(c.prompt_score));
            let c = c.with_prompt_score(config.prompt_score);
            if c != config {
                return Err(format!(
                    "--init {}: its config differs from the flags' ({c})",
                    dir.display()
                ));
            }
            (m, config)
        }
        None => {
            let config = config.with_prompt_score(Some(flag_rule.unwrap_or_default()));
            (config.init::<Ad>(tokenizer, &device), config)
        }
    };
    let pc = PretrainConfig {
        steps: a.steps,
        batch: a.batch,
        understanding_batch: a.understanding_batch,
        lr: a.lr,
        seed: a.seed,
        time_budget_s: a.time_budget_min.map(|m| m * 60.0),
        understanding_only: a.understanding_only,
        generation_only: a.generation_only,
        timestep_shift: a.timestep_shift,
        ema: a.ema,
        clean_space_loss: a.clean_space_loss,
        low_noise_boost: a.low_noise_boost,
        object_weight: a.object_weight,
        mix: a.mix,
        locate_objects: a.locate_objects,
        shards: usize::from(a.shards),
    };
    let pb = bar(a.steps as u64, "pretraining");
    let mut metrics = match &a.metrics {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let start = Instant::now();
    let (mut g, mut u, mut acc) = (0f32, 0f32, 0f32);
    let mut snapshot_error: Option<String> = None;
    let mut last_step = 0;
    let model = pretrain(model, &pc, &device, |r, m| {
        let k = 0.02;
        (g, u, acc) = if r.step == 1 {
            (
                r.generation_loss,
                r.understanding_loss,
                r.understanding_accuracy,
            )
        } else {
            (
                g + k * (r.generation_loss - g),
                u + k * (r.understanding_loss - u),
                acc + k * (r.understanding_accuracy - acc),
            )
        };
        last_step = r.step;
        pb.set_position(r.step as u64);
        pb.set_message(format!("gen {g:.4} und {u:.4} acc {acc:.3}"));
        if let Some(f) = metrics.as_mut() {
            use std::io::Write;
            let mut line = serde_json::to_value(r).unwrap_or_default();
            if let Some(o) = line.as_object_mut() {
                o.insert("elapsed_s".into(), start.elapsed().as_secs_f64().into());
            }
            let _ = writeln!(f, "{line}");
        }
        if a.save_at.contains(&r.step) && snapshot_error.is_none() {
            let dir = snapshot_dir(&a.out, r.step);
            if let Err(e) = m.valid().save_dir(&config, &dir) {
                // Training goes on: the final weights are still worth saving.
                tracing::warn!(step = r.step, "snapshot to {} failed: {e}", dir.display());
                snapshot_error = Some(format!("snapshot to {}: {e}", dir.display()));
            }
        }
    })
    .map_err(|e| e.to_string())?;
    pb.finish();
    model
        .valid()
        .save_dir(&config, &a.out)
        .map_err(|e| e.to_string())?;
    if let Some(e) = snapshot_error {
        return Err(format!("saved {}, but {e}", a.out.display()));
    }
    let missed: Vec<_> = a.save_at.iter().filter(|&&s| s > last_step).collect();
    if !missed.is_empty() {
        // The time budget stopped the run before these steps.
        eprintln!("warning: stopped after step {last_step}; no snapshot for steps {missed:?}");
    }
    eprintln!(
        "pretrained in {:.1} min (seed {}); smoothed losses: generation {g:.4}, understanding {u:.4}, train accuracy {acc:.3}; saved to {}",
        start.elapsed().as_secs_f64() / 60.0,
        a.seed,
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Where `--save-at` puts the weights after `step`: `OUT.stepN` beside `OUT`.
fn snapshot_dir(out: &std::path::Path, step: usize) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(format!(".step{step}"));
    PathBuf::from(name)
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Model directory (model.json, model.safetensors, tokenizer.json), or with --model bagel
    /// an official BAGEL folder.
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// With --model bagel: BAGEL's prompts and limits as JSON (`BagelTemplates` fields).
    #[arg(long, alias = "bagel-templates")]
    templates: Option<PathBuf>,
    /// Prompts, one per line.
    #[arg(long)]
    prompts: PathBuf,
    /// Output folder: 00000.png, ... and manifest.jsonl.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Images per model call.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

/// Noise and sampler flags shared by `generate` and `eval`.
#[derive(clap::Args, Clone)]
pub struct SamplingArgs {
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Euler steps [default: 20; with --model bagel, BAGEL's rollout sampler: 49 (50
    /// timesteps), shift 3, guidance on t in (0.4, 1], global CFG renorm].
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance weight [default: 4].
    #[arg(long)]
    guidance: Option<f32>,
    /// Timestep shift of the sampling grid (`t' = s t / (1 + (s - 1) t)`; above 1 spends more
    /// steps at high noise, where the layout is decided) [default: 1; with --model bagel, 3].
    #[arg(long)]
    shift: Option<f32>,
    /// Guide only at times above this (guidance on t in (FROM, 1]) [default: 0.4, as BAGEL].
    #[arg(long, value_name = "FROM")]
    guidance_from: Option<f32>,
}

impl SamplingArgs {
    /// The reference model's sampler: 20 Euler steps, guidance 4, unless the flags say otherwise.
    pub fn sampler(&self) -> Result<EulerSampler, String> {
        self.sampler_from(EulerSamplerConfig::default())
    }

    /// `base` with `--steps` and `--guidance` put in where given.
    pub fn sampler_from(&self, base: EulerSamplerConfig) -> Result<EulerSampler, String> {
        let s = EulerSampler::new(EulerSamplerConfig {
            steps: self.steps.unwrap_or(base.steps),
            guidance_scale: self.guidance.unwrap_or(base.guidance_scale),
            shift: self.shift.unwrap_or(base.shift),
            guidance_interval: match self.guidance_from {
                Some(lo) => (lo, base.guidance_interval.1),
                None => base.guidance_interval,
            },
            ..base
        });
        s.config.validate().map_err(|e| e.to_string())?;
        Ok(s)
    }
}

pub fn run_generate(a: GenerateArgs) -> Result<ExitCode, String> {
    let device = Default::default();
    let model = Loaded::<Back>::load(
        &a.model,
        a.templates.as_deref(),
        "--templates",
        &a.checkpoint,
        &device,
    )?;
    // Every prompt is checked before any work: an unknown word is named with its line.
    let prompts = model.read_prompts(&a.prompts)?;
    if prompts.is_empty() {
        return Err(format!("{}: no prompts", a.prompts.display()));
    }
    let job = Job {
        first: 0,
        total: None,
    };
    let sampler = model.sampler(&a.sampling)?;
    let size = model.image_size();
    let run = Generations {
        prompts: &prompts,
        job,
        size,
        out: &a.out,
        sampler: &sampler,
        seed: a.sampling.seed,
        batch_size: a.batch_size,
    };
    match &model {
        Loaded::Tiny(m, _) => write_generations(m, run),
        Loaded::Bagel(m, _) => write_generations(m, run),
    }
}

#[derive(clap::Args)]
pub struct RolloutArgs {
    /// Model directory (model.json, model.safetensors, tokenizer.json), or with --model bagel
    /// an official BAGEL folder.
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// With --model bagel: BAGEL's prompts and limits as JSON (`BagelTemplates` fields).
    #[arg(long, alias = "bagel-templates")]
    templates: Option<PathBuf>,
    /// Output folder: 00000.png, ... and manifest.jsonl (the input of `srum judge --prompts`).
    #[arg(long)]
    out: PathBuf,
    /// Candidates generated per prompt.
    #[arg(long, default_value_t = 4)]
    candidates: usize,
    /// Prompts, one per line (default: the world's training split, single objects left out;
    /// required with --model bagel).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Use only this many prompts (the first ones).
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Images per model call.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Do only part k of n of the images (`k/n`, contiguous blocks); join the parts with
    /// `srum merge`. Each image has its own noise stream, so the parts together are the
    /// images of the whole run.
    #[arg(long, default_value = "0/1")]
    shard: srum::data::Shard,
}

/// Stage 1's rollout: every prompt `--candidates` times, each with its own noise.
pub fn run_rollout(a: RolloutArgs) -> Result<ExitCode, String> {
    if a.candidates == 0 {
        return Err("--candidates must be at least 1".into());
    }
    let device = Default::default();
    let model = Loaded::<Back>::load(
        &a.model,
        a.templates.as_deref(),
        "--templates",
        &a.checkpoint,
        &device,
    )?;
    let mut prompts = match (&a.prompts, &model) {
        (Some(path), _) => model.read_prompts(path)?,
        (None, Loaded::Tiny(..)) => srum_world::world::rollout_prompts(),
        (None, Loaded::Bagel(..)) => {
            return Err("--model bagel needs --prompts FILE (one prompt a line)".into());
        }
    };
    if let Some(n) = a.limit {
        prompts.truncate(n);
    }
    if prompts.is_empty() {
        return Err("no prompts to roll out".into());
    }
    let all: Vec<String> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), a.candidates))
        .collect();
    let range = a.shard.range(all.len());
    let job = Job {
        first: range.start,
        total: Some(all.len()),
    };
    let sampler = model.sampler(&a.sampling)?;
    let run = Generations {
        prompts: &all[range],
        job,
        size: model.image_size(),
        out: &a.out,
        sampler: &sampler,
        seed: a.sampling.seed,
        batch_size: a.batch_size,
    };
    match &model {
        Loaded::Tiny(m, _) => write_generations(m, run),
        Loaded::Bagel(m, _) => write_generations(m, run),
    }
}

/// Where a list of prompts sits in the whole job: global index of its first image, and the
/// job's size (written into sharded manifests so `srum merge` can see a missing part).
#[derive(Clone, Copy)]
struct Job {
    first: usize,
    total: Option<usize>,
}

/// What [`write_generations`] makes: one `size` image per entry of `prompts`, numbered from
/// `job.first`, into `out`.
#[derive(Clone, Copy)]
struct Generations<'a> {
    prompts: &'a [String],
    job: Job,
    size: ImageSize,
    out: &'a std::path::Path,
    sampler: &'a EulerSampler,
    seed: u64,
    batch_size: usize,
}

/// Generates one image per entry of `prompts` into `out` (PNG files and `manifest.jsonl`).
fn write_generations<M: FlowGenerator<Back> + ImageCodec<Back>>(
    model: &M,
    g: Generations<'_>,
) -> Result<ExitCode, String> {
    let Generations {
        prompts,
        job,
        size,
        out,
        sampler,
        seed,
        batch_size,
    } = g;
    let device = Default::default();
    let batch = batch_size.max(1);
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let pb = bar(prompts.len() as u64, "generating");
    let mut manifest = String::new();
    for (k, chunk) in prompts.chunks(batch).enumerate() {
        let first = job.first + k * batch;
        let imgs = srum::flow::generate_indexed(
            model,
            chunk,
            size,
            sampler,
            batch,
            seed,
            first as u64,
            &device,
        )
        .map_err(|e| e.to_string())?;
        for (j, (img, p)) in imgs.iter().zip(chunk).enumerate() {
            let index = first + j;
            let file = format!("{index:05}.png");
            let path = out.join(&file);
            image::save_buffer(
                &path,
                &img.to_rgb8(),
                size.width as u32,
                size.height as u32,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| format!("{}: {e}", path.display()))?;
            let mut line =
                serde_json::json!({"index": index, "prompt": p, "file": file, "seed": seed});
            if let Some(total) = job.total {
                line["total"] = total.into();
            }
            manifest.push_str(&line.to_string());
            manifest.push('\n');
            pb.inc(1);
        }
    }
    srum::train::write_file_atomic(&out.join("manifest.jsonl"), manifest.as_bytes())
        .map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    eprintln!("{} images written to {}", prompts.len(), out.display());
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Model directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Prompt split.
    #[arg(long, default_value = "heldout", value_parser = ["heldout", "train"])]
    split: String,
    /// Prompts per category.
    #[arg(long, default_value_t = 40)]
    per_category: usize,
    /// Images per prompt (seeds seed, seed+1, ...).
    #[arg(long, default_value_t = 3)]
    samples: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Also measure understanding accuracy (this many pairs) and self/oracle agreement.
    #[arg(long)]
    understanding: Option<usize>,
    /// Also break the judge's accuracy down by atomic statement (object, count, relation),
    /// over this many prompts' statements, half on hard negatives.
    #[arg(long)]
    statements: Option<usize>,
    /// With --understanding: also break the self/oracle agreement down by category, and show
    /// it for three ways of scoring a prompt from its atomic statements: the least `P(yes)`,
    /// their mean, and the share of the prompt's parts that hold (see `--prompt-score` of
    /// `pretrain`); the model itself answers with the rule in its `model.json`.
    #[arg(long, requires = "understanding")]
    agreement_breakdown: bool,
    /// `lenient` (T2I-CompBench's reading: any blob of a prompt's colour and shape counts) or
    /// `strict` (objects must be of a drawn shape's size, stray blobs of a prompt's colours
    /// count against it; a mosaic of the right colours scores near 0).
    #[arg(long, default_value = "lenient", value_parser = ["lenient", "strict"])]
    oracle: String,
    /// Also count whether the generator draws objects: this many samples of each of 12
    /// one-object and 12 two-object prompts, each checked for exactly the asked objects (one
    /// connected component per object, of the named colour and shape and a drawn shape's
    /// size) and nothing else.
    #[arg(long)]
    drawing: Option<usize>,
    /// With --drawing: a PNG sheet of its samples, a row per prompt (at most 8 per row).
    #[arg(long, requires = "drawing")]
    drawing_sheet: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Writes `images` (`cols` rounds over `rows` prompts, round-major) as a PNG sheet: a row per
/// prompt, a column per round, a 2-pixel grey gutter.
fn write_sheet(
    path: &std::path::Path,
    images: &[srum::image::PixelImage],
    rows: usize,
    cols: usize,
) -> Result<(), String> {
    let Some(first) = images.first() else {
        return Ok(());
    };
    let (w, h, gap) = (first.width, first.height, 2);
    let (sw, sh) = (cols * (w + gap) + gap, rows * (h + gap) + gap);
    let mut sheet = vec![128u8; sw * sh * 3];
    for c in 0..cols {
        for r in 0..rows {
            let Some(img) = images.get(c * rows + r) else {
                continue;
            };
            let rgb = img.to_rgb8();
            for y in 0..h.min(img.height) {
                for x in 0..w.min(img.width) {
                    let (sx, sy) = (gap + c * (w + gap) + x, gap + r * (h + gap) + y);
                    let (src, dst) = ((y * img.width + x) * 3, (sy * sw + sx) * 3);
                    sheet[dst..dst + 3].copy_from_slice(&rgb[src..src + 3]);
                }
            }
        }
    }
    image::save_buffer(
        path,
        &sheet,
        sw as u32,
        sh as u32,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}

/// Spearman of the self-score against the oracle, overall and per category, for three ways of
/// scoring a prompt from its atoms' `P(yes)`: the least, the mean, and the share of the
/// prompt's parts ([`PromptScore`]); printed as a table and returned as JSON. A diagnostic: the
/// model answers with the rule in its `model.json`. `specs[i]` is the prompt of `images[i]`.
fn agreement_breakdown(
    model: &TinyUmm<Back>,
    images: &[srum::image::PixelImage],
    specs: &[&srum_world::world::PromptSpec],
    oracle: &[f32],
) -> Result<serde_json::Value, String> {
    use srum_world::world::spearman;
    let texts: Vec<String> = specs.iter().map(|p| p.text()).collect();
    let per_atom = model
        .atom_probabilities(images, &texts)
        .map_err(|e| e.to_string())?;
    let rule = |r: PromptScore| -> Vec<f32> {
        per_atom
            .iter()
            .zip(&texts)
            .map(|(ps, t)| srum_world::tiny::prompt_score(t, ps, r))
            .collect()
    };
    let (least, parts) = (rule(PromptScore::All), rule(PromptScore::Parts));
    let mean: Vec<f32> = per_atom
        .iter()
        .map(|ps| ps.iter().sum::<f32>() / ps.len().max(1) as f32)
        .collect();
    let mut cats: Vec<&str> = specs.iter().map(|p| p.category().name()).collect();
    cats.sort_unstable();
    cats.dedup();
    let mut rows = vec![("all".to_string(), (0..images.len()).collect::<Vec<_>>())];
    for c in cats {
        let idx = (0..images.len())
            .filter(|&i| specs[i].category().name() == c)
            .collect();
        rows.push((c.to_string(), idx));
    }
    println!(
        "\n| images | n | Spearman, least atom | mean of atoms | share of parts |\n|---|---:|---:|---:|---:|"
    );
    let mut out = serde_json::Map::new();
    for (name, idx) in rows {
        let pick = |v: &[f32]| idx.iter().map(|&i| v[i]).collect::<Vec<f32>>();
        let o = pick(oracle);
        let (l, m) = (spearman(&pick(&least), &o), spearman(&pick(&mean), &o));
        let g = spearman(&pick(&parts), &o);
        println!("| {name} | {} | {l:.3} | {m:.3} | {g:.3} |", idx.len());
        out.insert(
            name,
            serde_json::json!({"n": idx.len(), "least": l, "mean": m, "parts": g}),
        );
    }
    Ok(serde_json::Value::Object(out))
}

pub fn run_eval(a: EvalArgs) -> Result<ExitCode, String> {
    use srum_world::world::{
        Oracle, Split, evaluate_generation, self_oracle_agreement, split_prompts,
        understanding_report,
    };
    let device = Default::default();
    let (model, config) =
        TinyUmm::<Back>::load_dir(&a.checkpoint, &device).map_err(|e| e.to_string())?;
    let split = if a.split == "train" {
        Split::Train
    } else {
        Split::Heldout
    };
    let mut prompts = split_prompts(split, a.per_category);
    if split == Split::Train {
        prompts.retain(|p| p.category() != srum_world::world::Category::Single);
        let step = (prompts.len() / (5 * a.per_category.max(1))).max(1);
        prompts = prompts.into_iter().step_by(step).collect();
    }
    let sampler = a.sampling.sampler()?;
    let size = config.image_size;
    let pb = bar((prompts.len() * a.samples) as u64, "evaluating");
    let start = Instant::now();
    let srum_world::world::GenerationEval {
        report,
        scores,
        images,
        prompts: asked,
    } = evaluate_generation(
        &model,
        &prompts,
        size,
        &sampler,
        a.samples,
        a.sampling.seed,
        &if a.oracle == "strict" {
            Oracle::strict()
        } else {
            Oracle::default()
        },
        &device,
        |n| pb.inc(n as u64),
    )
    .map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    println!("{}", report.markdown(&a.checkpoint.display().to_string()));
    let mut json = serde_json::json!({
        "checkpoint": a.checkpoint, "split": a.split, "oracle": a.oracle, "samples": a.samples, "seed": a.sampling.seed,
        "steps": sampler.config.steps, "guidance": sampler.config.guidance_scale, "generation": report, "images": scores.len(),
        "seconds": start.elapsed().as_secs_f64(),
    });
    if let Some(n) = a.understanding {
        let und = understanding_report(&model, &prompts, size, n, a.sampling.seed + 1000, &device)
            .map_err(|e| e.to_string())?;
        let acc = und.accuracy;
        let specs: Vec<&srum_world::world::PromptSpec> = asked.iter().collect();
        let texts: Vec<String> = specs.iter().map(|p| p.text()).collect();
        let oracle: Vec<f32> = scores.iter().map(|(_, s)| *s).collect();
        let agree = self_oracle_agreement(&model, &images, &texts, &oracle, &device)
            .map_err(|e| e.to_string())?;
        println!(
            "understanding accuracy ({n} pairs, half hard negatives): {:.1}% (yes {:.1}%, no {:.1}%; {})",
            100.0 * acc,
            100.0 * und.yes_accuracy,
            100.0 * und.no_accuracy,
            und.per_category
                .iter()
                .map(|(k, v)| format!("{k} {:.1}%", 100.0 * v))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "self-judgement vs oracle, Spearman over {} generations: {:.3}",
            agree.n, agree.spearman
        );
        if a.agreement_breakdown {
            json["agreement_breakdown"] = agreement_breakdown(&model, &images, &specs, &oracle)?;
        }
        json["understanding_accuracy"] = serde_json::json!(acc);
        json["understanding"] = serde_json::json!(und);
        json["agreement"] = serde_json::json!(agree);
    }
    if let Some(n) = a.drawing {
        let prompts = srum_world::world::drawing_prompts();
        let pb = bar((prompts.len() * n) as u64, "drawing");
        let eval = evaluate_generation(
            &model,
            &prompts,
            size,
            &sampler,
            n,
            a.sampling.seed,
            &Oracle::default(),
            &device,
            |k| pb.inc(k as u64),
        )
        .map_err(|e| e.to_string())?;
        pb.finish_and_clear();
        let samples: Vec<_> = eval.images.iter().cloned().zip(eval.prompts).collect();
        let d = srum_world::world::drawing_report(&samples);
        println!(
            "drawing ({} samples): one-object prompts exactly one object {:.1}% of {} (one component {:.1}%, of the named colour and shape {:.1}%), two-object prompts exactly two {:.1}% of {}, {:.2} components per sample",
            d.n,
            100.0 * d.single_exact,
            d.single,
            100.0 * d.single_one_component,
            100.0 * d.single_named,
            100.0 * d.pair_exact,
            d.pair,
            d.mean_components
        );
        if let Some(path) = &a.drawing_sheet {
            write_sheet(path, &eval.images, prompts.len(), n.min(8))?;
        }
        json["drawing"] = serde_json::json!(d);
    }
    if let Some(n) = a.statements {
        let report =
            srum_world::tiny::statement_report(&model, &prompts, n, a.sampling.seed + 2000)
                .map_err(|e| e.to_string())?;
        println!(
            "\n| statement | true, said yes | false, said no | accuracy |\n|---|---:|---:|---:|"
        );
        for (kind, t) in &report {
            println!(
                "| {kind} | {}/{} | {}/{} | {:.1}% |",
                t.yes_correct,
                t.yes,
                t.no_correct,
                t.no,
                100.0 * t.accuracy()
            );
        }
        json["statements"] = serde_json::json!(report);
    }
    if let Some(p) = &a.json {
        srum::train::write_file_atomic(
            p,
            serde_json::to_string_pretty(&json)
                .map_err(|e| e.to_string())?
                .as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A neighbour-convolution side the model takes, for `--neighbour-kernel`.
fn odd_kernel(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(k) if srum_world::tiny::neighbour_kernel_fits(k) => Ok(k),
        _ => Err(format!(
            "{s:?}: want an odd side from 1 to {}",
            srum_world::tiny::MAX_NEIGHBOUR_KERNEL
        )),
    }
}
