//! Noising and the velocity target.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// `x_t = (1 - t) x_0 + t eps`, one `t` per batch item.
///
/// Shapes: `x0`, `eps`: `[batch, tokens, channels]`; `t`: `[batch]`; returns `[batch, tokens, channels]`.
pub fn noisy_latents<B: Backend>(
    x0: Tensor<B, 3>,
    eps: Tensor<B, 3>,
    t: Tensor<B, 1>,
) -> Tensor<B, 3> {
    let [b] = t.dims();
    let t = t.reshape([b, 1, 1]);
    x0.clone() + (eps - x0) * t
}

/// The rectified-flow velocity target `eps - x_0`.
///
/// Shapes: `x0`, `eps`: `[batch, tokens, channels]`; returns the same.
pub fn velocity_target<B: Backend>(x0: Tensor<B, 3>, eps: Tensor<B, 3>) -> Tensor<B, 3> {
    eps - x0
}

/// Standard-normal noise drawn on the host from `rng`, so a seed gives the same numbers on
/// every backend (GPU generators differ from each other and from the CPU).
pub fn host_normal<B: Backend, R: Rng, const D: usize>(
    rng: &mut R,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    let values = extend_normals(Vec::new(), rng, shape.iter().product());
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Appends `n` standard-normal f32 draws from `rng` to `values`: the host noise of
/// [`host_normal`], for callers that assemble one tensor from several streams.
pub fn extend_normals<R: Rng>(mut values: Vec<f32>, rng: &mut R, n: usize) -> Vec<f32> {
    values.extend((0..n).map(|_| -> f32 { StandardNormal.sample(rng) }));
    values
}
