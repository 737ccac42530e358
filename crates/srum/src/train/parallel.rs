//! Data-parallel training through burn's collective engine (`burn-collective`).
//!
//! Every peer (a thread per device, or a process per node) holds a full copy of the model and
//! trains on its own shard of each global batch. Gradients are averaged across peers
//! (all-reduce, mean) before clipping and the AdamW update, so every peer applies the same
//! update and the weights stay identical. With equal shards this is the same update as one peer
//! training on the whole batch: the loss is a mean over samples, and the mean of the shard means
//! is the mean of the whole.

pub use burn::collective::{CollectiveConfig, PeerId};
use burn::collective::{CollectiveError, ReduceOperation};
use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{
    Tensor, TensorData, TensorPrimitive, backend::AutodiffBackend, backend::Backend,
};

use crate::error::{Result, SrumError};

/// A trainer's place in a data-parallel group. Give it to [`Trainer::data_parallel`].
///
/// The `rank` decides which slice of each global batch this peer trains on, and so which noise
/// it draws: peer `r` with a local batch of `b` samples draws the noise of global samples
/// `r*b .. (r+1)*b`, exactly what a single trainer with the whole batch would draw for them.
///
/// [`Trainer::data_parallel`]: crate::train::Trainer::data_parallel
#[derive(Debug, Clone)]
pub struct DataParallel {
    /// This peer's shard of every global batch, in `0..world`.
    pub rank: usize,
    /// Peers in the whole group, all nodes together.
    pub world: usize,
    /// burn-collective settings: peers on this node, strategies, and, for several nodes, the
    /// orchestrator's address, this node's address and its tensor-data port.
    pub collective: CollectiveConfig,
}

impl DataParallel {
    /// Peer `rank` of `peers` in this process (one thread per device).
    pub fn local(rank: usize, peers: usize) -> Self {
        Self {
            rank,
            world: peers,
            collective: CollectiveConfig::default().with_num_devices(peers),
        }
    }

    /// The single peer of node `node_rank` in a group of `nodes` processes.
    ///
    /// `orchestrator` is the address of a running global orchestrator
    /// (`srum orchestrator --port P` serves `ws://HOST:P`); `node_address` is where the other
    /// nodes reach this one (`ws://HOST:DATA_PORT`), and `data_port` the port this node serves
    /// tensors on.
    pub fn node(
        node_rank: usize,
        nodes: usize,
        orchestrator: &str,
        node_address: &str,
        data_port: u16,
    ) -> Result<Self> {
        if nodes == 0 || node_rank >= nodes {
            return Err(SrumError::config(
                "node_rank",
                format!("node rank {node_rank} is not in 0..{nodes}"),
            ));
        }
        let nodes32 = u32::try_from(nodes)
            .map_err(|_| SrumError::config("nodes", format!("{nodes} nodes is too many")))?;
        let parse = |field: &'static str, s: &str| {
            s.parse::<burn_communication::Address>()
                .map_err(|e| SrumError::config(field, format!("bad address `{s}`: {e}")))
        };
        let collective = CollectiveConfig::default()
            .with_num_devices(1)
            .with_num_nodes(nodes32)
            .with_global_address(parse("orchestrator", orchestrator)?)
            .with_node_address(parse("node_address", node_address)?)
            .with_data_service_port(data_port);
        Ok(Self {
            rank: node_rank,
            world: nodes,
            collective,
        })
    }

    /// This peer's id in the collective: its rank, unique in the whole group.
    pub fn peer(&self) -> PeerId {
        PeerId::from(self.rank)
    }

    /// Whether this peer writes checkpoints and logs for the group.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }
}

fn collective_error(what: &str, e: CollectiveError) -> SrumError {
    SrumError::Training(format!("data-parallel {what}: {e:?}"))
}

/// Joins the collective. Must come before any other collective call of this peer.
pub(crate) fn register<B: Backend>(dp: &DataParallel, device: &B::Device) -> Result<()> {
    if dp.world == 0 || dp.rank >= dp.world {
        return Err(SrumError::config(
            "rank",
            format!("rank {} is not in 0..{}", dp.rank, dp.world),
        ));
    }
    burn::collective::register::<B>(dp.peer(), device.clone(), dp.collective.clone())
        .map_err(|e| collective_error("register", e))
}

/// Leaves the collective.
pub(crate) fn finish<B: Backend>(peer: PeerId) -> Result<()> {
    burn::collective::finish_collective::<B>(peer).map_err(|e| collective_error("finish", e))
}

/// The mean over all peers of a few host values (loss terms and the like).
pub(crate) fn mean_host<B: Backend>(
    peer: PeerId,
    values: &[f32],
    device: &B::Device,
) -> Result<Vec<f32>> {
    let t = Tensor::<B, 1>::from_data(TensorData::new(values.to_vec(), [values.len()]), device);
    let reduced =
        burn::collective::all_reduce::<B>(peer, t.into_primitive().tensor(), ReduceOperation::Mean)
            .map_err(|e| collective_error("all-reduce", e))?;
    Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(reduced))
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| SrumError::Training(format!("reading an all-reduce result: {e:?}")))
}

/// Takes every gradient out of `grads`, in the module's visiting order (the same on every peer,
/// whatever the parameter ids), flattened.
struct TakeGrads<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    ids: Vec<ParamId>,
    taken: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for TakeGrads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let n = g.shape().num_elements();
            self.ids.push(param.id);
            self.taken.push(g.reshape([n]));
        }
    }
}

/// Puts the averaged gradients back, walking the module in the same order.
struct PutGrads<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    present: &'a [ParamId],
    flat: Tensor<B::InnerBackend, 1>,
    offset: usize,
    next: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for PutGrads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.present.get(self.next) != Some(&param.id) {
            return;
        }
        self.next += 1;
        let dims = param.val().dims();
        let n: usize = dims.iter().product();
        let g = self.flat.clone().narrow(0, self.offset, n).reshape(dims);
        self.offset += n;
        self.grads.register::<B::InnerBackend, D>(param.id, g);
    }
}

/// Averages `grads` over all peers with one all-reduce of all gradients concatenated (one
/// message per step, as DDP's buckets do, instead of one per tensor).
pub(crate) fn all_reduce_grads<B: AutodiffBackend, M: Module<B>>(
    peer: PeerId,
    module: &M,
    mut grads: GradientsParams,
) -> Result<GradientsParams> {
    let mut take = TakeGrads::<B> {
        grads: &mut grads,
        ids: Vec::new(),
        taken: Vec::new(),
    };
    module.visit(&mut take);
    let (present, taken) = (take.ids, take.taken);
    if taken.is_empty() {
        return Ok(grads);
    }
    let flat = Tensor::cat(taken, 0);
    let reduced = burn::collective::all_reduce::<B::InnerBackend>(
        peer,
        flat.into_primitive().tensor(),
        ReduceOperation::Mean,
    )
    .map_err(|e| collective_error("gradient all-reduce", e))?;
    let flat = Tensor::<B::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(reduced));
    let mut put = PutGrads::<B> {
        grads: &mut grads,
        present: &present,
        flat,
        offset: 0,
        next: 0,
    };
    module.visit(&mut put);
    Ok(grads)
}

/// Replaces every float parameter by the next slice of `flat`, in visiting order.
struct Unflatten<B: AutodiffBackend> {
    flat: Tensor<B::InnerBackend, 1>,
    offset: usize,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Unflatten<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let dims = tensor.dims();
        let n: usize = dims.iter().product();
        let inner = self.flat.clone().narrow(0, self.offset, n).reshape(dims);
        self.offset += n;
        let t = Tensor::<B, D>::from_inner(inner).set_require_grad(require_grad);
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Gives every peer the root peer's weights.
///
/// burn-collective 0.21 has no broadcast across nodes ("Global broadcast unimplemented"), so
/// this is an all-reduce (sum) of all weights concatenated, to which only the root contributes
/// non-zeros: `x + 0 + ... + 0 = x` exactly, on one node or many.
pub(crate) fn broadcast_module<B: AutodiffBackend, M: AutodiffModule<B>>(
    dp: &DataParallel,
    module: M,
) -> Result<M> {
    let flat: Vec<Tensor<B::InnerBackend, 1>> =
        crate::train::params::collect_params(&module.valid())
            .into_iter()
            .map(|p| p.flat)
            .collect();
    if flat.is_empty() {
        return Ok(module);
    }
    let mut flat = Tensor::cat(flat, 0);
    if !dp.is_root() {
        flat = flat.zeros_like();
    }
    let summed = burn::collective::all_reduce::<B::InnerBackend>(
        dp.peer(),
        flat.into_primitive().tensor(),
        ReduceOperation::Sum,
    )
    .map_err(|e| collective_error("weight broadcast", e))?;
    let flat = Tensor::<B::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(summed));
    Ok(module.map(&mut Unflatten::<B> { flat, offset: 0 }))
}
