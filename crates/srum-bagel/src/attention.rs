//! Joint attention over a packed sequence with per-expert projections (`PackedAttentionMoT`).

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use std::ops::Range;

use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::lora::{LoraAdapter, LoraConfig, attach, merge, project};
use crate::rope::RopeTables;
use crate::routing::Routing;
use burn::nn::{RmsNorm, RmsNormConfig};

/// Keys (after q/k-norm and RoPE) and values of some tokens, for one layer: what a KV cache
/// holds per layer, and what [`crate::DecoderLayer::forward_inference`] returns and attends to.
#[derive(Debug, Clone)]
pub struct LayerKv<B: Backend> {
    /// `[n, kv_heads, head_dim]`.
    pub(crate) k: Tensor<B, 3>,
    /// `[n, kv_heads, head_dim]`.
    pub(crate) v: Tensor<B, 3>,
}

/// A run of query tokens that attend among themselves (and to a cached prefix), as the blocks
/// of its mask: runs of rows that see the same keys attend to those keys alone, without a
/// mask; the rest (the rows of a causal split) attend to the keys any of them sees, with an
/// additive mask. Keys a row may not see are thereby never scored: a noisy image's 1,026 rows
/// cost no mask and a text split's rows no scores against the image after it.
#[derive(Debug, Clone)]
pub(crate) struct Segment<B: Backend> {
    /// First query row.
    pub(crate) start: usize,
    /// Query rows.
    pub(crate) len: usize,
    /// Consecutive row blocks covering `0..len` in order.
    blocks: Vec<Block<B>>,
}

/// Rows of a segment and the keys they attend to.
#[derive(Debug, Clone)]
struct Block<B: Backend> {
    /// Query rows, relative to the segment's first.
    rows: Range<usize>,
    /// Key columns, in the segment's key order (prefix, then its own tokens), ascending.
    keys: Vec<Range<usize>>,
    /// `0` or `-inf` over `rows x` the keys of `keys` laid end to end; none when every row
    /// sees every one of them.
    bias: Option<Tensor<B, 2>>,
}

/// Fewer consecutive rows than this that share their keys join a masked block instead of
/// forming their own: a block costs a few small copies and a matmul call.
const MIN_UNMASKED_ROWS: usize = 8;

/// The allowed columns of one mask row as ascending ranges.
fn row_ranges(row: &[bool]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for (k, &a) in row.iter().enumerate() {
        if a {
            match out.last_mut() {
                Some(r) if r.end == k => r.end = k + 1,
                _ => out.push(k..k + 1),
            }
        }
    }
    out
}

impl<B: Backend> Segment<B> {
    /// The segment of `len` query rows from `start` whose row-major mask over its `cols` key
    /// columns is `allowed` (`true`: may attend).
    pub(crate) fn from_mask(
        start: usize,
        len: usize,
        allowed: &[bool],
        cols: usize,
        device: &B::Device,
    ) -> Self {
        debug_assert_eq!(allowed.len(), len * cols);
        // Runs of consecutive rows with identical keys.
        let mut runs: Vec<(Range<usize>, Vec<Range<usize>>)> = Vec::new();
        for q in 0..len {
            let keys = row_ranges(&allowed[q * cols..(q + 1) * cols]);
            match runs.last_mut() {
                Some((rows, k)) if *k == keys => rows.end = q + 1,
                _ => runs.push((q..q + 1, keys)),
            }
        }
        let mut blocks = Vec::new();
        let mut pending: Option<Range<usize>> = None;
        let flush = |rows: Range<usize>, blocks: &mut Vec<Block<B>>| {
            let mut seen = vec![false; cols];
            for q in rows.clone() {
                for (k, s) in seen.iter_mut().enumerate() {
                    *s |= allowed[q * cols + k];
                }
            }
            let mut keys = row_ranges(&seen);
            if keys.is_empty() {
                // Rows that see nothing: scored against one masked key, their output is NaN,
                // as a dense mask's would be.
                keys.push(0..1);
            }
            let mut bias = Vec::new();
            for q in rows.clone() {
                for r in &keys {
                    bias.extend(r.clone().map(|k| {
                        if allowed[q * cols + k] {
                            0.0f32
                        } else {
                            f32::NEG_INFINITY
                        }
                    }));
                }
            }
            let width = bias.len() / rows.len();
            blocks.push(Block {
                bias: Some(Tensor::from_data(
                    TensorData::new(bias, [rows.len(), width]),
                    device,
                )),
                rows,
                keys,
            });
        };
        for (rows, keys) in runs {
            if rows.len() >= MIN_UNMASKED_ROWS && !keys.is_empty() {
                if let Some(p) = pending.take() {
                    flush(p, &mut blocks);
                }
                blocks.push(Block {
                    rows,
                    keys,
                    bias: None,
                });
            } else {
                pending = Some(match pending {
                    Some(p) => p.start..rows.end,
                    None => rows,
                });
            }
        }
        if let Some(p) = pending {
            flush(p, &mut blocks);
        }
        Self { start, len, blocks }
    }
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
            outs.extend(attend_segment(qs, ks, vs, seg));
        }
        let out = Tensor::cat(outs, 0).reshape([n, h * d]);
        let out = routing.apply(
            out,
            |t| project(&self.o_proj, &self.o_proj_lora, t),
            |t| project(&self.o_proj_moe_gen, &self.o_proj_moe_gen_lora, t),
        );
        (out, LayerKv { k, v })
    }
}

/// Every block of `seg` attended, in row order.
///
/// Shapes: `qs`: `[seg.len, heads, d]`, `ks`, `vs`: `[keys, kv_heads, d]` (prefix, then the
/// segment's own tokens); returns one `[rows, heads, d]` per block.
fn attend_segment<B: Backend>(
    qs: Tensor<B, 3>,
    ks: Tensor<B, 3>,
    vs: Tensor<B, 3>,
    seg: &Segment<B>,
) -> Vec<Tensor<B, 3>> {
    let pick = |t: &Tensor<B, 3>, keys: &[Range<usize>]| {
        let [all, _, _] = t.dims();
        match keys {
            [r] if r.start == 0 && r.end == all => t.clone(),
            [r] => t.clone().narrow(0, r.start, r.len()),
            _ => Tensor::cat(
                keys.iter()
                    .map(|r| t.clone().narrow(0, r.start, r.len()))
                    .collect(),
                0,
            ),
        }
    };
    seg.blocks
        .iter()
        .map(|block| {
            let qb = if block.rows.len() == seg.len {
                qs.clone()
            } else {
                qs.clone().narrow(0, block.rows.start, block.rows.len())
            };
            attend(
                qb,
                pick(&ks, &block.keys),
                pick(&vs, &block.keys),
                block.bias.clone(),
            )
        })
        .collect()
}

/// Grouped-query attention without copying the key/value heads: query head `h` reads
/// key/value head `h / groups`, as `repeat_kv` lays them out, so each key/value head's
/// `groups` query heads are stacked into one `[groups * nq, d]` matrix.
///
/// Shapes: `q`: `[nq, heads, d]`, `k`, `v`: `[nk, kv_heads, d]`, `bias`: `[nq, nk]`;
/// returns `[nq, heads, d]`.
fn attend<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    bias: Option<Tensor<B, 2>>,
) -> Tensor<B, 3> {
    let [nq, h, d] = q.dims();
    let [_, kvh, _] = k.dims();
    let groups = h / kvh;
    // Scaling the queries costs `nq x d` products per head instead of `nq x nk`.
    let q = q
        .mul_scalar(1.0 / (d as f64).sqrt())
        .reshape([nq, kvh, groups, d])
        .permute([1, 2, 0, 3])
        .reshape([kvh, groups * nq, d]);
    let k = k.swap_dims(0, 1);
    let v = v.swap_dims(0, 1);
    let mut scores = q.matmul(k.swap_dims(1, 2));
    if let Some(bias) = bias {
        let bias = if groups == 1 {
            bias
        } else {
            bias.repeat_dim(0, groups)
        };
        scores = scores + bias.unsqueeze::<3>();
    }
    softmax(scores, 2)
        .matmul(v)
        .reshape([kvh, groups, nq, d])
        .permute([2, 0, 1, 3])
        .reshape([nq, h, d])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequence::{SplitKind, split_mask};
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    type B = Flex;

    /// Attention written out on the host: every query head against its key/value head
    /// (`h / groups`), a softmax over the allowed keys only.
    fn dense(q: &[f32], k: &[f32], v: &[f32], allowed: &[bool], dims: [usize; 5]) -> Vec<f32> {
        let [nq, nk, h, kvh, d] = dims;
        let groups = h / kvh;
        let mut out = vec![0.0f32; nq * h * d];
        for i in 0..nq {
            for hh in 0..h {
                let g = hh / groups;
                let mut w = vec![f64::NEG_INFINITY; nk];
                for (j, wj) in w.iter_mut().enumerate() {
                    if allowed[i * nk + j] {
                        let dot: f64 = (0..d)
                            .map(|c| (q[(i * h + hh) * d + c] * k[(j * kvh + g) * d + c]) as f64)
                            .sum();
                        *wj = dot / (d as f64).sqrt();
                    }
                }
                let m = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = w.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    out[(i * h + hh) * d + c] = (0..nk)
                        .map(|j| e[j] / z * v[(j * kvh + g) * d + c] as f64)
                        .sum::<f64>() as f32;
                }
            }
        }
        out
    }

    fn check(allowed: &[bool], nq: usize, nk: usize, min_blocks: usize, unmasked: bool) {
        let device = Default::default();
        let (h, kvh, d) = (6, 2, 8);
        let q = Tensor::<B, 3>::random([nq, h, d], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<B, 3>::random([nk, kvh, d], Distribution::Normal(0.0, 1.0), &device);
        let v = Tensor::<B, 3>::random([nk, kvh, d], Distribution::Normal(0.0, 1.0), &device);
        let seg = Segment::<B>::from_mask(0, nq, allowed, nk, &device);
        assert!(
            seg.blocks.len() >= min_blocks,
            "{} blocks",
            seg.blocks.len()
        );
        assert_eq!(seg.blocks.iter().any(|b| b.bias.is_none()), unmasked);
        let host = |t: &Tensor<B, 3>| t.to_data().to_vec::<f32>().unwrap();
        let want = dense(
            &host(&q),
            &host(&k),
            &host(&v),
            allowed,
            [nq, nk, h, kvh, d],
        );
        let got = host(&Tensor::cat(
            attend_segment(q.clone(), k.clone(), v.clone(), &seg),
            0,
        ));
        let err = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-5, "blocks vs dense mask: max error {err}");
    }

    #[test]
    fn blocks_equal_the_dense_mask_of_a_packed_sample() {
        // Causal text, a noisy image (hidden from what follows), text, a clean image: the
        // last split's rows see two separate key ranges.
        let splits = [
            (5, SplitKind::Causal),
            (10, SplitKind::Noise),
            (3, SplitKind::Causal),
            (9, SplitKind::Full),
        ];
        let n: usize = splits.iter().map(|s| s.0).sum();
        check(&split_mask(&splits), n, n, 3, true);
    }

    #[test]
    fn blocks_equal_the_dense_mask_after_a_cached_prefix() {
        // 12 causal queries after a 7-key prefix, then a full block of 10 with it.
        let (prefix, n) = (7, 12);
        let cols = prefix + n;
        let mut allowed = vec![true; n * cols];
        for q in 0..n {
            for k in q + 1..n {
                allowed[q * cols + prefix + k] = false;
            }
        }
        check(&allowed, n, cols, 1, false);
        let full = vec![true; 10 * 17];
        check(&full, 10, 17, 1, true);
    }
}
