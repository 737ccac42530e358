//! srum's `Trainer` on BAGEL under the packed objective, with and without per-layer
//! checkpointing, against srum's `FlowMatching` (one cached-context forward per image): the
//! same losses and the same weights, step after step, on the tiny random BAGEL.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData};
use srum::model::{ImageCodec, ImageSize, TrainableSet};
use srum::reward::RewardMap;
use srum::train::{
    AdamWSettings, Constraint, FlowMatching, Objective, SrumBatch, Trainer, TrainerConfig,
    collect_params,
};
use srum_bagel::{BagelModel, BagelTemplates, PackedFlowMatching};

type A = Autodiff<Flex>;

const SIZE: ImageSize = ImageSize::new(48, 32);

fn folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-gqa")
}

fn model() -> BagelModel<A> {
    BagelModel::<A>::load(folder(), BagelTemplates::default(), &Default::default())
        .unwrap()
        .with_generation_size(SIZE)
        .unwrap()
}

/// Losses of each micro-step and the trained weights after them.
fn train<O: Objective<A, BagelModel<A>>>(
    objective: O,
    config: TrainerConfig,
    steps: usize,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let device = Default::default();
    let model = model();
    let grid = model.latent_grid(SIZE);
    let shape = [2, grid.tokens(), model.latent_channels()];
    let mut trainer = Trainer::with_objective(model, objective, config, &device).unwrap();
    // A map that varies over the tokens, so that rows matter.
    let varied: Vec<f32> = (0..grid.tokens()).map(|i| 1.0 - 0.5 * i as f32).collect();
    let maps = [
        RewardMap::filled(grid, 1.0),
        RewardMap::new(grid, varied).unwrap(),
    ];
    let mut losses = Vec::new();
    for step in 0..steps {
        let n = shape.iter().product::<usize>();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7 + step * 13) % 17) as f32 / 8.0 - 1.0)
            .collect();
        let x = Tensor::<A, 3>::from_data(TensorData::new(v, shape), &device);
        let prompts = vec!["a red circle".into(), "two blue squares".into()];
        let batch = SrumBatch::from_maps(prompts, x, grid, &maps).unwrap();
        losses.push(trainer.step(batch).unwrap().loss);
    }
    let weights = collect_params(&trainer.model().valid())
        .into_iter()
        .map(|p| p.flat.into_data().to_vec::<f32>().unwrap())
        .collect();
    (losses, weights)
}

fn worst(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

/// AdamW's epsilon is 1e-6 here, not the recipe's 1e-15: the keys' biases get an exactly
/// zero gradient (softmax ignores a shift shared by all keys), so what they get is rounding,
/// which an epsilon of 1e-15 turns into full `lr`-sized steps of either sign.
fn config() -> TrainerConfig {
    TrainerConfig {
        optimizer: AdamWSettings {
            epsilon: 1e-6,
            ..AdamWSettings::default()
        },
        lr: 1e-3,
        warmup_steps: 0,
        grad_accum_steps: 2,
        trainable: TrainableSet::GenerationAndShared,
        ..TrainerConfig::default()
    }
}

#[test]
fn the_packed_objective_trains_like_flow_matching_with_or_without_checkpointing() {
    let (l_flow, w_flow) = train(FlowMatching, config(), 6);
    let (l_packed, w_packed) = train(PackedFlowMatching::new(), config(), 6);
    let (l_ckpt, w_ckpt) = train(
        PackedFlowMatching::new().with_checkpointing(true),
        config(),
        6,
    );
    let rel = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / x.abs())
            .fold(0.0, f32::max)
    };
    println!(
        "losses {l_flow:?}; packed vs cached: loss {:.1e}, weights {:.1e}; checkpointed vs packed: loss {:.1e}, weights {:.1e}",
        rel(&l_flow, &l_packed),
        worst(&w_flow, &w_packed),
        rel(&l_packed, &l_ckpt),
        worst(&w_packed, &w_ckpt)
    );
    // Three updates moved the weights, so equal weights mean equal gradients.
    assert!(worst(&w_flow, &train(FlowMatching, config(), 0).1) > 1e-3);
    assert!(rel(&l_flow, &l_packed) < 1e-5, "{l_flow:?} vs {l_packed:?}");
    assert!(worst(&w_flow, &w_packed) < 1e-5);
    assert!(rel(&l_packed, &l_ckpt) < 1e-5, "{l_packed:?} vs {l_ckpt:?}");
    assert!(worst(&w_packed, &w_ckpt) < 1e-5);
}

#[test]
fn the_reference_constraint_is_the_same_packed_and_checkpointed() {
    let config = TrainerConfig {
        constraint: Constraint::ReferenceModel,
        lambda: 1.0,
        ..config()
    };
    let (l_flow, w_flow) = train(FlowMatching, config.clone(), 4);
    let (l_ckpt, w_ckpt) = train(
        PackedFlowMatching::new().with_checkpointing(true),
        config,
        4,
    );
    for (a, b) in l_flow.iter().zip(&l_ckpt) {
        assert!((a - b).abs() < 1e-5 * a.abs(), "{l_flow:?} vs {l_ckpt:?}");
    }
    assert!(worst(&w_flow, &w_ckpt) < 1e-5);
}

#[test]
fn thinking_templates_are_refused_by_the_packed_objective() {
    let device = Default::default();
    let model = BagelModel::<A>::load(
        folder(),
        BagelTemplates {
            generation_think: true,
            max_think_tokens: 2,
            ..BagelTemplates::default()
        },
        &device,
    )
    .unwrap()
    .with_generation_size(SIZE)
    .unwrap();
    let grid = model.latent_grid(SIZE);
    let x = Tensor::<A, 3>::zeros([1, grid.tokens(), model.latent_channels()], &device);
    let batch = SrumBatch::from_maps(
        vec!["a cat".into()],
        x,
        grid,
        &[RewardMap::filled(grid, 1.0)],
    )
    .unwrap();
    let mut trainer =
        Trainer::with_objective(model, PackedFlowMatching::new(), config(), &device).unwrap();
    let Err(err) = trainer.step(batch) else {
        panic!("a thinking template was trained")
    };
    assert!(err.to_string().contains("generation_think"), "{err}");
}
