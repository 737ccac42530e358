//! Data-parallel SRUM training in one process: one thread per device, each a `Trainer` in a
//! burn-collective group, each stepping on its shard of every global batch. Prints the step
//! time per peer count, the measurement docs/SCALING.md reports.
//!
//! `cargo run --release --example data_parallel --features collective -- [MAX_PEERS] [STEPS]`
//!
//! On the CPU every peer shares the same cores, so this measures the overhead of the group (the
//! all-reduce and the per-peer fixed costs), not a speed-up; on a machine with several GPUs,
//! give each peer its own device (`CudaDevice::new(rank)`) instead of `Default::default()`.

use srum::model::{ImageCodec, ImageSize};
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use srum::train::{DataParallel, SrumBatch, Trainer, TrainerConfig};
use srum_world::tiny::TinyUmm;
use srum_world::world::{Split, split_prompts};

type B = Autodiff<Flex>;

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/tiny-umm");
const GLOBAL_BATCH: usize = 32;

fn batches(steps: usize, n: usize, c: usize) -> Vec<SrumBatch<B>> {
    let prompts: Vec<String> = split_prompts(Split::Train, 0)
        .iter()
        .map(|p| p.text())
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let device = Default::default();
    (0..steps)
        .map(|_| {
            let b = GLOBAL_BATCH;
            let latents: Vec<f32> = (0..b * n * c)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let reward: Vec<f32> = (0..b * n).map(|_| rng.random_range(0.0..1.0)).collect();
            SrumBatch {
                prompts: (0..b)
                    .map(|_| prompts[rng.random_range(0..prompts.len())].clone())
                    .collect(),
                latents: Tensor::from_data(TensorData::new(latents, [b, n, c]), &device),
                anchor: None,
                reward: Tensor::from_data(TensorData::new(reward, [b, n]), &device),
            }
        })
        .collect()
}

fn main() -> srum::Result<()> {
    let mut args = std::env::args().skip(1);
    let max_peers: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2);
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(6);
    let device = Default::default();
    let (model, config) = TinyUmm::<B>::load_dir(MODEL, &device)?;
    let size = config.image_size;
    let n = ImageCodec::latent_grid(&model, ImageSize::square(size)).tokens();
    let c = ImageCodec::latent_channels(&model);
    let data = batches(steps, n, c);
    let probe = Trainer::new(model.clone(), TrainerConfig::default(), &device)?;
    let trainable: std::collections::HashSet<_> = probe.trainable_params().iter().collect();
    let floats: usize = srum::train::collect_params(&model)
        .iter()
        .filter(|p| trainable.contains(&p.id))
        .map(|p| p.shape.iter().product::<usize>())
        .sum();
    drop(probe);
    println!(
        "trainable parameters: {floats} ({} KiB of f32 gradients per all-reduce)",
        floats * 4 / 1024
    );

    println!("peers  global batch  per peer  s/step (median of {steps}, first dropped)");
    let mut peers = 1;
    while peers <= max_peers {
        if !GLOBAL_BATCH.is_multiple_of(peers) {
            peers += 1;
            continue;
        }
        let times: Vec<Vec<f64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..peers)
                .map(|rank| {
                    let (model, data) = (model.clone(), &data);
                    s.spawn(move || -> srum::Result<Vec<f64>> {
                        let t = Trainer::new(model, TrainerConfig::default(), &Default::default())?;
                        let mut t = if peers > 1 {
                            t.data_parallel(DataParallel::local(rank, peers))?
                        } else {
                            t
                        };
                        let mut times = Vec::new();
                        for batch in data {
                            let start = Instant::now();
                            t.step(batch.shard(rank, peers)?)?;
                            times.push(start.elapsed().as_secs_f64());
                        }
                        t.leave_group()?;
                        Ok(times)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("peer thread panicked"))
                .collect::<srum::Result<Vec<_>>>()
        })?;
        // A step ends when the slowest peer's does.
        let mut per_step: Vec<f64> = (1..steps)
            .map(|i| times.iter().map(|t| t[i]).fold(0.0, f64::max))
            .collect();
        per_step.sort_by(f64::total_cmp);
        let median = per_step
            .get(per_step.len() / 2)
            .copied()
            .unwrap_or(f64::NAN);
        println!(
            "{peers:>5}  {GLOBAL_BATCH:>12}  {:>8}  {median:.4}",
            GLOBAL_BATCH / peers
        );
        peers *= 2;
    }
    Ok(())
}
