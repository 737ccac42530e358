//! `srum merge`: join the outputs of sharded `srum rollout` or `srum judge` runs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use srum::data::{SourcedLine, merge_manifests, merge_records, read_json_lines};

#[derive(clap::Args)]
pub struct MergeArgs {
    /// Rollout output folders (each with manifest.jsonl and its PNGs), or judge output files
    /// (JSON lines), one per shard, in any order.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Where the merged result goes: a folder for rollouts, a JSON-lines file for judgements.
    #[arg(long)]
    out: PathBuf,
    /// For judge outputs: the merged rollout manifest; then every image it lists must be
    /// judged exactly once, and no other.
    #[arg(long)]
    manifest: Option<PathBuf>,
}

pub fn run(a: MergeArgs) -> Result<ExitCode, String> {
    let dirs = a.inputs.iter().filter(|p| p.is_dir()).count();
    if dirs == a.inputs.len() {
        merge_rollouts(&a)
    } else if dirs == 0 {
        merge_judgements(&a)
    } else {
        Err("inputs mix folders (rollouts) and files (judgements): merge one kind at a time".into())
    }
}

fn merge_rollouts(a: &MergeArgs) -> Result<ExitCode, String> {
    if a.manifest.is_some() {
        return Err("--manifest is for merging judge outputs, not rollouts".into());
    }
    let mut parts = Vec::new();
    for dir in &a.inputs {
        parts.push(read_json_lines(&dir.join("manifest.jsonl")).map_err(|e| e.to_string())?);
    }
    let merged = merge_manifests(parts).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    for line in &merged {
        // `merge_manifests` checked that `file` is a string.
        let file = line.value["file"].as_str().unwrap_or_default();
        let dir = line.path.parent().unwrap_or(Path::new("."));
        let src = crate::contained_path(dir, file)
            .map_err(|e| format!("{}:{}: field `file`: {e}", line.path.display(), line.line))?;
        let dst = crate::contained_path(&a.out, file).map_err(|e| e.to_string())?;
        if src != dst {
            std::fs::copy(&src, &dst).map_err(|e| {
                format!(
                    "{}:{}: copying {} to {}: {e}",
                    line.path.display(),
                    line.line,
                    src.display(),
                    dst.display()
                )
            })?;
        }
    }
    write_merged(a, &a.out.join("manifest.jsonl"), &merged, "images")
}

fn merge_judgements(a: &MergeArgs) -> Result<ExitCode, String> {
    let mut parts = Vec::new();
    for f in &a.inputs {
        parts.push(read_json_lines(f).map_err(|e| e.to_string())?);
    }
    let expected: Option<Vec<String>> = match &a.manifest {
        Some(m) => {
            let lines = read_json_lines(m).map_err(|e| e.to_string())?;
            let mut files = Vec::with_capacity(lines.len());
            for l in lines {
                let f = l
                    .value
                    .get("file")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| {
                        format!("{}:{}: field `file`: missing", l.path.display(), l.line)
                    })?;
                files.push(f.to_string());
            }
            Some(files)
        }
        None => None,
    };
    let merged = merge_records(parts, expected.as_deref()).map_err(|e| e.to_string())?;
    write_merged(a, &a.out, &merged, "judgements")
}

/// Writes the merged lines to `path` atomically and says what was joined.
fn write_merged(
    a: &MergeArgs,
    path: &Path,
    merged: &[SourcedLine],
    what: &str,
) -> Result<ExitCode, String> {
    let text: String = merged.iter().map(|l| format!("{}\n", l.value)).collect();
    srum::train::write_file_atomic(path, text.as_bytes()).map_err(|e| e.to_string())?;
    eprintln!(
        "{} {what} from {} parts merged into {}",
        merged.len(),
        a.inputs.len(),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
