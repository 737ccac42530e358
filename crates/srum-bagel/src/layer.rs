//! One mixture-of-transformers decoder layer (`Qwen2MoTDecoderLayer`).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};

use crate::attention::{Attention, AttentionConfig, LayerKv, Segment};
use crate::backbone::Plan;
use crate::config::BagelConfig;
use crate::error::BagelError;
use crate::lora::LoraConfig;
use crate::mlp::{Mlp, MlpConfig};
use crate::rope::RopeTables;
use crate::routing::Routing;
use burn::nn::{RmsNorm, RmsNormConfig};

/// Configuration of a [`DecoderLayer`].
#[derive(Config, Debug)]
pub struct DecoderLayerConfig {
    /// The model's sizes.
    pub model: BagelConfig,
}

impl DecoderLayerConfig {
    /// A freshly initialised layer.
    pub fn init<B: Backend>(&self, device: &B::Device) -> DecoderLayer<B> {
        let c = &self.model;
        let norm = || {
            RmsNormConfig::new(c.hidden_size)
                .with_epsilon(c.rms_norm_eps)
                .init(device)
        };
        let mlp = || MlpConfig::new(c.hidden_size, c.intermediate_size).init(device);
        DecoderLayer {
            self_attn: AttentionConfig::new(
                c.hidden_size,
                c.num_attention_heads,
                c.num_key_value_heads,
            )
            .with_qk_norm(c.qk_norm)
            .with_eps(c.rms_norm_eps)
            .init(device),
            mlp: mlp(),
            mlp_moe_gen: mlp(),
            input_layernorm: norm(),
            input_layernorm_moe_gen: norm(),
            post_attention_layernorm: norm(),
            post_attention_layernorm_moe_gen: norm(),
        }
    }
}

/// Pre-norm attention and MLP, each with an understanding and a generation expert.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    self_attn: Attention<B>,
    mlp: Mlp<B>,
    mlp_moe_gen: Mlp<B>,
    input_layernorm: RmsNorm<B>,
    input_layernorm_moe_gen: RmsNorm<B>,
    post_attention_layernorm: RmsNorm<B>,
    post_attention_layernorm_moe_gen: RmsNorm<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// Adds adapters where `config` targets; `prefix` is the layer's official name.
    pub(crate) fn attach_lora(&mut self, prefix: &str, config: &LoraConfig) {
        self.self_attn
            .attach_lora(&format!("{prefix}.self_attn"), config);
        self.mlp.attach_lora(&format!("{prefix}.mlp"), config);
        self.mlp_moe_gen
            .attach_lora(&format!("{prefix}.mlp_moe_gen"), config);
    }

    /// Folds every adapter into its projection.
    pub(crate) fn merge_lora(&mut self) {
        self.self_attn.merge_lora();
        self.mlp.merge_lora();
        self.mlp_moe_gen.merge_lora();
    }

    /// The layer alone in a training forward (`Qwen2MoTDecoderLayer.forward_train`), for
    /// benchmarks and tests of one layer: every token through its expert's norms, projections
    /// and MLP, joint attention within each sample of `plan` (see [`Plan::packed`]).
    ///
    /// Shapes: `x`: `[n, hidden]` to `[n, hidden]`, `n` the length of the plan's sequence.
    pub fn forward_train(&self, x: Tensor<B, 2>, plan: &Plan<B>) -> Tensor<B, 2> {
        self.forward(x, &plan.routing, &plan.rope, &plan.segments, None)
            .0
    }

    /// The layer alone in an inference forward (`Qwen2MoTDecoderLayer.forward_inference`), for
    /// benchmarks and tests of one layer: the query block of `plan` (see [`Plan::block`]) after
    /// the `prefix` keys and values of the tokens before it, if any. Returns the output and the
    /// block's own keys and values, which a later block's `prefix` can be.
    ///
    /// Shapes: `x`: `[n, hidden]` to `[n, hidden]`, `n` the plan's query tokens.
    ///
    /// # Errors
    /// When `x` has not the plan's number of tokens, or `prefix` has not the number of cached
    /// tokens the plan was built for.
    pub fn forward_inference(
        &self,
        x: Tensor<B, 2>,
        plan: &Plan<B>,
        prefix: Option<&LayerKv<B>>,
    ) -> crate::error::Result<(Tensor<B, 2>, LayerKv<B>)> {
        let [n, _] = x.dims();
        let rows: usize = plan.segments.iter().map(|s| s.len).sum();
        if n != rows {
            return Err(BagelError::Input(format!(
                "forward_inference: x has {n} tokens, the plan {rows}"
            )));
        }
        let cached = prefix.map_or(0, |kv| kv.k.dims()[0]);
        if cached != plan.prefix {
            return Err(BagelError::Input(format!(
                "forward_inference: the plan is for {} cached tokens, the prefix has {cached}",
                plan.prefix
            )));
        }
        Ok(self.forward(x, &plan.routing, &plan.rope, &plan.segments, prefix))
    }

    /// Shapes: `x`: `[n, hidden]` to `[n, hidden]`.
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 2>,
        routing: &Routing<B>,
        rope: &RopeTables<B>,
        segments: &[Segment<B>],
        prefix: Option<&LayerKv<B>>,
    ) -> (Tensor<B, 2>, LayerKv<B>) {
        let h = routing.apply(
            x.clone(),
            |t| self.input_layernorm.forward(t),
            |t| self.input_layernorm_moe_gen.forward(t),
        );
        let (a, kv) = self.self_attn.forward(h, routing, rope, segments, prefix);
        let x = x + a;
        let m = routing.apply(
            x.clone(),
            |t| self.mlp.forward(self.post_attention_layernorm.forward(t)),
            |t| {
                self.mlp_moe_gen
                    .forward(self.post_attention_layernorm_moe_gen.forward(t))
            },
        );
        (x + m, kv)
    }
}
