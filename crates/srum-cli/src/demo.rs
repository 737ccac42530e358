//! `srum demo`: the whole SRUM loop on the shipped reference model, in one process: evaluate,
//! roll out, judge itself, compose rewards, train, evaluate again, print before and after.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use crate::backend::{Ad, Back};
use burn::module::AutodiffModule;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use srum::judge::{ConnectedComponents, SelfEvaluator, SelfEvaluatorConfig};
use srum::model::{ImageCodec, ImageSize, LatentGrid, TrainableSet};
use srum::reward::{RewardComposer, RewardComposerConfig, RewardMap, RewardMode, reward_picture};
use srum::round::Sample;
use srum::train::{Trainer, TrainerConfig};
use srum_world::tiny::{TinyUmm, TinyUmmConfig};
use srum_world::world::{
    OracleReport, Split, evaluate_generation, split_prompts, understanding_accuracy,
};

use crate::diagnose::{
    CategoryFigures, TokenFigures, TokenKind, figures_table, rollout_figures, token_figures,
    token_kinds, token_losses, token_table,
};
use crate::world::{SamplingArgs, bar};
use std::collections::BTreeMap;

#[derive(clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Rounds of rollout, self-judgement and training, each starting from the last round's
    /// model (the paper does one).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    #[command(flatten)]
    recipe: RecipeArgs,
}

/// What a demo run is made of, whatever it learns: the model, the prompts, the sizes of the
/// rollout, the training and the evaluation.
#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// Model directory to start from (default: the checkpoint built into srum-world,
    /// `assets/tiny-umm` of its crate).
    #[arg(long)]
    pub(crate) checkpoint: Option<PathBuf>,
    /// Output folder: rollout/ (images, one manifest per round), pictures/ (reward pictures),
    /// metrics.jsonl, model/ (the trained model), results.json; for `miniature`, one such
    /// folder per seed and row (seed-S/ROW/) and table.md.
    #[arg(long, default_value = "demo-out")]
    pub(crate) out: PathBuf,
    /// Training prompts rolled out.
    #[arg(long, default_value_t = 128)]
    prompts: usize,
    /// How the training prompts are drawn from the training split: `pool` (uniformly: mostly
    /// complex and spatial prompts, which the grammar has most of) or `balanced` (the same
    /// number from each category, as T2I-CompBench's training sets are).
    #[arg(long, default_value = "pool", value_parser = ["pool", "balanced"])]
    prompt_mix: String,
    /// Candidates generated per prompt.
    #[arg(long, default_value_t = 4)]
    candidates: usize,
    /// Optimizer steps of reward-weighted training per round.
    #[arg(long, default_value_t = 200)]
    train_steps: usize,
    /// Images per optimizer step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Peak learning rate (the published 2e-5 is for a 7B model; the tiny one wants more).
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Held-out prompts per category for the before/after evaluation.
    #[arg(long, default_value_t = 20)]
    per_category: usize,
    /// Images per held-out prompt.
    #[arg(long, default_value_t = 2)]
    samples: usize,
    /// Image/prompt pairs for understanding accuracy before and after (0: skip).
    #[arg(long, default_value_t = 200)]
    understanding: usize,
    /// Reward pictures written to pictures/.
    #[arg(long, default_value_t = 8)]
    pictures: usize,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
}

/// What the model learns from its judged samples, and what holds it back.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct RecipeArgs {
    /// What the model learns from its samples: `dual` (SRUM: global and local rewards),
    /// `global` or `local` (one reward only), `sft` (every sample, reward 1: the paper's "+SFT"
    /// baseline) or `best-of-k` (only each prompt's candidate with the best global self-score,
    /// reward 1).
    #[arg(long, default_value = "dual", value_parser = ["dual", "global", "local", "sft", "best-of-k"])]
    pub(crate) reward: String,
    /// `anchor` (reference code: the rollout image itself) or `reference` (a frozen copy of the
    /// generator at the start of the round).
    #[arg(long, default_value = "anchor", value_parser = ["anchor", "reference"])]
    pub(crate) constraint: String,
    /// Weight of the constraint term. The published recipe uses 0.5; the demo uses 0, which
    /// gained most on the shipped model over 3 seeds (docs/RESULTS.md: λ 0 +16.3, λ 0.5 +12.1),
    /// since the anchor term is fine-tuning on every sample whatever its reward.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) lambda: f32,
    /// `generation-and-shared` (the reference recipe: the judge's shared weights move too) or
    /// `generation-only` (the judge stays the one that gave the rewards).
    #[arg(long, default_value = "generation-and-shared", value_parser = ["generation-and-shared", "generation-only"])]
    pub(crate) trainable: String,
}

fn save_png(path: &std::path::Path, w: usize, h: usize, rgb: &[u8]) -> Result<(), String> {
    image::save_buffer(
        path,
        rgb,
        w as u32,
        h as u32,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes every rollout image to `out/rollout/` and the first `pictures` reward pictures to
/// `out/pictures/`, each under `name(index)`.
pub fn write_rollout(
    samples: &[Sample],
    out: &Path,
    name: &dyn Fn(usize) -> String,
    pictures: usize,
) -> Result<(), String> {
    for (i, s) in samples.iter().enumerate() {
        let file = name(i);
        let (w, h) = (s.image.width, s.image.height);
        save_png(&out.join("rollout").join(&file), w, h, &s.image.to_rgb8())?;
        if i < pictures {
            let (w, h, rgb) = reward_picture(&s.image, &s.judged.judgement, &s.map, 8);
            save_png(&out.join("pictures").join(&file), w, h, &rgb)?;
        }
    }
    Ok(())
}

/// One JSON line per sample: its index, prompt, image file and judgement.
pub fn write_manifest(
    samples: &[Sample],
    path: &Path,
    name: &dyn Fn(usize) -> String,
) -> Result<(), String> {
    let mut manifest = String::new();
    for (i, s) in samples.iter().enumerate() {
        manifest.push_str(
            &serde_json::json!({"index": i, "prompt": s.prompt, "file": name(i), "judgement": s.judged.judgement})
                .to_string(),
        );
        manifest.push('\n');
    }
    srum::train::write_file_atomic(path, manifest.as_bytes()).map_err(|e| e.to_string())
}

/// The before/after table: oracle score per held-out category, overall, the strict oracle's
/// overall on the same images, and understanding accuracy where it was measured.
fn results_table(before: &Evaluation, after: &Evaluation) -> String {
    let mut table =
        String::from("| held-out category | before | after | change |\n|---|---:|---:|---:|\n");
    for (cat, (b, _)) in &before.report.categories {
        let x = after.report.categories.get(cat).map_or(f32::NAN, |v| v.0);
        table.push_str(&format!("| {cat} | {b:.2} | {x:.2} | {:+.2} |\n", x - b));
    }
    let (b, x) = (before.report.overall, after.report.overall);
    table.push_str(&format!(
        "| **overall** | **{b:.2}** | **{x:.2}** | **{:+.2}** |\n",
        x - b
    ));
    let (b, x) = (before.strict.overall, after.strict.overall);
    table.push_str(&format!(
        "| strict oracle, overall | {b:.2} | {x:.2} | {:+.2} |\n",
        x - b
    ));
    if let (Some(b), Some(x)) = (before.understanding, after.understanding) {
        table.push_str(&format!(
            "| understanding accuracy | {:.1}% | {:.1}% | {:+.1} |\n",
            100.0 * b,
            100.0 * x,
            100.0 * (x - b)
        ));
    }
    table
}

/// The self-evaluator every demo judges with.
fn evaluator() -> Result<SelfEvaluator<ConnectedComponents>, String> {
    SelfEvaluator::new(
        SelfEvaluatorConfig::default(),
        ConnectedComponents::default(),
    )
    .map_err(|e| e.to_string())
}

/// The reward composer of `recipe` (dual for the baselines, whose maps are replaced).
fn composer(recipe: &RecipeArgs) -> RewardComposer {
    RewardComposer::new(RewardComposerConfig {
        mode: match recipe.reward.as_str() {
            "global" => RewardMode::GlobalOnly,
            "local" => RewardMode::LocalOnly,
            _ => RewardMode::Dual,
        },
        ..Default::default()
    })
}

/// Self-judgement of `rollouts` by `judge`, with a progress bar named `what`.
fn judge_all(
    judge: &TinyUmm<Back>,
    composer: &RewardComposer,
    rollouts: Vec<srum::round::Rollout>,
    round: usize,
    what: &str,
) -> Result<Vec<Sample>, String> {
    let device = Default::default();
    let size = ImageSize::square(judge.image_size());
    let pb = bar(
        rollouts.len() as u64,
        &format!("round {}: {what}", round + 1),
    );
    let out = srum::round::self_judge(
        judge,
        &evaluator()?,
        composer,
        rollouts,
        size,
        64,
        &device,
        |n| pb.inc(n as u64),
    )
    .map_err(|e| e.to_string());
    pb.finish_and_clear();
    out
}

/// Stage 1 of a round: `run.candidates` images per training prompt from `model`, judged by
/// it (the judge sees pixels and prompts only), with the dual reward's maps until
/// [`set_maps`] gives a recipe's.
pub(crate) fn roll_out_and_judge(
    run: &RunArgs,
    round: usize,
    model: &TinyUmm<Back>,
    train: &[String],
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Sample>, String> {
    let device = Default::default();
    let image_size = ImageSize::square(model.image_size());
    let pb = bar(
        (train.len() * run.candidates) as u64,
        &format!("round {}: rollout", round + 1),
    );
    let rollouts = srum::round::rollout(
        model,
        train,
        run.candidates,
        image_size,
        &run.sampling.sampler()?,
        64,
        rng,
        &device,
        |n| pb.inc(n as u64),
    )
    .map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    judge_all(
        model,
        &RewardComposer::default(),
        rollouts,
        round,
        "self-judging",
    )
}

/// Gives every sample the map `recipe` trains on: its composer's over the sample's judgement,
/// or 1 everywhere for the `sft` and `best-of-k` baselines.
fn set_maps(recipe: &RecipeArgs, samples: &mut [Sample], size: ImageSize, grid: LatentGrid) {
    let composer = composer(recipe);
    for s in samples {
        s.map = if matches!(recipe.reward.as_str(), "sft" | "best-of-k") {
            RewardMap::filled(grid, 1.0)
        } else {
            composer.compose_latent(&s.judged.judgement, size, grid).0
        };
    }
}

/// Stage 2 of a round and its measurements: writes the rollout images, manifest and reward
/// pictures under `run.out`, trains `model` on `samples` (maps from [`set_maps`]) with
/// `recipe` (one metrics line per step appended to `metrics`), and returns the trained model
/// with the round's figures against the oracle (measurement only).
#[allow(clippy::too_many_arguments)]
fn train_round(
    run: &RunArgs,
    recipe: &RecipeArgs,
    round: usize,
    model: TinyUmm<Ad>,
    samples: Vec<Sample>,
    prompts: usize,
    rng: &mut ChaCha8Rng,
    metrics: &mut String,
) -> Result<(TinyUmm<Ad>, RoundFigures), String> {
    let device = Default::default();
    let inner = model.valid();
    let composer = composer(recipe);
    let name = |i: usize| format!("r{}-{i:05}.png", round + 1);
    write_rollout(&samples, &run.out, &name, run.pictures)?;
    let manifest_path = run
        .out
        .join(format!("rollout/manifest-r{}.jsonl", round + 1));
    write_manifest(&samples, &manifest_path, &name)?;
    let mean_reward: f64 = samples.iter().map(|s| s.map.mean() as f64).sum();
    eprintln!(
        "round {}: {} images of {prompts} prompts, mean reward {:.3}",
        round + 1,
        samples.len(),
        mean_reward / samples.len().max(1) as f64
    );

    // The samples training draws from: all, or each prompt's best-judged candidate.
    let pool: Vec<usize> = if recipe.reward == "best-of-k" {
        let globals: Vec<f32> = samples
            .iter()
            .map(|s| composer.global_score(&s.judged.judgement))
            .collect();
        (0..prompts)
            .filter_map(|p| {
                (p * run.candidates..(p + 1) * run.candidates)
                    .max_by(|&x, &y| globals[x].total_cmp(&globals[y]))
            })
            .collect()
    } else {
        (0..samples.len()).collect()
    };

    let tc = TrainerConfig {
        lr: run.lr,
        warmup_steps: (run.train_steps / 10) as u64,
        seed: run.sampling.seed.wrapping_add(round as u64),
        lambda: recipe.lambda,
        constraint: if recipe.constraint == "reference" {
            srum::train::Constraint::ReferenceModel
        } else {
            srum::train::Constraint::Anchor
        },
        trainable: if recipe.trainable == "generation-only" {
            TrainableSet::GenerationOnly
        } else {
            TrainableSet::GenerationAndShared
        },
        ..TrainerConfig::default()
    };
    let mut trainer = Trainer::new(model, tc, &device).map_err(|e| e.to_string())?;
    let pb = bar(
        run.train_steps as u64,
        &format!("round {}: training", round + 1),
    );
    srum::round::train_on(
        &mut trainer,
        &samples,
        &pool,
        run.train_steps,
        run.batch,
        rng,
        |report| {
            let mut line = serde_json::to_value(report)
                .map_err(|e| srum::SrumError::Training(e.to_string()))?;
            line["round"] = serde_json::json!(round + 1);
            metrics.push_str(&line.to_string());
            metrics.push('\n');
            pb.inc(1);
            Ok(())
        },
    )
    .map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    let trained = trainer.into_model();

    // The same images judged again by the trained model: does the judge still rank them?
    let again = judge_all(
        &trained.valid(),
        &composer,
        samples
            .iter()
            .map(|s| srum::round::Rollout {
                prompt: s.prompt.clone(),
                image: s.image.clone(),
            })
            .collect(),
        round,
        "re-judging",
    )?;
    let after: Vec<f32> = again
        .iter()
        .map(|s| composer.global_score(&s.judged.judgement))
        .collect();
    let figures = rollout_figures(
        &samples,
        Some(&after),
        &composer,
        &srum_world::world::Oracle::default(),
    )?;
    eprintln!(
        "round {}: self-rewards against the oracle (measurement only)\n{}",
        round + 1,
        figures_table(&figures)
    );

    // What training did to the error on tokens the strict oracle calls asked-for objects,
    // other blobs and background (same images, same noise before and after).
    let strict = srum_world::world::Oracle::strict();
    let mut kinds = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let spec = srum_world::world::PromptSpec::parse(&s.prompt)
            .map_err(|e| format!("rollout sample {i}: {e}"))?;
        kinds.push(token_kinds(&s.image, &spec, s.map.grid(), &strict));
    }
    let times = [0.25, 0.5, 0.75];
    let seed = run.sampling.seed.wrapping_add(1000 + round as u64);
    let before = token_losses(&inner, &samples, &times, seed, 64, &device)?;
    let after = token_losses(&trained.valid(), &samples, &times, seed, 64, &device)?;
    let tokens = token_figures(&samples, &kinds, &before, &after)?;
    eprintln!(
        "round {}: flow error by token kind, t in {{0.25, 0.5, 0.75}} (measurement only)\n{}",
        round + 1,
        token_table(&tokens)
    );
    Ok((trained, RoundFigures { figures, tokens }))
}

/// A round's measurements against the oracle (results.json `rollout_figures` and
/// `token_figures`).
struct RoundFigures {
    /// Per rollout category.
    figures: BTreeMap<String, CategoryFigures>,
    /// Per token kind.
    tokens: BTreeMap<TokenKind, TokenFigures>,
}

/// `prompts` reordered to take one prompt of each category in turn (categories in name order,
/// each in its given order), so any prefix holds the categories about equally.
fn balanced(prompts: Vec<String>) -> Result<Vec<String>, String> {
    let mut by_cat: BTreeMap<&'static str, std::collections::VecDeque<String>> = BTreeMap::new();
    for p in prompts {
        let cat = srum_world::world::PromptSpec::parse(&p)
            .map_err(|e| e.to_string())?
            .category()
            .name();
        by_cat.entry(cat).or_default().push_back(p);
    }
    let mut out = Vec::new();
    while by_cat.values().any(|q| !q.is_empty()) {
        for q in by_cat.values_mut() {
            out.extend(q.pop_front());
        }
    }
    Ok(out)
}

/// What every run of the loop from one checkpoint and seed shares: the model's config, its
/// held-out evaluation, the training prompts and the random stream after drawing them (the
/// model itself is returned beside it by [`Start::new`]).
pub(crate) struct Start {
    config: TinyUmmConfig,
    sampler: srum::flow::EulerSampler,
    heldout: Vec<srum_world::world::PromptSpec>,
    eval_seed: u64,
    pub(crate) train: Vec<String>,
    pub(crate) rng: ChaCha8Rng,
}

impl Start {
    /// Checks `run`'s sizes, loads the model and draws the training prompts of its seed.
    pub(crate) fn new(run: &RunArgs) -> Result<(Self, TinyUmm<Ad>), String> {
        if run.prompts == 0
            || run.candidates == 0
            || run.train_steps == 0
            || run.batch == 0
            || run.per_category == 0
            || run.samples == 0
        {
            return Err(
                "--prompts, --candidates, --train-steps, --batch, --per-category and \
                        --samples must be at least 1"
                    .into(),
            );
        }
        let sampler = run.sampling.sampler()?;
        let (model, config) = load(run)?;
        let mut train = srum_world::world::rollout_prompts();
        let mut rng = ChaCha8Rng::seed_from_u64(run.sampling.seed);
        train.shuffle(&mut rng);
        if run.prompt_mix == "balanced" {
            train = balanced(train)?;
        }
        train.truncate(run.prompts);
        let start = Self {
            config,
            sampler,
            heldout: split_prompts(Split::Heldout, run.per_category),
            eval_seed: run.sampling.seed.wrapping_add(10_000),
            train,
            rng,
        };
        Ok((start, model))
    }

    /// What a run from this start was asked to do, whatever its recipe and seed, as
    /// results.json records it: runs with other settings are not replicates of it.
    pub(crate) fn settings(
        &self,
        run: &RunArgs,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let checkpoint =
            run.checkpoint
                .as_deref()
                .map_or(srum_world::tiny::SHIPPED.to_string(), |p| {
                    // Canonical, so a relative and an absolute path to one folder are one setting.
                    std::fs::canonicalize(p)
                        .unwrap_or_else(|_| p.to_path_buf())
                        .display()
                        .to_string()
                });
        let v = serde_json::json!({
            "checkpoint": checkpoint, "prompt_mix": run.prompt_mix, "prompts": self.train.len(),
            "candidates": run.candidates, "train_steps": run.train_steps, "batch": run.batch,
            "lr": run.lr, "per_category": run.per_category, "samples": run.samples,
            "understanding_pairs": run.understanding, "sampler": self.sampler.config,
        });
        match v {
            serde_json::Value::Object(m) => Ok(m),
            _ => Err("settings are an object".into()),
        }
    }

    /// Oracle report on the held-out prompts and understanding accuracy (where asked).
    pub(crate) fn evaluate(
        &self,
        run: &RunArgs,
        m: &TinyUmm<Back>,
        label: &str,
    ) -> Result<Evaluation, String> {
        let device = Default::default();
        let pb = bar((self.heldout.len() * run.samples) as u64, label);
        let ev = evaluate_generation(
            m,
            &self.heldout,
            self.config.image_size,
            &self.sampler,
            run.samples,
            self.eval_seed,
            &srum_world::world::Oracle::default(),
            &device,
            |n| pb.inc(n as u64),
        )
        .map_err(|e| e.to_string())?;
        pb.finish_and_clear();
        let understanding = if run.understanding > 0 {
            Some(
                understanding_accuracy(
                    m,
                    &self.heldout,
                    self.config.image_size,
                    run.understanding,
                    self.eval_seed,
                    &device,
                )
                .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        // The strict oracle on the same images: objects of a drawn shape's size, stray blobs
        // of the prompt's colours against it (the default oracle credits colour anywhere).
        let strict = srum_world::world::Oracle::strict();
        let scores: Vec<_> = ev
            .images
            .iter()
            .zip(&ev.prompts)
            .map(|(image, p)| (p.category(), strict.score(image, p)))
            .collect();
        Ok(Evaluation {
            report: ev.report,
            strict: OracleReport::from_scores(&scores),
            understanding,
        })
    }
}

/// A model's held-out figures.
#[derive(Clone)]
pub(crate) struct Evaluation {
    /// The default oracle's.
    pub(crate) report: OracleReport,
    /// `Oracle::strict`'s, on the same images.
    pub(crate) strict: OracleReport,
    pub(crate) understanding: Option<f32>,
}

/// The model `run` starts from.
pub(crate) fn load(run: &RunArgs) -> Result<(TinyUmm<Ad>, TinyUmmConfig), String> {
    let device = Default::default();
    match &run.checkpoint {
        Some(dir) => TinyUmm::<Ad>::load_dir(dir, &device),
        None => TinyUmm::<Ad>::shipped(&device),
    }
    .map_err(|e| e.to_string())
}

fn create_out(out: &Path) -> Result<(), String> {
    for sub in ["rollout", "pictures"] {
        std::fs::create_dir_all(out.join(sub))
            .map_err(|e| format!("{}: {e}", out.join(sub).display()))?;
    }
    Ok(())
}

/// A run of a recipe from [`Start`], round by round.
pub(crate) struct RecipeRun<'a> {
    run: RunArgs,
    recipe: &'a RecipeArgs,
    start: &'a Start,
    /// None only while a round trains it.
    model: Option<TinyUmm<Ad>>,
    rng: ChaCha8Rng,
    metrics: String,
    figures: Vec<BTreeMap<String, CategoryFigures>>,
    tokens: Vec<BTreeMap<TokenKind, TokenFigures>>,
}

impl<'a> RecipeRun<'a> {
    /// Before round 1: `model` is the start's, and `rng` the stream round 1 draws from (the
    /// start's, or where the start's stood after a shared round-1 rollout).
    pub(crate) fn new(
        run: &RunArgs,
        recipe: &'a RecipeArgs,
        start: &'a Start,
        model: TinyUmm<Ad>,
        rng: ChaCha8Rng,
    ) -> Result<Self, String> {
        create_out(&run.out)?;
        Ok(Self {
            run: run.clone(),
            recipe,
            start,
            model: Some(model),
            rng,
            metrics: String::new(),
            figures: Vec::new(),
            tokens: Vec::new(),
        })
    }

    /// Rounds done so far.
    pub(crate) fn rounds(&self) -> usize {
        self.figures.len()
    }

    fn model(&self) -> Result<&TinyUmm<Ad>, String> {
        self.model
            .as_ref()
            .ok_or_else(|| "a failed round left no model".to_string())
    }

    /// Where the next rounds' outputs and [`finish`](Self::finish) go.
    pub(crate) fn set_out(&mut self, out: PathBuf) -> Result<(), String> {
        create_out(&out)?;
        self.run.out = out;
        Ok(())
    }

    /// Stage 1 of the next round from the current model.
    pub(crate) fn roll_out(&mut self) -> Result<Vec<Sample>, String> {
        roll_out_and_judge(
            &self.run,
            self.rounds(),
            &self.model()?.valid(),
            &self.start.train,
            &mut self.rng,
        )
    }

    /// Stage 2 of the next round on `samples`, judged by the current model: the recipe's maps,
    /// then training.
    pub(crate) fn train(&mut self, mut samples: Vec<Sample>) -> Result<(), String> {
        let size = ImageSize::square(self.start.config.image_size);
        let grid = self.model()?.latent_grid(size);
        set_maps(self.recipe, &mut samples, size, grid);
        let model = self.model.take().ok_or("a failed round left no model")?;
        let (trained, f) = train_round(
            &self.run,
            self.recipe,
            self.rounds(),
            model,
            samples,
            self.start.train.len(),
            &mut self.rng,
            &mut self.metrics,
        )?;
        self.model = Some(trained);
        self.figures.push(f.figures);
        self.tokens.push(f.tokens);
        Ok(())
    }

    /// Writes metrics.jsonl, model/ and results.json under `run.out` after evaluating the
    /// current model against `before`; returns the before/after table.
    pub(crate) fn finish(
        &self,
        before: &Evaluation,
        began: Instant,
        extra: serde_json::Value,
    ) -> Result<(String, Evaluation), String> {
        let out = &self.run.out;
        srum::train::write_file_atomic(&out.join("metrics.jsonl"), self.metrics.as_bytes())
            .map_err(|e| e.to_string())?;
        self.model()?
            .save_dir(&self.start.config, out.join("model"))
            .map_err(|e| e.to_string())?;
        let after = self
            .start
            .evaluate(&self.run, &self.model()?.valid(), "evaluating (after)")?;
        let table = results_table(before, &after);
        let (run, recipe) = (&self.run, self.recipe);
        let mut results = serde_json::json!({
            "reward": recipe.reward, "constraint": recipe.constraint, "lambda": recipe.lambda, "trainable": recipe.trainable,
            "rounds": self.rounds(), "seed": run.sampling.seed, "eval_seed": self.start.eval_seed,
            "before": before.report, "after": after.report,
            "before_strict": before.strict, "after_strict": after.strict,
            "understanding_before": before.understanding, "understanding_after": after.understanding,
            "rollout_figures": self.figures,
            "token_figures": self.tokens,
            "seconds": began.elapsed().as_secs_f64(),
        });
        if let Some(map) = results.as_object_mut() {
            map.extend(self.start.settings(run)?);
            if let serde_json::Value::Object(more) = extra {
                map.extend(more);
            }
        }
        srum::train::write_file_atomic(
            &out.join("results.json"),
            serde_json::to_string_pretty(&results)
                .map_err(|e| e.to_string())?
                .as_bytes(),
        )
        .map_err(|e| e.to_string())?;
        Ok((table, after))
    }
}

pub fn run_demo(a: DemoArgs) -> Result<ExitCode, String> {
    if a.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    let begin = Instant::now();
    create_out(&a.run.out)?;
    let (start, model) = Start::new(&a.run)?;
    let before = start.evaluate(&a.run, &model.valid(), "evaluating (before)")?;
    let mut run = RecipeRun::new(&a.run, &a.recipe, &start, model, start.rng.clone())?;
    for _ in 0..a.rounds {
        let samples = run.roll_out()?;
        run.train(samples)?;
    }
    let (table, _) = run.finish(&before, begin, serde_json::Value::Null)?;
    println!("{table}");
    eprintln!(
        "demo done in {:.1} min; results, pictures and the trained model are in {}",
        begin.elapsed().as_secs_f64() / 60.0,
        a.run.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::balanced;
    use srum_world::world::PromptSpec;

    /// Every prompt is kept, and each run of as many prompts as there are categories holds
    /// one of each while every category lasts.
    #[test]
    fn balanced_takes_the_categories_in_turn() {
        let pool = srum_world::world::rollout_prompts();
        let out = balanced(pool.clone()).unwrap();
        let (mut a, mut b) = (pool.clone(), out.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b);
        let cat = |p: &str| PromptSpec::parse(p).unwrap().category().name();
        let mut cats: Vec<&str> = pool.iter().map(|p| cat(p)).collect();
        cats.sort();
        cats.dedup();
        assert!(cats.len() >= 4, "{cats:?}");
        let first: std::collections::BTreeSet<&str> =
            out[..cats.len()].iter().map(|p| cat(p)).collect();
        assert_eq!(first.len(), cats.len(), "{:?}", &out[..cats.len()]);
        assert!(balanced(vec!["a purple circle".into()]).is_err());
    }
}
