//! The per-token objective that stage 2 weights by the reward map, one per kind of generator:
//! flow matching on continuous tokens ([`FlowMatching`], BAGEL) and next-token cross-entropy on
//! discrete image tokens ([`NextTokenCrossEntropy`], Janus-Pro, Emu3). Another kind (masked-token
//! cross-entropy, as Show-o trains) is one more [`Objective`]; the trainer does not change.

use burn::module::{AutodiffModule, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Int, Tensor, TensorData, backend::AutodiffBackend, backend::Backend};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{Constraint, LossTerms, SrumBatch, TrainerConfig, in_dtype, srum_loss};
use crate::error::{Result, SrumError};
use crate::flow::{extend_normals, noisy_latents, sample_timesteps, velocity_target};
use crate::model::{FlowGenerator, Generator, TokenGenerator};

/// Where a step's random draws come from: one ChaCha stream per micro-step, and in it a
/// disjoint stretch of 2^40 words per sample of the global batch. Resuming at step `k` needs
/// only `(seed, k)`, and a data-parallel peer holding samples `r*b..(r+1)*b` of the global
/// batch draws exactly their noise, as one trainer with the whole batch would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepDraws {
    /// The run's seed ([`TrainerConfig::seed`]).
    pub seed: u64,
    /// The micro-step being taken.
    pub micro_step: u64,
    /// Index in the global batch of this trainer's first sample.
    pub first_sample: u64,
}

impl StepDraws {
    /// The random stream of sample `i` of this trainer's batch.
    pub fn sample_rng(&self, i: usize) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(self.micro_step);
        rng.set_word_pos(u128::from(self.first_sample + i as u64) << 40);
        rng
    }
}

/// What an [`Objective`] sees of a step besides the model.
pub struct StepInput<'a, B: AutodiffBackend, M: AutodiffModule<B>> {
    /// The batch (validated).
    pub batch: SrumBatch<B>,
    /// The trainer's settings: `lambda`, the constraint, timestep sampling ...
    pub config: &'a TrainerConfig,
    /// The frozen reference copy, present when the constraint is
    /// [`Constraint::ReferenceModel`].
    pub reference: Option<&'a M::InnerModule>,
    /// The step's random draws.
    pub draws: StepDraws,
    /// The parameters being trained: the only ones whose gradients the update uses.
    pub trainable: &'a [ParamId],
}

/// A generator's training objective, weighted per token by the reward map.
pub trait Objective<B: AutodiffBackend, M: AutodiffModule<B>> {
    /// The loss terms of `model` on the step: the reward-weighted per-token term, the
    /// constraint term, and `reward + lambda * constraint`.
    fn loss(&self, model: &M, step: StepInput<'_, B, M>) -> Result<LossTerms<B>>;

    /// Whether the trainer calls [`Objective::gradients`] instead of back-propagating
    /// [`Objective::loss`]'s graph: for an objective that gets its gradients another way,
    /// such as recomputing activations in the backward to save memory.
    fn computes_gradients(&self) -> bool {
        false
    }

    /// The loss terms `[total, reward, constraint]` (host values, f32) and the gradients of
    /// `scale * total` for `step.trainable`. Only called when
    /// [`Objective::computes_gradients`] is true; the gradients may be in the model's dtype.
    fn gradients(
        &self,
        model: &M,
        step: StepInput<'_, B, M>,
        scale: f32,
    ) -> Result<([f32; 3], GradientsParams)> {
        let _ = (model, step, scale);
        Err(SrumError::Training(
            "this objective computes no gradients of its own".into(),
        ))
    }
}

/// Reward-weighted rectified flow matching, the paper's objective:
/// `mean(R * |v - (eps - x_gen)|^2) + lambda * L_constraint`, timesteps drawn as
/// [`TrainerConfig::timesteps`] says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowMatching;

impl StepDraws {
    /// The flow-matching draws of the step's `[b, n, c]` latents (host values): a timestep
    /// per sample, drawn and shifted as `config` says, and standard normal noise, row-major.
    /// Every flow objective draws these, so that two ways of computing the same loss see the
    /// same noise.
    pub fn flow_noise(&self, config: &TrainerConfig, dims: [usize; 3]) -> (Vec<f32>, Vec<f32>) {
        flow_noise(config, *self, dims)
    }
}

/// Timesteps `[b]` and noise `[b, n, c]` (host) of the step's samples.
fn flow_noise(
    config: &TrainerConfig,
    draws: StepDraws,
    [b, n, c]: [usize; 3],
) -> (Vec<f32>, Vec<f32>) {
    let mut t = Vec::with_capacity(b);
    let mut eps = Vec::with_capacity(b * n * c);
    for i in 0..b {
        let mut rng = draws.sample_rng(i);
        t.extend(sample_timesteps(
            &mut rng,
            1,
            config.timesteps,
            config.timestep_shift,
        ));
        eps = extend_normals(eps, &mut rng, n * c);
    }
    (t, eps)
}

impl<B, M> Objective<B, M> for FlowMatching
where
    B: AutodiffBackend,
    M: FlowGenerator<B> + AutodiffModule<B>,
    M::InnerModule: FlowGenerator<B::InnerBackend>,
{
    fn loss(&self, model: &M, step: StepInput<'_, B, M>) -> Result<LossTerms<B>> {
        let StepInput {
            batch,
            config,
            reference,
            draws,
            ..
        } = step;
        let dims = batch.latents.dims();
        let device = batch.latents.device();
        let (t_host, eps_host) = flow_noise(config, draws, dims);
        // Noise, targets, the loss and the reward in f32 whatever the model computes in; only
        // the model's input and output are in its dtype.
        let compute = config.precision.compute_dtype();
        let eps = Tensor::<B, 3>::from_data(TensorData::new(eps_host, dims), (&device, DType::F32));
        let t =
            Tensor::<B, 1>::from_data(TensorData::new(t_host, [dims[0]]), (&device, DType::F32));
        let SrumBatch {
            prompts,
            latents: x_gen,
            anchor,
            reward,
        } = batch;
        let x_gen = in_dtype(x_gen, DType::F32);
        let x_t = noisy_latents(x_gen.clone(), eps.clone(), t.clone());
        let target = velocity_target(x_gen.clone(), eps.clone());
        let (x_t, t_in) = (in_dtype(x_t, compute), in_dtype(t, compute));
        let constraint_target = match config.constraint {
            Constraint::Anchor => {
                velocity_target(anchor.map_or(x_gen, |a| in_dtype(a, DType::F32)), eps)
            }
            Constraint::ReferenceModel => {
                let reference = reference
                    .ok_or_else(|| SrumError::Training("reference model missing".into()))?;
                let cond = reference.condition(&prompts)?;
                let v = reference.velocity(x_t.clone().inner(), t_in.clone().inner(), &cond);
                in_dtype(Tensor::from_inner(v), DType::F32)
            }
        };
        let cond = model.condition(&prompts)?;
        let v = in_dtype(model.velocity(x_t, t_in, &cond), DType::F32);
        Ok(srum_loss(
            v,
            target,
            in_dtype(reward, DType::F32),
            constraint_target,
            config.lambda,
        ))
    }
}

/// Reward-weighted next-token cross-entropy over discrete image tokens:
/// `mean(R_i * -log p(x_i | prompt, x_<i)) + lambda * L_constraint`. The batch's latents hold
/// one channel of code indices. The anchor constraint is the unweighted cross-entropy of the
/// anchor tokens; the reference-model constraint is the mean per-token
/// `KL(p_ref || p_theta)` against the frozen copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NextTokenCrossEntropy;

/// `-log softmax(logits)[target]` per token.
///
/// Shapes: `logits`: `[batch, n, vocab]`, `targets`: `[batch, n]`; returns `[batch, n]`.
pub fn token_cross_entropy<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
) -> Tensor<B, 2> {
    let [b, n, _] = logits.dims();
    let logp = log_softmax(logits, 2);
    logp.gather(2, targets.reshape([b, n, 1]))
        .reshape([b, n])
        .neg()
}

/// `KL(p || q)` per token from logits of `p` (`reference`) and `q` (`logits`).
///
/// Shapes: `logits`, `reference`: `[batch, n, vocab]`; returns `[batch, n]`.
pub fn token_kl<B: Backend>(logits: Tensor<B, 3>, reference: Tensor<B, 3>) -> Tensor<B, 2> {
    let [b, n, _] = logits.dims();
    let logq = log_softmax(logits, 2);
    let logp = log_softmax(reference, 2);
    (logp.clone().exp() * (logp - logq))
        .sum_dim(2)
        .reshape([b, n])
}

/// A batch's tokens as code indices, checking each is an integer in `0..vocab`.
fn code_indices<B: Backend>(
    latents: Tensor<B, 3>,
    vocab: usize,
    what: &str,
) -> Result<Tensor<B, 2, Int>> {
    let [b, n, c] = latents.dims();
    if c != 1 {
        return Err(SrumError::Shape(format!(
            "{what}: [{b}, {n}, {c}] tokens; a token generator takes one channel of code indices"
        )));
    }
    let device = latents.device();
    let values = latents
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| SrumError::Training(format!("reading {what}: {e:?}")))?;
    let mut codes = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        if !(v.fract() == 0.0 && *v >= 0.0 && (*v as usize) < vocab) {
            return Err(SrumError::Shape(format!(
                "{what}: token {} of sample {} is {v}, not a code in 0..{vocab}",
                i % n,
                i / n
            )));
        }
        codes.push(*v as i64);
    }
    Ok(Tensor::from_data(TensorData::new(codes, [b, n]), &device))
}

impl<B, M> Objective<B, M> for NextTokenCrossEntropy
where
    B: AutodiffBackend,
    M: TokenGenerator<B> + AutodiffModule<B>,
    M::InnerModule: TokenGenerator<B::InnerBackend>,
{
    fn loss(&self, model: &M, step: StepInput<'_, B, M>) -> Result<LossTerms<B>> {
        let StepInput {
            batch,
            config,
            reference,
            ..
        } = step;
        let vocab = model.vocab_size();
        let SrumBatch {
            prompts,
            latents,
            anchor,
            reward,
        } = batch;
        let tokens = code_indices(latents, vocab, "latents")?;
        let cond = model.condition(&prompts)?;
        let logits = model.next_token_logits(tokens.clone(), &cond);
        let ce = token_cross_entropy(logits.clone(), tokens.clone());
        let reward_term = (ce.clone() * reward).mean();
        let constraint = match (config.constraint, anchor) {
            (Constraint::Anchor, None) => ce.mean(),
            (Constraint::Anchor, Some(anchor)) => {
                let anchor = code_indices(anchor, vocab, "anchor")?;
                let logits = model.next_token_logits(anchor.clone(), &cond);
                token_cross_entropy(logits, anchor).mean()
            }
            (Constraint::ReferenceModel, _) => {
                let reference = reference
                    .ok_or_else(|| SrumError::Training("reference model missing".into()))?;
                let rcond = reference.condition(&prompts)?;
                let rlogits =
                    Tensor::from_inner(reference.next_token_logits(tokens.inner(), &rcond));
                token_kl(logits, rlogits).mean()
            }
        };
        Ok(LossTerms {
            total: reward_term.clone() + constraint.clone().mul_scalar(config.lambda),
            reward: reward_term,
            constraint,
        })
    }
}
