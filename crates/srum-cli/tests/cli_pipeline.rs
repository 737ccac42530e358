//! The whole loop from the command line on a tiny reference model:
//! pretrain → generate → judge → convert → train (killed-and-resumed) → eval.

use std::path::Path;
use std::process::Command;

fn srum(args: &[&str], dir: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_srum"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "srum {args:?} failed:\n{err}");
    String::from_utf8_lossy(&o.stdout).into_owned() + &err
}

#[test]
fn rollout_judge_convert_train_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // The tiny model's shape, shared by every pretraining call below.
    const TINY: [&str; 6] = ["--batch", "4", "--d-model", "16", "--layers", "1"];
    let pretrain = |extra: &[&str]| {
        let mut args = vec!["pretrain"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&TINY);
        srum(&args, d);
    };
    pretrain(&["--out", "base", "--steps", "3", "--prompt-score", "parts"]);
    // The graded answer's rule is written to the model directory (the judge below answers with it).
    let card = std::fs::read_to_string(d.join("base/model.json")).unwrap();
    assert!(card.contains(r#""prompt_score": "parts""#), "{card}");
    // Continuing from it keeps its rule unless the flag sets another (it changes no weight).
    let cont = |out: &str, rule: &[&str]| {
        let mut args = vec!["--out", out, "--init", "base", "--steps", "1"];
        args.extend_from_slice(rule);
        pretrain(&args);
        std::fs::read_to_string(d.join(out).join("model.json")).unwrap()
    };
    assert!(cont("kept", &[]).contains(r#""prompt_score": "parts""#));
    assert!(cont("reset", &["--prompt-score", "all"]).contains(r#""prompt_score": "all""#));
    std::fs::write(d.join("prompts.txt"), "a red circle\nthree blue squares\na green triangle left of a yellow circle\na red square and a red circle\n").unwrap();
    srum(
        &[
            "generate",
            "--checkpoint",
            "base",
            "--prompts",
            "prompts.txt",
            "--out",
            "roll",
            "--steps",
            "4",
        ],
        d,
    );
    assert_eq!(
        std::fs::read_to_string(d.join("roll/manifest.jsonl"))
            .unwrap()
            .lines()
            .count(),
        4
    );
    srum(
        &[
            "judge",
            "--checkpoint",
            "base",
            "--images",
            "roll",
            "--prompts",
            "roll/manifest.jsonl",
            "--out",
            "scores.jsonl",
        ],
        d,
    );
    srum(
        &["convert", "--in", "scores.jsonl", "--out", "train.jsonl"],
        d,
    );
    let n = std::fs::read_to_string(d.join("train.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(n >= 1, "conversion kept {n} records");
    // Train 4 steps straight, and 2 + resume + 2: same final weights.
    let train = |out: &str, steps: &str, resume: bool| {
        let mut args = vec![
            "train",
            "--checkpoint",
            "base",
            "--records",
            "train.jsonl",
            "--images",
            "roll",
            "--out",
            out,
            "--steps",
            steps,
            "--batch",
            "2",
            "--lr",
            "1e-3",
            "--warmup",
            "1",
            "--save-every",
            "1",
        ];
        if resume {
            args.push("--resume");
        }
        srum(&args, d)
    };
    train("straight", "4", false);
    train("split", "2", false);
    let out = train("split", "4", true);
    assert!(out.contains("resumed at step 2"), "{out}");
    let a = std::fs::read(d.join("straight/model/model.safetensors")).unwrap();
    let b = std::fs::read(d.join("split/model/model.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed training differs from uninterrupted training"
    );
    let metrics = std::fs::read_to_string(d.join("split/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4);
    let out = srum(
        &[
            "eval",
            "--checkpoint",
            "split/model",
            "--per-category",
            "2",
            "--samples",
            "1",
            "--steps",
            "4",
            "--json",
            "eval.json",
            "--understanding",
            "20",
        ],
        d,
    );
    assert!(
        out.contains("| model |") && out.contains("overall"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("eval.json")).unwrap()).unwrap();
    assert!(json["generation"]["overall"].is_number());
    assert!(json["understanding_accuracy"].is_number());
}
