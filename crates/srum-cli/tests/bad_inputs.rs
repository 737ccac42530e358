//! Runs `srum` on every case of the hostile-input corpus in `tests/data/bad/` (written by its
//! `make_corpus.py`) and checks the exit status, that the message names what its `case.json`
//! says (file, line, field), and that nothing panicked.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    args: Vec<String>,
    /// "ok" (something usable remained) or "fail".
    exit: String,
    phrases: Vec<String>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad")
}

fn run_case(name: &str) -> Result<(), String> {
    let dir = root().join(name);
    let case: Case = serde_json::from_str(
        &std::fs::read_to_string(dir.join("case.json")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("case.json: {e}"))?;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../srum-world/assets/tiny-umm");
    let args: Vec<String> = case
        .args
        .iter()
        .map(|a| {
            a.replace("{case}", &dir.to_string_lossy())
                .replace("{tmp}", &tmp.path().to_string_lossy())
                .replace("{model}", &model.to_string_lossy())
                .replace("{good}", &root().join("good").to_string_lossy())
        })
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_srum"))
        .args(&args)
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut problems = Vec::new();
    if stderr.contains("panicked") {
        problems.push("it panicked".to_string());
    }
    let want_ok = case.exit == "ok";
    if out.status.success() != want_ok {
        problems.push(format!(
            "exit {:?}, expected {}",
            out.status.code(),
            case.exit
        ));
    }
    for p in &case.phrases {
        if !stderr.contains(p.as_str()) {
            problems.push(format!("message lacks `{p}`"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{name}: {}\n--- stderr:\n{stderr}",
            problems.join("; ")
        ))
    }
}

#[test]
fn every_bad_input_gets_a_clear_error_and_no_panic() {
    let mut names: Vec<String> = std::fs::read_dir(root())
        .expect("corpus folder")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("case.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 30, "corpus has only {} cases", names.len());
    let failures: Vec<String> = names.iter().filter_map(|n| run_case(n).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
}
