//! SRUM's flow-matching objective on BAGEL as the official trainer computes it: every sample
//! of the batch (its prompt, then its noisy latents) packed into one sequence and one
//! forward, optionally with each decoder layer recomputed in the backward to save memory.

use std::collections::HashSet;

use burn::module::ParamId;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor, TensorData};
use srum::flow::{noisy_latents, velocity_target};
use srum::model::ImageCodec;
use srum::train::{Constraint, LossTerms, Objective, SrumBatch, StepInput, in_dtype, srum_loss};
use srum::{Result, SrumError};

use crate::sequence::PackedSequence;
use crate::unified::BagelModel;

/// Reward-weighted rectified flow matching on a [`BagelModel`], packed: the same loss as
/// srum's `FlowMatching` (same noise, timesteps and terms), computed by one training forward
/// over the batch packed as the official trainer packs it, instead of one cached-context
/// forward per image.
///
/// With [`PackedFlowMatching::with_checkpointing`], each decoder layer keeps only its input
/// in the forward and is recomputed in the backward: the activations held at once are one
/// layer's instead of every layer's, for one more forward's time.
///
/// Thinking rollouts (`generation_think`) are refused: their plan is generated text, which a
/// packed training sample would have to carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackedFlowMatching {
    checkpointing: bool,
}

impl PackedFlowMatching {
    /// The packed objective, without checkpointing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Recompute each decoder layer in the backward (`true`) or keep every activation.
    pub fn with_checkpointing(mut self, checkpointing: bool) -> Self {
        self.checkpointing = checkpointing;
        self
    }

    /// Whether decoder layers are recomputed in the backward.
    pub fn checkpointing(&self) -> bool {
        self.checkpointing
    }
}

/// A step laid out for the packed forward: latent rows in push order, sample after sample.
struct Packed<B: AutodiffBackend> {
    seq: PackedSequence,
    /// `[b, n, c]`, the batch's shape.
    dims: [usize; 3],
    /// `[b * n, c]` in the model's dtype, no graph.
    x_t: Tensor<B, 2>,
    /// `[b * n]`, each sample's timestep on each of its tokens, in the model's dtype.
    t: Tensor<B, 1>,
    /// `[b, n, c]`, f32.
    target: Tensor<B, 3>,
    /// `[b, n, c]`, f32.
    constraint: Tensor<B, 3>,
    /// `[b, n]`, f32.
    reward: Tensor<B, 2>,
    lambda: f32,
}

fn pack<B: AutodiffBackend>(
    model: &BagelModel<B>,
    step: StepInput<'_, B, BagelModel<B>>,
) -> Result<Packed<B>> {
    let StepInput {
        batch,
        config,
        reference,
        draws,
        ..
    } = step;
    if model.templates().generation_think {
        return Err(SrumError::config(
            "objective",
            "the packed BAGEL objective does not train thinking rollouts (generation_think); \
             use srum's FlowMatching",
        ));
    }
    let SrumBatch {
        prompts,
        latents: x_gen,
        anchor,
        reward,
    } = batch;
    let dims @ [b, n, c] = x_gen.dims();
    let grid = model.latent_grid(model.generation_size());
    if n != grid.tokens() {
        return Err(SrumError::Shape(format!(
            "{n} latent tokens per image; the generation size {}x{} has {}",
            grid.rows,
            grid.cols,
            grid.tokens()
        )));
    }
    let bagel = model.bagel();
    let cfg = bagel.config();
    let mut seq = PackedSequence::new();
    for p in &prompts {
        seq.push_text(&bagel.wrap_text(&model.encode_text(p)?));
        seq.push_noisy_latents(
            (grid.rows, grid.cols),
            cfg.start_of_image_id,
            cfg.end_of_image_id,
            cfg.max_latent_size,
        )?;
        seq.end_sample();
    }

    // As FlowMatching: the same draws, targets and loss in f32, the model's input in its dtype.
    let device = x_gen.device();
    let compute = config.precision.compute_dtype();
    let (t_host, eps_host) = draws.flow_noise(config, dims);
    let t_rows: Vec<f32> = t_host
        .iter()
        .flat_map(|&t| std::iter::repeat_n(t, n))
        .collect();
    let f32_of = |v: Vec<f32>| {
        let len = v.len();
        Tensor::<B, 1>::from_data(TensorData::new(v, [len]), (&device, DType::F32))
    };
    let eps = f32_of(eps_host).reshape(dims);
    let t = f32_of(t_host);
    let x_gen = in_dtype(x_gen, DType::F32);
    let x_t = noisy_latents(x_gen.clone(), eps.clone(), t).detach();
    let target = velocity_target(x_gen.clone(), eps.clone());
    let x_t = in_dtype(x_t.reshape([b * n, c]), compute);
    let t = in_dtype(f32_of(t_rows), compute);
    let constraint = match config.constraint {
        Constraint::Anchor => {
            velocity_target(anchor.map_or(x_gen, |a| in_dtype(a, DType::F32)), eps)
        }
        Constraint::ReferenceModel => {
            let reference =
                reference.ok_or_else(|| SrumError::Training("reference model missing".into()))?;
            let v = reference
                .bagel()
                .forward_packed(&seq, x_t.clone().inner(), t.clone().inner(), false)?
                .velocity;
            in_dtype(Tensor::from_inner(v), DType::F32).reshape(dims)
        }
    };
    Ok(Packed {
        seq,
        dims,
        x_t,
        t,
        target,
        constraint,
        reward: in_dtype(reward, DType::F32),
        lambda: config.lambda,
    })
}

impl<B: AutodiffBackend> Packed<B> {
    /// The SRUM loss of the velocity of the latent rows, `[b * n, c]`.
    fn loss(
        dims: [usize; 3],
        target: Tensor<B, 3>,
        reward: Tensor<B, 2>,
        constraint: Tensor<B, 3>,
        lambda: f32,
    ) -> impl FnOnce(Tensor<B, 2>) -> LossTerms<B> {
        move |v| {
            let v = in_dtype(v, DType::F32).reshape(dims);
            srum_loss(v, target, reward, constraint, lambda)
        }
    }
}

impl<B: AutodiffBackend> Objective<B, BagelModel<B>> for PackedFlowMatching {
    fn loss(
        &self,
        model: &BagelModel<B>,
        step: StepInput<'_, B, BagelModel<B>>,
    ) -> Result<LossTerms<B>> {
        let p = pack(model, step)?;
        let v = model
            .bagel()
            .forward_packed(&p.seq, p.x_t, p.t, false)?
            .velocity;
        Ok(Packed::loss(
            p.dims,
            p.target,
            p.reward,
            p.constraint,
            p.lambda,
        )(v))
    }

    fn computes_gradients(&self) -> bool {
        self.checkpointing
    }

    fn gradients(
        &self,
        model: &BagelModel<B>,
        step: StepInput<'_, B, BagelModel<B>>,
        scale: f32,
    ) -> Result<([f32; 3], GradientsParams)> {
        let keep: HashSet<ParamId> = step.trainable.iter().copied().collect();
        let p = pack(model, step)?;
        let loss = Packed::loss(p.dims, p.target, p.reward, p.constraint, p.lambda);
        Ok(model
            .bagel()
            .checkpointed_gradients(&p.seq, p.x_t, p.t, loss, scale, Some(&keep))?)
    }
}
