//! `srum bagel`: the BAGEL-7B-MoT port (srum-bagel) checked against the official code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::backend::Ad;

#[derive(clap::Args)]
pub struct BagelArgs {
    #[command(subcommand)]
    command: BagelCommand,
}

#[derive(clap::Subcommand)]
enum BagelCommand {
    /// Run every case of fixture folders written by scripts/bagel_fixtures.py and print the
    /// largest absolute difference per output; exits non-zero when one is above the tolerance.
    Verify(VerifyArgs),
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// A fixture folder (with fixture.json), or a folder of fixture folders.
    #[arg(long)]
    fixtures: PathBuf,
}

pub fn run(a: BagelArgs) -> Result<ExitCode, String> {
    match a.command {
        BagelCommand::Verify(v) => verify(&v.fixtures),
    }
}

fn fixture_folders(root: &Path) -> Result<Vec<PathBuf>, String> {
    if root.join("fixture.json").is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let entries = std::fs::read_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("fixture.json").is_file())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(format!(
            "{}: neither a fixture folder (no fixture.json) nor a folder of them",
            root.display()
        ));
    }
    Ok(dirs)
}

fn verify(root: &Path) -> Result<ExitCode, String> {
    let mut all_passed = true;
    for dir in fixture_folders(root)? {
        let report = srum_bagel::verify_fixture::<Ad>(&dir, &Default::default())
            .map_err(|e| e.to_string())?;
        print!("{report}");
        all_passed &= report.passed();
    }
    Ok(if all_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
