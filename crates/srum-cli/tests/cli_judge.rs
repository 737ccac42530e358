//! `srum judge`, `srum convert` and `srum parse-judge` from the command line.

// One set of helpers for every crate's tests.
#[path = "../../srum/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;
use srum_world::toy::ToyUmmConfig;

fn srum() -> Command {
    Command::new(env!("CARGO_BIN_EXE_srum"))
}

fn parse_judge(kind: &str, n: Option<usize>, text: &str) -> Value {
    let mut cmd = srum();
    cmd.args(["parse-judge", "--kind", kind]);
    if let Some(n) = n {
        cmd.args(["--num-regions", &n.to_string()]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn parse_judge_matches_the_fixture() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../srum/tests/data/judge_outputs.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let n = case["num_regions"].as_u64().map(|n| n as usize);
        let got = parse_judge(
            case["kind"].as_str().unwrap(),
            n,
            case["text"].as_str().unwrap(),
        );
        assert_eq!(got, case["expect"], "case {}", case["name"]);
    }
}

fn setup(dir: &Path, n: usize) {
    let model = ToyUmmConfig::new().init::<Cpu>(&device());
    model
        .save_dir(&ToyUmmConfig::new(), dir.join("model"))
        .unwrap();
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let mut manifest = String::new();
    for i in 0..n {
        let mut px = vec![255u8; 8 * 8 * 3];
        for y in 2..5 {
            for x in (i % 3)..(i % 3) + 3 {
                px[(y * 8 + x) * 3] = 200;
                px[(y * 8 + x) * 3 + 1] = 0;
            }
        }
        let file = format!("{i:05}.png");
        image::save_buffer(
            dir.join("images").join(&file),
            &px,
            8,
            8,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
        manifest.push_str(&format!("{{\"index\": {i}, \"prompt\": \"a red square\", \"file\": \"{file}\", \"seed\": {i}}}\n"));
    }
    std::fs::write(dir.join("manifest.jsonl"), manifest).unwrap();
}

fn judge(dir: &Path, extra: &[&str]) -> std::process::Output {
    srum()
        .arg("judge")
        .arg("--checkpoint")
        .arg(dir.join("model"))
        .arg("--images")
        .arg(dir.join("images"))
        .arg("--prompts")
        .arg(dir.join("manifest.jsonl"))
        .arg("--out")
        .arg(dir.join("scores.jsonl"))
        .args(["--batch-size", "2"])
        .args(extra)
        .output()
        .unwrap()
}

fn scored(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("scores.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn judge_resumes_and_convert_feeds_reward_map() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir, 5);
    let o = judge(dir, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first = scored(dir);
    assert_eq!(first.len(), 5);
    for r in &first {
        assert!(r["global_layout_reward"]["global_layout_score"].is_number());
        assert!(!r["vlm_rewards"].as_array().unwrap().is_empty(), "{r}");
    }
    // A torn last line (as a kill mid-write leaves) is cut off and its image judged again.
    let text = std::fs::read_to_string(dir.join("scores.jsonl")).unwrap();
    let keep: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(
        dir.join("scores.jsonl"),
        format!("{}\n{{\"image_file\": \"00003.pn", keep.join("\n")),
    )
    .unwrap();
    let o = judge(dir, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("scores.jsonl:4: torn"), "{err}");
    assert!(err.contains("3 of 5 images already scored"), "{err}");
    let again = scored(dir);
    let mut files: Vec<_> = again
        .iter()
        .map(|r| r["image_file"].as_str().unwrap().to_string())
        .collect();
    files.sort();
    assert_eq!(
        files,
        (0..5).map(|i| format!("{i:05}.png")).collect::<Vec<_>>(),
        "every image exactly once"
    );
    // Deterministic model: the re-judged records equal the first run's.
    assert_eq!(again[3..], first[3..]);

    let o = srum()
        .arg("convert")
        .arg("--in")
        .arg(dir.join("scores.jsonl"))
        .arg("--out")
        .arg(dir.join("train.jsonl"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let train = std::fs::read_to_string(dir.join("train.jsonl")).unwrap();
    assert_eq!(train.lines().count(), 5);
    let o = srum()
        .args(["reward-map", "--grid", "4x4", "--records"])
        .arg(dir.join("train.jsonl"))
        .arg("--json")
        .arg(dir.join("maps.json"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn judge_refuses_escaping_and_wrong_images() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir, 1);
    image::save_buffer(
        dir.join("images/big.png"),
        &[0u8; 16 * 16 * 3],
        16,
        16,
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    std::fs::write(dir.join("images/not.png"), b"not a png").unwrap();
    let mut m = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("manifest.jsonl"))
        .unwrap();
    writeln!(m, r#"{{"prompt": "p", "file": "../manifest.jsonl"}}"#).unwrap();
    writeln!(m, r#"{{"prompt": "p", "file": "/etc/passwd"}}"#).unwrap();
    writeln!(m, r#"{{"prompt": "p", "file": "big.png"}}"#).unwrap();
    writeln!(m, r#"{{"prompt": "p", "file": "not.png"}}"#).unwrap();
    writeln!(m, r#"{{"prompt": 3}}"#).unwrap();
    drop(m);
    let o = judge(dir, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("manifest.jsonl:2:") && err.contains("leaves its folder"),
        "{err}"
    );
    assert!(err.contains("manifest.jsonl:3:"), "{err}");
    assert!(
        err.contains("manifest.jsonl:4:") && err.contains("16x16 image"),
        "{err}"
    );
    assert!(err.contains("manifest.jsonl:5:"), "{err}");
    assert!(err.contains("manifest.jsonl:6:"), "{err}");
    assert_eq!(scored(dir).len(), 1);
    let o = srum()
        .args([
            "judge",
            "--checkpoint",
            "/nope",
            "--images",
            ".",
            "--prompts",
            "x",
            "--out",
            "y",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nope/model.json"));
}
