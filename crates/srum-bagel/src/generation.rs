//! The generation heads: timestep embedder, 2D sin-cos latent positions, and the projections
//! between VAE latent tokens and the backbone (`vae2llm`, `llm2vae`).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

/// Configuration of a [`TimestepEmbedder`].
#[derive(Config, Debug)]
pub struct TimestepEmbedderConfig {
    /// Output width.
    pub hidden_size: usize,
    /// Width of the sinusoidal features.
    #[config(default = 256)]
    pub frequency_embedding_size: usize,
}

impl TimestepEmbedderConfig {
    /// A freshly initialised embedder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> TimestepEmbedder<B> {
        TimestepEmbedder {
            fc_in: LinearConfig::new(self.frequency_embedding_size, self.hidden_size).init(device),
            fc_out: LinearConfig::new(self.hidden_size, self.hidden_size).init(device),
            frequency_embedding_size: self.frequency_embedding_size,
        }
    }
}

/// DiT's timestep embedder: `[cos(t f), sin(t f)]`, Linear, SiLU, Linear.
#[derive(Module, Debug)]
pub struct TimestepEmbedder<B: Backend> {
    /// `mlp.0` in the official checkpoint.
    fc_in: Linear<B>,
    /// `mlp.2` in the official checkpoint.
    fc_out: Linear<B>,
    frequency_embedding_size: usize,
}

impl<B: Backend> TimestepEmbedder<B> {
    /// Shapes: `t`: `[n]` to `[n, hidden]`.
    pub fn forward(&self, t: Tensor<B, 1>) -> Tensor<B, 2> {
        let dim = self.frequency_embedding_size;
        let half = dim / 2;
        let device = t.device();
        let scale = -(10_000f64.ln()) as f32;
        let freqs: Vec<f32> = (0..half)
            .map(|i| (scale * i as f32 / half as f32).exp())
            .collect();
        let freqs = Tensor::<B, 1>::from_data(TensorData::new(freqs, [half]), &device);
        let args = t.unsqueeze_dim::<2>(1) * freqs.unsqueeze::<2>();
        let mut parts = vec![args.clone().cos(), args.sin()];
        if dim % 2 == 1 {
            let [n, _] = parts[0].dims();
            parts.push(Tensor::zeros([n, 1], &device));
        }
        let features = Tensor::cat(parts, 1);
        self.fc_out.forward(silu(self.fc_in.forward(features)))
    }
}

/// Configuration of a [`PositionEmbedding`].
#[derive(Config, Debug)]
pub struct PositionEmbeddingConfig {
    /// Side of the square grid, in patches.
    pub max_side: usize,
    /// Embedding width (a multiple of 4).
    pub hidden_size: usize,
}

impl PositionEmbeddingConfig {
    /// The fixed 2D sin-cos table (not trained).
    pub fn init<B: Backend>(&self, device: &B::Device) -> PositionEmbedding<B> {
        let table = sincos_2d(self.hidden_size, self.max_side);
        let t = Tensor::from_data(
            TensorData::new(table, [self.max_side * self.max_side, self.hidden_size]),
            device,
        );
        PositionEmbedding {
            pos_embed: Param::from_tensor(t).set_require_grad(false),
        }
    }
}

/// A frozen table of 2D sin-cos embeddings, indexed by `row * max_side + col`.
#[derive(Module, Debug)]
pub struct PositionEmbedding<B: Backend> {
    pos_embed: Param<Tensor<B, 2>>,
}

impl<B: Backend> PositionEmbedding<B> {
    /// Shapes: `ids`: `[n]` to `[n, hidden]`.
    pub fn forward(&self, ids: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        self.pos_embed.val().select(0, ids)
    }
}

/// MAE's 2D sin-cos table, `[side * side, dim]` row-major: the first half of each row encodes
/// the column, the second the row (the reference's meshgrid puts `w` first), each half as
/// `[sin, cos]` of `pos / 10000^(2i/d)`. Computed in f64 and rounded once, as numpy does.
pub(crate) fn sincos_2d(dim: usize, side: usize) -> Vec<f32> {
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|i| 1.0 / 10_000f64.powf(i as f64 / quarter as f64))
        .collect();
    let mut out = Vec::with_capacity(side * side * dim);
    for r in 0..side {
        for c in 0..side {
            for pos in [c as f64, r as f64] {
                out.extend(omega.iter().map(|w| (pos * w).sin() as f32));
                out.extend(omega.iter().map(|w| (pos * w).cos() as f32));
            }
        }
    }
    out
}

/// A VAE latent cut into `p x p` patches, one token per patch, row-major over the patch grid,
/// each token's channels ordered `(py, px, c)` as the reference's `einsum("chpwq->hwpqc")`.
/// Rows and columns beyond a whole patch are dropped.
///
/// Shapes: `latent`: `[channels, height, width]` to `[(height / p) * (width / p), p * p * channels]`.
pub fn patchify<B: Backend>(latent: Tensor<B, 3>, p: usize) -> Tensor<B, 2> {
    let [c, hh, ww] = latent.dims();
    let (h, w) = (hh / p, ww / p);
    latent
        .narrow(1, 0, h * p)
        .narrow(2, 0, w * p)
        .reshape([c, h, p, w, p])
        .permute([1, 3, 2, 4, 0])
        .reshape([h * w, p * p * c])
}

/// The inverse of [`patchify`] for a batch: tokens on an `h x w` patch grid back to latents.
///
/// Shapes: `tokens`: `[b, h * w, p * p * c]` to `[b, c, h * p, w * p]`.
pub fn unpatchify<B: Backend>(
    tokens: Tensor<B, 3>,
    (h, w): (usize, usize),
    p: usize,
) -> Tensor<B, 4> {
    let [b, _, d] = tokens.dims();
    let c = d / (p * p);
    tokens
        .reshape([b, h, w, p, p, c])
        .permute([0, 5, 1, 3, 2, 4])
        .reshape([b, c, h * p, w * p])
}
