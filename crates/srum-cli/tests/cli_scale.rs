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

#[cfg(feature = "collective")]
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// Blocked upstream: in burn-collective 0.21.0 every global (multi-node) operation after the
/// first waits forever. `SyncService::sync` (src/global/node/sync.rs) ends with
/// `syncing_peers.clear()` on a `to_vec()` copy, so the shared list of synced peers is never
/// reset and the second sync never sees "all nodes synced". Run with `--ignored` to reproduce:
/// the nodes finish the weight broadcast (the first all-reduce) and hang in the next one.
#[cfg(feature = "collective")]
#[test]
#[ignore = "burn-collective 0.21 hangs on the second global all-reduce (see doc comment)"]
fn two_nodes_on_loopback_train_like_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let t = |p: &str| tmp.path().join(p);
    rollout(&t("imgs"), "0/1");
    // Training records over the six rollout images: a global score and one scored box each.
    let records: String = json_lines(&t("imgs/manifest.jsonl"))
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
    std::fs::write(t("records.jsonl"), records).unwrap();
    let train = |out: &Path| {
        let mut c = srum();
        c.args(["train", "--checkpoint"])
            .arg(model())
            .arg("--records")
            .arg(t("records.jsonl"))
            .arg("--images")
            .arg(t("imgs"))
            .arg("--out")
            .arg(out)
            .args([
                "--steps", "3", "--batch", "4", "--lr", "1e-3", "--warmup", "1",
            ]);
        c
    };
    ok(train(&t("single")).output().unwrap());

    let port = free_port();
    let mut procs = Reaper(Vec::new());
    procs.0.push(
        srum()
            .args(["orchestrator", "--port", &port.to_string()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let orchestrator = format!("ws://127.0.0.1:{port}");
    let nodes: Vec<Child> = (0..2)
        .map(|rank| {
            train(&t(&format!("node{rank}")))
                .args(["--nodes", "2", "--node-rank", &rank.to_string()])
                .args(["--orchestrator", &orchestrator])
                .args(["--data-port", &free_port().to_string()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = nodes
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let checksums: Vec<String> = outputs
        .into_iter()
        .map(|o| {
            let err = String::from_utf8_lossy(&ok(o).stderr).to_string();
            err.lines()
                .find_map(|l| l.split("weights checksum ").nth(1))
                .unwrap_or_else(|| panic!("no checksum line in:\n{err}"))
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(checksums[0], checksums[1], "the nodes' weights differ");
    assert!(!t("node1/model").exists(), "only rank 0 writes the model");

    let start = read_f32_tensors(&model().join("model.safetensors"));
    let single = read_f32_tensors(&t("single/model/model.safetensors"));
    let group = read_f32_tensors(&t("node0/model/model.safetensors"));
    let (mut moved, mut diff) = (0f32, 0f32);
    for ((a, s), (b, g)) in single.iter().zip(&group) {
        assert_eq!(a, b);
        let s0 = &start.iter().find(|(n, _)| n == a).unwrap().1;
        for ((x, y), z) in s.iter().zip(g).zip(s0) {
            diff = diff.max((x - y).abs());
            moved = moved.max((x - z).abs());
        }
    }
    assert!(moved > 1e-4, "training did not move the weights ({moved})");
    assert!(
        diff <= 1e-5,
        "two nodes vs one process: weights differ by {diff} (training moved them {moved})"
    );
}
