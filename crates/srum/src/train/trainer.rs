//! `Trainer`: reward-weighted flow-matching updates of a [`UnifiedModel`]'s generator.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use burn::module::{AutodiffModule, ParamId, list_param_ids};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, GradientsAccumulator, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::{DType, Tensor, TensorData, backend::AutodiffBackend, backend::Backend};
use serde::{Deserialize, Serialize};

use super::checkpoint::{
    latest_version, weights_from_safetensors, weights_to_safetensors, write_dir_atomic,
};
use super::objective::{FlowMatching, Objective, StepDraws, StepInput};
#[cfg(feature = "collective")]
use super::parallel::{self, DataParallel};
use super::params::{ema_update, grad_norm, materialize, scale_grads};
use super::precision::{self, Precision};
use super::{Constraint, TrainerConfig, learning_rate};
use crate::error::{Result, SrumError};
use crate::model::{FlowGenerator, Generator, LatentGrid};
use crate::reward::RewardMap;

/// One training batch: generated latents, their prompts and per-token rewards.
#[derive(Debug, Clone)]
pub struct SrumBatch<B: Backend> {
    /// The prompt of each image.
    pub prompts: Vec<String>,
    /// `x_gen`, the generated images' latents. Shape `[batch, tokens, channels]`.
    pub latents: Tensor<B, 3>,
    /// `x_anchor` for the anchor constraint; `None` means `latents` (the published recipe).
    /// Shape `[batch, tokens, channels]`.
    pub anchor: Option<Tensor<B, 3>>,
    /// Reward per latent token, e.g. from [`RewardMap`]s. Shape `[batch, tokens]`.
    pub reward: Tensor<B, 2>,
}

impl<B: Backend> SrumBatch<B> {
    /// A batch from latents on `grid` and one reward map per image, on the same grid.
    pub fn from_maps(
        prompts: Vec<String>,
        latents: Tensor<B, 3>,
        grid: LatentGrid,
        maps: &[RewardMap],
    ) -> Result<Self> {
        let [b, n, _] = latents.dims();
        if n != grid.tokens() {
            return Err(SrumError::Shape(format!(
                "latents have {n} tokens, a {grid} grid has {}",
                grid.tokens()
            )));
        }
        if maps.len() != b {
            return Err(SrumError::Shape(format!(
                "{} reward maps for a batch of {b}",
                maps.len()
            )));
        }
        let mut values = Vec::with_capacity(b * n);
        for (i, m) in maps.iter().enumerate() {
            if m.grid() != grid {
                return Err(SrumError::Shape(format!(
                    "reward map {i} is {}, the latents' grid is {grid}",
                    m.grid()
                )));
            }
            values.extend_from_slice(m.values());
        }
        let reward = Tensor::from_data(TensorData::new(values, [b, n]), &latents.device());
        let batch = Self {
            prompts,
            latents,
            anchor: None,
            reward,
        };
        batch.validate()?;
        Ok(batch)
    }

    /// Peer `rank`'s equal share of this batch among `world` data-parallel peers: samples
    /// `rank*b/world .. (rank+1)*b/world`. The batch size must divide evenly, since the group's
    /// update equals one trainer's on the whole batch only for equal shards.
    pub fn shard(&self, rank: usize, world: usize) -> Result<Self> {
        let b = self.prompts.len();
        if world == 0 || rank >= world || !b.is_multiple_of(world) {
            return Err(SrumError::Shape(format!(
                "a batch of {b} cannot be split into {world} equal shards for rank {rank}"
            )));
        }
        let (len, start) = (b / world, rank * b / world);
        Ok(Self {
            prompts: self.prompts[start..start + len].to_vec(),
            latents: self.latents.clone().narrow(0, start, len),
            anchor: self.anchor.clone().map(|a| a.narrow(0, start, len)),
            reward: self.reward.clone().narrow(0, start, len),
        })
    }

    /// Checks that every part agrees on batch size and token count.
    pub fn validate(&self) -> Result<()> {
        let [b, n, c] = self.latents.dims();
        if b == 0 {
            return Err(SrumError::Shape("empty batch".into()));
        }
        if self.prompts.len() != b {
            return Err(SrumError::Shape(format!(
                "{} prompts for a batch of {b}",
                self.prompts.len()
            )));
        }
        if self.reward.dims() != [b, n] {
            return Err(SrumError::Shape(format!(
                "reward {:?}, expected [{b}, {n}]",
                self.reward.dims()
            )));
        }
        if let Some(a) = &self.anchor
            && a.dims() != [b, n, c]
        {
            return Err(SrumError::Shape(format!(
                "anchor {:?}, expected [{b}, {n}, {c}]",
                a.dims()
            )));
        }
        Ok(())
    }
}

/// What one [`Trainer::step`] did to the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum StepOutcome {
    /// The gradients joined the accumulation window; the weights are unchanged until it ends.
    Accumulated,
    /// The window ended and the optimizer updated the weights.
    Updated {
        /// Global gradient norm before clipping.
        grad_norm: f32,
    },
    /// The weights are unchanged and the window was dropped: the loss or the gradient norm was
    /// not finite.
    Skipped {
        /// What was not finite.
        reason: String,
        /// The gradient norm, when the window got as far as computing it.
        grad_norm: Option<f32>,
    },
}

/// What one [`Trainer::step`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Optimizer updates applied so far (after this call).
    pub optimizer_step: u64,
    /// Micro-batches seen so far (after this call).
    pub micro_step: u64,
    /// `reward + lambda * constraint` of this micro-batch.
    pub loss: f32,
    /// The reward-weighted term of the objective.
    pub reward_loss: f32,
    /// The constraint term (before `lambda`).
    pub constraint_loss: f32,
    /// Mean per-token reward of the batch.
    pub mean_reward: f32,
    /// Learning rate of the update (or of the next one, when none happened).
    pub lr: f64,
    /// What happened to the weights.
    #[serde(flatten)]
    pub outcome: StepOutcome,
    /// Images per second through this call (forward, backward and update).
    pub samples_per_sec: f64,
    /// Latent tokens per second through this call.
    pub tokens_per_sec: f64,
}

impl StepReport {
    /// Whether this call updated the weights.
    pub fn updated(&self) -> bool {
        matches!(self.outcome, StepOutcome::Updated { .. })
    }

    /// The global gradient norm before clipping, when this call ended an accumulation window.
    pub fn grad_norm(&self) -> Option<f32> {
        match self.outcome {
            StepOutcome::Updated { grad_norm } => Some(grad_norm),
            StepOutcome::Skipped { grad_norm, .. } => grad_norm,
            StepOutcome::Accumulated => None,
        }
    }
}

/// Counters that, with the config, determine everything the trainer does next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer updates applied.
    pub optimizer_steps: u64,
    /// Micro-batches consumed (the noise stream position).
    pub micro_steps: u64,
    /// Micro-batches or updates skipped as non-finite.
    pub skipped: u64,
    /// Skips in a row.
    pub consecutive_skips: usize,
}

#[derive(Serialize, Deserialize)]
struct CheckpointMeta {
    format: u32,
    config: TrainerConfig,
    state: TrainerState,
}

const MODEL_FILE: &str = "model.safetensors";
const EMA_FILE: &str = "ema.safetensors";
const REFERENCE_FILE: &str = "reference.safetensors";
const OPTIM_FILE: &str = "optimizer.mpk";
const META_FILE: &str = "trainer.json";

/// The stage-2 trainer of SRUM: reward-weighted updates of a [`Generator`] under an
/// [`Objective`] ([`FlowMatching`] unless another is given).
///
/// Owns the model, its optimizer (AdamW from [`TrainerConfig::optimizer`] unless
/// [`Trainer::with_optimizer`] is given another burn [`Optimizer`]), optionally an EMA copy and
/// a frozen reference copy.
/// Only the parameters that [`TrainerConfig::trainable`] selects from the model's
/// [`ParamRoles`](crate::model::ParamRoles) ever receive gradients; all others, understanding
/// included, stay bit-for-bit unchanged.
pub struct Trainer<B, M, O = FlowMatching, Opt = OptimizerAdaptor<AdamW, M, B>>
where
    B: AutodiffBackend,
    M: Generator<B> + AutodiffModule<B>,
{
    model: Option<M>,
    objective: O,
    optim: Opt,
    accumulator: GradientsAccumulator<M>,
    accumulated: usize,
    reference: Option<M::InnerModule>,
    ema: Option<M::InnerModule>,
    trainable: Vec<ParamId>,
    /// `trainable` as a set, for the precision mappers.
    trained: HashSet<ParamId>,
    config: TrainerConfig,
    state: TrainerState,
    device: B::Device,
    #[cfg(feature = "collective")]
    parallel: Option<DataParallel>,
}

/// What one micro-batch's forward and backward passes give the update.
struct Forward {
    /// Loss, reward and constraint terms.
    values: [f32; 3],
    mean_reward: f32,
    /// `None` when the loss is not finite (and nothing was back-propagated).
    grads: Option<GradientsParams>,
    /// In a group, when the terms are still this peer's own: them, the mean reward, the
    /// batch size and its square, for the gradient all-reduce to average.
    #[cfg_attr(not(feature = "collective"), allow(dead_code))]
    local: Option<Vec<f32>>,
    /// This peer's batch size.
    #[cfg_attr(not(feature = "collective"), allow(dead_code))]
    batch: usize,
}

/// Fails unless every peer trained on as many samples as this one (`b`), from the group's
/// means of the batch size and of its square (`mean[4]`, `mean[5]`).
#[cfg(feature = "collective")]
fn check_group_batch(b: usize, mean: &[f32]) -> Result<()> {
    if (mean[5] - mean[4] * mean[4]).abs() > 1e-3 * mean[5].max(1.0) {
        return Err(SrumError::Shape(format!(
            "data-parallel peers have different batch sizes (this one {b}, mean {})",
            mean[4]
        )));
    }
    Ok(())
}

impl<B, M> Trainer<B, M, FlowMatching>
where
    B: AutodiffBackend,
    M: FlowGenerator<B> + AutodiffModule<B>,
    M::InnerModule: FlowGenerator<B::InnerBackend>,
{
    /// A flow-matching trainer for `model`, which must already live on `device`. Fails on an
    /// invalid config.
    pub fn new(model: M, config: TrainerConfig, device: &B::Device) -> Result<Self> {
        Self::with_objective(model, FlowMatching, config, device)
    }

    /// Restores a flow-matching trainer saved by [`Trainer::save_checkpoint`]; see
    /// [`Trainer::resume_with`].
    pub fn resume(dir: impl AsRef<Path>, model: M, device: &B::Device) -> Result<Self> {
        Self::resume_with(dir, model, FlowMatching, device)
    }
}

impl<B, M, O> Trainer<B, M, O>
where
    B: AutodiffBackend,
    M: Generator<B> + AutodiffModule<B>,
    O: Objective<B, M>,
{
    /// A trainer for `model` under `objective`, with AdamW as [`TrainerConfig::optimizer`]
    /// sets it; `model` must already live on `device`. Fails on an invalid config.
    pub fn with_objective(
        model: M,
        objective: O,
        config: TrainerConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let optim = config.optimizer.init::<B, M>();
        Self::with_optimizer(model, objective, optim, config, device)
    }

    /// Restores a trainer saved by [`Trainer::save_checkpoint`] into `model` (a freshly built
    /// model of the same architecture), under `objective`, with AdamW. Continuing from here
    /// gives, on a deterministic backend, the same weights bit for bit as never having stopped.
    pub fn resume_with(
        dir: impl AsRef<Path>,
        model: M,
        objective: O,
        device: &B::Device,
    ) -> Result<Self> {
        Self::resume_inner(
            dir,
            model,
            objective,
            |c| c.optimizer.init::<B, M>(),
            precision::adamw_record_to_f32::<B, _>,
            device,
        )
    }
}

impl<B, M, O, Opt> Trainer<B, M, O, Opt>
where
    B: AutodiffBackend,
    M: Generator<B> + AutodiffModule<B>,
    O: Objective<B, M>,
    Opt: Optimizer<M, B>,
{
    /// A trainer for `model` under `objective`, updating it with `optimizer` (any burn
    /// [`Optimizer`]; [`TrainerConfig::optimizer`] is then unused). The learning-rate schedule,
    /// gradient clipping and accumulation stay the trainer's. `model` must already live on
    /// `device`. Fails on an invalid config.
    pub fn with_optimizer(
        model: M,
        objective: O,
        optimizer: Opt,
        config: TrainerConfig,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate()?;
        // No `to_device` here: in burn 0.21 it detaches autodiff parameters from the graph
        // (every other step then gets no gradients), so the model must be built on `device`.
        // The reference and EMA copies must hold the same weights, not fresh lazy draws.
        materialize(&model);
        let roles = model.param_roles();
        let trainable: Vec<ParamId> = list_param_ids(&model)
            .into_iter()
            .filter(|id| config.trainable.trains(roles.role(*id)))
            .collect();
        if trainable.is_empty() {
            return Err(SrumError::config(
                "trainable",
                "the model declares no trainable parameter",
            ));
        }
        precision::check_device::<B>(config.precision, device)?;
        let trained: HashSet<ParamId> = trainable.iter().copied().collect();
        let model = precision::to_masters(model, &trained, config.precision);
        // The reference model runs forwards only, so it is kept in the compute dtype.
        let reference = (config.constraint == Constraint::ReferenceModel).then(|| {
            precision::working_copy(&model, config.precision)
                .unwrap_or_else(|| model.clone())
                .valid()
        });
        let ema = config.ema_decay.map(|_| model.valid());
        Ok(Self {
            model: Some(model),
            objective,
            optim: optimizer,
            accumulator: GradientsAccumulator::new(),
            accumulated: 0,
            reference,
            ema,
            trainable,
            trained,
            config,
            state: TrainerState::default(),
            device: device.clone(),
            #[cfg(feature = "collective")]
            parallel: None,
        })
    }

    /// The model being trained.
    pub fn model(&self) -> &M {
        self.model.as_ref().expect("model is present between steps")
    }

    /// Gives the trained model back.
    pub fn into_model(mut self) -> M {
        self.model.take().expect("model is present between steps")
    }

    /// The EMA weights, when `ema_decay` is set.
    pub fn ema(&self) -> Option<&M::InnerModule> {
        self.ema.as_ref()
    }

    /// The device the model trains on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The settings in use.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// Step counters.
    pub fn state(&self) -> TrainerState {
        self.state
    }

    /// The global index of this trainer's first sample in a batch of `b` (its rank times `b`
    /// in a data-parallel group, else 0).
    fn first_sample(&self, b: usize) -> u64 {
        #[cfg(feature = "collective")]
        if let Some(dp) = &self.parallel {
            return (dp.rank * b) as u64;
        }
        let _ = b;
        0
    }

    /// Whether this trainer writes checkpoints: always, except for a non-root data-parallel
    /// peer.
    pub fn is_root(&self) -> bool {
        #[cfg(feature = "collective")]
        if let Some(dp) = &self.parallel {
            return dp.is_root();
        }
        true
    }

    /// Joins a data-parallel group (burn-collective): registers this peer, replaces its
    /// weights by the root peer's (so peers may start from different initialisations), and
    /// from then on averages gradients across the group before every update. Every peer of
    /// the group must call it, each from its own thread or process, before its first step.
    ///
    /// A fresh trainer also re-takes its EMA and frozen reference copies from the broadcast
    /// weights; a resumed one keeps those it loaded, so all peers must resume from the same
    /// checkpoint.
    #[cfg(feature = "collective")]
    pub fn data_parallel(mut self, dp: DataParallel) -> Result<Self> {
        if self.parallel.is_some() {
            return Err(SrumError::Training(
                "this trainer is already in a data-parallel group".into(),
            ));
        }
        parallel::register::<B::InnerBackend>(&dp, &self.device)?;
        let model = self.model.take().ok_or_else(|| {
            SrumError::Training("trainer lost its model after a failed step".into())
        })?;
        let counters = [self.state.optimizer_steps, self.state.micro_steps];
        let model = match parallel::broadcast_module::<B, M>(&dp, model, counters, &self.device) {
            Ok(m) => m,
            Err(e) => {
                // The trainer is consumed: leave the group so that the process can go on.
                let _ = parallel::finish::<B::InnerBackend>(&dp);
                return Err(e);
            }
        };
        if self.state.optimizer_steps == 0 && self.state.micro_steps == 0 {
            if self.reference.is_some() {
                self.reference = Some(model.valid());
            }
            if self.ema.is_some() {
                self.ema = Some(model.valid());
            }
        }
        self.model = Some(model);
        self.parallel = Some(dp);
        Ok(self)
    }

    /// This trainer's place in its data-parallel group, if it joined one.
    #[cfg(feature = "collective")]
    pub fn parallel(&self) -> Option<&DataParallel> {
        self.parallel.as_ref()
    }

    /// Leaves the data-parallel group (every peer must, after its last step). A trainer that
    /// never joined one has nothing to do.
    #[cfg(feature = "collective")]
    pub fn leave_group(&mut self) -> Result<()> {
        match self.parallel.take() {
            Some(dp) => parallel::finish::<B::InnerBackend>(&dp),
            None => Ok(()),
        }
    }

    /// Ids of the parameters this trainer updates.
    pub fn trainable_params(&self) -> &[ParamId] {
        &self.trainable
    }

    fn skip(&mut self, reason: String) -> Result<()> {
        self.state.skipped += 1;
        self.state.consecutive_skips += 1;
        // A window with a poisoned micro-batch is dropped whole.
        self.accumulator = GradientsAccumulator::new();
        self.accumulated = 0;
        tracing::warn!(step = self.state.micro_steps, %reason, "training step skipped");
        if self.state.consecutive_skips >= self.config.max_consecutive_skips {
            return Err(SrumError::Training(format!(
                "{} non-finite steps in a row (last: {reason}); weights left at the last good update",
                self.state.consecutive_skips
            )));
        }
        Ok(())
    }

    /// One micro-batch: forward, loss, backward, and (every `grad_accum_steps` calls) a
    /// clipped AdamW update. A non-finite loss or gradient norm skips the update and leaves
    /// the weights untouched; too many in a row is an error.
    pub fn step(&mut self, batch: SrumBatch<B>) -> Result<StepReport> {
        let start = Instant::now();
        batch.validate()?;
        let [b, n, _] = batch.latents.dims();
        let cfg = self.config.clone();
        let draws = StepDraws {
            seed: cfg.seed,
            micro_step: self.state.micro_steps,
            first_sample: self.first_sample(b),
        };
        self.state.micro_steps += 1;

        let model = self.model.take().ok_or_else(|| {
            SrumError::Training("trainer lost its model after a failed step".into())
        })?;
        let lr = learning_rate(
            cfg.lr,
            cfg.warmup_steps,
            cfg.decay,
            self.state.optimizer_steps,
        );
        let (model, result) = self.update(model, batch, draws, lr);
        self.model = Some(model);
        let ([loss, reward_loss, constraint_loss], mean_reward, outcome) = result?;
        if let StepOutcome::Skipped { reason, .. } = &outcome {
            self.skip(reason.clone())?;
        }
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        Ok(StepReport {
            optimizer_step: self.state.optimizer_steps,
            micro_step: self.state.micro_steps,
            loss,
            reward_loss,
            constraint_loss,
            mean_reward,
            lr,
            outcome,
            samples_per_sec: b as f64 / secs,
            tokens_per_sec: (b * n) as f64 / secs,
        })
    }

    /// Forward, backward and, when the window ends, the update of `model`, which always comes
    /// back (updated or not) so that an error leaves the trainer whole.
    #[allow(clippy::type_complexity)]
    fn update(
        &mut self,
        model: M,
        batch: SrumBatch<B>,
        draws: StepDraws,
        lr: f64,
    ) -> (M, Result<([f32; 3], f32, StepOutcome)>) {
        // In a group, the micro-batch that ends a window sends its loss terms with the
        // gradients, in one all-reduce: one exchange per update instead of two.
        let closes = self.accumulated + 1 >= self.config.grad_accum_steps;
        #[cfg(feature = "collective")]
        let merge = closes && self.parallel.is_some();
        #[cfg(not(feature = "collective"))]
        let merge = false;
        let working = precision::working_copy(&model, self.config.precision);
        let fwd = self.forward_backward(working.as_ref().unwrap_or(&model), batch, draws, merge);
        drop(working);
        let fwd = match fwd {
            Ok(v) => v,
            Err(e) => return (model, Err(e)),
        };
        #[cfg_attr(not(feature = "collective"), allow(unused_mut))]
        let (mut terms, mut mean_reward) = (fwd.values, fwd.mean_reward);
        let skipped = |terms: [f32; 3], mean_reward, reason, grad_norm| {
            Ok((
                terms,
                mean_reward,
                StepOutcome::Skipped { reason, grad_norm },
            ))
        };
        let Some(grads) = fwd.grads else {
            let reason = format!("non-finite loss {}", terms[0]);
            return (model, skipped(terms, mean_reward, reason, None));
        };
        self.accumulator.accumulate(&model, grads);
        self.accumulated += 1;
        if !closes {
            return (model, Ok((terms, mean_reward, StepOutcome::Accumulated)));
        }
        self.accumulated = 0;
        let mut grads = self.accumulator.grads();
        #[cfg(feature = "collective")]
        if let Some(dp) = &self.parallel {
            let extra = fwd.local.as_deref();
            grads = match parallel::all_reduce_grads::<B, M>(dp, &model, grads, extra, &self.device)
            {
                Ok((g, None)) => g,
                Ok((g, Some(mean))) => {
                    if let Err(e) = check_group_batch(fwd.batch, &mean) {
                        return (model, Err(e));
                    }
                    (terms, mean_reward) = ([mean[0], mean[1], mean[2]], mean[3]);
                    if !terms[0].is_finite() {
                        let reason = format!("non-finite loss {}", terms[0]);
                        return (model, skipped(terms, mean_reward, reason, None));
                    }
                    g
                }
                Err(e) => return (model, Err(e)),
            };
        }
        let norm = grad_norm::<B, M>(&model, &grads);
        if !norm.is_finite() {
            let reason = format!("non-finite gradient norm {norm}");
            return (model, skipped(terms, mean_reward, reason, Some(norm)));
        }
        if let Some(max) = self.config.grad_clip_norm {
            // torch.nn.utils.clip_grad_norm_: scale by max / (norm + 1e-6) when above.
            let coef = max / (norm + 1e-6);
            if coef < 1.0 {
                scale_grads::<B, M>(&model, &mut grads, coef);
            }
        }
        let model = precision::step(&mut self.optim, lr, model, grads, self.config.precision);
        if let (Some(ema), Some(decay)) = (self.ema.take(), self.config.ema_decay) {
            self.ema = Some(ema_update(ema, &model.valid(), &self.trained, decay));
        }
        self.state.optimizer_steps += 1;
        self.state.consecutive_skips = 0;
        let outcome = StepOutcome::Updated { grad_norm: norm };
        (model, Ok((terms, mean_reward, outcome)))
    }

    /// Loss terms (host values), mean reward and the trainable gradients; `None` gradients
    /// when the loss is not finite (nothing is back-propagated then).
    ///
    /// In a data-parallel group the terms are the group's means, so a non-finite loss on one
    /// peer makes all of them skip together instead of leaving the others waiting; with `merge`
    /// they are this peer's own, back-propagated whatever they are, and [`Forward::local`] holds
    /// them for the gradient all-reduce to average.
    fn forward_backward(
        &self,
        model: &M,
        batch: SrumBatch<B>,
        draws: StepDraws,
        merge: bool,
    ) -> Result<Forward> {
        let cfg = &self.config;
        let b = batch.prompts.len();
        let mean_reward = batch.reward.clone().mean();
        let step = StepInput {
            batch,
            config: cfg,
            reference: self.reference.as_ref(),
            draws,
            trainable: &self.trainable,
        };
        let scale = 1.0 / cfg.grad_accum_steps as f32;
        // Either the objective computes its gradients itself (whatever the loss comes to), or
        // its graph is back-propagated below once the loss is known to be finite.
        let (mut host, mut graph, mut own) = if self.objective.computes_gradients() {
            let (terms, grads) = self.objective.gradients(model, step, scale)?;
            (terms.to_vec(), None, Some(grads))
        } else {
            let terms = self.objective.loss(model, step)?;
            let f32 = |t: Tensor<B, 1>| t.inner().cast(DType::F32);
            let host = Tensor::cat(
                vec![
                    f32(terms.total.clone()),
                    f32(terms.reward),
                    f32(terms.constraint),
                ],
                0,
            )
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| SrumError::Training(format!("reading the loss: {e:?}")))?;
            (host, Some(terms.total), None)
        };
        host.push(
            mean_reward
                .inner()
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| SrumError::Training(format!("reading the reward: {e:?}")))?[0],
        );
        #[cfg_attr(not(feature = "collective"), allow(unused_mut))]
        let mut local = None;
        #[cfg(feature = "collective")]
        let host = match &self.parallel {
            Some(dp) => {
                let bf = b as f32;
                let mut mine = host;
                mine.extend([bf, bf * bf]);
                if merge {
                    local = Some(mine.clone());
                    mine
                } else {
                    let mean = parallel::mean_host::<B::InnerBackend>(dp, &mine, &self.device)?;
                    check_group_batch(b, &mean)?;
                    mean
                }
            }
            None => host,
        };
        #[cfg(not(feature = "collective"))]
        let _ = merge;
        let values = [host[0], host[1], host[2]];
        let forward = |grads| Forward {
            values,
            mean_reward: host[3],
            grads,
            local: local.clone(),
            batch: b,
        };
        if !host[0].is_finite() && local.is_none() {
            return Ok(forward(None));
        }
        if let Some(total) = graph.take() {
            let mut grads = total.div_scalar(cfg.grad_accum_steps as f32).backward();
            own = Some(GradientsParams::from_params(
                &mut grads,
                model,
                &self.trainable,
            ));
        }
        Ok(forward(own))
    }

    /// Writes model, EMA, reference, optimizer state and counters to `dir`, atomically.
    /// Must be called between accumulation windows.
    ///
    /// In a data-parallel group only the root peer (rank 0) writes; the others return `Ok`
    /// without touching `dir`, since their weights are the same.
    pub fn save_checkpoint(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        if !self.is_root() {
            return Ok(());
        }
        if self.accumulated != 0 {
            return Err(SrumError::Checkpoint {
                path: dir.to_path_buf(),
                message: format!(
                    "{} of {} micro-batches accumulated: save after the optimizer update",
                    self.accumulated, self.config.grad_accum_steps
                ),
            });
        }
        let model = self.model();
        let ckpt = |message: String| SrumError::Checkpoint {
            path: dir.to_path_buf(),
            message,
        };
        let optim = <NamedMpkBytesRecorder<FullPrecisionSettings> as Recorder<B>>::record(
            &NamedMpkBytesRecorder::default(),
            self.optim.to_record(),
            (),
        )
        .map_err(|e| ckpt(format!("optimizer state: {e}")))?;
        let meta = serde_json::to_vec_pretty(&CheckpointMeta {
            format: 1,
            config: self.config.clone(),
            state: self.state,
        })
        .map_err(|e| ckpt(e.to_string()))?;
        let weights = weights_to_safetensors(&model.valid())?;
        let ema = self.ema.as_ref().map(weights_to_safetensors).transpose()?;
        let reference = self
            .reference
            .as_ref()
            .map(weights_to_safetensors)
            .transpose()?;
        let version = format!("step-{:09}", self.state.optimizer_steps);
        write_dir_atomic(dir, &version, |tmp| {
            let put = |name: &str, bytes: &[u8]| {
                let p = tmp.join(name);
                std::fs::write(&p, bytes).map_err(|e| SrumError::io(&p, e))?;
                std::fs::File::open(&p)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| SrumError::io(&p, e))
            };
            put(MODEL_FILE, &weights)?;
            if let Some(e) = &ema {
                put(EMA_FILE, e)?;
            }
            if let Some(r) = &reference {
                put(REFERENCE_FILE, r)?;
            }
            put(OPTIM_FILE, &optim)?;
            // Written last: its presence marks a complete checkpoint.
            put(META_FILE, &meta)
        })
    }

    /// Like [`Trainer::resume_with`], for a trainer built by [`Trainer::with_optimizer`]:
    /// `optimizer` builds the optimizer from the saved config, and its saved state is loaded
    /// into it. Not for [`Precision::Bf16`]: burn loads a record in the device's default
    /// dtype, and only AdamW's state is known well enough to be put back in f32.
    pub fn resume_with_optimizer(
        dir: impl AsRef<Path>,
        model: M,
        objective: O,
        optimizer: impl FnOnce(&TrainerConfig) -> Opt,
        device: &B::Device,
    ) -> Result<Self> {
        let trainer = Self::resume_inner(dir, model, objective, optimizer, |r| r, device)?;
        if trainer.config.precision != Precision::F32 {
            return Err(SrumError::config(
                "precision",
                "resuming bf16 training needs the trainer's own AdamW (Trainer::resume_with): \
                 another optimizer's state would come back in bf16",
            ));
        }
        Ok(trainer)
    }

    /// Restores a trainer; `fix_record` puts the optimizer's state, which burn loads in the
    /// device's default dtype, back in the dtype the update needs.
    fn resume_inner(
        dir: impl AsRef<Path>,
        model: M,
        objective: O,
        optimizer: impl FnOnce(&TrainerConfig) -> Opt,
        fix_record: impl FnOnce(Opt::Record) -> Opt::Record,
        device: &B::Device,
    ) -> Result<Self> {
        let dir = &latest_version(dir.as_ref())?;
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read(&p).map_err(|e| SrumError::io(&p, e))
        };
        let meta_path = dir.join(META_FILE);
        let meta: CheckpointMeta =
            serde_json::from_slice(&read(META_FILE)?).map_err(|e| SrumError::Checkpoint {
                path: meta_path.clone(),
                message: format!("unreadable trainer state: {e}"),
            })?;
        // Loaded in f32, so that the masters resume at full precision; the trainer casts what
        // it does not train back down.
        let model = precision::all_f32(model, meta.config.precision);
        let model = weights_from_safetensors(model, &read(MODEL_FILE)?, &dir.join(MODEL_FILE))?;
        let optim = optimizer(&meta.config);
        let mut trainer = Self::with_optimizer(model, objective, optim, meta.config, device)?;
        // Into the copy the trainer made, which is in the compute dtype.
        if let Some(r) = trainer.reference.take() {
            trainer.reference = Some(weights_from_safetensors(
                r,
                &read(REFERENCE_FILE)?,
                &dir.join(REFERENCE_FILE),
            )?);
        }
        if trainer.ema.is_some() {
            let e = trainer.model().valid();
            trainer.ema = Some(weights_from_safetensors(
                e,
                &read(EMA_FILE)?,
                &dir.join(EMA_FILE),
            )?);
        }
        let record = <NamedMpkBytesRecorder<FullPrecisionSettings> as Recorder<B>>::load(
            &NamedMpkBytesRecorder::default(),
            read(OPTIM_FILE)?,
            device,
        )
        .map_err(|e| SrumError::Checkpoint {
            path: dir.join(OPTIM_FILE),
            message: format!("optimizer state: {e}"),
        })?;
        trainer.optim = trainer.optim.load_record(fix_record(record));
        trainer.state = meta.state;
        Ok(trainer)
    }
}
