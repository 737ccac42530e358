//! The port against the official PyTorch code: every case of the committed fixture folders
//! (`tests/data/*/`, written by `scripts/bagel_fixtures.py`) to the fixture's tolerance, and a
//! checkpoint with a renamed, missing or misshapen tensor rejected with the tensor named.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use srum_bagel::{BagelConfig, load_bagel, load_weights, verify_fixture};

type Ad = Autodiff<Flex>;

fn folder(name: &str) -> PathBuf {
    // `SRUM_BAGEL_FIXTURES` points the tests at freshly generated folders before they are committed.
    let root = std::env::var_os("SRUM_BAGEL_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data"));
    root.join(name)
}

fn check(name: &str) {
    let dir = folder(name);
    let report = verify_fixture::<Ad>(&dir, &Default::default())
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    println!("{report}");
    assert!(report.passed(), "{report}");
}

#[test]
fn tiny_gqa_matches_the_official_code() {
    check("tiny-gqa");
}

#[test]
fn tiny_mha_odd_matches_the_official_code() {
    check("tiny-mha-odd");
}

#[test]
fn the_fixture_checkpoint_loads_through_load_bagel() {
    let dir = folder("tiny-gqa");
    let model = load_bagel::<Flex>(&dir, &Default::default()).unwrap();
    let c = model.config();
    assert_eq!(c.hidden_size, 64);
    assert_eq!(c.num_key_value_heads, 2);
    assert_eq!(c.max_latent_size, 8);
}

/// Copies `tiny-gqa` into a temporary folder with `ema.safetensors` rewritten by `edit`.
fn corrupted(
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) -> (tempfile::TempDir, PathBuf) {
    let src = folder("tiny-gqa");
    let tmp = tempfile::tempdir().unwrap();
    for f in ["llm_config.json", "vit_config.json", "config.json"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("ema.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut entries: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut entries);
    let views: Vec<_> = entries
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let path = tmp.path().join("ema.safetensors");
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    (tmp, path)
}

fn load_error(path: &Path) -> String {
    let config = BagelConfig::from_dir(path.parent().unwrap()).unwrap();
    match load_weights(config.init::<Flex>(&Default::default()), path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn renamed_missing_and_misshapen_tensors_are_named() {
    let q = "language_model.model.layers.1.self_attn.q_proj_moe_gen.weight";
    let (_tmp, path) = corrupted(|e| {
        let i = e.iter().position(|t| t.0 == q).unwrap();
        e[i].0 = format!("{q}_typo");
    });
    let err = load_error(&path);
    assert!(err.contains(&format!("missing tensors: {q}")), "{err}");
    assert!(
        err.contains(&format!("unexpected tensors: {q}_typo")),
        "{err}"
    );

    let k = "time_embedder.mlp.2.bias";
    let (_tmp, path) = corrupted(|e| e.retain(|t| t.0 != k));
    let err = load_error(&path);
    assert!(err.contains(&format!("missing tensors: {k}")), "{err}");
    assert!(
        !err.contains("vit_model"),
        "ViT tensors are known, not unexpected: {err}"
    );

    let m = "language_model.model.layers.0.mlp_moe_gen.down_proj.weight";
    let (_tmp, path) = corrupted(|e| {
        let i = e.iter().position(|t| t.0 == m).unwrap();
        let (rows, cols) = (e[i].2[0], e[i].2[1]);
        e[i].2 = vec![rows, cols - 1];
        e[i].3.truncate(rows * (cols - 1) * 2);
    });
    let err = load_error(&path);
    assert!(err.contains(&format!("misshapen tensors: `{m}`")), "{err}");
}
