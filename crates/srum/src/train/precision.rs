//! Mixed-precision training: the forward and backward in bf16 on a working copy of the model,
//! the update in f32 on master copies of the trained parameters.
//!
//! burn 0.21 has no automatic mixed precision. Its tensors carry their dtype at run time and an
//! operation on two dtypes fails, so the working copy is bf16 throughout: its parameters are
//! cast, and the tensors a model makes for itself (positions, masks, time embeddings) take the
//! device's default float dtype, which must then be bf16.

use std::collections::HashSet;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::record::{AdaptorRecord, AdaptorRecordV1};
use burn::optim::{AdamW, AdamWState, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SrumError};

/// The precision of a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Weights, activations, gradients and optimizer state in f32.
    #[default]
    F32,
    /// The forward and backward in bf16 on a copy of the model whose weights are cast to bf16
    /// each step; the trained parameters' f32 master copies, their gradients once computed,
    /// the optimizer's moments, the loss and the reward map in f32. Parameters that are not
    /// trained are held in bf16 only. The device's default float dtype must be bf16
    /// ([`burn::tensor::backend::set_default_float_dtype`], before the model is built), so
    /// that the tensors a model makes for itself are bf16 too.
    Bf16,
}

impl Precision {
    /// The dtype the forward and backward run in.
    pub fn compute_dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }
}

/// `t` in `dtype` (itself, without a cast node, when it already is).
pub fn in_dtype<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype { t } else { t.cast(dtype) }
}

/// The default float dtype of `device`: what a model's own `from_data` and `zeros` make.
pub fn default_float_dtype<B: Backend>(device: &B::Device) -> DType {
    Tensor::<B, 1>::zeros([1], device).dtype()
}

/// Fails unless `device` makes tensors of the dtype `precision` computes in.
pub(crate) fn check_device<B: Backend>(precision: Precision, device: &B::Device) -> Result<()> {
    let want = precision.compute_dtype();
    let have = default_float_dtype::<B>(device);
    if want == have {
        return Ok(());
    }
    Err(SrumError::config(
        "precision",
        format!(
            "{precision:?} computes in {want:?} but the device makes {have:?} tensors by default; \
             call burn::tensor::backend::set_default_float_dtype(&device, {want:?}) before \
             building the model"
        ),
    ))
}

/// Casts a parameter to `dtype` as a new leaf with the same id, keeping whether it requires a
/// gradient.
fn recast<B: AutodiffBackend, const D: usize>(
    param: Param<Tensor<B, D>>,
    dtype: DType,
) -> Param<Tensor<B, D>> {
    let (id, tensor, mapper) = param.consume();
    if tensor.dtype() == dtype {
        return Param::from_mapped_value(id, tensor, mapper);
    }
    let grad = tensor.is_require_grad();
    let cast = Tensor::<B, D>::from_inner(tensor.inner().cast(dtype));
    let cast = if grad { cast.require_grad() } else { cast };
    Param::from_mapped_value(id, cast, mapper)
}

struct Masters<'a> {
    trained: &'a HashSet<ParamId>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Masters<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let dtype = if self.trained.contains(&param.id) {
            DType::F32
        } else {
            DType::BF16
        };
        recast(param, dtype)
    }
}

/// The model the trainer keeps under `precision`: with [`Precision::Bf16`], the `trained`
/// parameters become f32 masters and every other float parameter bf16; with
/// [`Precision::F32`], the model as it is.
pub(crate) fn to_masters<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: M,
    trained: &HashSet<ParamId>,
    precision: Precision,
) -> M {
    match precision {
        Precision::F32 => model,
        Precision::Bf16 => model.map(&mut Masters { trained }),
    }
}

struct CastAll(DType);

impl<B: AutodiffBackend> ModuleMapper<B> for CastAll {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        recast(param, self.0)
    }
}

/// The copy a step's forward and backward run on: every float parameter in the compute dtype,
/// the masters cast as fresh leaves with their ids (so its gradients address the masters).
/// `None` under [`Precision::F32`]: the step runs on the model itself.
pub(crate) fn working_copy<B: AutodiffBackend, M: AutodiffModule<B>>(
    masters: &M,
    precision: Precision,
) -> Option<M> {
    match precision {
        Precision::F32 => None,
        Precision::Bf16 => Some(masters.clone().map(&mut CastAll(DType::BF16))),
    }
}

/// Every float parameter of `model` in f32 unless `precision` is [`Precision::F32`] (then the
/// model as it is), for loading saved masters without rounding them.
pub(crate) fn all_f32<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: M,
    precision: Precision,
) -> M {
    match precision {
        Precision::F32 => model,
        Precision::Bf16 => model.map(&mut CastAll(DType::F32)),
    }
}

/// Moves every gradient of `grads` into a collection of its own, in `masters`' order.
struct Split {
    grads: GradientsParams,
    out: Vec<GradientsParams>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Split {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let mut one = GradientsParams::new();
            one.register(param.id, g);
            self.out.push(one);
        }
    }
}

struct ToF32<'a> {
    grads: &'a mut GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ToF32<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, in_dtype(g, DType::F32));
        }
    }
}

/// The optimizer's update of the masters from gradients in the compute dtype. Under
/// [`Precision::Bf16`] one parameter at a time: its gradient is cast to f32 just before its
/// update, so that at most one f32 gradient exists besides the bf16 ones.
pub(crate) fn step<B, M, O>(
    optim: &mut O,
    lr: f64,
    masters: M,
    grads: GradientsParams,
    precision: Precision,
) -> M
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    if precision == Precision::F32 {
        return optim.step(lr, masters, grads);
    }
    let mut split = Split {
        grads,
        out: Vec::new(),
    };
    masters.visit(&mut split);
    split.out.into_iter().fold(masters, |m, mut one| {
        m.visit(&mut ToF32 { grads: &mut one });
        optim.step(lr, m, one)
    })
}

fn state_to_f32<B: Backend, const D: usize>(mut s: AdamWState<B, D>) -> AdamWState<B, D> {
    let m = &mut s.momentum;
    m.moment_1 = m.moment_1.clone().cast(DType::F32);
    m.moment_2 = m.moment_2.clone().cast(DType::F32);
    m.max_moment_2 = m.max_moment_2.take().map(|t| t.cast(DType::F32));
    s
}

/// AdamW's moments in f32. burn builds a loaded record's tensors in the device's default
/// dtype, which under [`Precision::Bf16`] is bf16; the moments of f32 masters must stay f32.
pub(crate) fn adamw_record_to_f32<B, R>(record: R) -> R
where
    B: AutodiffBackend,
    R: IntoIterator<Item = (ParamId, AdaptorRecord<AdamW, B>)>
        + FromIterator<(ParamId, AdaptorRecord<AdamW, B>)>,
{
    use AdaptorRecordV1 as V;
    record
        .into_iter()
        .map(|(id, r)| {
            let AdaptorRecord::V1(v) = r;
            let v = match v {
                V::Rank0(s) => V::Rank0(state_to_f32(s)),
                V::Rank1(s) => V::Rank1(state_to_f32(s)),
                V::Rank2(s) => V::Rank2(state_to_f32(s)),
                V::Rank3(s) => V::Rank3(state_to_f32(s)),
                V::Rank4(s) => V::Rank4(state_to_f32(s)),
                V::Rank5(s) => V::Rank5(state_to_f32(s)),
                V::Rank6(s) => V::Rank6(state_to_f32(s)),
                V::Rank7(s) => V::Rank7(state_to_f32(s)),
                V::Rank8(s) => V::Rank8(state_to_f32(s)),
            };
            (id, AdaptorRecord::V1(v))
        })
        .collect()
}
