//! `srum train`: reward-weighted training from records and images (stage 2 of SRUM).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::backend::{Ad, Back};
use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use srum::data::RewardDataset;
use srum::image::PixelImage;
use srum::model::{FlowGenerator, ImageCodec, ImageSize, TrainableSet};
use srum::reward::RewardComposer;
use srum::train::{
    Constraint, FlowMatching, Objective, Precision, SrumBatch, StepReport, Trainer, TrainerConfig,
};

use crate::model::{Loaded, ModelArgs};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Model directory to start from (model.json, model.safetensors, tokenizer.json), or with
    /// --model bagel an official BAGEL folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The model's kind and, for BAGEL, the size of the images (every image must be it).
    #[command(flatten)]
    model: ModelArgs,
    /// With --model bagel: BAGEL's prompts and limits as JSON (`BagelTemplates` fields).
    #[arg(long, alias = "bagel-templates")]
    templates: Option<PathBuf>,
    /// With --model bagel: train LoRA adapters of this rank on the generation expert's
    /// attention and MLP projections instead of its weights (written in the PEFT layout
    /// beside the unchanged weights). A checkpoint that already has adapters keeps training
    /// them.
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA's alpha (the update is scaled by alpha / rank). Default: the rank.
    #[arg(long, requires = "lora_rank")]
    lora_alpha: Option<f64>,
    /// With --model bagel: `bf16` runs the forward and backward in bf16 and keeps f32 master
    /// copies, gradients and AdamW state of the trained parameters (`f32`: all in f32). A
    /// resumed run must be given the precision it started with.
    #[arg(long, value_parser = ["f32", "bf16"], default_value = "f32")]
    precision: String,
    /// With --model bagel: train on the batch packed into one sequence, as the official
    /// trainer does, recomputing each decoder layer in the backward instead of keeping its
    /// activations (less memory, one more forward's time).
    #[arg(long)]
    checkpointing: bool,
    /// Training-format records.
    #[arg(long)]
    records: PathBuf,
    /// Folder of the images the records name.
    #[arg(long)]
    images: PathBuf,
    /// Run folder: metrics.jsonl, checkpoint/ (trainer state), model/ (final model directory;
    /// with --model bagel an official BAGEL folder: ema.safetensors in bf16 under the official
    /// names, the configuration, tokenizer and VAE files copied from --checkpoint).
    #[arg(long)]
    out: PathBuf,
    /// Optimizer steps in total.
    #[arg(long, default_value_t = 100)]
    steps: u64,
    /// Images per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Trainer settings as JSON (`TrainerConfig` fields); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Weight of the constraint term.
    #[arg(long)]
    lambda: Option<f32>,
    /// `anchor` (reference code) or `reference` (frozen copy of the generator).
    #[arg(long, value_parser = ["anchor", "reference"])]
    constraint: Option<String>,
    /// Train generation-only parameters (shared ones frozen too).
    #[arg(long)]
    generation_only: bool,
    /// Warmup steps.
    #[arg(long)]
    warmup: Option<u64>,
    /// Seed of noise, timesteps and data order.
    #[arg(long)]
    seed: Option<u64>,
    /// Checkpoint every this many steps.
    #[arg(long, default_value_t = 25)]
    save_every: u64,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    resume: bool,
    /// Nodes (processes, one device each) training together, data-parallel. `--batch` is the
    /// global batch and must divide by it; node r trains on its r-th share of every batch.
    #[cfg(feature = "collective")]
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// This node's rank in `0..nodes`. Rank 0 writes metrics, checkpoints and the model.
    #[cfg(feature = "collective")]
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Address of the orchestrator (`srum orchestrator --port P`, which also serves P + 1),
    /// e.g. `ws://10.0.0.1:3000`.
    #[cfg(feature = "collective")]
    #[arg(long, default_value = "ws://127.0.0.1:3000")]
    orchestrator: String,
    /// Port this node serves gradients on, and the port after it; the other nodes must reach
    /// both.
    #[cfg(feature = "collective")]
    #[arg(long, default_value_t = 3002)]
    data_port: u16,
    /// Seconds one exchange with the other nodes may wait (for the slowest node's step too)
    /// before this node fails: a node that died or hangs stops the others in this time.
    #[cfg(feature = "collective")]
    #[arg(long, default_value_t = 600.0)]
    peer_timeout: f64,
    /// Host name or IP the other nodes reach this node at.
    #[cfg(feature = "collective")]
    #[arg(long, default_value = "127.0.0.1")]
    node_host: String,
}

#[cfg(feature = "collective")]
#[derive(clap::Args)]
pub struct OrchestratorArgs {
    /// Port to listen on (WebSocket); the port after it is served too.
    #[arg(long, default_value_t = 3000)]
    port: u16,
}

/// burn's global orchestrator, twice: on `port` and `port + 1`. Nodes alternate between the two
/// (see `srum::train::DataParallel`: each exchange is a registration of its own).
#[cfg(feature = "collective")]
pub fn run_orchestrator(a: OrchestratorArgs) -> Result<ExitCode, String> {
    let second = a
        .port
        .checked_add(1)
        .ok_or("--port must be below 65535 (the next port is served too)")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the orchestrator's runtime: {e}"))?;
    eprintln!("orchestrator listening on ports {} and {second}", a.port);
    // burn-collective 0.21's orchestrator never closes a session's response connection, and
    // every exchange is a session of its own (see srum::train::DataParallel): it keeps one
    // open file per node per training step.
    #[cfg(unix)]
    if let Some((from, to)) = raise_open_file_limit() {
        eprintln!(
            "open-file limit raised from {from} to {to}: the orchestrator keeps one connection \
             per node per training step (burn-collective 0.21 never closes them)"
        );
    }
    rt.block_on(async {
        tokio::join!(
            burn::collective::start_global_orchestrator(a.port),
            burn::collective::start_global_orchestrator(second),
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// Raises this process's soft limit on open files to its hard limit; `(old, new)` when it rose.
#[cfg(all(feature = "collective", unix))]
fn raise_open_file_limit() -> Option<(libc::rlim_t, libc::rlim_t)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 || r.rlim_cur >= r.rlim_max {
            return None;
        }
        let old = r.rlim_cur;
        r.rlim_cur = r.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
            return None;
        }
        Some((old, r.rlim_max))
    }
}

/// This process's `(rank, world)` among the nodes, and the group to join (none for one node).
#[cfg(feature = "collective")]
fn group(a: &TrainArgs) -> Result<(usize, usize, Option<srum::train::DataParallel>), String> {
    if a.nodes <= 1 {
        return Ok((0, 1, None));
    }
    if !a.batch.is_multiple_of(a.nodes) {
        return Err(format!(
            "--batch {} does not divide into {} nodes",
            a.batch, a.nodes
        ));
    }
    if !(a.peer_timeout > 0.0 && a.peer_timeout.is_finite()) {
        return Err(format!(
            "--peer-timeout must be a positive number of seconds, not {}",
            a.peer_timeout
        ));
    }
    let dp = srum::train::DataParallel::node(
        a.node_rank,
        a.nodes,
        &a.orchestrator,
        &format!("ws://{}:{}", a.node_host, a.data_port),
        a.data_port,
    )
    .map_err(|e| e.to_string())?
    .with_timeout(Some(std::time::Duration::from_secs_f64(a.peer_timeout)));
    Ok((a.node_rank, a.nodes, Some(dp)))
}

#[cfg(not(feature = "collective"))]
fn group(_: &TrainArgs) -> Result<(usize, usize, Option<Group>), String> {
    Ok((0, 1, None))
}

/// The data-parallel group a node joins.
#[cfg(feature = "collective")]
type Group = srum::train::DataParallel;
/// The data-parallel group a node joins (none without the `collective` feature).
#[cfg(not(feature = "collective"))]
type Group = ();

/// The median time of each part of the exchanges with the other nodes, the first (the join,
/// which waits for every node to start) left out.
#[cfg(feature = "collective")]
fn report_exchanges(rank: usize, timings: &[srum::train::ExchangeTiming]) {
    if timings.len() < 2 {
        return;
    }
    let median = |f: fn(&srum::train::ExchangeTiming) -> f64| {
        let mut v: Vec<f64> = timings[1..].iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        1e3 * v[v.len() / 2]
    };
    eprintln!(
        "node {rank}: {} exchanges after the join; median ms: waiting for the previous finish \
         {:.2}, registering {:.2}, all-reduce {:.2}",
        timings.len() - 1,
        median(|t| t.settle),
        median(|t| t.register),
        median(|t| t.all_reduce),
    );
}

/// FNV-1a over the bits of every weight: equal on all nodes when they are in step.
fn checksum<M: burn::module::Module<Back>>(m: &M) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in srum::train::collect_params(m) {
        let v = p
            .flat
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default();
        for x in v {
            for b in x.to_bits().to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
            }
        }
    }
    h
}

fn config(a: &TrainArgs) -> Result<TrainerConfig, String> {
    let mut c = match &a.config {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            TrainerConfig::from_json_partial(&bytes).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => TrainerConfig::default(),
    };
    if let Some(v) = a.lr {
        c.lr = v;
    }
    if let Some(v) = a.lambda {
        c.lambda = v;
    }
    if let Some(v) = &a.constraint {
        c.constraint = if v == "reference" {
            Constraint::ReferenceModel
        } else {
            Constraint::Anchor
        };
    }
    if a.generation_only {
        c.trainable = TrainableSet::GenerationOnly;
    }
    if let Some(v) = a.warmup {
        c.warmup_steps = v;
    }
    if let Some(v) = a.seed {
        c.seed = v;
    }
    c.precision = precision(a);
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

fn precision(a: &TrainArgs) -> Precision {
    if a.precision == "bf16" {
        Precision::Bf16
    } else {
        Precision::F32
    }
}

pub fn run_train(a: TrainArgs) -> Result<ExitCode, String> {
    if a.batch == 0 || a.steps == 0 || a.save_every == 0 {
        return Err("--steps, --batch and --save-every must be at least 1".into());
    }
    let bagel = a.model.model == crate::model::ModelKind::Bagel;
    if !bagel && (a.checkpointing || precision(&a) != Precision::F32) {
        return Err("--precision bf16 and --checkpointing need --model bagel".into());
    }
    let device = Default::default();
    if precision(&a) == Precision::Bf16 {
        // Before any tensor exists: the model's weights and every tensor it makes are bf16.
        burn::tensor::backend::set_default_float_dtype::<Ad>(&device, burn::tensor::DType::BF16)
            .map_err(|e| format!("--precision bf16: {e}"))?;
    }
    let (rank, world, dp) = group(&a)?;
    let node = Node { rank, world, dp };
    let loaded = Loaded::<Ad>::load(
        &a.model,
        a.templates.as_deref(),
        "--templates",
        &a.checkpoint,
        &device,
    )?;
    let image_size = loaded.image_size();
    match loaded {
        Loaded::Tiny(_, _) if a.lora_rank.is_some() => {
            Err("--lora-rank needs --model bagel".into())
        }
        Loaded::Tiny(model, config) => {
            train_with(&a, model, FlowMatching, image_size, node, |m, dir| {
                m.save_dir(&config, dir).map_err(|e| e.to_string())
            })
        }
        Loaded::Bagel(model, source) => {
            let model = match a.lora_rank {
                Some(_) if model.lora().is_some() => model,
                Some(rank) => model
                    .with_lora(srum_bagel::LoraConfig {
                        rank,
                        alpha: a.lora_alpha.unwrap_or(rank as f64),
                        ..Default::default()
                    })
                    .map_err(|e| format!("--lora-rank: {e}"))?,
                None => model,
            };
            let save = |m: &srum_bagel::BagelModel<Back>, dir: &Path| {
                m.save_dir(dir, &source).map_err(|e| e.to_string())
            };
            if a.checkpointing {
                let packed = srum_bagel::PackedFlowMatching::new().with_checkpointing(true);
                train_with(&a, model, packed, image_size, node, save)
            } else {
                train_with(&a, model, FlowMatching, image_size, node, save)
            }
        }
    }
}

/// This process's place among the nodes training together.
struct Node {
    rank: usize,
    world: usize,
    dp: Option<Group>,
}

/// Trains `model` on the records' `image_size` images and writes the result to `--out`/model
/// with `save`.
fn train_with<M, O>(
    a: &TrainArgs,
    model: M,
    objective: O,
    image_size: ImageSize,
    node: Node,
    save: impl FnOnce(&M::InnerModule, &Path) -> Result<(), String>,
) -> Result<ExitCode, String>
where
    M: FlowGenerator<Ad> + ImageCodec<Ad> + AutodiffModule<Ad>,
    M::InnerModule: FlowGenerator<Back> + ImageCodec<Back>,
    O: Objective<Ad, M>,
{
    let device = Default::default();
    let Node { rank, world, dp } = node;
    let root = rank == 0;
    let grid = model.latent_grid(image_size);
    let ckpt = a.out.join("checkpoint");
    let metrics_path = a.out.join("metrics.jsonl");
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let trainer = if a.resume && ckpt.join(srum::train::LATEST).exists() {
        let t =
            Trainer::resume_with(&ckpt, model, objective, &device).map_err(|e| e.to_string())?;
        // Metrics past the checkpoint were never committed: drop them.
        let done = t.state().optimizer_steps;
        let kept: String = std::fs::read_to_string(&metrics_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                serde_json::from_str::<StepReport>(l).is_ok_and(|r| r.optimizer_step <= done)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        srum::train::write_file_atomic(&metrics_path, kept.as_bytes())
            .map_err(|e| e.to_string())?;
        eprintln!("resumed at step {done} from {}", ckpt.display());
        t
    } else {
        if a.resume {
            eprintln!("no checkpoint in {}: starting fresh", ckpt.display());
        }
        if root {
            let _ = std::fs::remove_file(&metrics_path);
        }
        Trainer::with_objective(model, objective, config(a)?, &device).map_err(|e| e.to_string())?
    };
    #[cfg(feature = "collective")]
    let mut trainer = match dp {
        Some(dp) => {
            eprintln!("node {rank} of {world}: joining the group");
            trainer.data_parallel(dp).map_err(|e| e.to_string())?
        }
        None => trainer,
    };
    #[cfg(not(feature = "collective"))]
    let (mut trainer, _) = (trainer, dp);
    let (data, stats) = RewardDataset::load(
        &a.records,
        &a.images,
        image_size,
        grid,
        &RewardComposer::default(),
    )
    .map_err(|e| e.to_string())?;
    for s in &stats.skipped {
        eprintln!("warning: {s} (skipped)");
    }
    let (r, c) = (&stats.records, &stats.compose);
    eprintln!(
        "{} training items, {} skipped; records: {} bad lines, regions dropped ({} without score, \
         {} with a bad bbox); scores: {} clamped into [-1, 1], {} non-finite dropped; \
         {} boxes empty or outside the image",
        stats.items,
        stats.skipped.len(),
        r.bad_lines,
        r.regions_without_score,
        r.regions_bad_bbox,
        c.clamped_scores,
        c.non_finite_scores,
        c.invalid_boxes,
    );
    let seed = trainer.config().seed;
    // Only rank 0 logs: the loss terms it reports are already the group's means.
    let mut metrics: Box<dyn Write> = if root {
        Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .map_err(|e| format!("{}: {e}", metrics_path.display()))?,
        )
    } else {
        Box::new(std::io::sink())
    };
    let start = trainer.state().optimizer_steps;
    let pb = ProgressBar::new(a.steps).with_style(
        ProgressStyle::with_template("training {bar:40} {pos}/{len} [{elapsed} < {eta}] {msg}")
            .map_err(|e| e.to_string())?,
    );
    pb.set_position(start);
    let mut step = start;
    while step < a.steps {
        let all = data.batch_indices(seed, trainer.state().micro_steps, a.batch);
        let share = a.batch / world;
        let idx = &all[rank * share..(rank + 1) * share];
        let imgs: Vec<PixelImage> = idx.iter().map(|&i| data.items[i].image.clone()).collect();
        let prompts: Vec<String> = idx.iter().map(|&i| data.items[i].prompt.clone()).collect();
        let maps: Vec<_> = idx.iter().map(|&i| data.items[i].reward.clone()).collect();
        let inner = trainer.model().valid();
        let latents = inner
            .encode_images(PixelImage::to_tensor(&imgs, &device).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let mut batch = SrumBatch::from_maps(prompts, Tensor::from_inner(latents), grid, &maps)
            .map_err(|e| e.to_string())?;
        if idx.iter().any(|&i| data.items[i].anchor.is_some()) {
            let anchors: Vec<PixelImage> = idx
                .iter()
                .map(|&i| {
                    data.items[i]
                        .anchor
                        .clone()
                        .unwrap_or_else(|| data.items[i].image.clone())
                })
                .collect();
            let a = inner
                .encode_images(PixelImage::to_tensor(&anchors, &device).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            batch.anchor = Some(Tensor::from_inner(a));
        }
        let report = trainer.step(batch).map_err(|e| e.to_string())?;
        writeln!(
            metrics,
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        )
        .map_err(|e| e.to_string())?;
        step = trainer.state().optimizer_steps;
        pb.set_position(step);
        pb.set_message(format!(
            "loss {:.4} reward {:.4}",
            report.loss, report.reward_loss
        ));
        if report.updated() && (step % a.save_every == 0 || step == a.steps) {
            metrics.flush().map_err(|e| e.to_string())?;
            trainer.save_checkpoint(&ckpt).map_err(|e| e.to_string())?;
        }
    }
    pb.finish_and_clear();
    trainer.save_checkpoint(&ckpt).map_err(|e| e.to_string())?;
    let model = trainer.model().valid();
    if world > 1 {
        eprintln!(
            "node {rank}: weights checksum {:016x} after step {step}",
            checksum(&model)
        );
    }
    #[cfg(feature = "collective")]
    if let Some(dp) = trainer.parallel() {
        report_exchanges(rank, &dp.exchange_timings());
    }
    #[cfg(feature = "collective")]
    trainer.leave_group().map_err(|e| e.to_string())?;
    if root {
        save(&model, &a.out.join("model"))?;
        eprintln!(
            "trained to step {step}; model in {}",
            a.out.join("model").display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
