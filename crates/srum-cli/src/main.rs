//! `srum`: the command-line face of the library. Each subcommand is a thin layer over it.

mod backend;
mod bagel;
mod demo;
mod diagnose;
mod iterate;
mod judge;
mod merge;
mod miniature;
mod model;
mod reward_map;
mod train;
mod world;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "srum",
    version,
    about = "Fine-grained self-rewarding for unified multimodal models"
)]
struct Cli {
    /// Print progress and per-record warnings.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compose the dense reward map of every training-format record, at latent resolution.
    ///
    /// Uses the reference rule: base 0.5, per-box max of (s+1)/2, times (g+1)/2, then bilinear
    /// resize (align_corners=false) to each latent grid.
    RewardMap(reward_map::RewardMapArgs),
    /// Self-evaluate generated images with the model's own understanding (scorer format out).
    ///
    /// Resumable: images already in --out are skipped, and a torn last line from an
    /// interrupted run is detected, reported and cut off.
    Judge(judge::JudgeArgs),
    /// Convert scorer output to the training format (reference conversion rules).
    Convert(judge::ConvertArgs),
    /// Parse one raw model answer from stdin and print the parse as JSON.
    ParseJudge(judge::ParseJudgeArgs),
    /// Pretrain the reference model (TinyUmm) on the synthetic world, both abilities jointly.
    Pretrain(world::PretrainArgs),
    /// Reward-weighted training from records and images; `--resume` continues a run.
    Train(train::TrainArgs),
    /// Generate one image per prompt line: DIR/00000.png, ... and DIR/manifest.jsonl.
    Generate(world::GenerateArgs),
    /// Stage 1 rollout: K candidates per prompt (default: the training split), PNGs and a
    /// manifest that `srum judge --prompts` reads.
    Rollout(world::RolloutArgs),
    /// Score generations of the held-out prompts with the oracle; print the per-category table.
    Eval(world::EvalArgs),
    /// The whole loop on the shipped model: evaluate, roll out, self-judge, train, evaluate
    /// again; prints the before/after table per category.
    Demo(demo::DemoArgs),
    /// SRUM against its baselines and variants over seeds: each row is `srum demo` with the
    /// row's flags, the rows of a seed sharing the base evaluation and the first rollout;
    /// writes OUT/table.md (mean and sd over seeds). Rerun to continue.
    #[command(mut_arg("out", |a| a.default_value("miniature-out")))]
    Miniature(miniature::MiniatureArgs),
    /// Rounds of rollout -> judge -> convert -> train, each from the previous round's model;
    /// rerun with more rounds to continue.
    Iterate(iterate::IterateArgs),
    /// Join the outputs of sharded `rollout` (folders) or `judge` (files) runs, checking that
    /// every image is there exactly once.
    Merge(merge::MergeArgs),
    /// Serve burn-collective's global orchestrator (on --port and the port after it), which the
    /// nodes of a multi-node `srum train --nodes N` meet through. Runs until interrupted.
    #[cfg(feature = "collective")]
    Orchestrator(train::OrchestratorArgs),
    /// The BAGEL-7B-MoT port: `srum bagel verify --fixtures DIR` checks it against the
    /// official PyTorch code's fixtures.
    Bagel(bagel::BagelArgs),
}

/// [`srum::data::contained_path`], its error as the message the commands print.
pub fn contained_path(base: &std::path::Path, file: &str) -> Result<std::path::PathBuf, String> {
    srum::data::contained_path(base, file).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    // Freed tensor buffers stay in the heap (see `srum::allocator`); first thing, before
    // any thread exists.
    srum::allocator::keep_freed_buffers();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(if cli.verbose {
            tracing::Level::INFO
        } else {
            tracing::Level::ERROR
        })
        .init();
    tracing::info!(
        backend = backend::NAME,
        "srum {}",
        env!("CARGO_PKG_VERSION")
    );
    let result = match cli.command {
        Command::RewardMap(a) => reward_map::run(a),
        Command::Judge(a) => judge::run_judge(a),
        Command::Convert(a) => judge::run_convert(a),
        Command::ParseJudge(a) => judge::run_parse(a),
        Command::Pretrain(a) => world::run_pretrain(a),
        Command::Generate(a) => world::run_generate(a),
        Command::Train(a) => train::run_train(a),
        Command::Eval(a) => world::run_eval(a),
        Command::Demo(a) => demo::run_demo(a),
        Command::Miniature(a) => miniature::run(a),
        Command::Rollout(a) => world::run_rollout(a),
        Command::Merge(a) => merge::run(a),
        Command::Iterate(a) => iterate::run(a),
        #[cfg(feature = "collective")]
        Command::Orchestrator(a) => train::run_orchestrator(a),
        Command::Bagel(a) => bagel::run(a),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}
