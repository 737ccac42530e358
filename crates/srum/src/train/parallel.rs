//! Data-parallel training through burn's collective engine (`burn-collective`).
//!
//! Every peer (a thread per device, or a process per node) holds a full copy of the model and
//! trains on its own shard of each global batch. Gradients are averaged across peers
//! (all-reduce, mean) before clipping and the AdamW update, so every peer applies the same
//! update and the weights stay identical. With equal shards this is the same update as one peer
//! training on the whole batch: the loss is a mean over samples, and the mean of the shard means
//! is the mean of the whole.
//!
//! Across nodes every exchange is a registration of its own, to work around burn-collective
//! 0.21.0: see [`DataParallel`].

use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burn::collective::{AllReduceStrategy, CollectiveError, ReduceOperation};
pub use burn::collective::{CollectiveConfig, PeerId};
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
/// Each update is one all-reduce of the gradients and the loss terms together (two when
/// accumulating: the micro-batches before the last exchange their loss terms alone).
///
/// # Across nodes, and the burn-collective 0.21.0 bug this works around
///
/// In burn-collective 0.21.0 a registration survives one global (multi-node) operation only:
/// every global all-reduce ends in `SyncService::sync` (`src/global/node/sync.rs`), which
/// clears a `to_vec()` copy of its list of synced peers instead of the list, so the second
/// sync of a registration waits forever. Across nodes ([`DataParallel::node`]) every
/// all-reduce is therefore a registration of its own: register, all-reduce, finish. Finishing
/// drops burn's `Node`, and with it the used `SyncService`; the next registration builds new
/// ones.
///
/// - Consecutive operations alternate between two orchestrators (ports `P` and `P + 1`, both
///   served by `srum orchestrator --port P`) and two data ports (`D` and `D + 1`). The
///   orchestrator numbers a node by how many nodes it holds registered, so a node registering
///   for operation `k + 1` while another is still registered for `k` would corrupt it. With
///   two, a node comes back to the orchestrator of operation `k` (for `k + 2`) only after
///   every node has joined `k + 1`, and so has finished `k`.
/// - burn answers the last node's registration at once, and the other nodes then connect to
///   its new data server, which burn starts in a task of its own that may not have bound the
///   port yet (under load it sometimes has not: "Failed to connect to data server"). So a node
///   registers through two local peers: a gate first, which makes burn start the servers, and
///   this peer once the data port accepts connections. The gate leaves before the all-reduce.
/// - The finish (an orchestrator round trip, about 40 ms on loopback: the orchestrator's answer
///   waits for a delayed acknowledgement) runs in the background, overlapped with the next
///   step's computation.
/// - Every operation across nodes is bounded by [`DataParallel::timeout`]: a node that died or
///   hangs makes the others fail with an error naming the operation, instead of waiting
///   forever.
///
/// [`Trainer::data_parallel`]: crate::train::Trainer::data_parallel
#[derive(Debug, Clone)]
pub struct DataParallel {
    /// This peer's shard of every global batch, in `0..world`.
    pub rank: usize,
    /// Peers in the whole group, all nodes together.
    pub world: usize,
    /// burn-collective settings: peers on this node, strategies, and, for several nodes, the
    /// orchestrator's address, this node's address and its tensor-data port (across nodes every
    /// other operation uses the second orchestrator and data port instead, and two local
    /// peers: see above).
    pub collective: CollectiveConfig,
    /// How long one collective operation may wait for the rest of the group (for its slowest
    /// peer's step, too) before it fails; `None` waits forever. [`DataParallel::node`] sets
    /// [`DataParallel::NODE_TIMEOUT`], [`DataParallel::local`] `None`.
    pub timeout: Option<Duration>,
    /// Across nodes: the two links that operations alternate between, and the operations so far.
    nodes: Option<Arc<Rounds>>,
}

/// The state of a node's operations across nodes, shared by the clones of its [`DataParallel`].
#[derive(Debug)]
struct Rounds {
    /// The two orchestrators' addresses.
    orchestrators: [burn_communication::Address; 2],
    /// This node's address on each data port.
    addresses: [burn_communication::Address; 2],
    /// The two data ports.
    ports: [u16; 2],
    state: Mutex<RoundState>,
}

/// Where the time of one operation across nodes went, in seconds, as this node saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExchangeTiming {
    /// Waiting for the previous operation's finish (it runs in the background).
    pub settle: f64,
    /// Registering for this operation: the data server's start, the orchestrator round trip
    /// and the wait for the other nodes (for the slowest one's step, too).
    pub register: f64,
    /// The all-reduce itself.
    pub all_reduce: f64,
}

#[derive(Debug, Default)]
struct RoundState {
    /// Every operation's timing so far.
    timings: Vec<ExchangeTiming>,
    /// Operations started so far.
    started: u64,
    /// The finish of the last operation, still running: its result comes on this channel.
    finishing: Option<Receiver<std::result::Result<(), CollectiveError>>>,
    /// Set when an operation failed: the group cannot be trusted any more.
    broken: Option<String>,
}

/// `ws://HOST:PORT` with `PORT + 1`.
fn next_port_address(field: &'static str, address: &str) -> Result<(String, u16)> {
    let bad = || {
        SrumError::config(
            field,
            format!("`{address}` should be ws://HOST:PORT with a port below 65535"),
        )
    };
    let (head, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.trim_end_matches('/').parse().map_err(|_| bad())?;
    let next = port.checked_add(1).ok_or_else(bad)?;
    Ok((format!("{head}:{next}"), port))
}

impl DataParallel {
    /// How long an operation across nodes waits by default: 10 minutes.
    pub const NODE_TIMEOUT: Duration = Duration::from_secs(600);

    /// Peer `rank` of `peers` in this process (one thread per device).
    pub fn local(rank: usize, peers: usize) -> Self {
        Self {
            rank,
            world: peers,
            collective: CollectiveConfig::default().with_num_devices(peers),
            timeout: None,
            nodes: None,
        }
    }

    /// The single peer of node `node_rank` in a group of `nodes` processes.
    ///
    /// `orchestrator` is the address `ws://HOST:P` of a running global orchestrator pair:
    /// `srum orchestrator --port P` serves burn's orchestrator on ports `P` and `P + 1` (see
    /// above for why two). `node_address` is where the other nodes reach
    /// this one (`ws://HOST:DATA_PORT`), and `data_port` the port this node serves tensors on;
    /// `DATA_PORT + 1` must be free too. Operations wait at most [`Self::NODE_TIMEOUT`]
    /// ([`Self::with_timeout`] changes it).
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
        let (orchestrator2, _) = next_port_address("orchestrator", orchestrator)?;
        let (node_address2, port) = next_port_address("node_address", node_address)?;
        if port != data_port {
            return Err(SrumError::config(
                "node_address",
                format!("`{node_address}` should end in the data port :{data_port}"),
            ));
        }
        let collective = CollectiveConfig::default()
            .with_num_devices(1)
            .with_global_all_reduce_strategy(AllReduceStrategy::Centralized)
            .with_num_nodes(nodes32)
            .with_global_address(parse("orchestrator", orchestrator)?)
            .with_node_address(parse("node_address", node_address)?)
            .with_data_service_port(data_port);
        Ok(Self {
            rank: node_rank,
            world: nodes,
            collective,
            timeout: Some(Self::NODE_TIMEOUT),
            nodes: Some(Arc::new(Rounds {
                orchestrators: [
                    parse("orchestrator", orchestrator)?,
                    parse("orchestrator", &orchestrator2)?,
                ],
                addresses: [
                    parse("node_address", node_address)?,
                    parse("node_address", &node_address2)?,
                ],
                ports: [data_port, data_port + 1],
                state: Mutex::default(),
            })),
        })
    }

    /// The same peer with every operation bounded by `timeout` (`None`: unbounded).
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// This peer's id in the collective: its rank, unique in the whole group.
    pub fn peer(&self) -> PeerId {
        PeerId::from(self.rank)
    }

    /// Where the time of each operation across nodes went so far (empty on one node).
    pub fn exchange_timings(&self) -> Vec<ExchangeTiming> {
        match &self.nodes {
            Some(r) => r
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .timings
                .clone(),
            None => Vec::new(),
        }
    }

    /// Whether this peer writes checkpoints and logs for the group.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }
}

fn collective_error(what: &str, e: CollectiveError) -> SrumError {
    let hint = match e {
        CollectiveError::LocalServerMissing => {
            " (burn-collective's engine stopped, after a panic printed above: typically a \
             connection to a node that died)"
        }
        _ => "",
    };
    SrumError::Training(format!("data-parallel {what}: {e:?}{hint}"))
}

/// Runs `f` on a thread of its own and waits for it at most `timeout`.
///
/// burn-collective's calls block until the whole group answers, with no limit of their own; a
/// call that times out is left blocked on its thread, and the error says so.
fn bounded<T: Send + 'static>(
    what: &str,
    timeout: Option<Duration>,
    f: impl FnOnce() -> std::result::Result<T, CollectiveError> + Send + 'static,
) -> Result<T> {
    let Some(limit) = timeout else {
        return f().map_err(|e| collective_error(what, e));
    };
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("srum-collective".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| SrumError::Training(format!("data-parallel {what}: {e}")))?;
    wait(what, limit, &rx)
}

fn wait<T>(
    what: &str,
    limit: Duration,
    rx: &Receiver<std::result::Result<T, CollectiveError>>,
) -> Result<T> {
    match rx.recv_timeout(limit) {
        Ok(r) => r.map_err(|e| collective_error(what, e)),
        Err(RecvTimeoutError::Timeout) => Err(SrumError::Training(format!(
            "data-parallel {what}: no answer from the group within {} s; a node died, hung or \
             is further behind than that (DataParallel::timeout, srum train --peer-timeout)",
            limit.as_secs_f64()
        ))),
        Err(RecvTimeoutError::Disconnected) => Err(SrumError::Training(format!(
            "data-parallel {what}: burn-collective's call panicked (see above); a node likely \
             died"
        ))),
    }
}

/// Joins the collective. Must come before any other collective call of this peer.
///
/// Across nodes there is nothing to join yet: every operation registers for itself.
pub(crate) fn register<B: Backend>(dp: &DataParallel, device: &B::Device) -> Result<()> {
    if dp.world == 0 || dp.rank >= dp.world {
        return Err(SrumError::config(
            "rank",
            format!("rank {} is not in 0..{}", dp.rank, dp.world),
        ));
    }
    if dp.nodes.is_some() {
        return Ok(());
    }
    let (peer, device, config) = (dp.peer(), device.clone(), dp.collective.clone());
    bounded("register", dp.timeout, move || {
        burn::collective::register::<B>(peer, device, config)
    })
}

/// Leaves the collective. Across nodes: waits for the finish of the last operation.
pub(crate) fn finish<B: Backend>(dp: &DataParallel) -> Result<()> {
    match &dp.nodes {
        None => {
            let peer = dp.peer();
            bounded("finish", dp.timeout, move || {
                burn::collective::finish_collective::<B>(peer)
            })
        }
        Some(rounds) => {
            let mut state = rounds.state.lock().unwrap_or_else(|e| e.into_inner());
            settle(dp, &mut state)
        }
    }
}

/// Waits for the finish of the previous operation across nodes, if it is still running.
fn settle(dp: &DataParallel, state: &mut RoundState) -> Result<()> {
    if let Some(broken) = &state.broken {
        return Err(SrumError::Training(format!(
            "data-parallel group unusable: {broken}"
        )));
    }
    let Some(rx) = state.finishing.take() else {
        return Ok(());
    };
    let what = format!("finish of operation {}", state.started);
    let r = match dp.timeout {
        Some(limit) => wait(&what, limit, &rx),
        None => rx
            .recv()
            .unwrap_or(Err(CollectiveError::LocalServerMissing))
            .map_err(|e| collective_error(&what, e)),
    };
    if let Err(e) = &r {
        state.broken = Some(e.to_string());
    }
    r
}

/// An all-reduce over the whole group.
///
/// On one node it is burn's all-reduce. Across nodes it is a registration of its own
/// (register, all-reduce, then finish in the background), alternating between the two links.
fn all_reduce<B: Backend>(
    dp: &DataParallel,
    what: &str,
    tensor: B::FloatTensorPrimitive,
    op: ReduceOperation,
) -> Result<B::FloatTensorPrimitive> {
    let peer = dp.peer();
    let Some(rounds) = &dp.nodes else {
        return bounded(what, dp.timeout, move || {
            burn::collective::all_reduce::<B>(peer, tensor, op)
        });
    };
    let mut state = rounds.state.lock().unwrap_or_else(|e| e.into_inner());
    let settling = std::time::Instant::now();
    settle(dp, &mut state)?;
    let settled = settling.elapsed().as_secs_f64();
    let k = state.started;
    state.started += 1;
    let what = format!("{what} (operation {} across nodes)", k + 1);
    let link = (k % 2) as usize;
    let port = rounds.ports[link];
    // Two local peers: this one and the gate (see `DataParallel`).
    let config = dp
        .collective
        .clone()
        .with_num_devices(2)
        .with_global_address(rounds.orchestrators[link].clone())
        .with_node_address(rounds.addresses[link].clone())
        .with_data_service_port(port);
    let gate = PeerId::from(dp.world + dp.rank);
    let world = dp.world;
    let (tx, rx) = channel();
    let (finished_tx, finished_rx) = channel();
    let spawned = std::thread::Builder::new()
        .name("srum-collective".into())
        .spawn(move || {
            let reduced = node_operation::<B>(peer, gate, config, port, world, tensor, op);
            let ok = reduced.is_ok();
            let _ = tx.send(reduced);
            if ok {
                let _ = finished_tx.send(burn::collective::finish_collective::<B>(peer));
            }
        });
    if let Err(e) = spawned {
        state.broken = Some(e.to_string());
        return Err(SrumError::Training(format!("data-parallel {what}: {e}")));
    }
    let r = match dp.timeout {
        Some(limit) => wait(&what, limit, &rx),
        None => rx
            .recv()
            .unwrap_or(Err(CollectiveError::LocalServerMissing))
            .map_err(|e| collective_error(&what, e)),
    };
    match r {
        Ok((reduced, register, all_reduce)) => {
            state.finishing = Some(finished_rx);
            state.timings.push(ExchangeTiming {
                settle: settled,
                register,
                all_reduce,
            });
            Ok(reduced)
        }
        Err(e) => {
            state.broken = Some(e.to_string());
            Err(e)
        }
    }
}

/// One operation across nodes, as a registration of its own: register, all-reduce (the caller
/// finishes).
///
/// burn answers the registration of the last node to register at once, and the other nodes
/// then connect to this node's new data server; but burn builds that server in a task of its
/// own that may not have bound its port yet (under load it sometimes has not: "Failed to
/// connect to data server"). So this node registers through two local peers: `gate` first,
/// which makes burn build the node's servers, and `peer` only once the data port accepts
/// connections, which registers the node with the orchestrator. `gate` then leaves, before the
/// all-reduce, so that `peer` is the node's only contributor; burn divides its mean by the
/// peers registered (two a node), so the mean is taken here from the sum.
///
/// Returns the result and the seconds spent registering and in the all-reduce.
fn node_operation<B: Backend>(
    peer: PeerId,
    gate: PeerId,
    config: CollectiveConfig,
    port: u16,
    world: usize,
    tensor: B::FloatTensorPrimitive,
    op: ReduceOperation,
) -> std::result::Result<(B::FloatTensorPrimitive, f64, f64), CollectiveError> {
    let t0 = std::time::Instant::now();
    let device = B::float_device(&tensor);
    let listening = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    // The server of two operations ago on this port has closed (it does at once, normally).
    let start = std::time::Instant::now();
    while listening() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(CollectiveError::Other(format!(
                "data port {port} is still taken 10 s after its last use (another program?)"
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let (gate_device, gate_config) = (device.clone(), config.clone());
    let (gate_tx, gate_rx) = channel();
    std::thread::Builder::new()
        .name("srum-collective-gate".into())
        .spawn(move || {
            let r = burn::collective::register::<B>(gate, gate_device, gate_config)
                .and_then(|()| burn::collective::finish_collective::<B>(gate));
            let _ = gate_tx.send(r);
        })
        .map_err(|e| CollectiveError::Other(e.to_string()))?;
    while !listening() {
        // The gate answers only once `peer` registers too: an answer now is an error.
        match gate_rx.try_recv() {
            Ok(r) => {
                r?;
                return Err(CollectiveError::Other("the gate peer left early".into()));
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                return Err(CollectiveError::LocalServerMissing);
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    burn::collective::register::<B>(peer, device, config)?;
    gate_rx
        .recv()
        .unwrap_or(Err(CollectiveError::LocalServerMissing))?;
    let t1 = std::time::Instant::now();
    let sum = burn::collective::all_reduce::<B>(peer, tensor, ReduceOperation::Sum)?;
    let reduced = match op {
        ReduceOperation::Sum => sum,
        ReduceOperation::Mean => B::float_div_scalar(sum, (world as f32).into()),
    };
    let t2 = std::time::Instant::now();
    Ok((reduced, (t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64()))
}

/// The mean over all peers of a few host values (loss terms and the like).
pub(crate) fn mean_host<B: Backend>(
    dp: &DataParallel,
    values: &[f32],
    device: &B::Device,
) -> Result<Vec<f32>> {
    // burn's ring all-reduce across nodes needs at least one element per node.
    let mut padded = values.to_vec();
    padded.resize(values.len().max(dp.world), 0.0);
    let n = padded.len();
    let t = Tensor::<B, 1>::from_data(TensorData::new(padded, [n]), device);
    let reduced = all_reduce::<B>(
        dp,
        "all-reduce",
        t.into_primitive().tensor(),
        ReduceOperation::Mean,
    )?;
    let mut out = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(reduced))
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| SrumError::Training(format!("reading an all-reduce result: {e:?}")))?;
    out.truncate(values.len());
    Ok(out)
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
/// message per step, as DDP's buckets do, instead of one per tensor), followed by `extra` host
/// values (the loss terms), whose means come back too.
pub(crate) fn all_reduce_grads<B: AutodiffBackend, M: Module<B>>(
    dp: &DataParallel,
    module: &M,
    mut grads: GradientsParams,
    extra: Option<&[f32]>,
    device: &B::Device,
) -> Result<(GradientsParams, Option<Vec<f32>>)> {
    let mut take = TakeGrads::<B> {
        grads: &mut grads,
        ids: Vec::new(),
        taken: Vec::new(),
    };
    module.visit(&mut take);
    let (present, mut taken) = (take.ids, take.taken);
    let n: usize = taken.iter().map(|t| t.dims()[0]).sum();
    let Some(extra) = extra else {
        if taken.is_empty() {
            return Ok((grads, None));
        }
        let flat = reduce_flat::<B>(dp, taken)?;
        put_grads::<B, M>(module, &mut grads, &present, flat);
        return Ok((grads, None));
    };
    // burn's ring all-reduce across nodes needs at least one element per node.
    let mut values = extra.to_vec();
    values.resize(extra.len().max(dp.world.saturating_sub(n)), 0.0);
    let len = values.len();
    taken.push(Tensor::from_data(TensorData::new(values, [len]), device));
    let flat = reduce_flat::<B>(dp, taken)?;
    let mut mean = flat
        .clone()
        .narrow(0, n, len)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| SrumError::Training(format!("reading an all-reduce result: {e:?}")))?;
    mean.truncate(extra.len());
    if n > 0 {
        put_grads::<B, M>(module, &mut grads, &present, flat.narrow(0, 0, n));
    }
    Ok((grads, Some(mean)))
}

/// The mean over the group of `parts` concatenated.
fn reduce_flat<B: AutodiffBackend>(
    dp: &DataParallel,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
) -> Result<Tensor<B::InnerBackend, 1>> {
    let reduced = all_reduce::<B::InnerBackend>(
        dp,
        "gradient all-reduce",
        Tensor::cat(parts, 0).into_primitive().tensor(),
        ReduceOperation::Mean,
    )?;
    Ok(Tensor::from_primitive(TensorPrimitive::Float(reduced)))
}

fn put_grads<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &mut GradientsParams,
    present: &[ParamId],
    flat: Tensor<B::InnerBackend, 1>,
) {
    let mut put = PutGrads::<B> {
        grads,
        present,
        flat,
        offset: 0,
        next: 0,
    };
    module.visit(&mut put);
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

/// Gives every peer the root peer's weights, and checks that every peer is at the same step.
///
/// burn-collective 0.21 has no broadcast across nodes ("Global broadcast unimplemented"), so
/// this is an all-reduce (sum) of all weights concatenated, to which only the root contributes
/// non-zeros: `x + 0 + ... + 0 = x` exactly, on one node or many. Behind the weights, each peer
/// writes its `counters` (optimizer steps, micro-steps) into a row of its own, in 16-bit
/// pieces, so that the sum hands every peer every peer's counters exactly; a peer that resumed
/// from another checkpoint than the root (or started fresh) makes every peer fail, naming it.
pub(crate) fn broadcast_module<B: AutodiffBackend, M: AutodiffModule<B>>(
    dp: &DataParallel,
    module: M,
    counters: [u64; 2],
    device: &B::Device,
) -> Result<M> {
    let flat: Vec<Tensor<B::InnerBackend, 1>> =
        crate::train::params::collect_params(&module.valid())
            .into_iter()
            .map(|p| p.flat)
            .collect();
    let n: usize = flat.iter().map(|t| t.dims()[0]).sum();
    let mut parts = if dp.is_root() || flat.is_empty() {
        flat
    } else {
        vec![Tensor::cat(flat, 0).zeros_like()]
    };
    const PIECES: usize = 4;
    let mut table = vec![0f32; dp.world * 2 * PIECES];
    for (c, &value) in counters.iter().enumerate() {
        for p in 0..PIECES {
            table[(dp.rank * 2 + c) * PIECES + p] = ((value >> (16 * p)) & 0xffff) as f32;
        }
    }
    let len = table.len();
    let device = device.clone();
    parts.push(Tensor::from_data(TensorData::new(table, [len]), &device));
    let summed = all_reduce::<B::InnerBackend>(
        dp,
        "weight broadcast",
        Tensor::cat(parts, 0).into_primitive().tensor(),
        ReduceOperation::Sum,
    )?;
    let summed = Tensor::<B::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(summed));
    let table = summed
        .clone()
        .narrow(0, n, len)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| SrumError::Training(format!("reading the weight broadcast: {e:?}")))?;
    let peer_counters = |r: usize| -> [u64; 2] {
        std::array::from_fn(|c| {
            (0..PIECES)
                .map(|p| (table[(r * 2 + c) * PIECES + p] as u64) << (16 * p))
                .sum()
        })
    };
    let root = peer_counters(0);
    if let Some(r) = (1..dp.world).find(|&r| peer_counters(r) != root) {
        let [steps, micro] = peer_counters(r);
        return Err(SrumError::Training(format!(
            "data-parallel peers are at different steps: rank {r} at optimizer step {steps} \
             (micro-step {micro}), rank 0 at {} ({}); every peer must start fresh or resume \
             from the same checkpoint (give each node a copy of rank 0's)",
            root[0], root[1]
        )));
    }
    if n == 0 {
        return Ok(module);
    }
    let flat = summed.narrow(0, 0, n);
    Ok(module.map(&mut Unflatten::<B> { flat, offset: 0 }))
}
