//! Per-token routing between the understanding and generation experts.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

/// Which expert's weights a token goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expert {
    /// Text and ViT tokens: the original Qwen2 weights.
    Understanding,
    /// Noisy VAE latent tokens: the `_moe_gen` twins.
    Generation,
}

/// Where each expert's tokens sit in a packed sequence.
#[derive(Debug, Clone)]
pub(crate) enum Routing<B: Backend> {
    /// Every token uses the same expert: no gathering at all.
    All(Expert),
    /// Both experts present: each runs on its gathered rows, and `inverse` puts the
    /// concatenation `[understanding rows; generation rows]` back in sequence order.
    Mixed {
        und: Tensor<B, 1, Int>,
        gen_: Tensor<B, 1, Int>,
        inverse: Tensor<B, 1, Int>,
    },
}

fn int_tensor<B: Backend>(values: Vec<i64>, device: &B::Device) -> Tensor<B, 1, Int> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

impl<B: Backend> Routing<B> {
    pub(crate) fn new(experts: &[Expert], device: &B::Device) -> Self {
        let und: Vec<i64> = (0..experts.len())
            .filter(|&i| experts[i] == Expert::Understanding)
            .map(|i| i as i64)
            .collect();
        let gen_: Vec<i64> = (0..experts.len())
            .filter(|&i| experts[i] == Expert::Generation)
            .map(|i| i as i64)
            .collect();
        if gen_.is_empty() {
            return Self::All(Expert::Understanding);
        }
        if und.is_empty() {
            return Self::All(Expert::Generation);
        }
        let mut inverse = vec![0i64; experts.len()];
        for (slot, &i) in und.iter().chain(gen_.iter()).enumerate() {
            inverse[i as usize] = slot as i64;
        }
        Self::Mixed {
            und: int_tensor(und, device),
            gen_: int_tensor(gen_, device),
            inverse: int_tensor(inverse, device),
        }
    }

    /// Runs `und` on the understanding tokens and `gen_` on the generation tokens of `x`
    /// (tokens on dimension 0) and returns the results in sequence order. Each expert only
    /// sees its own rows, so a gradient reaches an expert's weights only through its tokens.
    pub(crate) fn apply<const D: usize>(
        &self,
        x: Tensor<B, D>,
        und: impl FnOnce(Tensor<B, D>) -> Tensor<B, D>,
        gen_: impl FnOnce(Tensor<B, D>) -> Tensor<B, D>,
    ) -> Tensor<B, D> {
        match self {
            Self::All(Expert::Understanding) => und(x),
            Self::All(Expert::Generation) => gen_(x),
            Self::Mixed {
                und: iu,
                gen_: ig,
                inverse,
            } => {
                let a = und(x.clone().select(0, iu.clone()));
                let b = gen_(x.select(0, ig.clone()));
                Tensor::cat(vec![a, b], 0).select(0, inverse.clone())
            }
        }
    }
}
