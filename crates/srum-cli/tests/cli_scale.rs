//! Scaling out from the command line: sharded rollout and judge runs merge back into exactly
//! the whole run, and (feature `collective`) two `srum train` processes on loopback train like
//! one process with the whole batch.

use std::path::{Path, PathBuf};
#[cfg(feature = "collective")]
use std::process::Child;
use std::process::{Command, Output};

fn srum() -> Command {
    Command::new(env!("CARGO_BIN_EXE_srum"))
}

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../srum-world/assets/tiny-umm")
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn rollout(out: &Path, shard: &str) {
    ok(srum()
        .args(["rollout", "--checkpoint"])
        .arg(model())
        .arg("--out")
        .arg(out)
        .args(["--candidates", "2", "--limit", "3", "--steps", "2"])
        .args(["--batch-size", "4", "--seed", "5", "--shard", shard])
        .output()
        .unwrap());
}

fn judge(images: &Path, out: &Path, shard: &str) {
    ok(srum()
        .args(["judge", "--checkpoint"])
        .arg(model())
        .arg("--images")
        .arg(images)
        .arg("--prompts")
        .arg(images.join("manifest.jsonl"))
        .arg("--out")
        .arg(out)
        .args(["--shard", shard])
        .output()
        .unwrap());
}

/// `srum merge --out OUT INPUTS... [EXTRA...]`.
fn merge(out: &Path, inputs: &[PathBuf], extra: &[&std::ffi::OsStr]) -> Output {
    srum()
        .arg("merge")
        .arg("--out")
        .arg(out)
        .args(inputs)
        .args(extra)
        .output()
        .unwrap()
}

/// The error a merge that must fail printed.
fn refused(o: Output) -> String {
    assert!(!o.status.success(), "the merge should have failed");
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn sharded_rollout_and_judge_merge_into_the_whole_run() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |p: &str| tmp.path().join(p);
    rollout(&t("whole"), "0/1");
    rollout(&t("s0"), "0/2");
    rollout(&t("s1"), "1/2");
    assert_eq!(json_lines(&t("s0/manifest.jsonl")).len(), 3);

    // Parts in any order; the merge equals the whole run, image for image.
    ok(merge(&t("merged"), &[t("s1"), t("s0")], &[]));
    let whole = json_lines(&t("whole/manifest.jsonl"));
    assert_eq!(whole.len(), 6);
    assert_eq!(json_lines(&t("merged/manifest.jsonl")), whole);
    for row in &whole {
        let f = row["file"].as_str().unwrap();
        assert_eq!(
            std::fs::read(t("whole").join(f)).unwrap(),
            std::fs::read(t("merged").join(f)).unwrap(),
            "{f} differs between the sharded and the whole rollout"
        );
    }

    // A missing part is named, not silently merged.
    let err = refused(merge(&t("partial"), &[t("s0")], &[]));
    assert!(err.contains("indices 3, 4, 5 are missing"), "{err}");

    // Judge in two shards, merge against the manifest, compare with one judge run.
    judge(&t("merged"), &t("whole.jsonl"), "0/1");
    judge(&t("merged"), &t("j0.jsonl"), "0/2");
    judge(&t("merged"), &t("j1.jsonl"), "1/2");
    let manifest = t("merged/manifest.jsonl");
    ok(merge(
        &t("judged.jsonl"),
        &[t("j0.jsonl"), t("j1.jsonl")],
        &["--manifest".as_ref(), manifest.as_os_str()],
    ));
    assert_eq!(
        json_lines(&t("judged.jsonl")),
        json_lines(&t("whole.jsonl"))
    );

    // The same part twice is a duplicate, named with its file and line.
    let err = refused(merge(&t("dup.jsonl"), &[t("j0.jsonl"), t("j0.jsonl")], &[]));
    assert!(
        err.contains("j0.jsonl:1: image `00000.png` is also judged at"),
        "{err}"
    );
}

/// Kills the processes it holds when the test ends, passed or not.
#[cfg(feature = "collective")]
struct Reaper(Vec<Child>);

#[cfg(feature = "collective")]
impl Drop for Reaper {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `n` ports `p`, each with `p + 1` free too, all different (the orchestrator and every node
/// use a port and the next).
#[cfg(feature = "collective")]
fn free_port_pairs(n: usize) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < u16::MAX
            && let Ok(b) = std::net::TcpListener::bind(("127.0.0.1", p + 1))
        {
            ports.push(p);
            held.extend([a, b]);
        }
    }
    ports
}

#[cfg(feature = "collective")]
fn read_f32_tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let vals = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, vals)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Six rollout images and training records over them, in `dir`.
#[cfg(feature = "collective")]
fn training_data(dir: &Path) {
    rollout(&dir.join("imgs"), "0/1");
    // A global score and one scored box each.
    let records: String = json_lines(&dir.join("imgs/manifest.jsonl"))
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let s = 0.8 - 0.3 * i as f64;
            format!(
                "{}\n",
                serde_json::json!({
                    "bad_image_file": row["file"], "good_image_file": row["file"],
                    "prompt": row["prompt"],
                    "vlm_rewards": [
                        {"object": "global_layout_reward", "bbox": [0, 0, 32, 32], "score": s},
                        {"object": "thing", "bbox": [4, 4, 20, 24], "score": -s},
                    ]
                })
            )
        })
        .collect();
    std::fs::write(dir.join("records.jsonl"), records).unwrap();
}

/// `srum train` on the data of [`training_data`] in `dir`, for `steps` steps in total.
///
/// AdamW's epsilon is 1e-6 instead of the recipe's 1e-15: the attention key biases have an
/// exactly zero gradient (softmax ignores a shift shared by all keys), so theirs is rounding
/// noise, which differs between one batch of 4 and two of 2, and which an epsilon of 1e-15
/// turns into steps of the full learning rate (4e-3 apart after 2 steps). With 1e-6 the
/// other weights train the same (within 1e-5) and the noise stays noise.
#[cfg(feature = "collective")]
fn train(dir: &Path, out: &Path, steps: u64) -> Command {
    let config = dir.join("trainer.json");
    if !config.exists() {
        std::fs::write(&config, r#"{"optimizer": {"epsilon": 1e-6}}"#).unwrap();
    }
    let mut c = srum();
    c.args(["train", "--config"])
        .arg(config)
        .arg("--checkpoint")
        .arg(model())
        .arg("--records")
        .arg(dir.join("records.jsonl"))
        .arg("--images")
        .arg(dir.join("imgs"))
        .arg("--out")
        .arg(out)
        .args(["--steps", &steps.to_string()])
        .args(["--batch", "4", "--lr", "1e-3", "--warmup", "1"]);
    c
}

/// An orchestrator and one `srum train` per command (rank = position), each with `--nodes`,
/// its rank and its ports added, and its stdout and stderr in `<dir>/log-<tag>-<rank>.txt`.
#[cfg(feature = "collective")]
struct Group {
    procs: Reaper,
    logs: Vec<PathBuf>,
}

#[cfg(feature = "collective")]
impl Group {
    fn start(dir: &Path, tag: &str, nodes: Vec<Command>) -> Self {
        let ports = free_port_pairs(1 + nodes.len());
        let log = |name: String| std::fs::File::create(dir.join(name)).unwrap();
        let mut procs = Reaper(vec![
            srum()
                .args(["orchestrator", "--port", &ports[0].to_string()])
                .stdout(log(format!("log-{tag}-orchestrator.txt")))
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        ]);
        let world = nodes.len().to_string();
        let mut logs = Vec::new();
        for (rank, mut c) in nodes.into_iter().enumerate() {
            let path = dir.join(format!("log-{tag}-{rank}.txt"));
            let f = std::fs::File::create(&path).unwrap();
            c.args(["--nodes", &world, "--node-rank", &rank.to_string()])
                .args(["--orchestrator", &format!("ws://127.0.0.1:{}", ports[0])])
                .args(["--data-port", &ports[1 + rank].to_string()])
                .stdout(f.try_clone().unwrap())
                .stderr(f);
            procs.0.push(c.spawn().unwrap());
            logs.push(path);
        }
        Self { procs, logs }
    }

    fn node(&mut self, rank: usize) -> &mut Child {
        &mut self.procs.0[1 + rank]
    }

    fn log(&self, rank: usize) -> String {
        std::fs::read_to_string(&self.logs[rank]).unwrap_or_default()
    }

    /// Waits for every node to exit, `limit` at most (then kills them all and fails), and
    /// returns whether each succeeded.
    fn wait(&mut self, limit: std::time::Duration) -> Vec<bool> {
        let deadline = std::time::Instant::now() + limit;
        let mut done = vec![None; self.logs.len()];
        while done.iter().any(Option::is_none) {
            for (rank, d) in done.iter_mut().enumerate() {
                if d.is_none() {
                    *d = self.procs.0[1 + rank]
                        .try_wait()
                        .unwrap()
                        .map(|s| s.success());
                }
            }
            if std::time::Instant::now() > deadline {
                let logs: Vec<String> = (0..self.logs.len()).map(|r| self.log(r)).collect();
                for c in &mut self.procs.0 {
                    let _ = c.kill();
                }
                panic!("nodes still running after {limit:?}: killed; logs:\n{logs:#?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        done.into_iter().map(Option::unwrap).collect()
    }

    /// Waits like [`Self::wait`] and fails unless every node succeeded.
    fn succeed(&mut self, limit: std::time::Duration) {
        let ok = self.wait(limit);
        for (rank, ok) in ok.into_iter().enumerate() {
            assert!(ok, "node {rank} failed:\n{}", self.log(rank));
        }
    }
}

/// The weights checksum node `rank` printed.
#[cfg(feature = "collective")]
fn checksum(g: &Group, rank: usize) -> String {
    let log = g.log(rank);
    log.lines()
        .find_map(|l| l.split("weights checksum ").nth(1))
        .unwrap_or_else(|| panic!("no checksum line in:\n{log}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Largest difference between two runs' weights, and how far `a` moved from the start.
#[cfg(feature = "collective")]
fn compare(a: &Path, b: &Path) -> (f32, f32) {
    let start = read_f32_tensors(&model().join("model.safetensors"));
    let a = read_f32_tensors(&a.join("model.safetensors"));
    let b = read_f32_tensors(&b.join("model.safetensors"));
    assert_eq!(a.len(), b.len());
    let (mut moved, mut diff) = (0f32, 0f32);
    for ((na, x), (nb, y)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let s0 = &start.iter().find(|(n, _)| n == na).unwrap().1;
        for ((x, y), z) in x.iter().zip(y).zip(s0) {
            diff = diff.max((x - y).abs());
            moved = moved.max((x - z).abs());
        }
    }
    (diff, moved)
}

/// Two `srum train` processes on loopback, each with its half of every batch, train like one
/// process with the whole batch (within 1e-5), stay bit-identical to each other, and resume
/// together from rank 0's checkpoint. Every exchange is a registration of its own (the
/// workaround of burn-collective 0.21.0's second-sync hang, `srum::train::DataParallel`).
#[cfg(feature = "collective")]
#[test]
fn two_nodes_on_loopback_train_like_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let t = |p: &str| dir.join(p);
    training_data(dir);
    ok(train(dir, &t("single2"), 2).output().unwrap());
    ok(train(dir, &t("single4"), 4).output().unwrap());
    let limit = std::time::Duration::from_secs(180);
    let node = |rank: usize, steps: u64| {
        let mut c = train(dir, &t(&format!("node{rank}")), steps);
        c.args(["--peer-timeout", "60", "--resume"]);
        c
    };

    // Two steps from scratch.
    let mut g = Group::start(dir, "fresh", vec![node(0, 2), node(1, 2)]);
    g.succeed(limit);
    assert_eq!(
        checksum(&g, 0),
        checksum(&g, 1),
        "the nodes' weights differ"
    );
    assert!(!t("node1/model").exists(), "only rank 0 writes the model");
    assert!(
        !t("node1/checkpoint").exists(),
        "only rank 0 writes checkpoints"
    );
    let (diff, moved) = compare(&t("single2/model"), &t("node0/model"));
    assert!(moved > 1e-4, "training did not move the weights ({moved})");
    assert!(
        diff <= 1e-5,
        "two nodes vs one process after 2 steps: weights differ by {diff} (moved {moved})"
    );

    // Resuming where rank 0's checkpoint is but node 1 has none: both refuse, naming it.
    let mut g = Group::start(dir, "mismatch", vec![node(0, 4), node(1, 4)]);
    assert_eq!(g.wait(limit), [false, false]);
    for rank in 0..2 {
        let log = g.log(rank);
        assert!(
            log.contains("rank 1 at optimizer step 0") && log.contains("rank 0 at 2"),
            "node {rank}:\n{log}"
        );
    }

    // With a copy of rank 0's checkpoint, both resume at step 2 and go on to 4.
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                let sub = to.join(e.file_name());
                std::fs::create_dir_all(&sub).unwrap();
                for f in std::fs::read_dir(e.path()).unwrap() {
                    let f = f.unwrap();
                    std::fs::copy(f.path(), sub.join(f.file_name())).unwrap();
                }
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    };
    copy(&t("node0/checkpoint"), &t("node1/checkpoint"));
    let mut g = Group::start(dir, "resume", vec![node(0, 4), node(1, 4)]);
    g.succeed(limit);
    for rank in 0..2 {
        assert!(
            g.log(rank).contains("resumed at step 2"),
            "node {rank}:\n{}",
            g.log(rank)
        );
    }
    assert_eq!(
        checksum(&g, 0),
        checksum(&g, 1),
        "the nodes' weights differ"
    );
    let (diff, moved) = compare(&t("single4/model"), &t("node0/model"));
    assert!(
        diff <= 1e-5,
        "two resumed nodes vs one process after 4 steps: weights differ by {diff} (moved {moved})"
    );
}

/// A node killed mid-run makes the other fail with an error within its `--peer-timeout`
/// (5 s here) instead of waiting forever; the test's own watchdog kills everything at 120 s.
#[cfg(feature = "collective")]
#[test]
fn a_dead_node_fails_the_other_in_bounded_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    training_data(dir);
    let node = |rank: usize| {
        let mut c = train(dir, &dir.join(format!("node{rank}")), 100_000);
        c.args(["--peer-timeout", "5"]);
        c
    };
    let mut g = Group::start(dir, "dead", vec![node(0), node(1)]);
    // Wait until the group has trained two steps (rank 0 logs each step as it ends).
    let metrics = dir.join("node0/metrics.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the group did not train 2 steps in 120 s:\n{}\n{}",
            g.log(0),
            g.log(1)
        );
        if let Some(s) = g.node(0).try_wait().unwrap() {
            panic!("node 0 ended early ({s}):\n{}", g.log(0));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    g.node(1).kill().unwrap();
    let ok = g.wait(std::time::Duration::from_secs(120));
    assert!(!ok[0], "node 0 should fail once node 1 is dead");
    let log = g.log(0);
    assert!(log.contains("data-parallel"), "no clear error:\n{log}");
}
