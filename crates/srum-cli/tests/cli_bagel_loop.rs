//! The SRUM loop from the command line with `--model bagel`, on the tiny random BAGEL of
//! `crates/srum-bagel/tests/data/tiny-gqa` (copied to a temporary folder first): rollout,
//! self-judgement (random text: every answer falls back to the parse defaults), conversion,
//! reward maps, training (generation-only, then resumed) and `iterate`; the official
//! `ema.safetensors` each training writes is compared tensor by tensor with the one it started
//! from, by each tensor's role (`srum_bagel::bagel_param_role`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use srum::model::ParamRole;
use srum_bagel::bagel_param_role;

/// The image size every command below uses (`WxH`): a 2 x 3 latent grid (16 pixels a token).
const SIZE: &str = "32x48";

fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../srum-bagel/tests/data/tiny-gqa")
}

/// Runs `srum args` in `dir`; panics with its stderr when it fails. Returns stdout + stderr.
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

/// Runs `srum args` in `dir`, which must fail; returns its stderr.
fn srum_fails(args: &[&str], dir: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_srum"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "srum {args:?} should have failed");
    assert!(!err.contains("panicked"), "srum {args:?} panicked:\n{err}");
    err
}

/// Copies the tiny BAGEL folder into `dir/model`, so that nothing writes into the repository.
fn copy_model(dir: &Path) {
    let to = dir.join("model");
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(source()).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Every tensor of a safetensors file: name -> (dtype, shape, bytes).
fn tensors(path: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, t)| {
            (
                name,
                (
                    format!("{:?}", t.dtype()),
                    t.shape().to_vec(),
                    t.data().to_vec(),
                ),
            )
        })
        .collect()
}

/// The tensors of `after` whose bytes differ from `before`'s, after checking that both files
/// hold the same tensors, in bf16, of the same shapes.
fn changed(before: &Path, after: &Path) -> BTreeSet<String> {
    let (a, b) = (tensors(before), tensors(after));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the trained file holds other tensors than the one it started from"
    );
    let mut out = BTreeSet::new();
    for (name, (dtype, shape, data)) in &b {
        let (d0, s0, x0) = &a[name];
        assert_eq!((dtype, shape), (d0, s0), "{name}");
        assert_eq!(dtype, "BF16", "{name}");
        if data != x0 {
            out.insert(name.clone());
        }
    }
    out
}

fn with_role(names: impl IntoIterator<Item = String>, role: ParamRole) -> BTreeSet<String> {
    names
        .into_iter()
        .filter(|n| bagel_param_role(n) == role)
        .collect()
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const PROMPTS: &str = "a red circle above a blue square\ntwo green triangles\na yellow star\n";

/// Rolls out 3 prompts x 2 candidates with 3 Euler steps into `dir/roll`.
fn rollout(d: &Path) {
    std::fs::write(d.join("prompts.txt"), PROMPTS).unwrap();
    let out = srum(
        &[
            "rollout",
            "--model",
            "bagel",
            "--checkpoint",
            "model",
            "--prompts",
            "prompts.txt",
            "--out",
            "roll",
            "--candidates",
            "2",
            "--image-size",
            SIZE,
            "--steps",
            "3",
        ],
        d,
    );
    assert!(out.contains("6 images written"), "{out}");
    let manifest = lines(&d.join("roll/manifest.jsonl"));
    assert_eq!(manifest.len(), 6);
    for (i, m) in manifest.iter().enumerate() {
        let file = m["file"].as_str().unwrap();
        assert_eq!(m["index"], i);
        assert_eq!(
            image::image_dimensions(d.join("roll").join(file)).unwrap(),
            (32, 48),
            "{file}"
        );
    }
}

/// `srum train --model bagel` on `dir/train.jsonl` into `dir/out`.
fn train(d: &Path, out: &str, steps: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "train",
        "--model",
        "bagel",
        "--checkpoint",
        "model",
        "--image-size",
        SIZE,
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
        "1e-2",
        "--warmup",
        "1",
        "--save-every",
        "1",
    ];
    args.extend_from_slice(extra);
    srum(&args, d)
}

#[test]
fn bagel_rollout_judge_train_generation_only_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    copy_model(d);
    rollout(d);

    // The judge: short answers without the reasoning prompt, one attempt each.
    std::fs::write(
        d.join("bagel.json"),
        r#"{"judge_think": false, "max_answer_tokens": 12}"#,
    )
    .unwrap();
    let out = srum(
        &[
            "judge",
            "--model",
            "bagel",
            "--checkpoint",
            "model",
            "--bagel-templates",
            "bagel.json",
            "--image-size",
            SIZE,
            "--images",
            "roll",
            "--prompts",
            "roll/manifest.jsonl",
            "--out",
            "scores.jsonl",
            "--max-retries",
            "1",
        ],
        d,
    );
    assert!(out.contains("6 images judged"), "{out}");
    let scores = lines(&d.join("scores.jsonl"));
    let files: BTreeSet<&str> = scores
        .iter()
        .map(|r| r["image_file"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 6, "one record per image");
    for r in &scores {
        assert_eq!(r["image_size"], serde_json::json!([32, 48]));
        assert!(r["global_layout_reward"]["global_layout_score"].is_number());
        assert!(r["vlm_raw_output"].is_string());
    }
    // A random model's text does not parse: the defaults hold and the misses are counted.
    let unparsed: usize = out
        .split("unparsed answers: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of unparsed answers:\n{out}"));
    let zeros = scores
        .iter()
        .filter(|r| r["global_layout_reward"]["global_layout_score"] == 0.0)
        .count();
    assert!(
        unparsed >= 1 && unparsed <= zeros,
        "{unparsed} / {zeros}\n{out}"
    );

    // Conversion drops the parse-failure default (global exactly 0) ...
    let out = srum(&["convert", "--in", "scores.jsonl", "--out", "t0.jsonl"], d);
    assert!(out.contains(&format!("{zeros} dropped")), "{out}");
    // ... so the records are given the scores a judge that answered would have: a global score
    // per image and one region on every other.
    let scored: String = scores
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut r = r.clone();
            r["global_layout_reward"]["global_layout_score"] =
                serde_json::json!(if i % 2 == 0 { 0.5 } else { -0.5 });
            if i % 2 == 0 {
                r["vlm_rewards"] = serde_json::json!([
                    {"identified_object": "a shape", "bbox": [0, 0, 16, 24], "area": 384, "score": 0.8}
                ]);
            }
            format!("{r}\n")
        })
        .collect();
    std::fs::write(d.join("scored.jsonl"), scored).unwrap();
    let out = srum(
        &["convert", "--in", "scored.jsonl", "--out", "train.jsonl"],
        d,
    );
    assert!(out.contains("6 records written"), "{out}");
    srum(
        &[
            "reward-map",
            "--records",
            "train.jsonl",
            "--grid",
            "3x2",
            "--json",
            "maps.json",
        ],
        d,
    );
    let maps: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("maps.json")).unwrap()).unwrap();
    let maps = maps["maps"].as_array().unwrap();
    assert_eq!(maps.len(), 6, "one reward map per image");
    for m in maps {
        assert_eq!(m["latent_grid"], serde_json::json!([3, 2]));
        assert_eq!(m["map"].as_array().unwrap().len(), 6);
    }

    // Generation-only: 2 steps, then resumed to 4; an uninterrupted run to 4 for comparison.
    train(d, "gen", "2", &["--generation-only"]);
    let model = d.join("model/ema.safetensors");
    let moved = changed(&model, &d.join("gen/model/ema.safetensors"));
    let all: Vec<String> = tensors(&model).into_keys().collect();
    assert_eq!(
        moved,
        with_role(all.clone(), ParamRole::Generation),
        "exactly the generation tensors change"
    );
    assert!(moved.contains("llm2vae.weight"), "{moved:?}");
    assert!(moved.iter().any(|n| n.contains("_moe_gen")), "{moved:?}");
    // The folder is an official one: the next round's --checkpoint.
    for f in [
        "llm_config.json",
        "vit_config.json",
        "config.json",
        "ae.safetensors",
        "vae_config.json",
        "tokenizer.json",
    ] {
        assert!(d.join("gen/model").join(f).is_file(), "{f} not copied");
    }
    let gen2 = d.join("gen2.safetensors");
    std::fs::copy(d.join("gen/model/ema.safetensors"), &gen2).unwrap();
    let out = train(d, "gen", "4", &["--generation-only", "--resume"]);
    assert!(out.contains("resumed at step 2"), "{out}");
    assert_eq!(lines(&d.join("gen/metrics.jsonl")).len(), 4);
    train(d, "straight", "4", &["--generation-only"]);
    assert!(
        std::fs::read(d.join("gen/model/ema.safetensors")).unwrap()
            == std::fs::read(d.join("straight/model/ema.safetensors")).unwrap(),
        "resumed training differs from uninterrupted training"
    );
    assert!(!changed(&gen2, &d.join("gen/model/ema.safetensors")).is_empty());

    // The packed objective with per-layer checkpointing, in f32 and then in bf16 with f32
    // masters: the losses of the plain f32 run, to rounding and to bf16's precision.
    let losses = |run: &str| -> Vec<f64> {
        lines(&d.join(run).join("metrics.jsonl"))
            .iter()
            .map(|r| r["loss"].as_f64().unwrap())
            .collect()
    };
    train(d, "ckpt", "4", &["--generation-only", "--checkpointing"]);
    let bf16_args = [
        "--generation-only",
        "--checkpointing",
        "--precision",
        "bf16",
    ];
    train(d, "bf16", "4", &bf16_args);
    let (plain, ckpt, bf16) = (losses("straight"), losses("ckpt"), losses("bf16"));
    println!("losses: f32 {plain:?}, checkpointed {ckpt:?}, bf16 checkpointed {bf16:?}");
    assert_eq!((plain.len(), ckpt.len(), bf16.len()), (4, 4, 4));
    for i in 0..4 {
        let rel = |x: f64| (x - plain[i]).abs() / plain[i].abs();
        assert!(rel(ckpt[i]) < 1e-4, "step {i}: {ckpt:?} vs {plain:?}");
        assert!(rel(bf16[i]) < 2e-2, "step {i}: {bf16:?} vs {plain:?}");
    }
    let bf16_moved = changed(&model, &d.join("bf16/model/ema.safetensors"));
    assert_eq!(bf16_moved, with_role(all.clone(), ParamRole::Generation));
    let err = srum_fails(
        &[
            "train",
            "--checkpoint",
            "model",
            "--records",
            "train.jsonl",
            "--images",
            "roll",
            "--out",
            "nope",
            "--precision",
            "bf16",
        ],
        d,
    );
    assert!(err.contains("need --model bagel"), "{err}");

    // The trained folder generates.
    let out = srum(
        &[
            "generate",
            "--model",
            "bagel",
            "--checkpoint",
            "gen/model",
            "--image-size",
            SIZE,
            "--prompts",
            "prompts.txt",
            "--out",
            "after",
            "--steps",
            "2",
        ],
        d,
    );
    assert!(out.contains("3 images written"), "{out}");

    // LoRA: the weights stay bit for bit, the adapters are written in the PEFT layout, and
    // the next round trains the same adapters on.
    train(d, "lora", "2", &["--lora-rank", "2", "--lora-alpha", "4"]);
    assert!(
        changed(&model, &d.join("lora/model/ema.safetensors")).is_empty(),
        "LoRA training changed a weight"
    );
    let adapters = tensors(&d.join("lora/model/adapter_model.safetensors"));
    assert_eq!(
        adapters.len(),
        2 * 7 * 2,
        "2 layers x 7 projections x (A, B)"
    );
    assert!(
        adapters
            .keys()
            .all(|k| k.starts_with("base_model.model.language_model."))
    );
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.join("lora/model/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (config["r"].clone(), config["lora_alpha"].clone()),
        (2.into(), 4.0.into())
    );
    let mut again = vec![
        "train",
        "--model",
        "bagel",
        "--checkpoint",
        "lora/model",
        "--image-size",
        SIZE,
        "--records",
        "train.jsonl",
        "--images",
        "roll",
        "--out",
        "lora2",
        "--steps",
        "1",
        "--batch",
        "2",
        "--lr",
        "1e-2",
        "--warmup",
        "1",
    ];
    srum(&again, d);
    assert!(changed(&model, &d.join("lora2/model/ema.safetensors")).is_empty());
    assert!(
        !changed(
            &d.join("lora/model/adapter_model.safetensors"),
            &d.join("lora2/model/adapter_model.safetensors")
        )
        .is_empty(),
        "the loaded adapters train on"
    );
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../srum-world/assets/tiny-umm");
    let tiny = tiny.to_str().unwrap();
    again.extend(["--lora-rank", "2"]);
    again[2] = "tiny";
    again[4] = tiny;
    again.retain(|a| *a != "--image-size" && *a != SIZE);
    let err = srum_fails(&again, d);
    assert!(err.contains("--lora-rank needs --model bagel"), "{err}");
}

#[test]
fn bagel_training_of_shared_tensors_iterate_and_flag_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    copy_model(d);
    rollout(d);
    let records: String = lines(&d.join("roll/manifest.jsonl"))
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let file = m["file"].as_str().unwrap();
            let g = [0.8, -0.4, 0.3][i % 3];
            format!(
                "{}\n",
                serde_json::json!({
                    "bad_image_file": file, "good_image_file": file, "prompt": m["prompt"],
                    "image_size": [32, 48],
                    "vlm_rewards": [
                        {"bbox": [0, 0, 32, 48], "object": "global_layout_reward", "score": g},
                        {"bbox": [16, 0, 32, 16], "object": "a shape", "score": 0.6}
                    ]
                })
            )
        })
        .collect();
    std::fs::write(d.join("train.jsonl"), records).unwrap();

    // Without --generation-only the shared (understanding-expert) tensors train too; what
    // only understanding uses, and the fixed tables, do not.
    train(d, "all", "2", &[]);
    let model = d.join("model/ema.safetensors");
    let moved = changed(&model, &d.join("all/model/ema.safetensors"));
    assert!(
        with_role(moved.clone(), ParamRole::Understanding).is_empty(),
        "{moved:?}"
    );
    assert!(with_role(moved.clone(), ParamRole::Frozen).is_empty());
    assert!(!with_role(moved.clone(), ParamRole::Shared).is_empty());
    assert!(moved.contains("llm2vae.weight"));

    // One round of iterate, then a second on top of it.
    let iterate = |rounds: &str| {
        srum(
            &[
                "iterate",
                "--model",
                "bagel",
                "--checkpoint",
                "model",
                "--templates",
                "bagel.json",
                "--image-size",
                SIZE,
                "--prompts",
                "prompts.txt",
                "--limit",
                "2",
                "--out",
                "it",
                "--rounds",
                rounds,
                "--candidates",
                "2",
                "--train-steps",
                "2",
                "--batch",
                "2",
                "--steps",
                "2",
            ],
            d,
        )
    };
    std::fs::write(
        d.join("bagel.json"),
        r#"{"judge_think": false, "max_answer_tokens": 8}"#,
    )
    .unwrap();
    iterate("1");
    let out = iterate("2");
    assert!(out.contains("round 1: already trained"), "{out}");
    for r in ["round-1", "round-2"] {
        let round = d.join("it").join(r);
        assert_eq!(lines(&round.join("rollout/manifest.jsonl")).len(), 4);
        assert_eq!(lines(&round.join("metrics.jsonl")).len(), 2);
        assert!(round.join("train/model/ema.safetensors").is_file());
        assert!(round.join("train/model/tokenizer.json").is_file());
    }
    assert!(
        !changed(
            &d.join("it/round-1/train/model/ema.safetensors"),
            &d.join("it/round-2/train/model/ema.safetensors")
        )
        .is_empty(),
        "round 2 trains on from round 1"
    );

    // Flags that do not fit are refused with a message, before any work.
    let roll = |extra: &[&str]| {
        let mut args = vec!["rollout", "--checkpoint", "model", "--out", "x"];
        args.extend_from_slice(extra);
        srum_fails(&args, d)
    };
    let err = roll(&["--model", "bagel", "--image-size", SIZE]);
    assert!(err.contains("--prompts"), "{err}");
    let err = roll(&[
        "--model",
        "bagel",
        "--prompts",
        "prompts.txt",
        "--image-size",
        "40x40",
    ]);
    assert!(
        err.contains("--image-size") && err.contains("multiple of 16"),
        "{err}"
    );
    let err = roll(&["--model", "bagel", "--prompts", "prompts.txt"]);
    assert!(err.contains("512x512"), "{err}");
    let err = roll(&["--image-size", SIZE]);
    assert!(err.contains("--model bagel"), "{err}");
    let err = roll(&[
        "--model",
        "bagel",
        "--prompts",
        "prompts.txt",
        "--image-size",
        "32",
    ]);
    assert!(err.contains("WxH"), "{err}");
    assert!(!d.join("x").exists());
}
