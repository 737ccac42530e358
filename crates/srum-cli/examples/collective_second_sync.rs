//! burn-collective 0.21.0: the second global all-reduce of a registration never returns.
//!
//! A self-contained reproduction for burn's maintainers (it uses only `burn` with the
//! `collective` feature, `burn-collective` with `orchestrator`, and `tokio`), and the
//! measurement of srum's workaround:
//!
//! ```text
//! cargo run --release -p srum-cli --features collective --example collective_second_sync
//! cargo run --release -p srum-cli --features collective --example collective_second_sync -- --fresh 200 164914
//! ```
//!
//! The parent starts an orchestrator and two nodes (child processes of this same binary, on
//! loopback), waits at most 20 s and reports what each node got through.
//!
//! - Without `--fresh`, each node registers once and calls `all_reduce` `OPS` times (default
//!   3). The first returns; the second never does, on every global strategy.
//!   `SyncService::sync` (`src/global/node/sync.rs`) ends with `syncing_peers.clear()` on the
//!   `to_vec()` copy it compared, so the service's own list keeps the first sync's peers: the
//!   second sync pushes this node again and the list can no longer equal the list of nodes.
//! - With `--fresh`, each all-reduce is a registration of its own (register, all-reduce,
//!   finish), which gives it a fresh `Node` and so a fresh `SyncService`. Consecutive
//!   registrations alternate between two orchestrators (ports P and P+1) and two data ports,
//!   so no node can register for operation k+1 on an orchestrator where another is still
//!   registered for operation k (the orchestrator numbers nodes by how many are registered).
//!   It prints the median time of each part: the finish takes about 40 ms on loopback (the
//!   orchestrator's `FinishAck` waits, by Nagle's algorithm on its response socket, for the
//!   delayed acknowledgement of its `Register` answer).
//!
//! `STRATEGY=ring|centralized|tree` picks the global all-reduce strategy (ring by default).
//! Under load (`--fresh 1000 6` with a few busy loops on the machine) `--fresh` also shows a
//! second problem: burn answers a registration before the node's new data server has bound
//! its port, and a peer that connects first panics with "Failed to connect to data server";
//! `PROBE=1` makes each node check its own port right after registering and print when it was
//! not listening yet. (srum's workaround waits for the port through a second local peer: see
//! `srum::train::DataParallel`.)

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use burn::backend::Flex;
use burn::collective::{
    AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation, all_reduce, finish_collective,
    register,
};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

type B = Flex;

/// `n` ports `p` with `p` and `p + 1` free, all different.
fn free_port_pairs(n: usize) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < u16::MAX
            && let Ok(b) = std::net::TcpListener::bind(("127.0.0.1", p + 1))
        {
            ports.push(p);
            held.extend([a, b]);
        }
    }
    ports
}

fn config(orchestrator: u16, data: u16, strategy: AllReduceStrategy) -> CollectiveConfig {
    CollectiveConfig::default()
        .with_num_devices(1)
        .with_num_nodes(2)
        .with_global_address(format!("ws://127.0.0.1:{orchestrator}").parse().unwrap())
        .with_node_address(format!("ws://127.0.0.1:{data}").parse().unwrap())
        .with_data_service_port(data)
        .with_global_all_reduce_strategy(strategy)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// One node: `ops` all-reduces of `len` floats, each `rank + 1`; the mean must be 1.5.
fn node(
    rank: usize,
    orchestrator: u16,
    data: u16,
    ops: usize,
    len: usize,
    fresh: bool,
    strategy: AllReduceStrategy,
) {
    let device = Default::default();
    let peer = PeerId::from(rank);
    let input = || {
        Tensor::<B, 1>::from_data(
            TensorData::new(vec![rank as f32 + 1.0; len], [len]),
            &device,
        )
        .into_primitive()
        .tensor()
    };
    let check = |t| {
        let v = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t))
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        assert!(v.iter().all(|&x| x == 1.5), "wrong all-reduce result");
    };
    let (mut reg, mut red, mut fin, mut total) = (vec![], vec![], vec![], vec![]);
    if !fresh {
        register::<B>(peer, device, config(orchestrator, data, strategy)).unwrap();
    }
    for k in 0..ops {
        let t0 = Instant::now();
        if fresh {
            let alt = (k % 2) as u16;
            register::<B>(
                peer,
                device,
                config(orchestrator + alt, data + alt, strategy),
            )
            .unwrap();
        }
        let t1 = Instant::now();
        if fresh && std::env::var("PROBE").is_ok() {
            let port = data + (k % 2) as u16;
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                std::thread::sleep(Duration::from_millis(500));
                let later = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
                eprintln!(
                    "node {rank}: PROBE op {} port {port} not listening after register; 500 ms later: {later}",
                    k + 1
                );
            }
        }
        check(all_reduce::<B>(peer, input(), ReduceOperation::Mean).unwrap());
        let t2 = Instant::now();
        if fresh {
            finish_collective::<B>(peer).unwrap();
        }
        let t3 = Instant::now();
        eprintln!("node {rank}: all-reduce {} of {len} floats returned", k + 1);
        reg.push((t1 - t0).as_secs_f64() * 1e3);
        red.push((t2 - t1).as_secs_f64() * 1e3);
        fin.push((t3 - t2).as_secs_f64() * 1e3);
        total.push((t3 - t0).as_secs_f64() * 1e3);
    }
    if !fresh {
        finish_collective::<B>(peer).unwrap();
    }
    // The first operation also waits for the other node to start: leave it out.
    let skip = usize::from(ops > 1);
    eprintln!(
        "node {rank}: median ms over ops 2..{ops}: register {:.2}, all-reduce {:.2}, finish {:.2}, total {:.2}",
        median(&mut reg[skip..].to_vec()),
        median(&mut red[skip..].to_vec()),
        median(&mut fin[skip..].to_vec()),
        median(&mut total[skip..].to_vec()),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let strategy = match std::env::var("STRATEGY").as_deref() {
        Ok("centralized") => AllReduceStrategy::Centralized,
        Ok("tree") => AllReduceStrategy::Tree(2),
        _ => AllReduceStrategy::Ring,
    };
    match args.first().map(String::as_str) {
        Some("orchestrator") => {
            let port: u16 = args[1].parse().unwrap();
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                tokio::join!(
                    burn::collective::start_global_orchestrator(port),
                    burn::collective::start_global_orchestrator(port + 1),
                )
            });
        }
        Some("node") => {
            let n = |i: usize| args[i].parse::<usize>().unwrap();
            node(
                n(1),
                n(2) as u16,
                n(3) as u16,
                n(4),
                n(5),
                args[6] == "fresh",
                strategy,
            );
        }
        _ => {
            let fresh = args.first().is_some_and(|a| a == "--fresh");
            let rest = &args[usize::from(fresh)..];
            let ops: usize = rest.first().map_or(3, |s| s.parse().unwrap());
            let len: usize = rest.get(1).map_or(1024, |s| s.parse().unwrap());
            let me = std::env::current_exe().unwrap();
            let ports = free_port_pairs(3);
            let orch = ports[0];
            let mut children: Vec<Child> = vec![
                Command::new(&me)
                    .args(["orchestrator", &orch.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            ];
            for rank in 0..2 {
                let data = ports[1 + rank];
                children.push(
                    Command::new(&me)
                        .args([
                            "node",
                            &rank.to_string(),
                            &orch.to_string(),
                            &data.to_string(),
                        ])
                        .args([ops.to_string(), len.to_string()])
                        .arg(if fresh { "fresh" } else { "once" })
                        .stdout(Stdio::null())
                        .spawn()
                        .unwrap(),
                );
            }
            let deadline = Instant::now() + Duration::from_secs(20 + ops as u64 / 10);
            let mut ok = true;
            for c in &mut children[1..] {
                loop {
                    if let Some(status) = c.try_wait().unwrap() {
                        ok &= status.success();
                        break;
                    }
                    if Instant::now() > deadline {
                        eprintln!("a node is still waiting at the deadline: killed (the hang)");
                        ok = false;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            for c in &mut children {
                let _ = c.kill();
                let _ = c.wait();
            }
            std::process::exit(if ok { 0 } else { 1 });
        }
    }
}
