//! Data-parallel training through burn-collective: P peers, each with its shard of every batch,
//! must train exactly like one trainer with the whole batch, and stay identical to each other.
#![cfg(feature = "collective")]

mod common;

use common::*;
use srum::train::materialize;
use srum::train::{Constraint, DataParallel, SrumBatch, StepReport, Trainer, TrainerConfig};
use srum_world::toy::{ToyUmm, ToyUmmConfig};

type Weights = Vec<(String, Vec<f32>)>;

fn max_abs_diff(a: &Weights, b: &Weights) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|((pa, x), (pb, y))| {
            assert_eq!(pa, pb);
            x.iter().zip(y).map(|(u, v)| (u - v).abs())
        })
        .fold(0.0, f32::max)
}

fn train_single(
    init: ToyUmm<CpuAd>,
    config: &TrainerConfig,
    batches: &[SrumBatch<CpuAd>],
) -> (Weights, Vec<StepReport>) {
    let mut t = Trainer::new(init, config.clone(), &device()).unwrap();
    let reports = batches.iter().map(|b| t.step(b.clone()).unwrap()).collect();
    (weights(t.model()), reports)
}

/// `peers` threads; every peer but the root starts from its own random weights, so the run
/// also shows that joining the group hands everyone the root's weights.
fn train_peers(
    init: ToyUmm<CpuAd>,
    config: &TrainerConfig,
    batches: &[SrumBatch<CpuAd>],
    peers: usize,
) -> Vec<(Weights, Vec<StepReport>)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..peers)
            .map(|rank| {
                let model = if rank == 0 {
                    init.clone()
                } else {
                    let m = ToyUmmConfig::new().init::<CpuAd>(&device());
                    materialize(&m);
                    m
                };
                let config = config.clone();
                s.spawn(move || {
                    let t = Trainer::new(model, config, &device()).unwrap();
                    let mut t = t.data_parallel(DataParallel::local(rank, peers)).unwrap();
                    let reports: Vec<StepReport> = batches
                        .iter()
                        .map(|b| t.step(b.shard(rank, peers).unwrap()).unwrap())
                        .collect();
                    let w = weights(t.model());
                    t.leave_group().unwrap();
                    (w, reports)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn check(config: TrainerConfig, peers: usize, steps: u64) {
    let dev = device();
    let init = ToyUmmConfig::new().init::<CpuAd>(&dev);
    materialize(&init);
    let start = weights(&init);
    let global = 4 * peers;
    let batches: Vec<_> = (0..steps)
        .map(|i| toy_batch(100 + i, global, &dev))
        .collect();

    let (single, single_reports) = train_single(init.clone(), &config, &batches);
    let group = train_peers(init, &config, &batches, peers);

    let moved = max_abs_diff(&start, &single);
    assert!(moved > 1e-3, "training did not move the weights ({moved})");
    for (rank, (w, reports)) in group.iter().enumerate() {
        // All peers apply the same averaged update: identical weights, bit for bit.
        assert_eq!(w, &group[0].0, "peer {rank} drifted from peer 0");
        let d = max_abs_diff(w, &single);
        assert!(
            d <= 1e-5 * moved.max(1.0),
            "{peers} peers vs one trainer: weights differ by {d} (training moved them {moved})"
        );
        for (a, b) in reports.iter().zip(&single_reports) {
            assert_eq!(a.updated(), b.updated());
            assert!(
                (a.loss - b.loss).abs() <= 1e-5 * b.loss.abs().max(1.0),
                "step {}: group loss {} vs single {}",
                b.micro_step,
                a.loss,
                b.loss
            );
            match (a.grad_norm(), b.grad_norm()) {
                (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-4 * y.max(1.0), "{x} vs {y}"),
                (x, y) => assert_eq!(x.is_some(), y.is_some()),
            }
        }
    }
}

// One test function: the collective's per-backend server is process-global, so groups must not
// overlap in time.
#[test]
fn peers_train_like_one_trainer_with_the_whole_batch() {
    let base = TrainerConfig::new()
        .with_lr(1e-2)
        .with_warmup_steps(2)
        .with_seed(7);
    // The published recipe's anchor constraint, clipping active (norms are well above 1e-3).
    check(base.clone().with_grad_clip_norm(Some(1e-3)), 2, 4);
    // Frozen reference model, gradient accumulation over two micro-batches, three peers.
    check(
        base.with_constraint(Constraint::ReferenceModel)
            .with_grad_accum_steps(2),
        3,
        4,
    );
    non_finite_loss_on_one_peer_skips_on_all();
}

/// The loss terms travel with the gradients (one all-reduce per update): a peer whose loss is
/// NaN makes every peer skip that update together, and the next one goes on normally.
fn non_finite_loss_on_one_peer_skips_on_all() {
    let dev = device();
    let init = ToyUmmConfig::new().init::<CpuAd>(&dev);
    materialize(&init);
    let start = weights(&init);
    let config = TrainerConfig::new().with_lr(1e-2).with_seed(3);
    let good = toy_batch::<CpuAd>(5, 8, &dev);
    let reports: Vec<(Weights, Vec<StepReport>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let (init, config, good) = (init.clone(), config.clone(), good.clone());
                s.spawn(move || {
                    let t = Trainer::new(init, config, &device()).unwrap();
                    let mut t = t.data_parallel(DataParallel::local(rank, 2)).unwrap();
                    let mut bad = good.shard(rank, 2).unwrap();
                    if rank == 1 {
                        bad.reward = bad.reward.mul_scalar(f32::NAN);
                    }
                    let first = t.step(bad).unwrap();
                    let w = weights(t.model());
                    let second = t.step(good.shard(rank, 2).unwrap()).unwrap();
                    t.leave_group().unwrap();
                    (w, vec![first, second])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (rank, (w, r)) in reports.iter().enumerate() {
        assert!(!r[0].updated(), "peer {rank} updated on a NaN loss");
        assert!(r[0].loss.is_nan(), "peer {rank} reports loss {}", r[0].loss);
        assert_eq!(w, &start, "peer {rank}'s weights moved on a skipped step");
        assert!(r[1].updated(), "peer {rank} did not go on after the skip");
    }
}

#[test]
fn uneven_shards_are_refused() {
    let dev = device();
    let b = toy_batch::<CpuAd>(1, 6, &dev);
    assert!(b.shard(0, 4).is_err());
    assert!(b.shard(3, 3).is_err());
    let s = b.shard(2, 3).unwrap();
    assert_eq!(s.prompts, b.prompts[4..6].to_vec());
}
