//! The Qwen2 mixture-of-transformers backbone (`Qwen2Model`): embeddings, decoder layers and
//! the final norms, over a packed sequence or a query block against a [`KvCache`].

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use crate::attention::{LayerKv, Segment};
use crate::cache::KvCache;
use crate::config::BagelConfig;
use crate::layer::{DecoderLayer, DecoderLayerConfig};
use crate::lora::LoraConfig;
use crate::rope::RopeTables;
use crate::routing::{Expert, Routing};
use crate::sequence::PackedSequence;
use burn::nn::{RmsNorm, RmsNormConfig};

/// Configuration of a [`Backbone`].
#[derive(Config, Debug)]
pub struct BackboneConfig {
    /// The model's sizes.
    pub model: BagelConfig,
}

impl BackboneConfig {
    /// A freshly initialised backbone.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Backbone<B> {
        let c = &self.model;
        let norm = || {
            RmsNormConfig::new(c.hidden_size)
                .with_epsilon(c.rms_norm_eps)
                .init(device)
        };
        Backbone {
            embed_tokens: EmbeddingConfig::new(c.vocab_size, c.hidden_size)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device),
            layers: (0..c.num_hidden_layers)
                .map(|_| DecoderLayerConfig::new(c.clone()).init(device))
                .collect(),
            norm: norm(),
            norm_moe_gen: norm(),
        }
    }
}

/// Token embeddings, decoder layers and the two final norms.
#[derive(Module, Debug)]
pub struct Backbone<B: Backend> {
    embed_tokens: Embedding<B>,
    layers: Vec<DecoderLayer<B>>,
    norm: RmsNorm<B>,
    norm_moe_gen: RmsNorm<B>,
}

impl<B: Backend> Backbone<B> {
    /// Adds adapters to every layer where `config` targets.
    pub(crate) fn attach_lora(&mut self, config: &LoraConfig) {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.attach_lora(&format!("language_model.model.layers.{i}"), config);
        }
    }

    /// Folds every adapter into its projection.
    pub(crate) fn merge_lora(&mut self) {
        for layer in &mut self.layers {
            layer.merge_lora();
        }
    }
}

/// Hidden states of a forward pass.
#[derive(Debug, Clone)]
pub struct Hidden<B: Backend> {
    /// After the final norm (each token through its expert's norm): `[n, hidden]`.
    pub last: Tensor<B, 2>,
    /// The output of every decoder layer, before the final norm, when asked for: `[n, hidden]`
    /// each.
    pub layers: Vec<Tensor<B, 2>>,
}

/// Everything a forward needs besides the hidden states: routing, RoPE and attention blocks.
/// [`Plan::packed`] builds the one of a training forward; [`crate::Bagel::forward_packed`]
/// builds it on every call, [`crate::DecoderLayer::forward_train`] takes it ready-made.
#[derive(Debug, Clone)]
pub struct Plan<B: Backend> {
    pub(crate) routing: Routing<B>,
    pub(crate) rope: RopeTables<B>,
    pub(crate) segments: Vec<Segment<B>>,
    /// Cached tokens every query sees before its own block (0 for a packed training forward).
    pub(crate) prefix: usize,
}

impl<B: Backend> Plan<B> {
    /// The plan of the training forward on `seq` (`Bagel.forward` with its per-sample dense
    /// masks): each token routed to its expert, RoPE at the sequence's positions, one attention
    /// block per sample with the mask of `prepare_attention_mask_per_sample`.
    pub fn packed(seq: &PackedSequence, config: &BagelConfig, device: &B::Device) -> Self {
        let mut segments = Vec::new();
        let mut start = 0;
        for (len, mask) in seq.samples().into_iter().zip(seq.sample_masks()) {
            segments.push(Segment::from_mask(start, len, &mask, len, device));
            start += len;
        }
        Self {
            routing: Routing::new(&seq.experts(), device),
            rope: RopeTables::new(&seq.positions, config.head_dim(), config.rope_theta, device),
            segments,
            prefix: 0,
        }
    }

    /// The plan of an inference forward (`forward_inference`): a block of `experts.len()` query
    /// tokens at RoPE `positions` that sees all of a `prefix`-token cache, and itself causally
    /// (a text block) or fully (a noisy-latent block, as in every denoising step).
    /// [`crate::DecoderLayer::forward_inference`] checks that the cache it is given has
    /// `prefix` tokens.
    ///
    /// # Panics
    /// When `positions` and `experts` differ in length.
    pub fn block(
        experts: &[Expert],
        positions: &[i64],
        prefix: usize,
        causal: bool,
        config: &BagelConfig,
        device: &B::Device,
    ) -> Self {
        let n = experts.len();
        assert_eq!(
            positions.len(),
            n,
            "Plan::block: {} positions for {n} tokens",
            positions.len()
        );
        let cols = prefix + n;
        let mut allowed = vec![true; n * cols];
        if causal {
            for q in 0..n {
                for k in q + 1..n {
                    allowed[q * cols + prefix + k] = false;
                }
            }
        }
        Self {
            routing: Routing::new(experts, device),
            rope: RopeTables::new(positions, config.head_dim(), config.rope_theta, device),
            segments: vec![Segment::from_mask(0, n, &allowed, cols, device)],
            prefix,
        }
    }
}

impl<B: Backend> Backbone<B> {
    /// The decoder layers.
    pub(crate) fn layers(&self) -> &[DecoderLayer<B>] {
        &self.layers
    }

    /// Each token through its expert's final norm.
    pub(crate) fn final_norm(&self, x: Tensor<B, 2>, routing: &Routing<B>) -> Tensor<B, 2> {
        routing.apply(
            x,
            |t| self.norm.forward(t),
            |t| self.norm_moe_gen.forward(t),
        )
    }

    /// Shapes: returns `[ids.len(), hidden]`.
    pub(crate) fn embed(&self, ids: &[u32], device: &B::Device) -> Tensor<B, 2> {
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let n = ids.len();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), device);
        self.embed_tokens.weight.val().select(0, ids)
    }

    /// Runs every layer; with a `cache`, each layer's queries also see its cached keys. Returns
    /// the hidden states and the new tokens' keys and values.
    ///
    /// Shapes: `x`: `[n, hidden]`.
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 2>,
        plan: &Plan<B>,
        cache: Option<&KvCache<B>>,
        keep_layers: bool,
    ) -> (Hidden<B>, Vec<LayerKv<B>>) {
        let mut x = x;
        let mut layers = Vec::new();
        let mut kvs = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let prefix = cache.and_then(|c| c.layer(i));
            let (y, kv) = layer.forward(x, &plan.routing, &plan.rope, &plan.segments, prefix);
            x = y;
            kvs.push(kv);
            if keep_layers {
                layers.push(x.clone());
            }
        }
        let last = plan.routing.apply(
            x,
            |t| self.norm.forward(t),
            |t| self.norm_moe_gen.forward(t),
        );
        (Hidden { last, layers }, kvs)
    }
}
