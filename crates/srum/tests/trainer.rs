//! The trainer on the toy model: it learns, keeps understanding frozen, survives NaNs and
//! resumes bit for bit.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::*;
use srum::model::{FlowGenerator, Generator, ParamRole, TrainableSet};
use srum::train::{AdamWSettings, Constraint, FlowMatching, StepOutcome, Trainer, TrainerConfig};
use srum_world::toy::ToyUmmConfig;

fn fast_config() -> TrainerConfig {
    TrainerConfig::new()
        .with_lr(1e-2)
        .with_warmup_steps(2)
        .with_seed(7)
}

#[test]
fn understanding_weights_never_change() {
    let dev = device();
    for trainable in [
        TrainableSet::GenerationAndShared,
        TrainableSet::GenerationOnly,
    ] {
        let model = ToyUmmConfig::new().init::<CpuAd>(&dev);
        let roles = model.param_roles();
        let before = srum::train::collect_params(&model);
        let before_w = weights(&model);
        // Weight decay on, so a frozen parameter that reached the optimizer would move.
        let config = fast_config()
            .with_optimizer(AdamWSettings::new().with_weight_decay(0.1))
            .with_trainable(trainable);
        let mut trainer = Trainer::new(model, config, &dev).unwrap();
        for i in 0..5 {
            let r = trainer.step(toy_batch(i, 4, &dev)).unwrap();
            assert!(r.updated());
        }
        let after_w = weights(trainer.model());
        for ((p, (path, w0)), (_, w1)) in before.iter().zip(&before_w).zip(&after_w) {
            let role = roles.role(p.id);
            let trained = trainable.trains(role);
            if trained {
                assert_ne!(
                    w0, w1,
                    "{trainable:?}: trained parameter `{path}` ({role:?}) did not move"
                );
            } else {
                assert_eq!(
                    w0, w1,
                    "{trainable:?}: frozen parameter `{path}` ({role:?}) changed"
                );
            }
            if role == ParamRole::Understanding {
                assert!(!trained);
            }
        }
    }
}

#[test]
fn high_reward_tokens_learn_faster() {
    let dev = device();
    let model = ToyUmmConfig::new().init::<CpuAd>(&dev);
    // One fixed image; reward 1 on the first 8 tokens, 0 on the last 8; no constraint.
    let base = toy_batch::<CpuAd>(1, 1, &dev);
    let mut reward = vec![0f32; 16];
    reward[..8].iter_mut().for_each(|r| *r = 1.0);
    let batch = srum::train::SrumBatch {
        reward: Tensor::from_data(TensorData::new(reward, [1, 16]), &dev),
        ..base
    };
    let per_token_error = |model: &srum_world::toy::ToyUmm<CpuAd>| -> (f32, f32) {
        // Fixed evaluation noise and times, the flow-matching error per token.
        let eval = toy_batch::<CpuAd>(99, 8, &dev);
        let x0 = batch.latents.clone().repeat_dim(0, 8);
        let eps = eval.latents;
        let t = Tensor::<CpuAd, 1>::from_data(
            TensorData::new(
                (0..8).map(|i| 0.1 + 0.1 * i as f32).collect::<Vec<_>>(),
                [8],
            ),
            &dev,
        );
        let x_t = srum::flow::noisy_latents(x0.clone(), eps.clone(), t.clone());
        let cond = model.condition(&vec![batch.prompts[0].clone(); 8]).unwrap();
        let v = model.velocity(x_t, t, &cond);
        let err: Vec<f32> = (v - (eps - x0))
            .powi_scalar(2)
            .mean_dim(2)
            .mean_dim(0)
            .into_data()
            .into_vec()
            .unwrap();
        (
            err[..8].iter().sum::<f32>() / 8.0,
            err[8..].iter().sum::<f32>() / 8.0,
        )
    };
    let (hi0, lo0) = per_token_error(&model);
    let config = fast_config().with_lambda(0.0).with_warmup_steps(1);
    let mut trainer = Trainer::new(model, config, &dev).unwrap();
    for i in 0..150 {
        let r = trainer.step(batch.clone()).unwrap();
        assert!(
            r.grad_norm().is_some_and(|g| g > 0.0),
            "step {i}: no gradient"
        );
    }
    let (hi1, lo1) = per_token_error(trainer.model());
    let (gain_hi, gain_lo) = ((hi0 - hi1) / hi0, (lo0 - lo1) / lo0);
    eprintln!("reward-1 tokens: {hi0:.4} -> {hi1:.4}; reward-0 tokens: {lo0:.4} -> {lo1:.4}");
    assert!(gain_hi > 0.3, "reward-1 tokens barely learned: {gain_hi}");
    assert!(
        gain_hi > gain_lo + 0.2,
        "reward-1 gain {gain_hi} not above reward-0 gain {gain_lo}"
    );
}

#[test]
fn resume_is_bit_exact() {
    let dev = device();
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config()
        .with_optimizer(AdamWSettings::new().with_weight_decay(0.01))
        .with_grad_accum_steps(2)
        .with_ema_decay(Some(0.9))
        .with_constraint(Constraint::ReferenceModel);
    let model = ToyUmmConfig::new().init::<CpuAd>(&dev);
    srum::train::materialize(&model);

    let mut straight = Trainer::new(model.clone(), config.clone(), &dev).unwrap();
    for i in 0..8 {
        straight.step(toy_batch(i, 3, &dev)).unwrap();
    }

    let mut first = Trainer::new(model, config, &dev).unwrap();
    for i in 0..4 {
        first.step(toy_batch(i, 3, &dev)).unwrap();
    }
    first.save_checkpoint(dir.path().join("ckpt")).unwrap();
    drop(first);
    // A fresh model: different random weights and parameter ids.
    let fresh = ToyUmmConfig::new().init::<CpuAd>(&dev);
    let mut resumed = Trainer::resume(dir.path().join("ckpt"), fresh, &dev).unwrap();
    assert_eq!(resumed.state().optimizer_steps, 2);
    for i in 4..8 {
        resumed.step(toy_batch(i, 3, &dev)).unwrap();
    }
    assert_eq!(resumed.state(), straight.state());
    let (a, b) = (weights(straight.model()), weights(resumed.model()));
    for ((path, x), (_, y)) in a.iter().zip(&b) {
        let first_diff = x
            .iter()
            .zip(y)
            .position(|(p, q)| p.to_bits() != q.to_bits());
        assert_eq!(first_diff, None, "`{path}` differs after resume");
    }
    assert_eq!(
        weights(straight.ema().unwrap()),
        weights(resumed.ema().unwrap())
    );
}

#[test]
fn weights_round_trip_through_safetensors() {
    let dev = device();
    let a = ToyUmmConfig::new().init::<CpuAd>(&dev);
    let b = ToyUmmConfig::new().init::<CpuAd>(&dev);
    assert_ne!(weights(&a), weights(&b));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    srum::train::save_weights(&a, &path).unwrap();
    let b = srum::train::load_weights(b, &path).unwrap();
    assert_eq!(weights(&a), weights(&b));
    assert_eq!(
        burn::module::list_param_ids(&a),
        burn::module::list_param_ids(&b)
    );
}

#[test]
fn checkpoint_refuses_mid_accumulation() {
    let dev = device();
    let model = ToyUmmConfig::new().init::<CpuAd>(&dev);
    let mut t = Trainer::new(model, fast_config().with_grad_accum_steps(2), &dev).unwrap();
    let r = t.step(toy_batch(0, 2, &dev)).unwrap();
    assert_eq!(r.outcome, StepOutcome::Accumulated);
    let dir = tempfile::tempdir().unwrap();
    let err = t
        .save_checkpoint(dir.path().join("c"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("accumulated"), "{err}");
    assert!(t.step(toy_batch(1, 2, &dev)).unwrap().updated());
    t.save_checkpoint(dir.path().join("c")).unwrap();
}

#[test]
fn non_finite_steps_are_skipped_then_stop() {
    let dev = device();
    let model = ToyUmmConfig::new().init::<CpuAd>(&dev);
    let mut t = Trainer::new(model, fast_config().with_max_consecutive_skips(3), &dev).unwrap();
    t.step(toy_batch(0, 2, &dev)).unwrap();
    let good = weights(t.model());
    let dir = tempfile::tempdir().unwrap();
    t.save_checkpoint(dir.path().join("ckpt")).unwrap();
    let poisoned = || {
        let mut b = toy_batch::<CpuAd>(5, 2, &dev);
        let mut r = vec![1f32; 32];
        r[3] = f32::NAN;
        b.reward = Tensor::from_data(TensorData::new(r, [2, 16]), &dev);
        b
    };
    for _ in 0..2 {
        let r = t.step(poisoned()).unwrap();
        assert!(
            matches!(&r.outcome, StepOutcome::Skipped { reason, .. } if reason.contains("non-finite")),
            "{r:?}"
        );
        assert_eq!(
            weights(t.model()),
            good,
            "a skipped step changed the weights"
        );
    }
    let err = t.step(poisoned()).unwrap_err().to_string();
    assert!(err.contains("3 non-finite steps in a row"), "{err}");
    assert_eq!(weights(t.model()), good);
    // The last good checkpoint is intact.
    let back = Trainer::resume(
        dir.path().join("ckpt"),
        ToyUmmConfig::new().init::<CpuAd>(&dev),
        &dev,
    )
    .unwrap();
    assert_eq!(weights(back.model()), good);
    // A good step afterwards still trains and resets the streak.
    assert!(t.step(toy_batch(6, 2, &dev)).unwrap().updated());
    assert_eq!(t.state().consecutive_skips, 0);
    assert_eq!(t.state().skipped, 3);
}

#[test]
fn invalid_config_names_the_field() {
    let dev = device();
    for (config, field) in [
        (TrainerConfig::new().with_lr(-1.0), "lr"),
        (TrainerConfig::new().with_lambda(f32::NAN), "lambda"),
        (
            TrainerConfig::new().with_grad_accum_steps(0),
            "grad_accum_steps",
        ),
        (
            TrainerConfig::new().with_optimizer(AdamWSettings::new().with_beta_2(1.0)),
            "optimizer.beta_2",
        ),
    ] {
        let model = ToyUmmConfig::new().init::<CpuAd>(&dev);
        let err = Trainer::new(model, config, &dev).err().unwrap().to_string();
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn default_config_is_the_published_recipe() {
    let c = TrainerConfig::default();
    assert_eq!(
        (
            c.lr,
            c.optimizer.beta_1,
            c.optimizer.beta_2,
            c.optimizer.epsilon,
            c.optimizer.weight_decay
        ),
        (2e-5, 0.9, 0.95, 1e-15, 0.0)
    );
    assert_eq!(
        (c.warmup_steps, c.lambda, c.grad_clip_norm),
        (100, 0.5, Some(1.0))
    );
    assert_eq!(c.constraint, Constraint::Anchor);
    assert_eq!(c.ema_decay, None);
    assert_eq!(c.trainable, TrainableSet::GenerationAndShared);
}

#[test]
fn a_crash_mid_save_leaves_the_previous_checkpoint_usable() {
    let dev = device();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let model = ToyUmmConfig::new().init::<CpuAd>(&dev);
    let mut t = Trainer::new(model, fast_config(), &dev).unwrap();
    t.step(toy_batch(0, 2, &dev)).unwrap();
    t.save_checkpoint(&ckpt).unwrap();
    let saved = weights(t.model());
    // What a kill during the next save leaves: a half-written version folder.
    let torn = ckpt.join("step-000000002.tmp");
    std::fs::create_dir_all(&torn).unwrap();
    std::fs::write(torn.join("model.safetensors"), b"half").unwrap();
    let resumed = Trainer::resume(&ckpt, ToyUmmConfig::new().init::<CpuAd>(&dev), &dev).unwrap();
    assert_eq!(weights(resumed.model()), saved);
    assert_eq!(resumed.state().optimizer_steps, 1);
    // The next save cleans up and moves LATEST.
    t.step(toy_batch(1, 2, &dev)).unwrap();
    t.save_checkpoint(&ckpt).unwrap();
    assert_eq!(
        std::fs::read_to_string(ckpt.join("LATEST")).unwrap(),
        "step-000000002"
    );
    let entries: Vec<_> = std::fs::read_dir(&ckpt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    // A LATEST naming something absent is an error, not a silent fresh start.
    std::fs::write(ckpt.join("LATEST"), "step-000000009").unwrap();
    let err = Trainer::resume(&ckpt, ToyUmmConfig::new().init::<CpuAd>(&dev), &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn partial_json_merges_nested_optimizer_settings_and_names_unknown_fields() {
    let c =
        TrainerConfig::from_json_partial(br#"{"lr": 0.001, "optimizer": {"weight_decay": 0.01}}"#)
            .unwrap();
    assert_eq!(c.lr, 0.001);
    assert_eq!(
        c.optimizer,
        AdamWSettings::new().with_weight_decay(0.01),
        "the other optimizer settings keep their defaults"
    );
    let err = TrainerConfig::from_json_partial(br#"{"optimizer": {"beta3": 0.5}}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("optimizer.beta3"), "{err}");
    let err = TrainerConfig::from_json_partial(br#"{"optimizer": {"epsilon": -1}}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("optimizer.epsilon"), "{err}");
}

#[test]
fn the_optimizer_is_a_parameter_of_the_trainer() {
    use burn::optim::SgdConfig;
    let dev = device();
    // Clipping off, no warmup: one update is exactly the optimizer's own step at lr.
    let lr = 0.5;
    let config = fast_config()
        .with_warmup_steps(0)
        .with_grad_clip_norm(None)
        .with_lr(lr);
    let model = ToyUmmConfig::new().init::<CpuAd>(&dev);
    // Parameters are drawn lazily: draw them once, so the twin holds the same values.
    srum::train::materialize(&model);
    let twin = model.clone();
    let before = weights(&model);
    assert!(
        weights(&twin) == before,
        "the twin starts from the same weights"
    );

    // AdamW's first step is lr * g / |g|: every weight with a gradient moves by lr.
    let mut adam = Trainer::new(model, config.clone(), &dev).unwrap();
    assert!(adam.step(toy_batch(0, 4, &dev)).unwrap().updated());
    let adam_moves = moves(&before, &weights(adam.model()));
    assert!(!adam_moves.is_empty());
    assert!(
        adam_moves
            .iter()
            .all(|d| (d - lr as f32).abs() < 1e-3 * lr as f32),
        "AdamW's first step moves each weight by lr"
    );

    // Plain SGD given to the trainer: the step is lr * g, so the moves follow the gradient's
    // magnitudes, not one common size.
    let sgd = SgdConfig::new().init::<CpuAd, srum_world::toy::ToyUmm<CpuAd>>();
    let mut t = Trainer::with_optimizer(twin, FlowMatching, sgd, config, &dev).unwrap();
    assert!(t.step(toy_batch(0, 4, &dev)).unwrap().updated());
    let sgd_moves = moves(&before, &weights(t.model()));
    let (lo, hi) = sgd_moves
        .iter()
        .fold((f32::MAX, 0f32), |(lo, hi), &d| (lo.min(d), hi.max(d)));
    assert!(!sgd_moves.is_empty());
    assert!(
        hi > 10.0 * lo,
        "SGD moves range {lo}..{hi}: not the given optimizer"
    );
}

/// The sizes of the weight changes between two snapshots, zero changes left out.
fn moves(before: &[(String, Vec<f32>)], after: &[(String, Vec<f32>)]) -> Vec<f32> {
    before
        .iter()
        .zip(after)
        .flat_map(|((_, a), (_, b))| a.iter().zip(b).map(|(a, b)| (a - b).abs()))
        .filter(|d| *d > 0.0)
        .collect()
}

#[test]
fn ema_follows_its_closed_form_and_refuses_another_model() {
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use srum::train::Ema;
    let d = device();
    let values = |m: &Linear<Cpu>| -> Vec<f32> {
        let mut v = m.weight.val().into_data().to_vec::<f32>().unwrap();
        v.extend(
            m.bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
        );
        v
    };
    // Materialised first: clones of a lazily initialised parameter draw their own values.
    let start: Linear<Cpu> = LinearConfig::new(3, 2).init(&d).map(&mut Scale(1.0));
    let a = start.clone().map(&mut Scale(2.0));
    let b = start.clone().map(&mut Scale(-1.0));
    let mut ema = Ema::new(start.clone(), 0.9).unwrap();
    ema.update(&a).unwrap();
    ema.update(&b).unwrap();
    assert_eq!(ema.updates(), 2);
    // 0.9 (0.9 w + 0.1 (2 w)) + 0.1 (-w) = 0.89 w
    for (got, w) in values(ema.model()).iter().zip(values(&start)) {
        assert!((got - 0.89 * w).abs() < 1e-6, "{got} vs {}", 0.89 * w);
    }
    let other: Linear<Cpu> = LinearConfig::new(3, 2).init(&d);
    let before = values(ema.model());
    assert!(ema.update(&other).is_err(), "parameters of another model");
    assert_eq!(
        values(ema.model()),
        before,
        "a refused update changes nothing"
    );
    assert!(Ema::new(start, 1.0).is_err());
}

/// Multiplies every float parameter, keeping its id.
struct Scale(f32);

impl burn::module::ModuleMapper<Cpu> for Scale {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<Cpu, D>>,
    ) -> burn::module::Param<Tensor<Cpu, D>> {
        let s = self.0;
        param.map(|t| t.mul_scalar(s))
    }
}
