//! `srum reward-map` end to end: the fixture maps, bad lines, image sizes from files.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../srum/tests/data")
}

fn srum() -> Command {
    Command::new(env!("CARGO_BIN_EXE_srum"))
}

#[test]
fn reproduces_the_pytorch_fixture_maps() {
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reward_maps_golden.json")).unwrap(),
    )
    .unwrap();
    let mut grids: Vec<String> = golden["maps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{}x{}", m["latent_grid"][0], m["latent_grid"][1]))
        .collect();
    grids.sort();
    grids.dedup();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("maps.json");
    let mut cmd = srum();
    cmd.args(["reward-map", "--records"])
        .arg(fixtures().join("reward_records.jsonl"));
    for g in &grids {
        cmd.args(["--grid", g]);
    }
    cmd.arg("--json")
        .arg(&out)
        .arg("--png")
        .arg(dir.path().join("png"));
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let ours = ours["maps"].as_array().unwrap();
    assert_eq!(ours.len(), 40 * grids.len());
    let mut checked = 0;
    for g in golden["maps"].as_array().unwrap() {
        let m = ours
            .iter()
            .find(|m| m["record"] == g["record"] && m["latent_grid"] == g["latent_grid"])
            .expect("every golden map is produced");
        assert_eq!(m["image_size"], g["image_size"]);
        let (a, b) = (m["map"].as_array().unwrap(), g["map"].as_array().unwrap());
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x.as_f64().unwrap() - y.as_f64().unwrap()).abs() <= 1e-6);
        }
        checked += 1;
    }
    assert_eq!(checked, golden["maps"].as_array().unwrap().len());
    let pngs = std::fs::read_dir(dir.path().join("png")).unwrap().count();
    assert_eq!(pngs, 40 * grids.len());
}

#[test]
fn bad_lines_are_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("r.jsonl");
    // An image file stands in for a record without image_size.
    image::save_buffer(
        dir.path().join("img.png"),
        &[0u8; 6 * 4 * 3],
        6,
        4,
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    std::fs::write(
        &records,
        concat!(
            "{\"bad_image_file\": \"a.png\", \"prompt\": \"p\", \"image_size\": [4, 4], \"vlm_rewards\": []}\n",
            "{not json\n",
            "\n",
            "{\"bad_image_file\": \"img.png\", \"prompt\": \"p\", \"vlm_rewards\": [{\"object\": \"global_layout_reward\", \"score\": 1.0}]}\n",
            "{\"bad_image_file\": \"../etc/x.png\", \"prompt\": \"p\", \"vlm_rewards\": []}\n",
            "{\"prompt\": \"p\", \"vlm_rewards\": []}\n",
            "{\"bad_image_file\": \"b.png\", \"prompt\": \"p\", \"image_size\": [100000, 100000], \"vlm_rewards\": []}\n",
        ),
    )
    .unwrap();
    let out = dir.path().join("m.json");
    let o = srum()
        .args(["reward-map", "--records"])
        .arg(&records)
        .args(["--grid", "2x3", "--json"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("r.jsonl:2: invalid JSON"), "{err}");
    assert!(
        err.contains(":5:") && err.contains("leaves its folder"),
        "{err}"
    );
    assert!(
        err.contains("r.jsonl:6: missing field `bad_image_file`"),
        "{err}"
    );
    assert!(
        err.contains("r.jsonl:7:") && err.contains("pixel limit"),
        "{err}"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let maps = v["maps"].as_array().unwrap();
    assert_eq!(maps.len(), 2);
    assert_eq!(maps[0]["record"], 0);
    assert_eq!(maps[1]["record"], 3);
    assert_eq!(maps[1]["image_size"], serde_json::json!([6, 4]));
    // Global score 1 and no regions: 0.5 * (1 + 1) / 2 everywhere.
    assert!(
        maps[1]["map"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x.as_f64() == Some(0.5))
    );
}

#[test]
fn nothing_readable_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("r.jsonl");
    std::fs::write(&records, "garbage\n").unwrap();
    let o = srum()
        .args(["reward-map", "--records"])
        .arg(&records)
        .args(["--grid", "2x2", "--json"])
        .arg(dir.path().join("m.json"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let o = srum()
        .args([
            "reward-map",
            "--records",
            "/nonexistent.jsonl",
            "--grid",
            "2x2",
            "--json",
            "x.json",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent.jsonl"));
    let o = srum()
        .args([
            "reward-map",
            "--records",
            "r",
            "--grid",
            "0x2",
            "--json",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
}
