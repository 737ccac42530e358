//! Shared helpers for the integration tests.
#![allow(dead_code)]

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData, backend::Backend};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use srum::train::SrumBatch;

pub type Cpu = Flex;
pub type CpuAd = Autodiff<Flex>;

pub fn device() -> burn::tensor::Device<Cpu> {
    Default::default()
}

/// A deterministic batch for the 8x8 / patch-2 toy: 16 tokens of 12 channels.
pub fn toy_batch<B: Backend>(seed: u64, batch: usize, device: &B::Device) -> SrumBatch<B> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (n, c) = (16, 12);
    let latents: Vec<f32> = (0..batch * n * c)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let reward: Vec<f32> = (0..batch * n).map(|_| rng.random_range(0.0..1.0)).collect();
    let words = ["red", "blue", "circle", "square", "left", "of"];
    let prompts = (0..batch)
        .map(|_| {
            (0..4)
                .map(|_| words[rng.random_range(0..words.len())])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    SrumBatch {
        prompts,
        latents: Tensor::from_data(TensorData::new(latents, [batch, n, c]), device),
        anchor: None,
        reward: Tensor::from_data(TensorData::new(reward, [batch, n]), device),
    }
}

/// All float parameters of a module as `(path, values)`, for exact comparisons.
pub fn weights<B: Backend, M: burn::module::Module<B>>(m: &M) -> Vec<(String, Vec<f32>)> {
    srum::train::collect_params(m)
        .into_iter()
        .map(|p| {
            (
                p.path,
                p.flat
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .unwrap(),
            )
        })
        .collect()
}
