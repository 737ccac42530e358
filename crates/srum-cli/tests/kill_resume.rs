//! SIGKILL at random points, then `--resume`: training ends bit-identical to an uninterrupted
//! run, judging scores every image exactly once.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_srum"))
}

fn run(args: &[&str], dir: &Path) {
    let o = bin().args(args).current_dir(dir).output().unwrap();
    assert!(
        o.status.success(),
        "srum {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs `args` (which must include `--resume` semantics) again and again, killing it after a
/// random delay, until one run finishes by itself. Returns how many runs were killed.
fn kill_until_done(args: &[&str], dir: &Path, rng: &mut impl Rng) -> usize {
    let mut kills = 0;
    for attempt in 0..40 {
        let mut child = bin()
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = Duration::from_millis(rng.random_range(20..120) + 40 * attempt);
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "srum {args:?} failed after {kills} kills");
                return kills;
            }
            if start.elapsed() >= delay {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    panic!("srum {args:?} never finished");
}

#[test]
fn killed_training_and_judging_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    run(
        &[
            "pretrain",
            "--out",
            "base",
            "--steps",
            "2",
            "--batch",
            "4",
            "--d-model",
            "16",
            "--layers",
            "1",
        ],
        d,
    );
    let prompts: String = (0..24)
        .map(|i| {
            [
                "a red circle\n",
                "two blue squares\n",
                "a green triangle above a red square\n",
            ][i % 3]
        })
        .collect();
    std::fs::write(d.join("prompts.txt"), prompts).unwrap();
    run(
        &[
            "generate",
            "--checkpoint",
            "base",
            "--prompts",
            "prompts.txt",
            "--out",
            "roll",
            "--steps",
            "3",
        ],
        d,
    );

    // Judging: killed and resumed, every image scored exactly once.
    let judge = [
        "judge",
        "--checkpoint",
        "base",
        "--images",
        "roll",
        "--prompts",
        "roll/manifest.jsonl",
        "--out",
        "scores.jsonl",
        "--batch-size",
        "2",
    ];
    let kills = kill_until_done(&judge, d, &mut rng);
    let text = std::fs::read_to_string(d.join("scores.jsonl")).unwrap();
    let mut files: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("no torn line survives")["image_file"].as_str().unwrap().to_string())
        .collect();
    files.sort();
    let expected: Vec<String> = (0..24).map(|i| format!("{i:05}.png")).collect();
    assert_eq!(files, expected, "after {kills} kills");
    eprintln!("judging killed {kills} times");
    run(
        &["convert", "--in", "scores.jsonl", "--out", "train.jsonl"],
        d,
    );

    // Training: uninterrupted vs killed-and-resumed.
    let common = [
        "--checkpoint",
        "base",
        "--records",
        "train.jsonl",
        "--images",
        "roll",
        "--steps",
        "40",
        "--batch",
        "4",
        "--lr",
        "1e-3",
        "--warmup",
        "2",
        "--save-every",
        "3",
    ];
    let mut straight = vec!["train", "--out", "straight"];
    straight.extend(common);
    run(&straight, d);
    let mut killed = vec!["train", "--out", "killed", "--resume"];
    killed.extend(common);
    let kills = kill_until_done(&killed, d, &mut rng);
    eprintln!("training killed {kills} times");
    let load = |p: &str| std::fs::read(d.join(p).join("model/model.safetensors")).unwrap();
    assert!(
        load("straight") == load("killed"),
        "weights differ after {kills} kills"
    );
    let metrics = std::fs::read_to_string(d.join("killed/metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().count(),
        40,
        "one metrics line per step after {kills} kills"
    );
}
