//! Joint attention over a packed sequence with per-expert projections (`PackedAttentionMoT`).

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Tensor, backend::Backend};

use crate::lora::{LoraAdapter, LoraConfig, attach, merge, project};
use crate::rope::RopeTables;
use crate::routing::Routing;
use burn::nn::{RmsNorm, RmsNormConfig};

/// Keys (after q/k-norm and RoPE) and values of some tokens, for one layer.
#[derive(Debug, Clone)]
pub(crate) struct LayerKv<B: Backend> {
    /// `[n, kv_heads, head_dim]`.
    pub(crate) k: Tensor<B, 3>,
    /// `[n, kv_heads, head_dim]`.
    pub(crate) v: Tensor<B, 3>,
}

/// A run of query tokens that attend among themselves (and to a cached prefix).
#[derive(Debug, Clone)]
pub(crate) struct Segment<B: Backend> {
    /// First query row.
    pub(crate) start: usize,
    /// Query rows.
    pub(crate) len: usize,
    /// Additive mask, 0 or `-inf`: `[len, prefix + len]`.
    pub(crate) bias: Tensor<B, 2>,
}

/// Configuration of an [`Attention`].
#[derive(Config, Debug)]
pub struct AttentionConfig {
    /// Model width.
    pub hidden_size: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// RMSNorm on each query and key head before RoPE.
    #[config(default = true)]
    pub qk_norm: bool,
    /// RMSNorm epsilon.
    #[config(default = 1e-6)]
    pub eps: f64,
    /// Weight initialisation (checkpoints overwrite it).
    #[config(default = "Initializer::Normal { mean: 0.0, std: 0.02 }")]
    pub initializer: Initializer,
}

impl AttentionConfig {
    /// A freshly initialised attention block with both experts.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Attention<B> {
        let head_dim = self.hidden_size / self.num_heads;
        let q = self.num_heads * head_dim;
        let kv = self.num_kv_heads * head_dim;
        let linear = |i, o, bias| {
            LinearConfig::new(i, o)
                .with_bias(bias)
                .with_initializer(self.initializer.clone())
                .init(device)
        };
        let norm = || {
            self.qk_norm.then(|| {
                RmsNormConfig::new(head_dim)
                    .with_epsilon(self.eps)
                    .init(device)
            })
        };
        Attention {
            q_proj: linear(self.hidden_size, q, true),
            k_proj: linear(self.hidden_size, kv, true),
            v_proj: linear(self.hidden_size, kv, true),
            o_proj: linear(q, self.hidden_size, false),
            q_proj_moe_gen: linear(self.hidden_size, q, true),
            k_proj_moe_gen: linear(self.hidden_size, kv, true),
            v_proj_moe_gen: linear(self.hidden_size, kv, true),
            o_proj_moe_gen: linear(q, self.hidden_size, false),
            q_norm: norm(),
            k_norm: norm(),
            q_norm_moe_gen: norm(),
            k_norm_moe_gen: norm(),
            q_proj_lora: None,
            k_proj_lora: None,
            v_proj_lora: None,
            o_proj_lora: None,
            q_proj_moe_gen_lora: None,
            k_proj_moe_gen_lora: None,
            v_proj_moe_gen_lora: None,
            o_proj_moe_gen_lora: None,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim,
        }
    }
}

/// Grouped-query attention whose projections and q/k norms exist once per expert; the
/// attention itself is joint over all tokens.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    o_proj: Linear<B>,
    q_proj_moe_gen: Linear<B>,
    k_proj_moe_gen: Linear<B>,
    v_proj_moe_gen: Linear<B>,
    o_proj_moe_gen: Linear<B>,
    q_norm: Option<RmsNorm<B>>,
    k_norm: Option<RmsNorm<B>>,
    q_norm_moe_gen: Option<RmsNorm<B>>,
    k_norm_moe_gen: Option<RmsNorm<B>>,
    q_proj_lora: Option<LoraAdapter<B>>,
    k_proj_lora: Option<LoraAdapter<B>>,
    v_proj_lora: Option<LoraAdapter<B>>,
    o_proj_lora: Option<LoraAdapter<B>>,
    q_proj_moe_gen_lora: Option<LoraAdapter<B>>,
    k_proj_moe_gen_lora: Option<LoraAdapter<B>>,
    v_proj_moe_gen_lora: Option<LoraAdapter<B>>,
    o_proj_moe_gen_lora: Option<LoraAdapter<B>>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

fn maybe_norm<B: Backend>(norm: &Option<RmsNorm<B>>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    match norm {
        Some(n) => n.forward(x),
        None => x,
    }
}

impl<B: Backend> Attention<B> {
    /// Adds adapters to the projections `config` targets; `prefix` is the block's official
    /// name (`language_model.model.layers.{i}.self_attn`).
    pub(crate) fn attach_lora(&mut self, prefix: &str, config: &LoraConfig) {
        attach(
            &mut self.q_proj_lora,
            &self.q_proj,
            &format!("{prefix}.q_proj"),
            config,
        );
        attach(
            &mut self.k_proj_lora,
            &self.k_proj,
            &format!("{prefix}.k_proj"),
            config,
        );
        attach(
            &mut self.v_proj_lora,
            &self.v_proj,
            &format!("{prefix}.v_proj"),
            config,
        );
        attach(
            &mut self.o_proj_lora,
            &self.o_proj,
            &format!("{prefix}.o_proj"),
            config,
        );
        attach(
            &mut self.q_proj_moe_gen_lora,
            &self.q_proj_moe_gen,
            &format!("{prefix}.q_proj_moe_gen"),
            config,
        );
        attach(
            &mut self.k_proj_moe_gen_lora,
            &self.k_proj_moe_gen,
            &format!("{prefix}.k_proj_moe_gen"),
            config,
        );
        attach(
            &mut self.v_proj_moe_gen_lora,
            &self.v_proj_moe_gen,
            &format!("{prefix}.v_proj_moe_gen"),
            config,
        );
        attach(
            &mut self.o_proj_moe_gen_lora,
            &self.o_proj_moe_gen,
            &format!("{prefix}.o_proj_moe_gen"),
            config,
        );
    }

    /// Folds every adapter into its projection.
    pub(crate) fn merge_lora(&mut self) {
        merge(&mut self.q_proj_lora, &mut self.q_proj);
        merge(&mut self.k_proj_lora, &mut self.k_proj);
        merge(&mut self.v_proj_lora, &mut self.v_proj);
        merge(&mut self.o_proj_lora, &mut self.o_proj);
        merge(&mut self.q_proj_moe_gen_lora, &mut self.q_proj_moe_gen);
        merge(&mut self.k_proj_moe_gen_lora, &mut self.k_proj_moe_gen);
        merge(&mut self.v_proj_moe_gen_lora, &mut self.v_proj_moe_gen);
        merge(&mut self.o_proj_moe_gen_lora, &mut self.o_proj_moe_gen);
    }

    /// Attends every segment's queries to its own keys, after the `prefix` keys when given.
    /// Returns the output and the new tokens' keys and values (for a cache).
    ///
    /// Shapes: `x`: `[n, hidden]` to `[n, hidden]`.
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 2>,
        routing: &Routing<B>,
        rope: &RopeTables<B>,
        segments: &[Segment<B>],
        prefix: Option<&LayerKv<B>>,
    ) -> (Tensor<B, 2>, LayerKv<B>) {
        let [n, _] = x.dims();
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q = routing
            .apply(
                x.clone(),
                |t| project(&self.q_proj, &self.q_proj_lora, t),
                |t| project(&self.q_proj_moe_gen, &self.q_proj_moe_gen_lora, t),
            )
            .reshape([n, h, d]);
        let k = routing
            .apply(
                x.clone(),
                |t| project(&self.k_proj, &self.k_proj_lora, t),
                |t| project(&self.k_proj_moe_gen, &self.k_proj_moe_gen_lora, t),
            )
            .reshape([n, kvh, d]);
        let v = routing
            .apply(
                x,
                |t| project(&self.v_proj, &self.v_proj_lora, t),
                |t| project(&self.v_proj_moe_gen, &self.v_proj_moe_gen_lora, t),
            )
            .reshape([n, kvh, d]);
        let q = routing.apply(
            q,
            |t| maybe_norm(&self.q_norm, t),
            |t| maybe_norm(&self.q_norm_moe_gen, t),
        );
        let k = routing.apply(
            k,
            |t| maybe_norm(&self.k_norm, t),
            |t| maybe_norm(&self.k_norm_moe_gen, t),
        );
        let q = rope.apply(q);
        let k = rope.apply(k);

        let mut outs = Vec::with_capacity(segments.len());
        for seg in segments {
            let qs = q.clone().narrow(0, seg.start, seg.len);
            let mut ks = k.clone().narrow(0, seg.start, seg.len);
            let mut vs = v.clone().narrow(0, seg.start, seg.len);
            if let Some(p) = prefix {
                ks = Tensor::cat(vec![p.k.clone(), ks], 0);
                vs = Tensor::cat(vec![p.v.clone(), vs], 0);
            }
            outs.push(self.attend(qs, ks, vs, seg.bias.clone()));
        }
        let out = Tensor::cat(outs, 0).reshape([n, h * d]);
        let out = routing.apply(
            out,
            |t| project(&self.o_proj, &self.o_proj_lora, t),
            |t| project(&self.o_proj_moe_gen, &self.o_proj_moe_gen_lora, t),
        );
        (out, LayerKv { k, v })
    }

    /// Shapes: `q`: `[nq, heads, d]`, `k`, `v`: `[nk, kv_heads, d]`, `bias`: `[nq, nk]`;
    /// returns `[nq, heads, d]`.
    fn attend(
        &self,
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        bias: Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        let [nk, kvh, d] = k.dims();
        let groups = self.num_heads / kvh;
        // Query head `h` reads key/value head `h / groups`, as `repeat_kv` lays them out.
        let widen = |t: Tensor<B, 3>| {
            if groups == 1 {
                t
            } else {
                t.unsqueeze_dim::<4>(2)
                    .repeat_dim(2, groups)
                    .reshape([nk, self.num_heads, d])
            }
        };
        let q = q.swap_dims(0, 1);
        let k = widen(k).swap_dims(0, 1);
        let v = widen(v).swap_dims(0, 1);
        let scores = q
            .matmul(k.swap_dims(1, 2))
            .mul_scalar(1.0 / (d as f64).sqrt())
            + bias.unsqueeze::<3>();
        softmax(scores, 2).matmul(v).swap_dims(0, 1)
    }
}
