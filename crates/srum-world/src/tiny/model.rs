//! `TinyUmm`: a small unified model in BAGEL's mould, trainable on a laptop CPU.
//!
//! One transformer backbone sees prompt tokens and image patch tokens in one sequence with full
//! attention; each block has separate feed-forward experts for text and image tokens (BAGEL's
//! mixture of transformers). Generation: noisy patches plus a time embedding in, velocity out
//! (rectified flow). Understanding: a `[CLS]` slot, the question's tokens and clean patches in,
//! yes/no logits out; free-text answers are rendered from those probabilities.

use std::sync::Arc;

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig,
    PaddingConfig2d,
};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Int, Tensor, TensorData, backend::Backend};
use tokenizers::Tokenizer;

use super::attention::{SelfAttention, pad_mask};
use super::ops::gelu;
use super::tokenizer::encode;
use crate::world::{Np, PromptSpec};
use srum::error::{Result, SrumError};
use srum::image::PixelImage;
use srum::model::{
    FlowGenerator, Generator, ImageCodec, ImageSize, LatentGrid, ParamRole, ParamRoles,
    Understanding,
};

/// Configuration of [`TinyUmm`].
#[derive(Config, Debug, PartialEq)]
pub struct TinyUmmConfig {
    /// Side of the square RGB images.
    #[config(default = 32)]
    pub image_size: usize,
    /// Side of a patch (a latent token is one patch, `3 * patch^2` channels).
    #[config(default = 4)]
    pub patch: usize,
    /// Width of the backbone.
    #[config(default = 96)]
    pub d_model: usize,
    /// Attention heads.
    #[config(default = 4)]
    pub n_heads: usize,
    /// Transformer blocks.
    #[config(default = 4)]
    pub n_layers: usize,
    /// Hidden width of each feed-forward expert.
    #[config(default = 192)]
    pub d_ff: usize,
    /// Longest prompt, in tokens.
    #[config(default = 16)]
    pub max_text: usize,
    /// Tokenizer vocabulary size.
    #[config(default = 24)]
    pub vocab: usize,
    /// What the generation head outputs; `None` (checkpoints that predate the choice) is
    /// [`Prediction::Velocity`].
    pub prediction: Option<Prediction>,
    /// Route image tokens to a feed-forward expert by task, as BAGEL routes understanding and
    /// generation tokens: clean images being judged get their own expert, noisy latents being
    /// denoised keep the image expert. `None` (older checkpoints): one image expert for both.
    pub task_experts: Option<bool>,
    /// Start the learned image position embeddings at 2D sine-cosine values (MAE, ViT) instead
    /// of small random ones, so a patch's row and column are linearly readable from the first
    /// step: "left of" and "above" are then comparisons the attention can make at once, not
    /// geometry it must first discover. Only the initial value changes. `None`: false.
    pub sincos_positions: Option<bool>,
    /// An understanding head that marks, per patch, whether an object's centre lies in it: an
    /// auxiliary pretraining target that makes patch tokens aware of object instances, which
    /// counting needs (the area of a colour does not tell two big objects from three small
    /// ones). `None` (older checkpoints): no such head.
    pub centre_head: Option<bool>,
    /// An understanding head that reads, from the `[CLS]` slot, where the statement's first and
    /// second objects are (`[x_a, y_a, x_b, y_b]`, as fractions of the side): an auxiliary
    /// pretraining target on relation statements. It supervises the intermediate steps of
    /// "is A left of B" (find A, find B), which the yes/no answer alone did not teach: trained on
    /// relations only, that answer stayed at chance for 500 steps. `None`: no such head.
    pub locate_head: Option<bool>,
    /// An understanding head that marks, per patch, which of the statement's objects covers it
    /// (none, the first, the second): a referring segmentation, an auxiliary pretraining target.
    /// The patch head learns colour and shape without reading the statement; this one must
    /// bind them to the words, per patch, which is what a near miss ("a red circle" beside a
    /// red square and a blue circle) tests. `None`: no such head.
    pub ground_head: Option<bool>,
    /// How the judge's graded answer (the global `Score:`) is made from its statements'
    /// `P(yes)`; its yes/no answer is always [`PromptScore::All`]. `None` (checkpoints that
    /// predate the choice): [`PromptScore::All`].
    pub prompt_score: Option<PromptScore>,
    /// Condition the generator on time by adaptive layer norm (DiT's adaLN-zero): per block, the
    /// time embedding sets a shift, a scale and a gate of the image tokens' attention and
    /// feed-forward inputs and outputs, instead of being added to the tokens once at the input.
    /// Gates start at zero, so every block starts as the identity on generation. Understanding
    /// is unchanged (its images are clean: no time). `None` (older checkpoints): false.
    pub adaptive_norm: Option<bool>,
    /// A depthwise 3 x 3 convolution over the patch grid in every block, for generation, so
    /// each patch token sees its neighbours whatever the attention learns. On every checkpoint
    /// measured without it, a neighbour's input moves a patch's clean estimate by about 1e-4
    /// of its own change: the generator draws each patch on its own (a mosaic). Zero at the
    /// start. `None` (older checkpoints): false.
    pub neighbour_mixing: Option<bool>,
    /// Condition the generator on the whole prompt as one vector as well (a pooled prompt
    /// embedding beside the time embedding, as Stable Diffusion 3 adds a pooled text vector):
    /// each (position, token) pair has a learned vector, their sum goes through a small MLP.
    /// The attention to the prompt's tokens stays; this gives every block the prompt's words
    /// at once. `None` (older checkpoints): false.
    pub prompt_condition: Option<bool>,
    /// With neighbour mixing: a full convolution (every channel reads every channel of the
    /// neighbours, `d * d * k * k` weights per block) instead of a depthwise one. `None`
    /// (older checkpoints): false.
    pub neighbour_dense: Option<bool>,
    /// With neighbour mixing: the convolution's side `k`, odd (3 reaches the 8 neighbouring
    /// patches, 5 two patches away; [`neighbour_kernel_fits`]). `None` (older checkpoints): 3.
    pub neighbour_kernel: Option<usize>,
}

/// Largest side of the neighbour convolution a config may ask for.
pub const MAX_NEIGHBOUR_KERNEL: usize = 15;

/// Whether `k` is a neighbour-convolution side that keeps the patch grid's size: odd, 1 to
/// [`MAX_NEIGHBOUR_KERNEL`].
pub fn neighbour_kernel_fits(k: usize) -> bool {
    k % 2 == 1 && k <= MAX_NEIGHBOUR_KERNEL
}

/// How [`TinyUmm`] scores a whole prompt from the `P(yes)` of its [`atoms`].
///
/// A yes/no question ("does the image match?") is a conjunction: every statement must hold.
/// A graded question ("score how well the image follows the prompt, -1 to 1") is not: an image
/// with the relation right and the third object missing follows the prompt better than one
/// with nothing right, and T2I-CompBench's scores give that partial credit. Both rules read
/// the prompt's words only; every probability comes from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptScore {
    /// Every statement must hold: the least `P(yes)`.
    #[default]
    All,
    /// The share of the prompt's parts that hold, each part scored as a conjunction of its
    /// statements: every noun phrase of an objects prompt is a part; a relation is one part
    /// (its two objects and the relation between them); a count is one; a complex prompt has
    /// two, its relation and its extra object.
    Parts,
}

/// The score of `prompt` under `rule` from `p`, the `P(yes)` of its [`atoms`] in their order.
/// A prompt outside the grammar, or `p` of another length than its atoms, is scored as one
/// conjunction (the least).
pub fn prompt_score(prompt: &str, p: &[f32], rule: PromptScore) -> f32 {
    if rule == PromptScore::All {
        return conjunction(p);
    }
    let mean = |q: &[f32]| q.iter().sum::<f32>() / q.len().max(1) as f32;
    match PromptSpec::parse(prompt) {
        Ok(PromptSpec::Objects(nps)) if p.len() == nps.len() => mean(p),
        Ok(PromptSpec::Complex(..)) if p.len() == 4 => mean(&[conjunction(&p[..3]), p[3]]),
        _ => conjunction(p),
    }
}

/// `P(yes)` that every statement holds, read as the least of theirs.
fn conjunction(p: &[f32]) -> f32 {
    p.iter().copied().fold(1f32, f32::min)
}

/// What the generation head outputs; [`FlowGenerator::velocity`] returns a velocity either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The velocity `eps - x0` itself.
    Velocity,
    /// The clean latents `x0`, turned into the velocity `(x_t - x0_hat) / max(t, 0.05)`. Clean
    /// images lie near a low-dimensional manifold that a narrow network can output, noise does
    /// not (Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise"); our
    /// tokens (48 channels) are nearly as wide as the backbone (64).
    Clean,
}

/// Least `t` the clean prediction divides by, so nearly clean inputs keep a bounded velocity.
const CLEAN_T_MIN: f32 = 0.05;

/// A pre-norm feed-forward expert: `x + down(gelu(up(ln(x))))`.
#[derive(Module, Debug)]
pub struct Expert<B: Backend> {
    ln: LayerNorm<B>,
    up: Linear<B>,
    down: Linear<B>,
}

impl<B: Backend> Expert<B> {
    fn new(d: usize, d_ff: usize, device: &B::Device) -> Self {
        Self {
            ln: LayerNormConfig::new(d).init(device),
            up: LinearConfig::new(d, d_ff).init(device),
            down: LinearConfig::new(d_ff, d).init(device),
        }
    }

    /// Shapes: `x`: `[b, n, d]` to `[b, n, d]`.
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        feed_forward(&self.ln, &self.up, &self.down, x)
    }
}

/// The residual feed-forward every expert computes: `x + down(gelu(up(ln(x))))`. The text and
/// image experts keep their own field names (`text_up`, ...) so older checkpoints still load.
fn feed_forward<B: Backend>(
    ln: &LayerNorm<B>,
    up: &Linear<B>,
    down: &Linear<B>,
    x: Tensor<B, 3>,
) -> Tensor<B, 3> {
    x.clone() + down.forward(gelu(up.forward(ln.forward(x))))
}

/// Which ability a forward pass serves; it picks the image tokens' expert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    Understand,
    Generate,
}

/// The prompt as one vector: a learned vector per (position, token) pair, summed, then
/// `out(gelu(sum))`. A sum over positions keeps which word stands where, which a bag of
/// words would lose.
#[derive(Module, Debug)]
pub struct PromptCondition<B: Backend> {
    table: Embedding<B>,
    out: Linear<B>,
    vocab: usize,
}

impl<B: Backend> PromptCondition<B> {
    /// Shapes: `ids`: `[b, n]` token ids to `[b, d]`.
    fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [b, n] = ids.dims();
        let offsets = Tensor::<B, 1, Int>::arange(0..n as i64, &ids.device())
            .mul_scalar(self.vocab as i64)
            .reshape([1, n]);
        let pooled = self.table.forward(ids + offsets).sum_dim(1);
        let [_, _, d] = pooled.dims();
        self.out.forward(gelu(pooled.reshape([b, d])))
    }
}

/// One block: shared attention over text and image tokens, then per-modality experts.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    ln_attn: LayerNorm<B>,
    attn: SelfAttention<B>,
    ln_text: LayerNorm<B>,
    text_up: Linear<B>,
    text_down: Linear<B>,
    ln_image: LayerNorm<B>,
    image_up: Linear<B>,
    image_down: Linear<B>,
    /// With task experts: the expert of the images being judged (the one above then serves
    /// generation only).
    understanding: Option<Expert<B>>,
    /// With adaptive norm: the time embedding to the image tokens' six modulations (shift,
    /// scale and gate of attention, then of the feed-forward), zero at the start.
    modulation: Option<Linear<B>>,
    /// With neighbour mixing: the depthwise convolution over the patch grid (generation only).
    neighbours: Option<Conv2d<B>>,
}

/// `x * (1 + scale) + shift`, per sample. Shapes: `x`: `[b, n, d]`, `shift`, `scale`: `[b, d]`.
fn modulate<B: Backend>(x: Tensor<B, 3>, shift: Tensor<B, 2>, scale: Tensor<B, 2>) -> Tensor<B, 3> {
    let [_, n, _] = x.dims();
    x * per_token(scale + 1.0, n) + per_token(shift, n)
}

// The flex backend runs an element-wise op fast only on contiguous operands of one shape (or
// 2-D ones); a `[b, 1, d]` broadcast or a token range cut out of a `[b, n, d]` tensor takes
// a scalar strided loop, forward and backward. These two helpers hand it contiguous tensors;
// the numbers are the same.

/// `v` repeated for each of `n` tokens. Shapes: `v`: `[b, d]`; returns `[b, n, d]`.
fn per_token<B: Backend>(v: Tensor<B, 2>, n: usize) -> Tensor<B, 3> {
    v.unsqueeze_dim::<3>(1).repeat_dim(1, n)
}

/// Tokens `start..start + len` of `x` as a contiguous tensor (flex copies the range as one
/// 2-D block, where a view would be walked element by element by every later op).
/// Shapes: `x`: `[b, n, d]`; returns `[b, len, d]`.
fn tokens<B: Backend>(x: Tensor<B, 3>, start: usize, len: usize) -> Tensor<B, 3> {
    let [b, _, d] = x.dims();
    x.narrow(1, start, len)
        .reshape([b * len, d])
        .reshape([b, len, d])
}

impl<B: Backend> Block<B> {
    /// Shapes: `text`: `[b, nt, d]`, `image`: `[b, ni, d]`, `mask`: `[b, heads, nt + ni, nt +
    /// ni]` (true = ignore the key), `time`: `[b, d]`, the generator's time embedding where the
    /// block modulates.
    fn forward(
        &self,
        text: Tensor<B, 3>,
        image: Tensor<B, 3>,
        mask: Tensor<B, 4, Bool>,
        task: Task,
        time: Option<&Tensor<B, 2>>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let [_, nt, _] = text.dims();
        let [_, ni, _] = image.dims();
        let m = match (&self.modulation, time, task) {
            (Some(lin), Some(c), Task::Generate) => Some(lin.forward(c.clone()).chunk(6, 1)),
            _ => None,
        };
        let x = Tensor::cat(vec![text.clone(), image.clone()], 1);
        let normed = self.ln_attn.forward(x.clone());
        let normed = match &m {
            Some(m) => {
                let img = modulate(tokens(normed.clone(), nt, ni), m[0].clone(), m[1].clone());
                Tensor::cat(vec![tokens(normed, 0, nt), img], 1)
            }
            None => normed,
        };
        let h = self.attn.forward(normed, mask);
        let (text, image) = match &m {
            Some(m) => (
                text + tokens(h.clone(), 0, nt),
                image + tokens(h, nt, ni) * per_token(m[2].clone(), ni),
            ),
            None => {
                let x = x + h;
                (tokens(x.clone(), 0, nt), tokens(x, nt, ni))
            }
        };
        let image = match (&self.neighbours, task) {
            (Some(conv), Task::Generate) => {
                let [b, n, d] = image.dims();
                let g = (n as f64).sqrt() as usize;
                let grid = image.clone().swap_dims(1, 2).reshape([b, d, g, g]);
                image + conv.forward(grid).reshape([b, d, n]).swap_dims(1, 2)
            }
            _ => image,
        };
        let text = feed_forward(&self.ln_text, &self.text_up, &self.text_down, text);
        let image = match (&self.understanding, task, &m) {
            (Some(expert), Task::Understand, _) => expert.forward(image),
            (_, _, Some(m)) => {
                let inner = modulate(
                    self.ln_image.forward(image.clone()),
                    m[3].clone(),
                    m[4].clone(),
                );
                let out = self.image_down.forward(gelu(self.image_up.forward(inner)));
                image + out * per_token(m[5].clone(), ni)
            }
            _ => feed_forward(&self.ln_image, &self.image_up, &self.image_down, image),
        };
        (text, image)
    }
}

/// Prompt tokens for the backbone.
#[derive(Debug, Clone)]
pub struct TextBatch<B: Backend> {
    /// `[batch, max_text]` token ids, `[PAD]` after the prompt.
    pub ids: Tensor<B, 2, Int>,
    /// `[batch, 1 + max_text]`: true where the sequence slot is padding (slot 0 is `[CLS]`).
    pub pad: Tensor<B, 2, Bool>,
}

/// What [`TinyUmm::understand_heads`] returns.
#[derive(Debug, Clone)]
pub struct UnderstandingHeads<B: Backend> {
    /// Yes/no logits, `[b, 2]`.
    pub answer: Tensor<B, 2>,
    /// Per-patch colour and shape logits (and the centre logit with a centre head),
    /// `[b, patches, 9 or 10]`.
    pub patches: Tensor<B, 3>,
    /// With a locate head: `[b, 4]`, the two objects' `[x_a, y_a, x_b, y_b]` as fractions.
    pub locate: Option<Tensor<B, 2>>,
    /// With a ground head: `[b, patches, 3]` logits of which of the statement's objects covers
    /// each patch (none, first, second).
    pub ground: Option<Tensor<B, 3>>,
}

/// The small unified model: see the [module docs](crate::tiny).
#[derive(Module, Debug)]
pub struct TinyUmm<B: Backend> {
    tok_embed: Embedding<B>,
    text_pos: Param<Tensor<B, 2>>,
    cls: Param<Tensor<B, 2>>,
    patch_in: Linear<B>,
    image_pos: Param<Tensor<B, 2>>,
    time_in: Linear<B>,
    /// With prompt conditioning: the pooled prompt vector, added to the time embedding.
    prompt_condition: Option<PromptCondition<B>>,
    blocks: Vec<Block<B>>,
    ln_out: LayerNorm<B>,
    velocity_head: Linear<B>,
    answer_head: Linear<B>,
    /// Understanding only: per-patch colour (4 + background) and shape (3 + background) of the
    /// object under each patch; an auxiliary pretraining target that teaches object features.
    patch_head: Linear<B>,
    /// Understanding only, optional: per-patch logit of "an object's centre is here".
    centre_head: Option<Linear<B>>,
    /// Understanding only, optional: where the statement's two objects are, from `[CLS]`.
    locate_head: Option<Linear<B>>,
    /// Understanding only, optional: which of the statement's objects covers each patch.
    ground_head: Option<Linear<B>>,
    image_size: usize,
    patch: usize,
    max_text: usize,
    #[module(skip)]
    prediction: Prediction,
    #[module(skip)]
    prompt_score: PromptScore,
    #[module(skip)]
    tokenizer: Arc<Tokenizer>,
}

const TIME_FEATURES: usize = 16;

/// Outputs of the patch head: 5 colour logits (red, green, blue, yellow, background) then
/// 4 shape logits (circle, square, triangle, background).
pub const PATCH_CLASSES: usize = 9;

impl TinyUmmConfig {
    /// The config with every optional choice spelled out as it is read (`None` prediction:
    /// velocity; `None` task experts: one shared image expert), so two configs that build the
    /// same model compare equal.
    pub fn resolved(self) -> Self {
        let prediction = Some(self.prediction.unwrap_or(Prediction::Velocity));
        let task_experts = Some(self.task_experts.unwrap_or(false));
        let sincos = Some(self.sincos_positions.unwrap_or(false));
        let centre = Some(self.centre_head.unwrap_or(false));
        let locate = Some(self.locate_head.unwrap_or(false));
        let ground = Some(self.ground_head.unwrap_or(false));
        let score = Some(self.prompt_score.unwrap_or_default());
        let adaptive = Some(self.adaptive_norm.unwrap_or(false));
        let neighbours = Some(self.neighbour_mixing.unwrap_or(false));
        let prompt = Some(self.prompt_condition.unwrap_or(false));
        let dense = Some(self.neighbour_dense.unwrap_or(false));
        let kernel = Some(self.neighbour_kernel.unwrap_or(3));
        self.with_prediction(prediction)
            .with_task_experts(task_experts)
            .with_sincos_positions(sincos)
            .with_centre_head(centre)
            .with_locate_head(locate)
            .with_ground_head(ground)
            .with_prompt_score(score)
            .with_adaptive_norm(adaptive)
            .with_neighbour_mixing(neighbours)
            .with_prompt_condition(prompt)
            .with_neighbour_dense(dense)
            .with_neighbour_kernel(kernel)
    }

    /// Builds the model with random weights.
    pub fn init<B: Backend>(&self, tokenizer: Tokenizer, device: &B::Device) -> TinyUmm<B> {
        let d = self.d_model;
        let n_img = (self.image_size / self.patch).pow(2);
        let small = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        TinyUmm {
            tok_embed: EmbeddingConfig::new(self.vocab, d)
                .with_initializer(small.clone())
                .init(device),
            text_pos: small.init([self.max_text + 1, d], device),
            cls: small.init([1, d], device),
            patch_in: LinearConfig::new(3 * self.patch * self.patch, d).init(device),
            image_pos: if self.sincos_positions.unwrap_or(false) {
                let g = self.image_size / self.patch;
                Param::from_tensor(Tensor::from_data(
                    TensorData::new(sincos_2d(g, d), [n_img, d]),
                    device,
                ))
            } else {
                small.init([n_img, d], device)
            },
            time_in: LinearConfig::new(TIME_FEATURES, d).init(device),
            prompt_condition: self
                .prompt_condition
                .unwrap_or(false)
                .then(|| PromptCondition {
                    table: EmbeddingConfig::new(self.max_text * self.vocab, d)
                        .with_initializer(small.clone())
                        .init(device),
                    out: LinearConfig::new(d, d).init(device),
                    vocab: self.vocab,
                }),
            blocks: (0..self.n_layers)
                .map(|_| Block {
                    ln_attn: LayerNormConfig::new(d).init(device),
                    attn: SelfAttention::new(d, self.n_heads, device),
                    ln_text: LayerNormConfig::new(d).init(device),
                    text_up: LinearConfig::new(d, self.d_ff).init(device),
                    text_down: LinearConfig::new(self.d_ff, d).init(device),
                    ln_image: LayerNormConfig::new(d).init(device),
                    image_up: LinearConfig::new(d, self.d_ff).init(device),
                    image_down: LinearConfig::new(self.d_ff, d).init(device),
                    understanding: self
                        .task_experts
                        .unwrap_or(false)
                        .then(|| Expert::new(d, self.d_ff, device)),
                    modulation: self.adaptive_norm.unwrap_or(false).then(|| {
                        LinearConfig::new(d, 6 * d)
                            .with_initializer(Initializer::Zeros)
                            .init(device)
                    }),
                    neighbours: self.neighbour_mixing.unwrap_or(false).then(|| {
                        let k = self.neighbour_kernel.unwrap_or(3);
                        let groups = if self.neighbour_dense.unwrap_or(false) {
                            1
                        } else {
                            d
                        };
                        let pad = k / 2;
                        Conv2dConfig::new([d, d], [k, k])
                            .with_groups(groups)
                            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                            .with_initializer(Initializer::Zeros)
                            .init(device)
                    }),
                })
                .collect(),
            ln_out: LayerNormConfig::new(d).init(device),
            velocity_head: LinearConfig::new(d, 3 * self.patch * self.patch)
                .with_initializer(Initializer::Zeros)
                .init(device),
            answer_head: LinearConfig::new(d, 2).init(device),
            patch_head: LinearConfig::new(d, PATCH_CLASSES).init(device),
            centre_head: self
                .centre_head
                .unwrap_or(false)
                .then(|| LinearConfig::new(d, 1).init(device)),
            locate_head: self
                .locate_head
                .unwrap_or(false)
                .then(|| LinearConfig::new(d, 4).init(device)),
            ground_head: self
                .ground_head
                .unwrap_or(false)
                .then(|| LinearConfig::new(d, 3).init(device)),
            image_size: self.image_size,
            patch: self.patch,
            max_text: self.max_text,
            prediction: self.prediction.unwrap_or(Prediction::Velocity),
            prompt_score: self.prompt_score.unwrap_or_default(),
            tokenizer: Arc::new(tokenizer),
        }
    }
}

/// 2D sine-cosine position embeddings of a `g x g` grid, row-major, `d` wide (a multiple of
/// 4): the first half encodes the column, the second the row, each as sines then cosines of
/// geometrically spaced frequencies (MAE's `get_2d_sincos_pos_embed`).
pub fn sincos_2d(g: usize, d: usize) -> Vec<f32> {
    let quarter = d / 4;
    let mut out = vec![0f32; g * g * d];
    for r in 0..g {
        for c in 0..g {
            let row = &mut out[(r * g + c) * d..(r * g + c + 1) * d];
            for (half, pos) in [(0, c), (1, r)] {
                for k in 0..quarter {
                    let omega = 1.0 / 10_000f32.powf(k as f32 / quarter as f32);
                    let a = pos as f32 * omega;
                    row[half * 2 * quarter + k] = a.sin();
                    row[half * 2 * quarter + quarter + k] = a.cos();
                }
            }
        }
    }
    out
}

/// Sinusoidal features of `t` in `[0, 1]`: `[b]` to `[b, 16]`.
fn time_features<B: Backend>(t: Tensor<B, 1>) -> Tensor<B, 2> {
    let [b] = t.dims();
    let freqs: Vec<f32> = (0..TIME_FEATURES / 2)
        .map(|i| (2f32).powi(i as i32) * std::f32::consts::PI)
        .collect();
    let f = Tensor::<B, 2>::from_data(TensorData::new(freqs, [1, TIME_FEATURES / 2]), &t.device());
    let x = t.reshape([b, 1]) * f;
    Tensor::cat(vec![x.clone().sin(), x.cos()], 1)
}

impl<B: Backend> TinyUmm<B> {
    /// The tokenizer the model reads prompts with.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Image side in pixels.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// How the graded answer scores a prompt (from `model.json`).
    pub fn prompt_score_rule(&self) -> PromptScore {
        self.prompt_score
    }

    /// Patch side in pixels.
    pub fn patch_size(&self) -> usize {
        self.patch
    }

    fn device(&self) -> B::Device {
        self.cls.device()
    }

    /// Tokenizes prompts; an unknown word or an over-long prompt is an error naming it.
    pub fn text_batch(&self, prompts: &[String]) -> Result<TextBatch<B>> {
        let (b, m) = (prompts.len(), self.max_text);
        let mut ids = vec![0i32; b * m];
        let mut pad = vec![true; b * (m + 1)];
        for (i, p) in prompts.iter().enumerate() {
            let toks = encode(&self.tokenizer, p, m)?;
            pad[i * (m + 1)] = false;
            for (j, t) in toks.iter().enumerate() {
                ids[i * m + j] = *t as i32;
                pad[i * (m + 1) + 1 + j] = false;
            }
        }
        let device = self.device();
        Ok(TextBatch {
            ids: Tensor::from_data(TensorData::new(ids, [b, m]), &device),
            pad: Tensor::from_data(TensorData::new(pad, [b, m + 1]), &device),
        })
    }

    /// `[CLS]` + prompt embeddings: `[b, 1 + max_text, d]`.
    fn embed_text(&self, text: &TextBatch<B>) -> Tensor<B, 3> {
        let [b, _] = text.ids.dims();
        let d = self.cls.dims()[1];
        let cls = self.cls.val().reshape([1, 1, d]).repeat_dim(0, b);
        let tokens = self.tok_embed.forward(text.ids.clone());
        Tensor::cat(vec![cls, tokens], 1) + self.text_pos.val().unsqueeze_dim::<3>(0)
    }

    fn run(
        &self,
        text: Tensor<B, 3>,
        image: Tensor<B, 3>,
        pad_text: Tensor<B, 2, Bool>,
        task: Task,
        time: Option<&Tensor<B, 2>>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let [b, ni, _] = image.dims();
        let no_pad = Tensor::<B, 2, Bool>::from_data(
            TensorData::new(vec![false; b * ni], [b, ni]),
            &image.device(),
        );
        let pad = Tensor::cat(vec![pad_text, no_pad], 1);
        let heads = self.blocks.first().map_or(1, |b| b.attn.n_heads());
        let mask = pad_mask(pad, heads);
        let (mut t, mut i) = (text, image);
        for block in &self.blocks {
            (t, i) = block.forward(t, i, mask.clone(), task, time);
        }
        (self.ln_out.forward(t), self.ln_out.forward(i))
    }

    /// Yes/no logits of "does this image match this prompt?".
    ///
    /// Shapes: `images`: `[b, 3, H, W]` in `[0, 1]`; returns `[b, 2]` (yes, no).
    pub fn understand(&self, images: Tensor<B, 4>, text: &TextBatch<B>) -> Result<Tensor<B, 2>> {
        Ok(self.understand_with_patches(images, text)?.0)
    }

    /// [`TinyUmm::understand`] plus the patch head's logits `[b, patches, 9]` (`[b, patches,
    /// 10]` with a centre head: its logit last).
    pub fn understand_with_patches(
        &self,
        images: Tensor<B, 4>,
        text: &TextBatch<B>,
    ) -> Result<(Tensor<B, 2>, Tensor<B, 3>)> {
        let out = self.understand_heads(images, text)?;
        Ok((out.answer, out.patches))
    }

    /// Every understanding head's output for a batch of (image, statement) pairs.
    pub fn understand_heads(
        &self,
        images: Tensor<B, 4>,
        text: &TextBatch<B>,
    ) -> Result<UnderstandingHeads<B>> {
        let latents = self.encode_images(images)?;
        let image = self.patch_in.forward(latents) + self.image_pos.val().unsqueeze_dim::<3>(0);
        let (t, i) = self.run(
            self.embed_text(text),
            image,
            text.pad.clone(),
            Task::Understand,
            None,
        );
        let [b, _, d] = t.dims();
        let ground = self.ground_head.as_ref().map(|h| h.forward(i.clone()));
        let patches = match &self.centre_head {
            Some(head) => Tensor::cat(vec![self.patch_head.forward(i.clone()), head.forward(i)], 2),
            None => self.patch_head.forward(i),
        };
        let cls = t.narrow(1, 0, 1).reshape([b, d]);
        Ok(UnderstandingHeads {
            locate: self.locate_head.as_ref().map(|h| h.forward(cls.clone())),
            answer: self.answer_head.forward(cls),
            patches,
            ground,
        })
    }

    /// `P(yes)` for each (image, prompt) pair: the least of the network's answers for the
    /// prompt's [`atoms`] (a compound prompt holds when each of its parts does; the minimum is
    /// that "and" without the product's bias against prompts with more parts).
    pub fn match_probability(&self, images: &[PixelImage], prompts: &[String]) -> Result<Vec<f32>> {
        Ok(self
            .atom_probabilities(images, prompts)?
            .iter()
            .map(|ps| conjunction(ps))
            .collect())
    }

    /// For each (image, prompt) pair, the network's `P(yes)` for each of the prompt's
    /// [`atoms`], in their order; one batched pass over all the atoms.
    pub fn atom_probabilities(
        &self,
        images: &[PixelImage],
        prompts: &[String],
    ) -> Result<Vec<Vec<f32>>> {
        if images.len() != prompts.len() {
            return Err(SrumError::Shape(format!(
                "{} prompts for {} images",
                prompts.len(),
                images.len()
            )));
        }
        let (mut imgs, mut texts, mut owner) = (Vec::new(), Vec::new(), Vec::new());
        for (i, (img, p)) in images.iter().zip(prompts).enumerate() {
            for a in atoms(p) {
                imgs.push(img.clone());
                texts.push(a);
                owner.push(i);
            }
        }
        let p = self.atom_probability(&imgs, &texts)?;
        let mut out = vec![Vec::new(); prompts.len()];
        for (k, i) in owner.into_iter().enumerate() {
            out[i].push(p[k]);
        }
        Ok(out)
    }

    /// The network's `P(yes)` for each (image, statement) pair, one forward pass per chunk of 256.
    pub fn atom_probability(&self, images: &[PixelImage], prompts: &[String]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(prompts.len());
        for (imgs, ps) in images.chunks(256).zip(prompts.chunks(256)) {
            let text = self.text_batch(ps)?;
            let logits = self.understand(PixelImage::to_tensor(imgs, &self.device())?, &text)?;
            let p = softmax(logits, 1)
                .narrow(1, 0, 1)
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| SrumError::Model(format!("{e:?}")))?;
            out.extend(p);
        }
        Ok(out)
    }
}

/// The atomic statements the network judges for a prompt of the world's grammar: each object
/// ("a red circle": at least one is there), each count ("three red circles": exactly three),
/// each relation ("a red circle left of a blue square": it holds between them). A prompt outside
/// the grammar is its own single statement.
///
/// This is how the model reads a question, not a look at the image: the split uses the prompt's
/// words alone, and every probability comes from the network.
pub fn atoms(prompt: &str) -> Vec<String> {
    let Ok(spec) = PromptSpec::parse(prompt) else {
        return vec![prompt.to_string()];
    };
    let rel = |a: &Np, r: &crate::world::Relation, b: &Np| PromptSpec::Relation(*a, *r, *b).text();
    match &spec {
        PromptSpec::Objects(nps) => nps.iter().map(|n| n.text()).collect(),
        PromptSpec::Count(..) => vec![spec.text()],
        PromptSpec::Relation(a, r, b) => vec![a.text(), b.text(), rel(a, r, b)],
        PromptSpec::Complex(a, r, b, c) => vec![a.text(), b.text(), rel(a, r, b), c.text()],
    }
}

/// The image with everything outside `[x0, y0, x1, y1)` painted white (the background), so the
/// understanding path sees only the region.
pub fn mask_to_region(image: &PixelImage, b: [usize; 4]) -> PixelImage {
    let mut out = PixelImage::filled(image.width, image.height, [1.0; 3]);
    for y in b[1].min(image.height)..b[3].min(image.height) {
        for x in b[0].min(image.width)..b[2].min(image.width) {
            let i = (y * image.width + x) * 3;
            out.data[i..i + 3].copy_from_slice(&image.data[i..i + 3]);
        }
    }
    out
}

/// What a question asks, as the model reads it.
enum Query {
    /// Does the image (or a region) match the prompt?
    Match {
        prompt: String,
        region: Option<[usize; 4]>,
    },
    /// Score each listed region against the prompt.
    Regions {
        prompt: String,
        boxes: Vec<[usize; 4]>,
    },
}

fn parse_box(s: &str, size: usize) -> Option<[usize; 4]> {
    let inner = s.trim().strip_prefix('[')?.split(']').next()?;
    let v: Vec<f64> = inner
        .split(',')
        .map(|c| c.trim().parse().ok())
        .collect::<Option<_>>()?;
    if v.len() != 4 || v.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let c = |x: f64| (x.max(0.0) as usize).min(size);
    let b = [c(v[0]), c(v[1]), c(v[2]), c(v[3])];
    (b[0] < b[2] && b[1] < b[3]).then_some(b)
}

/// Reads the evaluator's questions: the templates' quoted prompt and `Region k: [..]` lines, or
/// the decomposed yes/no forms ("Is there X in the image?", "Is the A rel the B?",
/// "Does the region [..] show X?").
fn read_question(q: &str, size: usize) -> Option<Query> {
    let q = q.trim();
    if let Some(rest) = q
        .strip_prefix("Is there ")
        .and_then(|r| r.strip_suffix(" in the image?"))
    {
        return Some(Query::Match {
            prompt: rest.to_string(),
            region: None,
        });
    }
    if let Some(rest) = q
        .strip_prefix("Does the region ")
        .and_then(|r| r.strip_suffix('?'))
    {
        let (b, obj) = rest.split_once("] show ")?;
        return Some(Query::Match {
            prompt: obj.to_string(),
            region: Some(parse_box(&format!("{b}]"), size)?),
        });
    }
    if let Some(rest) = q.strip_prefix("Is the ").and_then(|r| r.strip_suffix('?')) {
        let (a, b) = rest.split_once(" the ")?;
        return Some(Query::Match {
            prompt: format!("a {a} a {b}"),
            region: None,
        });
    }
    let prompt = q
        .lines()
        .find_map(|l| serde_json::from_str::<String>(l.trim()).ok())?;
    let boxes: Vec<[usize; 4]> = q
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("Region ")?;
            let (_, b) = rest.split_once(": ")?;
            parse_box(b, size)
        })
        .collect();
    Some(if boxes.is_empty() {
        Query::Match {
            prompt,
            region: None,
        }
    } else {
        Query::Regions { prompt, boxes }
    })
}

impl<B: Backend> TinyUmm<B> {
    /// Answers each question; see [`read_question`] for what the model reads.
    fn respond(
        &self,
        images: Tensor<B, 4>,
        questions: &[String],
        as_text: bool,
    ) -> Result<Vec<Response>> {
        let pixels = PixelImage::from_tensor(images)?;
        if pixels.len() != questions.len() {
            return Err(SrumError::Shape(format!(
                "{} questions for {} images",
                questions.len(),
                pixels.len()
            )));
        }
        // One flat list of (image, prompt) pairs, answered in one batched pass.
        let (mut imgs, mut prompts, mut plan) = (Vec::new(), Vec::new(), Vec::new());
        let candidates: Vec<String> = Np::all().iter().map(|n| n.text()).collect();
        for (i, q) in questions.iter().enumerate() {
            match read_question(q, self.image_size) {
                None => plan.push(Plan::Unreadable),
                Some(Query::Match { prompt, region }) => {
                    imgs.push(
                        region
                            .map(|b| mask_to_region(&pixels[i], b))
                            .unwrap_or_else(|| pixels[i].clone()),
                    );
                    prompts.push(prompt);
                    plan.push(Plan::Match(prompts.len() - 1));
                }
                Some(Query::Regions { prompt, boxes }) => {
                    let wanted: Vec<String> = PromptSpec::parse(&prompt)
                        .map(|p| p.nps().iter().map(|n| n.text()).collect())
                        .unwrap_or_else(|_| vec![prompt.clone()]);
                    let mut regions = Vec::new();
                    for b in boxes {
                        let masked = mask_to_region(&pixels[i], b);
                        let start = prompts.len();
                        for c in wanted.iter().chain(&candidates) {
                            imgs.push(masked.clone());
                            prompts.push(c.clone());
                        }
                        regions.push((start, wanted.len()));
                    }
                    plan.push(Plan::Regions(regions));
                }
            }
        }
        let _ = as_text;
        let per_atom = if prompts.is_empty() {
            Vec::new()
        } else {
            self.atom_probabilities(&imgs, &prompts)?
        };
        let p: Vec<f32> = per_atom.iter().map(|q| conjunction(q)).collect();
        Ok(plan
            .into_iter()
            .map(|step| match step {
                Plan::Unreadable => Response::Unreadable,
                Plan::Match(k) => Response::Match {
                    all: p[k],
                    graded: prompt_score(&prompts[k], &per_atom[k], self.prompt_score),
                },
                Plan::Regions(regions) => Response::Regions(
                    regions
                        .into_iter()
                        .map(|(start, n_wanted)| {
                            let score = p[start..start + n_wanted]
                                .iter()
                                .copied()
                                .fold(0f32, f32::max);
                            let (best, _) = p
                                [start + n_wanted..start + n_wanted + candidates.len()]
                                .iter()
                                .enumerate()
                                .fold(
                                    (0, -1f32),
                                    |acc, (k, &v)| if v > acc.1 { (k, v) } else { acc },
                                );
                            (score, candidates[best].clone())
                        })
                        .collect(),
                ),
            })
            .collect())
    }
}

enum Plan {
    Unreadable,
    Match(usize),
    Regions(Vec<(usize, usize)>),
}

enum Response {
    Unreadable,
    /// `all`: `P(yes)` that every statement holds (the yes/no answer); `graded`: the score
    /// under the model's [`PromptScore`] (the text answer).
    Match {
        all: f32,
        graded: f32,
    },
    Regions(Vec<(f32, String)>),
}

impl<B: Backend> Understanding<B> for TinyUmm<B> {
    fn answer(&self, images: Tensor<B, 4>, questions: &[String]) -> Result<Vec<String>> {
        Ok(self
            .respond(images, questions, true)?
            .into_iter()
            .map(|r| match r {
                Response::Unreadable => "I cannot read this question.".to_string(),
                Response::Match { all, graded } => match self.prompt_score {
                    PromptScore::All => {
                        format!("Score: {:.3}\nReason: P(match) = {all:.3}", 2.0 * all - 1.0)
                    }
                    PromptScore::Parts => format!(
                        "Score: {:.3}\nReason: share of parts held = {graded:.3}, \
                         P(match) = {all:.3}",
                        2.0 * graded - 1.0
                    ),
                },
                Response::Regions(v) => v
                    .iter()
                    .enumerate()
                    .map(|(k, (p, obj))| {
                        format!(
                            "Region ID: {}\nIdentified Object: {obj}\nScore: {:.3}",
                            k + 1,
                            2.0 * p - 1.0
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n---\n"),
            })
            .collect())
    }

    fn yes_no_probabilities(
        &self,
        images: Tensor<B, 4>,
        questions: &[String],
    ) -> Option<Result<Vec<(f32, f32)>>> {
        Some(self.respond(images, questions, false).map(|rs| {
            rs.into_iter()
                .map(|r| match r {
                    Response::Match { all, .. } => (all, 1.0 - all),
                    Response::Regions(v) => {
                        let p = v.iter().map(|(p, _)| *p).sum::<f32>() / v.len().max(1) as f32;
                        (p, 1.0 - p)
                    }
                    Response::Unreadable => (0.5, 0.5),
                })
                .collect()
        }))
    }
}

impl<B: Backend> ImageCodec<B> for TinyUmm<B> {
    fn latent_channels(&self) -> usize {
        3 * self.patch * self.patch
    }

    fn latent_grid(&self, size: ImageSize) -> LatentGrid {
        LatentGrid::new(size.height / self.patch, size.width / self.patch)
    }

    fn encode_images(&self, images: Tensor<B, 4>) -> Result<Tensor<B, 3>> {
        let [b, c, h, w] = images.dims();
        let s = self.image_size;
        if c != 3 || h != s || w != s {
            return Err(SrumError::Model(format!(
                "TinyUmm takes [batch, 3, {s}, {s}] images, got [{b}, {c}, {h}, {w}]"
            )));
        }
        Ok(srum::image::patchify(images, self.patch))
    }

    fn decode_latents(&self, latents: Tensor<B, 3>, size: ImageSize) -> Result<Tensor<B, 4>> {
        let ImageSize { width, height } = size;
        let [_, n, c] = latents.dims();
        let (s, p) = (self.image_size, self.patch);
        let g = s / p;
        if width != s || height != s || n != g * g || c != 3 * p * p {
            return Err(SrumError::Model(format!(
                "TinyUmm decodes [batch, {}, {}] latents to {s}x{s}",
                g * g,
                3 * p * p
            )));
        }
        Ok(srum::image::unpatchify(latents, p, g, g))
    }
}

impl<B: Backend> Generator<B> for TinyUmm<B> {
    type Condition = TextBatch<B>;

    fn condition(&self, prompts: &[String]) -> Result<TextBatch<B>> {
        self.text_batch(prompts)
    }

    fn unconditional(&self, batch: usize) -> Result<TextBatch<B>> {
        self.text_batch(&vec![String::new(); batch])
    }

    fn param_roles(&self) -> ParamRoles {
        let mut roles = ParamRoles::default()
            .with_module(ParamRole::Generation, &self.time_in)
            .with_module(ParamRole::Generation, &self.velocity_head)
            .with_module(ParamRole::Understanding, &self.answer_head)
            .with_module(ParamRole::Understanding, &self.patch_head);
        if let Some(p) = &self.prompt_condition {
            roles = roles.with_module(ParamRole::Generation, p);
        }
        for head in [&self.centre_head, &self.locate_head, &self.ground_head]
            .into_iter()
            .flatten()
        {
            roles = roles.with_module(ParamRole::Understanding, head);
        }
        // With task experts each image expert serves one ability; without, both share one.
        for block in &self.blocks {
            if let Some(m) = &block.modulation {
                roles = roles.with_module(ParamRole::Generation, m);
            }
            if let Some(c) = &block.neighbours {
                roles = roles.with_module(ParamRole::Generation, c);
            }
            if let Some(expert) = &block.understanding {
                roles = roles
                    .with_module(ParamRole::Understanding, expert)
                    .with_module(ParamRole::Generation, &block.ln_image)
                    .with_module(ParamRole::Generation, &block.image_up)
                    .with_module(ParamRole::Generation, &block.image_down);
            }
        }
        roles
    }
}

impl<B: Backend> FlowGenerator<B> for TinyUmm<B> {
    fn velocity(
        &self,
        x_t: Tensor<B, 3>,
        t: Tensor<B, 1>,
        condition: &TextBatch<B>,
    ) -> Tensor<B, 3> {
        let [b, _, _] = x_t.dims();
        let d = self.cls.dims()[1];
        let time = self.time_in.forward(time_features(t.clone()));
        let time = match &self.prompt_condition {
            Some(p) => time + p.forward(condition.ids.clone()),
            None => time,
        };
        let image = self.patch_in.forward(x_t.clone()) + self.image_pos.val().unsqueeze_dim::<3>(0);
        // With adaptive norm the blocks take the time; otherwise it is added to every token.
        let adaptive = self.blocks.iter().any(|b| b.modulation.is_some());
        let (image, modulation) = if adaptive {
            (image, Some(burn::tensor::activation::silu(time)))
        } else {
            (image + time.reshape([b, 1, d]), None)
        };
        let (_, i) = self.run(
            self.embed_text(condition),
            image,
            condition.pad.clone(),
            Task::Generate,
            modulation.as_ref(),
        );
        let out = self.velocity_head.forward(i);
        match self.prediction {
            Prediction::Velocity => out,
            Prediction::Clean => (x_t - out) / t.clamp_min(CLEAN_T_MIN).reshape([b, 1, 1]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sincos_2d;

    /// The pooled prompt keeps which word stands where: the same words in another order give
    /// another vector, the same ids the same one.
    #[test]
    fn the_prompt_condition_reads_words_by_position() {
        use burn::tensor::{Int, Tensor};
        type B = burn::backend::Flex;
        let dev = Default::default();
        let config = super::TinyUmmConfig::new()
            .with_vocab(10)
            .with_max_text(4)
            .with_d_model(8)
            .with_n_heads(2)
            .with_n_layers(1)
            .with_d_ff(16)
            .with_prompt_condition(Some(true));
        let tokenizer = crate::tiny::tokenizer::build_tokenizer().expect("tokenizer");
        let model = config.init::<B>(tokenizer, &dev);
        let pc = model.prompt_condition.as_ref().expect("prompt condition");
        let ids = Tensor::<B, 2, Int>::from_ints([[3, 5, 0, 0], [5, 3, 0, 0], [3, 5, 0, 0]], &dev);
        let out = pc.forward(ids).into_data().into_vec::<f32>().expect("f32");
        let (a, b, c) = (&out[0..8], &out[8..16], &out[16..24]);
        assert_eq!(a, c);
        let diff: f32 = a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum();
        assert!(diff > 1e-4, "word order lost: {diff}");
    }

    /// Each entry against the closed form, computed in f64 with `exp`/`ln` rather than `powf`.
    #[test]
    fn sincos_positions_follow_the_closed_form() {
        let (g, d) = (8usize, 96usize);
        let e = sincos_2d(g, d);
        assert_eq!(e.len(), g * g * d);
        let q = d / 4;
        for (r, c) in [(0usize, 0usize), (2, 5), (7, 1)] {
            let row = &e[(r * g + c) * d..(r * g + c + 1) * d];
            for k in 0..q {
                let omega = (-(k as f64 / q as f64) * 10_000f64.ln()).exp();
                let want = [
                    (c as f64 * omega).sin(),
                    (c as f64 * omega).cos(),
                    (r as f64 * omega).sin(),
                    (r as f64 * omega).cos(),
                ];
                for (j, w) in want.iter().enumerate() {
                    let got = row[j * q + k] as f64;
                    assert!(
                        (got - w).abs() < 1e-5,
                        "({r}, {c}) dim {}: {got} vs {w}",
                        j * q + k
                    );
                }
            }
        }
        // Patches in the same column share the column half; a row apart, they differ in the
        // row half.
        let at = |r: usize, c: usize| &e[(r * g + c) * d..(r * g + c + 1) * d];
        assert_eq!(at(1, 3)[..d / 2], at(6, 3)[..d / 2]);
        assert_ne!(at(1, 3)[d / 2..], at(6, 3)[d / 2..]);
    }
}
