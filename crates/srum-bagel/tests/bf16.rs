//! bf16 training with f32 master weights on the tiny random BAGEL of `tests/data/tiny-gqa`,
//! against f32 training: the same 50 steps (same batches, same noise) in each precision.
//!
//! A device's default float dtype is set once per process, so each precision trains in a
//! process of its own: the test runs this binary again, filtered to `train_child`, once per
//! precision, and compares the loss curves the two children print.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::set_default_float_dtype;
use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use srum::model::{Generator, ImageCodec, ImageSize, ParamRole, TrainableSet};
use srum::reward::RewardMap;
use srum::train::{Precision, SrumBatch, Trainer, TrainerConfig};
use srum_bagel::{BagelModel, BagelTemplates};

type A = Autodiff<Flex>;

const STEPS: usize = 50;
const RESUME_AT: usize = 40;
const SIZE: ImageSize = ImageSize::new(48, 32);
const CHILD: &str = "SRUM_BF16_TEST_PRECISION";

fn folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-gqa")
}

/// Deterministic latents for step `step`, the same in both processes.
fn latents(step: usize, shape: [usize; 3]) -> Vec<f32> {
    let n = shape.iter().product::<usize>();
    (0..n)
        .map(|i| {
            let x = (i as f32 * 0.618_034 + step as f32 * 0.754_877).sin() * 43_758.547;
            2.0 * (x - x.floor()) - 1.0
        })
        .collect()
}

/// Each float parameter's dtype and values, by parameter id, with its role.
struct Snapshot {
    roles: srum::model::ParamRoles,
    out: Vec<(ParamRole, DType, Vec<f32>)>,
}

impl ModuleVisitor<A> for Snapshot {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        let t = param.val();
        let dtype = t.dtype();
        let values = t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        self.out.push((self.roles.role(param.id), dtype, values));
    }
}

fn snapshot(model: &BagelModel<A>) -> Vec<(ParamRole, DType, Vec<f32>)> {
    let mut s = Snapshot {
        roles: model.param_roles(),
        out: Vec::new(),
    };
    model.visit(&mut s);
    s.out
}

/// Trains 50 steps in the precision named by the environment and prints the losses. Does
/// nothing unless run by `bf16_loss_curve_follows_f32` as a child process.
#[test]
fn train_child() {
    let Ok(which) = std::env::var(CHILD) else {
        return;
    };
    let precision = match which.as_str() {
        "f32" => Precision::F32,
        "bf16" => Precision::Bf16,
        other => panic!("{CHILD}={other}"),
    };
    let device = Default::default();
    if precision == Precision::Bf16 {
        set_default_float_dtype::<A>(&device, FloatDType::BF16).unwrap();
    }
    let model = BagelModel::<A>::load(folder(), BagelTemplates::default(), &device)
        .unwrap()
        .with_generation_size(SIZE)
        .unwrap();
    let grid = model.latent_grid(SIZE);
    let shape = [2, grid.tokens(), model.latent_channels()];
    let before = snapshot(&model);
    let config = TrainerConfig {
        lr: 1e-3,
        warmup_steps: 0,
        trainable: TrainableSet::GenerationOnly,
        precision,
        ..TrainerConfig::default()
    };
    let mut trainer = Trainer::new(model, config, &device).unwrap();
    let maps = [RewardMap::filled(grid, 1.0), RewardMap::filled(grid, -0.5)];
    let batch = |step: usize| {
        let x = Tensor::<A, 3>::from_data(TensorData::new(latents(step, shape), shape), &device);
        let prompts = vec!["a red circle".into(), "a blue square".into()];
        SrumBatch::from_maps(prompts, x, grid, &maps).unwrap()
    };
    let saved = tempfile::tempdir().unwrap();
    let mut losses = Vec::with_capacity(STEPS);
    for step in 0..STEPS {
        if step == RESUME_AT {
            trainer.save_checkpoint(saved.path()).unwrap();
        }
        let r = trainer.step(batch(step)).unwrap();
        assert!(r.updated(), "step {step}: {:?}", r.outcome);
        losses.push(r.loss);
    }

    // Resumed from the checkpoint, the masters come back whole: the first step's loss is the
    // same. burn loads AdamW's moments in the device's default dtype, so under bf16 they come
    // back rounded to bf16 once (the trainer puts them back in f32); after that the losses
    // stay within bf16's rounding of the uninterrupted ones. In f32 everything is exact.
    let fresh = BagelModel::<A>::load(folder(), BagelTemplates::default(), &device)
        .unwrap()
        .with_generation_size(SIZE)
        .unwrap();
    let mut resumed = Trainer::resume(saved.path(), fresh, &device).unwrap();
    for (step, want) in losses.iter().enumerate().skip(RESUME_AT) {
        let r = resumed.step(batch(step)).unwrap();
        if step == RESUME_AT || precision == Precision::F32 {
            assert_eq!(r.loss, *want, "step {step} after resuming at {RESUME_AT}");
        } else {
            let rel = (r.loss - want).abs() / want.abs();
            assert!(
                rel < 2e-3,
                "step {step}: {} resumed, {want} uninterrupted",
                r.loss
            );
        }
    }

    let after = snapshot(trainer.model());
    assert_eq!(before.len(), after.len());
    let mut trained_changed = 0;
    for ((role, dtype0, v0), (_, dtype1, v1)) in before.iter().zip(&after) {
        if *role == ParamRole::Generation {
            // Its master copy, which the updates went to.
            assert_eq!(*dtype1, DType::F32, "a trained parameter's master is f32");
            trained_changed += usize::from(v0 != v1);
        } else {
            let want = if precision == Precision::Bf16 {
                DType::BF16
            } else {
                *dtype0
            };
            assert_eq!(*dtype1, want, "a {role:?} parameter");
            // Not trained: the values the model was loaded with, bit for bit (bf16 loading
            // rounds them once, before training).
            assert_eq!(v0, v1, "a {role:?} parameter changed");
        }
    }
    assert!(
        trained_changed > 10,
        "{trained_changed} trained tensors moved"
    );
    println!("CURVE {}", serde_json::to_string(&losses).unwrap());
}

fn curve(precision: &str) -> Vec<f32> {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["train_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, precision)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{precision} child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("CURVE ").map(|(_, curve)| curve))
        .unwrap_or_else(|| panic!("{precision} child printed no curve:\n{stdout}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn bf16_loss_curve_follows_f32() {
    let f32 = curve("f32");
    let bf16 = curve("bf16");
    assert_eq!((f32.len(), bf16.len()), (STEPS, STEPS));
    let rel: Vec<f32> = f32
        .iter()
        .zip(&bf16)
        .map(|(a, b)| (a - b).abs() / a.abs().max(1e-6))
        .collect();
    let worst = rel.iter().copied().fold(0.0, f32::max);
    let mean = rel.iter().sum::<f32>() / rel.len() as f32;
    println!(
        "f32 loss {:.4} -> {:.4}, bf16 {:.4} -> {:.4}; per-step relative difference: mean {mean:.2e}, worst {worst:.2e}",
        f32[0],
        f32[STEPS - 1],
        bf16[0],
        bf16[STEPS - 1]
    );
    // Training moved the loss: the comparison is of two curves, not of two constants.
    assert!(f32[STEPS - 1] < 0.9 * f32[0], "f32 did not train: {f32:?}");
    // Measured: worst 1.8e-3, mean 4.7e-4 (bf16 keeps 8 bits of mantissa: 3.9e-3 relative).
    assert!(
        worst < 1e-2,
        "bf16 left the f32 curve: {bf16:?} against {f32:?}"
    );
    assert!(
        mean < 3e-3,
        "bf16 drifted from f32: {bf16:?} against {f32:?}"
    );
}

#[test]
fn bf16_training_needs_a_bf16_device() {
    // This process keeps the f32 default (the children set their own).
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let device = Default::default();
    let model = BagelModel::<A>::load(folder(), BagelTemplates::default(), &device)
        .unwrap()
        .with_generation_size(SIZE)
        .unwrap();
    let config = TrainerConfig {
        precision: Precision::Bf16,
        ..TrainerConfig::default()
    };
    let Err(err) = Trainer::new(model, config, &device) else {
        panic!("bf16 training was accepted on an f32 device")
    };
    assert!(err.to_string().contains("set_default_float_dtype"), "{err}");
}
