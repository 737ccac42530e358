//! `srum iterate`: rounds of rollout -> judge -> convert -> train, each round starting from the
//! model the previous one trained. The paper does one round; this lets users do more.
//!
//! Each stage is the stage's own command, run as a child process of this same binary, so every
//! flag, check, progress bar and resumability rule of the stage commands holds here too.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

#[derive(clap::Args)]
pub struct IterateArgs {
    /// Model directory to start from (round 1's generator and judge).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Run folder: round-1/, round-2/, ... each with rollout/, scores.jsonl, train.jsonl and
    /// train/ (whose model/ starts the next round).
    #[arg(long)]
    out: PathBuf,
    /// Rounds to run. A round whose trained model already exists is skipped, so rerunning with
    /// a larger number continues a run.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Candidates per training prompt in each rollout.
    #[arg(long, default_value_t = 4)]
    candidates: usize,
    /// Use only this many training prompts.
    #[arg(long)]
    limit: Option<usize>,
    /// Euler steps of the rollout.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Optimizer steps per round.
    #[arg(long, default_value_t = 50)]
    train_steps: u64,
    /// Images per optimizer step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Trainer settings as JSON (`TrainerConfig` fields), passed to every round's `srum train`.
    #[arg(long)]
    train_config: Option<PathBuf>,
    /// Judge mode: `text` or `yes-no`.
    #[arg(long, default_value = "text")]
    judge_mode: String,
    /// Base seed; round r samples with seed + r.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// After each round, evaluate the trained model with the oracle on this many held-out
    /// prompts per category (0: skip).
    #[arg(long, default_value_t = 0)]
    eval_per_category: usize,
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
    if a.judge_mode != "text" && a.judge_mode != "yes-no" {
        return Err(format!(
            "--judge-mode `{}`: use `text` or `yes-no`",
            a.judge_mode
        ));
    }
    let mut model: PathBuf = a.checkpoint.clone();
    for r in 1..=a.rounds {
        let dir = a.out.join(format!("round-{r}"));
        let trained = dir.join("train").join("model");
        if trained.join("model.safetensors").is_file() {
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

fn run_round(a: &IterateArgs, r: usize, model: &Path, dir: &Path) -> Result<(), String> {
    let rollout = dir.join("rollout");
    let scores = dir.join("scores.jsonl");
    let records = dir.join("train.jsonl");
    let train = dir.join("train");
    let (k, steps, seed) = (
        a.candidates.to_string(),
        a.steps.to_string(),
        (a.seed + r as u64).to_string(),
    );
    let limit = a.limit.map(|l| l.to_string());
    let mut args = vec![
        os("rollout"),
        os("--checkpoint"),
        model.as_os_str(),
        os("--out"),
        rollout.as_os_str(),
        os("--candidates"),
        os(&k),
        os("--steps"),
        os(&steps),
        os("--seed"),
        os(&seed),
    ];
    if let Some(l) = &limit {
        args.extend([os("--limit"), os(l)]);
    }
    // A rollout is cheap to redo and must match its manifest: always rerun it whole.
    stage(&format!("round {r}: rollout"), &args)?;
    let manifest = rollout.join("manifest.jsonl");
    stage(
        &format!("round {r}: judge"),
        &[
            os("judge"),
            os("--checkpoint"),
            model.as_os_str(),
            os("--images"),
            rollout.as_os_str(),
            os("--prompts"),
            manifest.as_os_str(),
            os("--out"),
            scores.as_os_str(),
            os("--mode"),
            os(&a.judge_mode),
        ],
    )?;
    stage(
        &format!("round {r}: convert"),
        &[
            os("convert"),
            os("--in"),
            scores.as_os_str(),
            os("--out"),
            records.as_os_str(),
        ],
    )?;
    let (n, b) = (a.train_steps.to_string(), a.batch.to_string());
    let mut args = vec![
        os("train"),
        os("--checkpoint"),
        model.as_os_str(),
        os("--records"),
        records.as_os_str(),
        os("--images"),
        rollout.as_os_str(),
        os("--out"),
        train.as_os_str(),
        os("--steps"),
        os(&n),
        os("--batch"),
        os(&b),
        os("--resume"),
    ];
    if let Some(c) = &a.train_config {
        args.extend([os("--config"), c.as_os_str()]);
    }
    stage(&format!("round {r}: train"), &args)
}
