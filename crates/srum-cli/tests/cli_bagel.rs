//! `srum bagel verify` on the committed BAGEL fixtures: passes on them, fails on a broken one.

use std::path::Path;
use std::process::Command;

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../srum-bagel/tests/data")
}

#[test]
fn verify_passes_on_the_committed_fixtures() {
    let out = Command::new(env!("CARGO_BIN_EXE_srum"))
        .args(["bagel", "verify", "--fixtures"])
        .arg(fixtures())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("fixture tiny-gqa"), "{stdout}");
    assert!(stdout.contains("flow.velocity"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

#[test]
fn verify_names_the_missing_tensor_file() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("tiny-gqa");
    for f in [
        "fixture.json",
        "llm_config.json",
        "config.json",
        "cases.safetensors",
    ] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_srum"))
        .args(["bagel", "verify", "--fixtures"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("ema.safetensors"), "{stderr}");
}
