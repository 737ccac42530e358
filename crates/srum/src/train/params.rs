//! Parameter walks: named weights in and out of safetensors, gradient norms and scaling,
//! and the EMA update. Each walk is a burn `ModuleVisitor`/`ModuleMapper`, so it works for any
//! model without knowing its layout.

use std::collections::{HashMap, HashSet};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{
    DType, ElementConversion, Tensor, TensorData, backend::AutodiffBackend, backend::Backend,
};

/// One float parameter, flattened: its dotted module path, id, shape and values.
#[derive(Debug, Clone)]
pub struct NamedParam<B: Backend> {
    /// Dotted path of struct fields (`"blocks.0.attn.weight"`).
    pub path: String,
    /// The parameter's id (optimizer state is keyed by it).
    pub id: ParamId,
    /// Original shape.
    pub shape: Vec<usize>,
    /// Values, flattened row-major.
    pub flat: Tensor<B, 1>,
}

#[derive(Default)]
struct PathStack(Vec<String>);

impl PathStack {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn path(&self) -> String {
        self.0.join(".")
    }
}

struct Collector<B: Backend> {
    stack: PathStack,
    out: Vec<NamedParam<B>>,
}

impl<B: Backend> ModuleVisitor<B> for Collector<B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let n: usize = shape.iter().product();
        self.out.push(NamedParam {
            path: self.stack.path(),
            id: param.id,
            shape,
            flat: t.reshape([n]),
        });
    }
}

/// Every float parameter of `module` with its path, in visiting order.
pub fn collect_params<B: Backend, M: Module<B>>(module: &M) -> Vec<NamedParam<B>> {
    let mut c = Collector {
        stack: PathStack::default(),
        out: Vec::new(),
    };
    module.visit(&mut c);
    c.out
}

/// Replaces parameters by path with given values and ids; records what did not fit.
struct Loader<'a> {
    stack: PathStack,
    values: &'a HashMap<String, (ParamId, Vec<usize>, Vec<f32>)>,
    seen: HashSet<String>,
    errors: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for Loader<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.enter(name);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let path = self.stack.path();
        let (id, tensor, mapper) = param.consume();
        let Some((saved_id, shape, values)) = self.values.get(&path) else {
            self.errors
                .push(format!("tensor `{path}` missing from the checkpoint"));
            return Param::from_mapped_value(id, tensor, mapper);
        };
        self.seen.insert(path.clone());
        let dims = tensor.dims().to_vec();
        if *shape != dims {
            self.errors.push(format!(
                "tensor `{path}`: checkpoint shape {shape:?}, model shape {dims:?}"
            ));
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let require_grad = tensor.is_require_grad();
        let device = tensor.device();
        // In the dtype the module holds it in: f32 masters stay f32 under a bf16 default.
        let dtype = tensor.dtype();
        let loaded =
            Tensor::<B, D>::from_data(TensorData::new(values.clone(), dims), (&device, dtype))
                .set_require_grad(require_grad);
        Param::from_mapped_value(*saved_id, loaded, mapper)
    }
}

/// Loads `values` (path to id, shape, f32 values) into `module`, giving each parameter its
/// saved id. Every missing, extra or mis-shaped tensor is named in the error.
pub fn load_params<B: Backend, M: Module<B>>(
    module: M,
    values: &HashMap<String, (ParamId, Vec<usize>, Vec<f32>)>,
) -> Result<M, Vec<String>> {
    let mut loader = Loader {
        stack: PathStack::default(),
        values,
        seen: HashSet::new(),
        errors: Vec::new(),
    };
    let module = module.map(&mut loader);
    let mut errors = loader.errors;
    let mut extra: Vec<_> = values
        .keys()
        .filter(|k| !loader.seen.contains(*k))
        .collect();
    extra.sort();
    for k in extra {
        errors.push(format!(
            "checkpoint tensor `{k}` does not exist in the model"
        ));
    }
    if errors.is_empty() {
        Ok(module)
    } else {
        Err(errors)
    }
}

/// Sum of squares of the gradients present in `grads` (a device scalar, no host sync).
struct GradSquares<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradSquares<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            // In f32 whatever the gradient's dtype: a bf16 sum of squares would round.
            let s = super::in_dtype(g, DType::F32).powi_scalar(2).sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

/// The global L2 norm of all gradients in `grads` (as `torch.nn.utils.clip_grad_norm_`).
pub fn grad_norm<B: AutodiffBackend, M: Module<B>>(module: &M, grads: &GradientsParams) -> f32 {
    let mut v = GradSquares::<B> { grads, total: None };
    module.visit(&mut v);
    match v.total {
        Some(t) => t.into_scalar().elem::<f32>().sqrt(),
        None => 0.0,
    }
}

struct GradScale<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    scale: f32,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradScale<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.scale));
        }
    }
}

/// Multiplies every gradient in `grads` by `scale`.
pub fn scale_grads<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &mut GradientsParams,
    scale: f32,
) {
    let mut v = GradScale::<B> {
        grads,
        scale,
        _b: std::marker::PhantomData,
    };
    module.visit(&mut v);
}

struct EmaMapper<B: Backend> {
    current: HashMap<ParamId, Tensor<B, 1>>,
    decay: f32,
}

impl<B: Backend> ModuleMapper<B> for EmaMapper<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, ema, mapper) = param.consume();
        let ema = match self.current.remove(&id) {
            Some(cur) => {
                let dims = ema.dims();
                ema.mul_scalar(self.decay) + cur.reshape(dims).mul_scalar(1.0 - self.decay)
            }
            None => ema,
        };
        Param::from_mapped_value(id, ema, mapper)
    }
}

/// `ema <- decay * ema + (1 - decay) * current` for the parameters listed in `ids`.
pub fn ema_update<B: Backend, M: Module<B>>(
    ema: M,
    current: &M,
    ids: &HashSet<ParamId>,
    decay: f32,
) -> M {
    let current = collect_params(current)
        .into_iter()
        .filter(|p| ids.contains(&p.id))
        .map(|p| (p.id, p.flat))
        .collect();
    ema.map(&mut EmaMapper { current, decay })
}

struct Materialize;

impl<B: Backend> ModuleVisitor<B> for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

/// Runs burn's lazy parameter initialisers now. A lazily initialised module that is cloned
/// before its first use gives each clone *different* random weights; the trainer calls this
/// before taking its reference and EMA copies, and so should a user who clones a fresh model.
pub fn materialize<B: Backend, M: Module<B>>(module: &M) {
    module.visit(&mut Materialize);
}
