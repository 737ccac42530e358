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
use srum::model::{ImageCodec, ImageSize, TrainableSet};
use srum::reward::{RewardComposer, RewardComposerConfig, RewardMap, RewardMode, reward_picture};
use srum::round::Sample;
use srum::train::{Trainer, TrainerConfig};
use srum_world::tiny::TinyUmm;
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
    /// Model directory to start from (default: the checkpoint built into srum-world,
    /// `assets/tiny-umm` of its crate).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Output folder: rollout/ (images, one manifest per round), pictures/ (reward pictures), metrics.jsonl,
    /// model/ (the trained model), results.json.
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
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
    /// Rounds of rollout, self-judgement and training, each starting from the last round's
    /// model (the paper does one).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Optimizer steps of reward-weighted training per round.
    #[arg(long, default_value_t = 200)]
    train_steps: usize,
    /// Images per optimizer step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Peak learning rate (the published 2e-5 is for a 7B model; the tiny one wants more).
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// What the model learns from its samples: `dual` (SRUM: global and local rewards),
    /// `global` or `local` (one reward only), `sft` (every sample, reward 1: the paper's "+SFT"
    /// baseline) or `best-of-k` (only each prompt's candidate with the best global self-score,
    /// reward 1).
    #[arg(long, default_value = "dual", value_parser = ["dual", "global", "local", "sft", "best-of-k"])]
    reward: String,
    /// `anchor` (reference code: the rollout image itself) or `reference` (a frozen copy of the
    /// generator at the start of the round).
    #[arg(long, default_value = "anchor", value_parser = ["anchor", "reference"])]
    constraint: String,
    /// Weight of the constraint term. The published recipe uses 0.5; the demo uses 0, which
    /// gained most on the shipped model over 3 seeds (docs/RESULTS.md: λ 0 +16.3, λ 0.5 +12.1),
    /// since the anchor term is fine-tuning on every sample whatever its reward.
    #[arg(long, default_value_t = 0.0)]
    lambda: f32,
    /// `generation-and-shared` (the reference recipe: the judge's shared weights move too) or
    /// `generation-only` (the judge stays the one that gave the rewards).
    #[arg(long, default_value = "generation-and-shared", value_parser = ["generation-and-shared", "generation-only"])]
    trainable: String,
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
    sampling: SamplingArgs,
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

/// The before/after table: oracle score per held-out category, overall, and understanding
/// accuracy where it was measured.
fn results_table(before: &OracleReport, after: &OracleReport, und: Option<(f32, f32)>) -> String {
    let mut table =
        String::from("| held-out category | before | after | change |\n|---|---:|---:|---:|\n");
    for (cat, (b, _)) in &before.categories {
        let x = after.categories.get(cat).map_or(f32::NAN, |v| v.0);
        table.push_str(&format!("| {cat} | {b:.2} | {x:.2} | {:+.2} |\n", x - b));
    }
    table.push_str(&format!(
        "| **overall** | **{:.2}** | **{:.2}** | **{:+.2}** |\n",
        before.overall,
        after.overall,
        after.overall - before.overall
    ));
    if let Some((b, x)) = und {
        table.push_str(&format!(
            "| understanding accuracy | {:.1}% | {:.1}% | {:+.1} |\n",
            100.0 * b,
            100.0 * x,
            100.0 * (x - b)
        ));
    }
    table
}

/// One round of the demo: the library's loop ([`srum::round`]) with the demo's baselines
/// (`sft`, `best-of-k`), its rollout images, manifest and reward pictures, and one metrics
/// line per step appended to `metrics`. Returns the trained model and the round's rollout
/// figures against the oracle (measurement only).
fn demo_round(
    a: &DemoArgs,
    round: usize,
    model: TinyUmm<Ad>,
    train: &[String],
    rng: &mut ChaCha8Rng,
    metrics: &mut String,
) -> Result<(TinyUmm<Ad>, RoundFigures), String> {
    let device = Default::default();
    let image_size = ImageSize::square(model.image_size());
    let grid = model.latent_grid(image_size);
    let sampler = a.sampling.sampler()?;
    // Stage 1: rollout and self-judgement. The judge sees pixels and prompts only.
    let inner = model.valid();
    let pb = bar(
        (train.len() * a.candidates) as u64,
        &format!("round {}: rollout", round + 1),
    );
    let rollouts = srum::round::rollout(
        &inner,
        train,
        a.candidates,
        image_size,
        &sampler,
        64,
        rng,
        &device,
        |n| pb.inc(n as u64),
    )
    .map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    let evaluator = SelfEvaluator::new(
        SelfEvaluatorConfig::default(),
        ConnectedComponents::default(),
    )
    .map_err(|e| e.to_string())?;
    let composer = RewardComposer::new(RewardComposerConfig {
        mode: match a.reward.as_str() {
            "global" => RewardMode::GlobalOnly,
            "local" => RewardMode::LocalOnly,
            _ => RewardMode::Dual,
        },
        ..Default::default()
    });
    // Self-judgement of `rollouts` by `judge`, with a progress bar named `what`.
    let judge_all = |judge: &TinyUmm<Back>, rollouts: Vec<srum::round::Rollout>, what: &str| {
        let pb = bar(
            rollouts.len() as u64,
            &format!("round {}: {what}", round + 1),
        );
        let out = srum::round::self_judge(
            judge,
            &evaluator,
            &composer,
            rollouts,
            image_size,
            64,
            &device,
            |n| pb.inc(n as u64),
        )
        .map_err(|e| e.to_string());
        pb.finish_and_clear();
        out
    };
    let mut samples = judge_all(&inner, rollouts, "self-judging")?;
    if matches!(a.reward.as_str(), "sft" | "best-of-k") {
        for s in &mut samples {
            s.map = RewardMap::filled(grid, 1.0);
        }
    }
    let name = |i: usize| format!("r{}-{i:05}.png", round + 1);
    write_rollout(&samples, &a.out, &name, a.pictures)?;
    let manifest_path = a.out.join(format!("rollout/manifest-r{}.jsonl", round + 1));
    write_manifest(&samples, &manifest_path, &name)?;
    let mean_reward: f64 = samples.iter().map(|s| s.map.mean() as f64).sum();
    eprintln!(
        "round {}: {} images of {} prompts, mean reward {:.3}",
        round + 1,
        samples.len(),
        train.len(),
        mean_reward / samples.len().max(1) as f64
    );

    // The samples training draws from: all, or each prompt's best-judged candidate.
    let pool: Vec<usize> = if a.reward == "best-of-k" {
        let globals: Vec<f32> = samples
            .iter()
            .map(|s| composer.global_score(&s.judged.judgement))
            .collect();
        (0..train.len())
            .filter_map(|p| {
                (p * a.candidates..(p + 1) * a.candidates)
                    .max_by(|&x, &y| globals[x].total_cmp(&globals[y]))
            })
            .collect()
    } else {
        (0..samples.len()).collect()
    };

    // Stage 2: reward-weighted training.
    let tc = TrainerConfig {
        lr: a.lr,
        warmup_steps: (a.train_steps / 10) as u64,
        seed: a.sampling.seed.wrapping_add(round as u64),
        lambda: a.lambda,
        constraint: if a.constraint == "reference" {
            srum::train::Constraint::ReferenceModel
        } else {
            srum::train::Constraint::Anchor
        },
        trainable: if a.trainable == "generation-only" {
            TrainableSet::GenerationOnly
        } else {
            TrainableSet::GenerationAndShared
        },
        ..TrainerConfig::default()
    };
    let mut trainer = Trainer::new(model, tc, &device).map_err(|e| e.to_string())?;
    let pb = bar(
        a.train_steps as u64,
        &format!("round {}: training", round + 1),
    );
    srum::round::train_on(
        &mut trainer,
        &samples,
        &pool,
        a.train_steps,
        a.batch,
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
        samples
            .iter()
            .map(|s| srum::round::Rollout {
                prompt: s.prompt.clone(),
                image: s.image.clone(),
            })
            .collect(),
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
    let seed = a.sampling.seed.wrapping_add(1000 + round as u64);
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

pub fn run_demo(a: DemoArgs) -> Result<ExitCode, String> {
    if a.prompts == 0
        || a.candidates == 0
        || a.train_steps == 0
        || a.batch == 0
        || a.rounds == 0
        || a.per_category == 0
        || a.samples == 0
    {
        return Err(
            "--prompts, --candidates, --rounds, --train-steps, --batch, --per-category \
                    and --samples must be at least 1"
                .into(),
        );
    }
    let start = Instant::now();
    let device = Default::default();
    let (mut model, config) = match &a.checkpoint {
        Some(dir) => TinyUmm::<Ad>::load_dir(dir, &device),
        None => TinyUmm::<Ad>::shipped(&device),
    }
    .map_err(|e| e.to_string())?;
    let size = config.image_size;
    let sampler = a.sampling.sampler()?;
    let heldout = split_prompts(Split::Heldout, a.per_category);
    let eval_seed = a.sampling.seed.wrapping_add(10_000);
    for sub in ["rollout", "pictures"] {
        std::fs::create_dir_all(a.out.join(sub))
            .map_err(|e| format!("{}: {e}", a.out.join(sub).display()))?;
    }

    let evaluate =
        |m: &TinyUmm<Back>, label: &str| -> Result<(OracleReport, Option<f32>), String> {
            let pb = bar((heldout.len() * a.samples) as u64, label);
            let ev = evaluate_generation(
                m,
                &heldout,
                size,
                &sampler,
                a.samples,
                eval_seed,
                &srum_world::world::Oracle::default(),
                &device,
                |n| pb.inc(n as u64),
            )
            .map_err(|e| e.to_string())?;
            pb.finish_and_clear();
            let und = if a.understanding > 0 {
                Some(
                    understanding_accuracy(m, &heldout, size, a.understanding, eval_seed, &device)
                        .map_err(|e| e.to_string())?,
                )
            } else {
                None
            };
            Ok((ev.report, und))
        };
    let (before, und_before) = evaluate(&model.valid(), "evaluating (before)")?;

    let mut train = srum_world::world::rollout_prompts();
    let mut rng = ChaCha8Rng::seed_from_u64(a.sampling.seed);
    train.shuffle(&mut rng);
    if a.prompt_mix == "balanced" {
        train = balanced(train)?;
    }
    train.truncate(a.prompts);
    let mut metrics = String::new();
    let (mut figures, mut token_figures) = (Vec::new(), Vec::new());
    for round in 0..a.rounds {
        let (m, f) = demo_round(&a, round, model, &train, &mut rng, &mut metrics)?;
        model = m;
        figures.push(f.figures);
        token_figures.push(f.tokens);
    }
    srum::train::write_file_atomic(&a.out.join("metrics.jsonl"), metrics.as_bytes())
        .map_err(|e| e.to_string())?;
    let trained = model;
    trained
        .save_dir(&config, a.out.join("model"))
        .map_err(|e| e.to_string())?;

    let (after, und_after) = evaluate(&trained.valid(), "evaluating (after)")?;
    let table = results_table(&before, &after, und_before.zip(und_after));
    println!("{table}");
    let results = serde_json::json!({
        "checkpoint": a.checkpoint.as_deref().map_or(srum_world::tiny::SHIPPED.into(), |p| p.display().to_string()), "reward": a.reward, "constraint": a.constraint, "lambda": a.lambda, "trainable": a.trainable, "prompt_mix": a.prompt_mix, "prompts": train.len(),
        "candidates": a.candidates, "rounds": a.rounds, "train_steps": a.train_steps, "batch": a.batch, "lr": a.lr,
        "seed": a.sampling.seed, "eval_seed": eval_seed, "per_category": a.per_category,
        "samples": a.samples, "before": before, "after": after,
        "understanding_before": und_before, "understanding_after": und_after,
        "rollout_figures": figures,
        "token_figures": token_figures,
        "seconds": start.elapsed().as_secs_f64(),
    });
    srum::train::write_file_atomic(
        &a.out.join("results.json"),
        serde_json::to_string_pretty(&results)
            .map_err(|e| e.to_string())?
            .as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "demo done in {:.1} min; results, pictures and the trained model are in {}",
        start.elapsed().as_secs_f64() / 60.0,
        a.out.display()
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
