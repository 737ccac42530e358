//! `srum iterate`: rounds of rollout -> self-judgement -> reward-weighted training, each
//! round starting from the model the previous one trained. The paper does one round; this lets
//! users do more. Each round is the library's loop ([`srum::round`]) in this process; what it
//! made is kept in the round's folder.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::backend::{Ad, Back};
use burn::module::AutodiffModule;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use srum::flow::EulerSampler;
use srum::judge::{ConnectedComponents, JudgeMode, SelfEvaluator, SelfEvaluatorConfig};
use srum::model::{FlowGenerator, ImageCodec, ImageSize, Understanding};
use srum::reward::RewardComposer;
use srum::train::{Trainer, TrainerConfig};

use crate::demo::{write_manifest, write_rollout};
use crate::model::{Loaded, ModelArgs, ModelKind};
use crate::world::{SamplingArgs, bar};

#[derive(clap::Args)]
pub struct IterateArgs {
    /// Model directory to start from (round 1's generator and judge), or with --model bagel an
    /// official BAGEL folder.
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// With --model bagel: BAGEL's prompts and limits as JSON (`BagelTemplates` fields).
    #[arg(long, alias = "bagel-templates")]
    templates: Option<PathBuf>,
    /// Run folder: round-1/, round-2/, ... each with rollout/ (images and manifest.jsonl with
    /// the self-judgements), metrics.jsonl and train/model/ (which starts the next round; with
    /// --model bagel an official BAGEL folder).
    #[arg(long)]
    out: PathBuf,
    /// Training prompts, one per line (default: the world's training split, single objects
    /// left out; required with --model bagel).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Rounds to run. A round whose trained model already exists is skipped, so rerunning with
    /// a larger number continues a run.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Candidates per training prompt in each rollout.
    #[arg(long, default_value_t = 4)]
    candidates: usize,
    /// Use only this many training prompts (the first ones).
    #[arg(long)]
    limit: Option<usize>,
    /// Optimizer steps per round.
    #[arg(long, default_value_t = 50)]
    train_steps: usize,
    /// Images per optimizer step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Trainer settings as JSON (`TrainerConfig` fields) for every round; round r trains with
    /// its seed + r.
    #[arg(long)]
    train_config: Option<PathBuf>,
    /// Judge mode: `text` or `yes-no`.
    #[arg(long, default_value = "text", value_parser = ["text", "yes-no"])]
    judge_mode: String,
    /// After each round, evaluate the trained model with the oracle on this many held-out
    /// prompts per category (0: skip). The reference model only.
    #[arg(long, default_value_t = 0)]
    eval_per_category: usize,
    /// Rollout sampling; round r draws its noise with seed + r.
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// Runs `srum <args>` and fails with the stage's name when it fails.
fn stage(name: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating the srum binary: {e}"))?;
    eprintln!("== {name}");
    let status = Command::new(exe)
        .args(args)
        .status()
        .map_err(|e| format!("{name}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name} failed ({status}); later stages not run"))
    }
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

pub fn run(a: IterateArgs) -> Result<ExitCode, String> {
    if a.rounds == 0 || a.candidates == 0 || a.train_steps == 0 || a.batch == 0 {
        return Err("--rounds, --candidates, --train-steps and --batch must be at least 1".into());
    }
    a.model.check(a.templates.as_deref(), "--templates")?;
    let bagel = a.model.model == ModelKind::Bagel;
    if bagel && a.prompts.is_none() {
        return Err("--model bagel needs --prompts FILE (one prompt a line)".into());
    }
    if bagel && a.eval_per_category > 0 {
        return Err("--eval-per-category scores with the synthetic world's oracle: the reference model only".into());
    }
    // The file that marks a round's trained model as complete (written last).
    let weights = if bagel {
        "ema.safetensors"
    } else {
        "model.safetensors"
    };
    let mut model: PathBuf = a.checkpoint.clone();
    for r in 1..=a.rounds {
        let dir = a.out.join(format!("round-{r}"));
        let trained = dir.join("train").join("model");
        if trained.join(weights).is_file() {
            eprintln!(
                "round {r}: already trained in {}, skipped",
                trained.display()
            );
            model = trained;
            continue;
        }
        run_round(&a, r, &model, &dir)?;
        model = trained;
        if a.eval_per_category > 0 {
            let n = a.eval_per_category.to_string();
            let json = dir.join("eval.json");
            stage(
                &format!("round {r}: eval"),
                &[
                    os("eval"),
                    os("--checkpoint"),
                    model.as_os_str(),
                    os("--per-category"),
                    os(&n),
                    os("--samples"),
                    os("1"),
                    os("--json"),
                    json.as_os_str(),
                ],
            )?;
        }
    }
    eprintln!(
        "{} round(s) done; the last model is {}",
        a.rounds,
        model.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_round(a: &IterateArgs, r: usize, model_dir: &Path, dir: &Path) -> Result<(), String> {
    eprintln!("== round {r}");
    let device = Default::default();
    let loaded = Loaded::<Ad>::load(
        &a.model,
        a.templates.as_deref(),
        "--templates",
        model_dir,
        &device,
    )?;
    let size = loaded.image_size();
    let sampler = loaded.sampler(&a.sampling)?;
    let mut prompts = match &a.prompts {
        Some(p) => loaded.read_prompts(p)?,
        None => srum_world::world::rollout_prompts(),
    };
    if let Some(l) = a.limit {
        prompts.truncate(l);
    }
    if prompts.is_empty() {
        return Err("no prompts to roll out".into());
    }
    let round = Round {
        a,
        r,
        dir,
        size,
        sampler: &sampler,
        prompts: &prompts,
    };
    let out = dir.join("train").join("model");
    match loaded {
        Loaded::Tiny(model, config) => run_round_with(round, model, |m| {
            m.save_dir(&config, &out).map_err(|e| e.to_string())
        }),
        Loaded::Bagel(model, source) => run_round_with(round, model, |m| {
            m.save_dir(&out, &source).map_err(|e| e.to_string())
        }),
    }
}

/// What one round works with besides the model.
struct Round<'a> {
    a: &'a IterateArgs,
    r: usize,
    dir: &'a Path,
    size: ImageSize,
    sampler: &'a EulerSampler,
    prompts: &'a [String],
}

/// Rollout, self-judgement and training of `model`; `save` writes the trained model (last:
/// its presence marks the round as done).
fn run_round_with<M>(
    round: Round<'_>,
    model: M,
    save: impl FnOnce(M) -> Result<(), String>,
) -> Result<(), String>
where
    M: FlowGenerator<Ad> + AutodiffModule<Ad>,
    M::InnerModule: FlowGenerator<Back> + ImageCodec<Back> + Understanding<Back>,
{
    let Round {
        a,
        r,
        dir,
        size,
        sampler,
        prompts,
    } = round;
    let device = Default::default();
    let mut tc = match &a.train_config {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            TrainerConfig::from_json_partial(&bytes).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => TrainerConfig::default(),
    };
    tc.seed = tc.seed.wrapping_add(r as u64);
    let mut rng = ChaCha8Rng::seed_from_u64(a.sampling.seed.wrapping_add(r as u64));
    for sub in ["rollout", "pictures"] {
        std::fs::create_dir_all(dir.join(sub))
            .map_err(|e| format!("{}: {e}", dir.join(sub).display()))?;
    }

    let inner = model.valid();
    let pb = bar((prompts.len() * a.candidates) as u64, "rollout");
    let rollouts = srum::round::rollout(
        &inner,
        prompts,
        a.candidates,
        size,
        sampler,
        64,
        &mut rng,
        &device,
        |n| pb.inc(n as u64),
    )
    .map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    let evaluator = SelfEvaluator::new(
        SelfEvaluatorConfig {
            mode: if a.judge_mode == "yes-no" {
                JudgeMode::YesNo
            } else {
                JudgeMode::Text
            },
            ..Default::default()
        },
        ConnectedComponents::default(),
    )
    .map_err(|e| e.to_string())?;
    let pb = bar(rollouts.len() as u64, "self-judging");
    let samples = srum::round::self_judge(
        &inner,
        &evaluator,
        &RewardComposer::default(),
        rollouts,
        size,
        64,
        &device,
        |n| pb.inc(n as u64),
    )
    .map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    drop(inner);
    let name = |i: usize| format!("{i:05}.png");
    write_rollout(&samples, dir, &name, 8)?;
    write_manifest(&samples, &dir.join("rollout/manifest.jsonl"), &name)?;

    let mut trainer = Trainer::new(model, tc, &device).map_err(|e| e.to_string())?;
    let pool: Vec<usize> = (0..samples.len()).collect();
    let mut metrics = String::new();
    let pb = bar(a.train_steps as u64, "training");
    srum::round::train_on(
        &mut trainer,
        &samples,
        &pool,
        a.train_steps,
        a.batch,
        &mut rng,
        |report| {
            let line = serde_json::to_string(report)
                .map_err(|e| srum::SrumError::Training(e.to_string()))?;
            metrics.push_str(&line);
            metrics.push('\n');
            pb.inc(1);
            Ok(())
        },
    )
    .map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    srum::train::write_file_atomic(&dir.join("metrics.jsonl"), metrics.as_bytes())
        .map_err(|e| e.to_string())?;
    // Written last: its presence marks the round as done.
    save(trainer.into_model())
}
