//! `srum demo` end to end at a tiny size on the shipped model: every stage runs, the outputs it
//! promises exist, and the table it prints holds every category.

use std::path::Path;
use std::process::Command;

#[test]
fn demo_runs_every_stage_and_prints_the_table() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../srum-world/assets/tiny-umm");
    let args = [
        "demo",
        "--checkpoint",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--prompts",
        "3",
        "--candidates",
        "2",
        "--rounds",
        "2",
        "--train-steps",
        "2",
        "--batch",
        "4",
        "--per-category",
        "1",
        "--samples",
        "1",
        "--understanding",
        "10",
        "--pictures",
        "2",
        "--steps",
        "4",
    ];
    let o = Command::new(env!("CARGO_BIN_EXE_srum"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for cat in [
        "color",
        "complex",
        "numeracy",
        "shape",
        "spatial",
        "**overall**",
        "strict oracle, overall",
        "understanding accuracy",
    ] {
        assert!(stdout.contains(cat), "table lacks {cat}:\n{stdout}");
    }
    for f in [
        "results.json",
        "metrics.jsonl",
        "model/model.safetensors",
        "rollout/manifest-r1.jsonl",
        "rollout/manifest-r2.jsonl",
        "pictures/r1-00000.png",
        "pictures/r2-00001.png",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4, "two rounds of two steps");
    let manifest = std::fs::read_to_string(out.join("rollout/manifest-r1.jsonl")).unwrap();
    assert_eq!(
        manifest.lines().count(),
        6,
        "three prompts, two candidates each"
    );
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["rounds"], 2);
    assert!(results["after"]["overall"].as_f64().is_some());
    for key in ["before_strict", "after_strict"] {
        let x = results[key]["overall"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&x), "{key} {x}");
    }
    let figures = results["rollout_figures"].as_array().unwrap();
    assert_eq!(figures.len(), 2, "one set of rollout figures per round");
    assert_eq!(figures[0]["overall"]["n"], 6);
}

/// With `--trainable generation-only` the judge is the one that gave the rewards: re-judging
/// the rollout after training gives every image the same global score.
#[test]
fn demo_generation_only_keeps_the_judge() {
    let tmp = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../srum-world/assets/tiny-umm");
    let o = Command::new(env!("CARGO_BIN_EXE_srum"))
        .args(["demo", "--checkpoint", model.to_str().unwrap(), "--out"])
        .arg(tmp.path())
        .args(["--trainable", "generation-only", "--lambda", "0.5"])
        .args(["--prompts", "3", "--candidates", "2", "--train-steps", "3"])
        .args(["--batch", "4", "--per-category", "1", "--samples", "1"])
        .args(["--understanding", "0", "--pictures", "0", "--steps", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("results.json")).unwrap())
            .unwrap();
    assert_eq!(results["trainable"], "generation-only");
    let figures = results["rollout_figures"][0].as_object().unwrap();
    assert!(figures.contains_key("overall"));
    for (cat, f) in figures {
        assert_eq!(f["global_drift"], 0.0, "{cat}: {f}");
        assert_eq!(f["agreement_after"], f["agreement"], "{cat}: {f}");
    }
    // The generator trained: its error on the rollout images moved.
    let tokens = results["token_figures"][0].as_object().unwrap();
    assert!(tokens.contains_key("background"), "{tokens:?}");
    for (kind, f) in tokens {
        assert!(f["tokens"].as_u64().unwrap() > 0, "{kind}: {f}");
        assert_ne!(f["loss_after"], f["loss_before"], "{kind}: {f}");
    }
}

#[test]
fn rollout_writes_k_candidates_that_judge_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("rollout");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../srum-world/assets/tiny-umm");
    let srum = || Command::new(env!("CARGO_BIN_EXE_srum"));
    let o = srum()
        .args(["rollout", "--checkpoint", model.to_str().unwrap(), "--out"])
        .arg(&imgs)
        .args(["--candidates", "3", "--limit", "2", "--steps", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest = std::fs::read_to_string(imgs.join("manifest.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = manifest
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6, "two prompts, three candidates each");
    assert_eq!(rows[0]["prompt"], rows[2]["prompt"]);
    assert_ne!(rows[2]["prompt"], rows[3]["prompt"]);
    let scores = tmp.path().join("scores.jsonl");
    let o = srum()
        .args(["judge", "--checkpoint", model.to_str().unwrap(), "--images"])
        .arg(&imgs)
        .arg("--prompts")
        .arg(imgs.join("manifest.jsonl"))
        .arg("--out")
        .arg(&scores)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&scores).unwrap().lines().count(), 6);
}

#[test]
fn iterate_runs_rounds_from_the_previous_model_and_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../srum-world/assets/tiny-umm");
    let iterate = |rounds: &str| {
        Command::new(env!("CARGO_BIN_EXE_srum"))
            .args(["iterate", "--checkpoint", model.to_str().unwrap(), "--out"])
            .arg(&out)
            .args(["--rounds", rounds, "--candidates", "2", "--limit", "2"])
            .args(["--steps", "2", "--train-steps", "1", "--batch", "2"])
            .output()
            .unwrap()
    };
    let o = iterate("1");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m1 = out.join("round-1/train/model/model.safetensors");
    assert!(m1.is_file());
    let before = std::fs::read(&m1).unwrap();

    // Two rounds: round 1 is kept as it is, round 2 trains from its model.
    let o = iterate("2");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("round 1: already trained"), "{err}");
    assert_eq!(std::fs::read(&m1).unwrap(), before);
    let m2 = out.join("round-2/train/model/model.safetensors");
    assert_ne!(std::fs::read(m2).unwrap(), before, "round 2 did not train");
    let manifest = std::fs::read_to_string(out.join("round-2/rollout/manifest.jsonl")).unwrap();
    assert_eq!(
        manifest.lines().count(),
        4,
        "two prompts, two candidates each"
    );
}

#[test]
fn demo_baselines_and_constraint_variants_run() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../srum-world/assets/tiny-umm");
    for (reward, constraint) in [("sft", "anchor"), ("best-of-k", "reference")] {
        let tmp = tempfile::tempdir().unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_srum"))
            .args(["demo", "--checkpoint", model.to_str().unwrap(), "--out"])
            .arg(tmp.path())
            .args([
                "--reward",
                reward,
                "--constraint",
                constraint,
                "--lambda",
                "2",
            ])
            .args(["--prompts", "2", "--candidates", "3", "--train-steps", "2"])
            .args(["--batch", "2", "--per-category", "1", "--samples", "1"])
            .args(["--understanding", "0", "--pictures", "1", "--steps", "2"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{reward}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let results: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join("results.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(results["reward"], reward);
        assert_eq!(results["constraint"], constraint);
        assert_eq!(results["lambda"], 2.0);
    }
}

/// `srum miniature` shares the base evaluation and the first rollout among the rows of a seed;
/// each row must still be what `srum demo` with the row's flags computes: the same results
/// (bar the timings), the same trained weights. A rerun finds every row done.
#[test]
fn miniature_rows_are_the_demo_runs_they_name() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../srum-world/assets/tiny-umm");
    let tmp = tempfile::tempdir().unwrap();
    let tiny = [
        "--prompts",
        "3",
        "--candidates",
        "2",
        "--train-steps",
        "3",
        "--batch",
        "4",
        "--per-category",
        "1",
        "--samples",
        "1",
        "--understanding",
        "10",
        "--pictures",
        "1",
        "--steps",
        "2",
    ];
    let srum = |args: &[&str], out: &Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_srum"))
            .args(args)
            .args(["--checkpoint", model.to_str().unwrap(), "--out"])
            .arg(out)
            .args(tiny)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let mini = tmp.path().join("mini");
    let table = srum(
        &[
            "miniature",
            "--rows",
            "best-of-k,local,dual,local",
            "--rounds",
            "2",
            "--seeds",
            "3",
        ],
        &mini,
    );
    let demo_best = tmp.path().join("best");
    srum(
        &[
            "demo",
            "--reward",
            "best-of-k",
            "--lambda",
            "0.5",
            "--seed",
            "3",
        ],
        &demo_best,
    );
    let demo_local = tmp.path().join("local");
    srum(
        &[
            "demo", "--reward", "local", "--lambda", "0.5", "--seed", "3",
        ],
        &demo_local,
    );
    let demo_dual = tmp.path().join("dual");
    srum(
        &["demo", "--rounds", "2", "--lambda", "0.5", "--seed", "3"],
        &demo_dual,
    );
    let results = |dir: &Path| {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap())
                .unwrap();
        let m = v.as_object_mut().unwrap();
        for k in ["seconds", "shared_seconds", "row", "flags"] {
            m.remove(k);
        }
        v
    };
    let weights = |dir: &Path| std::fs::read(dir.join("model/model.safetensors")).unwrap();
    let seed = mini.join("seed-3");
    for (row, demo) in [
        ("best-of-k", &demo_best),
        ("local", &demo_local),
        ("dual-rounds-2", &demo_dual),
    ] {
        assert_eq!(results(&seed.join(row)), results(demo), "{row}");
        assert!(weights(&seed.join(row)) == weights(demo), "{row}: weights");
    }
    // The one-round dual row differs from two rounds, and the table names every row.
    assert!(weights(&seed.join("dual")) != weights(&demo_dual));
    for line in [
        "| base (before training) | | 3 |",
        "| best-of-k |",
        "| dual |",
        "| dual, 2 rounds |",
    ] {
        assert!(table.contains(line), "{line} in\n{table}");
    }
    assert_eq!(
        std::fs::read_to_string(mini.join("table.md"))
            .unwrap()
            .trim(),
        table.trim()
    );
    let o = Command::new(env!("CARGO_BIN_EXE_srum"))
        .args([
            "miniature",
            "--rows",
            "best-of-k,local,dual",
            "--rounds",
            "2",
        ])
        .args([
            "--seeds",
            "3",
            "--checkpoint",
            model.to_str().unwrap(),
            "--out",
        ])
        .arg(&mini)
        .args(tiny)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("seed 3: every row is done"));
    // Results of other settings are not replicates: the run refuses them.
    let mut other = tiny;
    let at = other.iter().position(|&x| x == "--train-steps").unwrap();
    other[at + 1] = "4";
    let o = Command::new(env!("CARGO_BIN_EXE_srum"))
        .args(["miniature", "--rows", "local", "--seeds", "3"])
        .args(["--checkpoint", model.to_str().unwrap(), "--out"])
        .arg(&mini)
        .args(other)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("local/results.json") && err.contains("train_steps"),
        "{err}"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_srum"))
        .args(["miniature", "--rows", "dual,ppo", "--out"])
        .arg(tmp.path().join("bad"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no row \"ppo\""));
    let o = Command::new(env!("CARGO_BIN_EXE_srum"))
        .args(["miniature", "--seed", "2", "--out"])
        .arg(tmp.path().join("bad"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--seeds"));
}
