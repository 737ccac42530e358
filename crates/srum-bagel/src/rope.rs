//! Rotary position embedding, Qwen2's rotate-half form with the default (unscaled) frequencies.

use burn::tensor::{Tensor, TensorData, backend::Backend};

/// The cosine and sine tables for one packed sequence.
#[derive(Debug, Clone)]
pub(crate) struct RopeTables<B: Backend> {
    /// `[n, head_dim]`.
    cos: Tensor<B, 2>,
    /// `[n, head_dim]`.
    sin: Tensor<B, 2>,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for the given RoPE positions. The frequencies and angles are computed in f32,
    /// as Hugging Face computes them, so positions in the thousands round the same way.
    pub(crate) fn new(positions: &[i64], head_dim: usize, theta: f64, device: &B::Device) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let n = positions.len();
        let mut cos = Vec::with_capacity(n * head_dim);
        let mut sin = Vec::with_capacity(n * head_dim);
        for &p in positions {
            let angles: Vec<f32> = inv_freq.iter().map(|f| f * p as f32).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        Self {
            cos: Tensor::from_data(TensorData::new(cos, [n, head_dim]), device),
            sin: Tensor::from_data(TensorData::new(sin, [n, head_dim]), device),
        }
    }

    /// Rotates every head of `x`.
    ///
    /// Shapes: `x`: `[n, heads, head_dim]` to the same.
    pub(crate) fn apply(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [_, _, d] = x.dims();
        let half = d / 2;
        let x1 = x.clone().narrow(2, 0, half);
        let x2 = x.clone().narrow(2, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 2);
        let cos = self.cos.clone().unsqueeze_dim::<3>(1);
        let sin = self.sin.clone().unsqueeze_dim::<3>(1);
        x * cos + rotated * sin
    }
}
