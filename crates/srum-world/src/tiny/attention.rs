//! The backbone's self-attention: burn-nn's `MultiHeadAttention` computation and parameters
//! (so checkpoints read the same), with the padding mask built once per forward at the
//! scores' full shape, and the head split, softmax and head merge of [`super::ops`] (on flex,
//! one kernel pass each).
//!
//! burn-nn masks each block's `[b, heads, n, n]` scores with a `[b, 1, 1, n]` view of the
//! padding, which the flex backend copies to the full shape element by element in every
//! block, forward and backward; at the reference model's sizes that copy was a tenth of a
//! training step. [`pad_mask`] makes the full-shape mask once, by block copies, and every
//! block and its backward reuse it.

use burn::module::Module;
use burn::nn::Linear;
use burn::nn::attention::MultiHeadAttentionConfig;
use burn::tensor::{Bool, Tensor, backend::Backend};

use super::ops::{permute, softmax_last};

/// What padded scores are set to before the softmax (burn-nn's default `min_float`).
const MASKED: f64 = -1.0e4;

/// Multi-head self-attention over one sequence of tokens.
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    query: Linear<B>,
    key: Linear<B>,
    value: Linear<B>,
    output: Linear<B>,
    n_heads: usize,
}

impl<B: Backend> SelfAttention<B> {
    /// `d_model` wide with `n_heads` heads, initialised exactly as burn-nn's
    /// `MultiHeadAttentionConfig::new(d_model, n_heads).init(device)` (same draws, same order).
    pub fn new(d_model: usize, n_heads: usize, device: &B::Device) -> Self {
        let mha = MultiHeadAttentionConfig::new(d_model, n_heads)
            .with_dropout(0.0)
            .init(device);
        Self {
            query: mha.query,
            key: mha.key,
            value: mha.value,
            output: mha.output,
            n_heads,
        }
    }

    /// Number of heads.
    pub fn n_heads(&self) -> usize {
        self.n_heads
    }

    /// Shapes: `x`: `[b, n, d]`, `mask`: `[b, heads, n, n]` from [`pad_mask`] (true = a key
    /// not to attend to); returns `[b, n, d]`.
    pub fn forward(&self, x: Tensor<B, 3>, mask: Tensor<B, 4, Bool>) -> Tensor<B, 3> {
        let [b, n, d] = x.dims();
        let d_k = d / self.n_heads;
        // Queries and values as `[b, heads, n, d_k]`, keys as `[b, heads, d_k, n]`, each laid
        // out for its product in one copy.
        let heads = |lin: &Linear<B>, perm| {
            permute(
                lin.forward(x.clone()).reshape([b, n, self.n_heads, d_k]),
                perm,
            )
        };
        let q = heads(&self.query, [0, 2, 1, 3]);
        let k_t = heads(&self.key, [0, 2, 3, 1]);
        let v = heads(&self.value, [0, 2, 1, 3]);
        let scores = q.matmul(k_t).div_scalar((d_k as f32).sqrt());
        let weights = softmax_last(scores.mask_fill(mask, MASKED));
        let context = permute(weights.matmul(v), [0, 2, 1, 3]).reshape([b, n, d]);
        self.output.forward(context)
    }
}

/// The full-shape mask of a padded batch: `[b, heads, n, n]`, true where the key (last
/// index) is padding. Shapes: `pad`: `[b, n]`.
pub fn pad_mask<B: Backend>(pad: Tensor<B, 2, Bool>, heads: usize) -> Tensor<B, 4, Bool> {
    let [b, n] = pad.dims();
    pad.reshape([b, 1, 1, n])
        .repeat_dim(2, n)
        .repeat_dim(1, heads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::attention::MhaInput;
    use burn::tensor::{Distribution, TensorData};
    use burn_flex::Flex;

    /// Same parameters, same inputs: the output is burn-nn's, with and without padding, and
    /// padded keys change nothing. burn-nn's ops on other backends give it to the last bit;
    /// on flex the softmax kernel's `exp` rounds differently from libm's, hence the bound.
    #[test]
    fn matches_burn_nn_multi_head_attention() {
        let device = Default::default();
        let mha = MultiHeadAttentionConfig::new(16, 4)
            .with_dropout(0.0)
            .init::<Flex>(&device);
        // Parameters initialise lazily: draw them before the copy shares them.
        for lin in [&mha.query, &mha.key, &mha.value, &mha.output] {
            let _ = lin.weight.val();
            let _ = lin.bias.as_ref().map(|b| b.val());
        }
        let ours = SelfAttention::<Flex> {
            query: mha.query.clone(),
            key: mha.key.clone(),
            value: mha.value.clone(),
            output: mha.output.clone(),
            n_heads: 4,
        };
        let x = Tensor::<Flex, 3>::random([3, 7, 16], Distribution::Normal(0.0, 1.0), &device);
        let pad: Vec<bool> = (0..21).map(|i| i % 7 >= 7 - i / 7 * 2).collect();
        let pad = Tensor::<Flex, 2, Bool>::from_data(TensorData::new(pad, [3, 7]), &device);
        let theirs = mha
            .forward(MhaInput::self_attn(x.clone()).mask_pad(pad.clone()))
            .context;
        let got = ours.forward(x.clone(), pad_mask(pad.clone(), 4));
        if cfg!(feature = "flex") {
            let diff = (got.clone() - theirs).abs().max().into_scalar();
            assert!(diff < 1e-6, "differs from burn-nn by {diff}");
        } else {
            assert_eq!(got.to_data(), theirs.to_data());
        }

        // A padded key's value does not reach the output.
        let keep = pad.clone().bool_not().float().unsqueeze_dim::<3>(2);
        let moved = x.clone() * keep.clone() + (x.clone() * 5.0 + 3.0) * (keep.neg() + 1.0);
        let again = ours.forward(moved, pad_mask(pad.clone(), 4));
        let real = pad.bool_not().float().unsqueeze_dim::<3>(2);
        let diff = ((again - got) * real).abs().max().into_scalar();
        assert!(diff < 1e-5, "padded keys moved the output by {diff}");
    }

    #[test]
    fn the_mask_is_the_padding_of_each_key() {
        let device = Default::default();
        let pad = Tensor::<Flex, 2, Bool>::from_data(
            TensorData::new(vec![false, true, false, false, false, true], [2, 3]),
            &device,
        );
        let mask = pad_mask(pad, 2);
        assert_eq!(mask.dims(), [2, 2, 3, 3]);
        let v: Vec<bool> = mask.into_data().to_vec().expect("bools");
        for (i, m) in v.iter().enumerate() {
            let (sample, key) = (i / 18, i % 3);
            assert_eq!(
                *m,
                [[false, true, false], [false, false, true]][sample][key]
            );
        }
    }
}
