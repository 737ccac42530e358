//! An exponential moving average of a model's weights, the copy diffusion and flow models are
//! sampled from (BAGEL ships its `ema.safetensors`).

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, backend::Backend};

use crate::error::{Result, SrumError};

/// `ema <- decay * ema + (1 - decay) * weights` after every update, per float parameter
/// (matched by [`ParamId`], so the averaged model is the trained one's [`valid`](burn::module::AutodiffModule::valid) copy
/// or a clone of it).
#[derive(Debug, Clone)]
pub struct Ema<M> {
    model: M,
    decay: f32,
    updates: u64,
}

impl<M> Ema<M> {
    /// Starts the average at `model`'s weights. `decay` must lie in `[0, 1)`.
    pub fn new(model: M, decay: f32) -> Result<Self> {
        if !(0.0..1.0).contains(&decay) {
            return Err(SrumError::config(
                "ema decay",
                format!("must be in [0, 1), got {decay}"),
            ));
        }
        Ok(Self {
            model,
            decay,
            updates: 0,
        })
    }

    /// The averaged model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The averaged model, taken out.
    pub fn into_model(self) -> M {
        self.model
    }

    /// Updates made so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }
}

impl<M> Ema<M> {
    /// Folds `weights` into the average. A parameter of `weights` the average lacks, or of
    /// another shape, is an error naming it; the average is then unchanged.
    pub fn update<B: Backend>(&mut self, weights: &M) -> Result<()>
    where
        M: Module<B>,
    {
        let mut current = Flat::<B>(HashMap::new());
        weights.visit(&mut current);
        let mut mix = Mix {
            current: &current.0,
            decay: self.decay,
            matched: 0,
            error: None,
        };
        let averaged = self.model.clone().map(&mut mix);
        if let Some(e) = mix.error {
            return Err(SrumError::Shape(format!("ema: {e}")));
        }
        if mix.matched != current.0.len() {
            return Err(SrumError::Shape(format!(
                "ema: the weights have {} float parameters, the average matched {}",
                current.0.len(),
                mix.matched
            )));
        }
        self.model = averaged;
        self.updates += 1;
        Ok(())
    }
}

/// Every float parameter, flattened, by id.
struct Flat<B: Backend>(HashMap<ParamId, (Vec<usize>, Tensor<B, 1>)>);

impl<B: Backend> ModuleVisitor<B> for Flat<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        let dims = t.dims().to_vec();
        self.0.insert(param.id, (dims, t.flatten::<1>(0, D - 1)));
    }
}

struct Mix<'a, B: Backend> {
    current: &'a HashMap<ParamId, (Vec<usize>, Tensor<B, 1>)>,
    decay: f32,
    matched: usize,
    error: Option<String>,
}

impl<B: Backend> ModuleMapper<B> for Mix<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some((dims, flat)) = self.current.get(&param.id) else {
            return param;
        };
        let (decay, flat) = (self.decay, flat.clone());
        let dims: [usize; D] = match dims.as_slice().try_into() {
            Ok(d) => d,
            Err(_) => {
                self.error = Some(format!("parameter {} changed rank", param.id));
                return param;
            }
        };
        if param.lazy_shape().dims::<D>() != dims {
            self.error = Some(format!(
                "parameter {}: average {:?}, weights {dims:?}",
                param.id,
                param.lazy_shape().dims::<D>()
            ));
            return param;
        }
        self.matched += 1;
        param.map(|avg| avg.mul_scalar(decay) + flat.reshape(dims).mul_scalar(1.0 - decay))
    }
}
