//! One BAGEL-7B-MoT decoder layer at full width on the CPU (burn's flex backend): forward, and
//! forward + backward, over one packed training sample. The PyTorch side is
//! `scripts/bench_bagel_layer.py`; `scripts/bench_bagel_layer.sh` runs both.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p srum-bagel --example layer_bench -- \
//!     [--iters 3] [--json target/bench-bagel-layer/burn.json] [--glibc-defaults]
//! # on a GPU, in bf16 (or f32):
//! cargo run --release -p srum-bagel --features cuda --example layer_bench -- --backend cuda --dtype bf16
//! ```
//!
//! The sample is packed as BAGEL's training data packs a text-to-image sample: a text split of
//! 62 tokens (causal) and a noisy-latent split of `<|vision_start|>`, 32 x 32 = 1024 latent
//! tokens, `<|vision_end|>` (full attention inside, hidden from the rest): 1088 tokens, of which
//! 64 go through the understanding expert (text and the two markers) and 1024 through the
//! generation expert (`_moe_gen`). Weights are random (normal, std 0.02; norms one), the input
//! hidden states standard normal.
//!
//! What is timed: [`DecoderLayer::forward_train`] alone, given a [`Plan`] built beforehand
//! (the routing indices, RoPE tables and dense `-inf` mask that `Bagel.forward` also prepares
//! outside the layers). "forward" is the flex forward ending in a read-back of one scalar
//! (`sum`); "forward + backward" is the same forward on `Autodiff<Flex>`, `sum` of the output,
//! `backward()`, and reading back the input's gradient (every weight gradient is computed by
//! then). "denoising step" is one Euler step's work at the layer under text classifier-free
//! guidance: the 1026-token noisy-latent block after the prompt's cached keys and values, and
//! again after no context (see `denoise`). One warm-up run, then `--iters` timed runs; the
//! median is reported.
//!
//! Like the `srum` binary, it first calls [`srum::allocator::keep_freed_buffers`];
//! `--glibc-defaults` leaves glibc's allocator as it is.

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, ElementConversion, Tensor};
use srum_bagel::{BagelConfig, DecoderLayer, DecoderLayerConfig, PackedSequence, Plan};

#[path = "shared/proc_memory.rs"]
mod proc_memory;
use proc_memory::{mib, peak_rss};

const TEXT: usize = 62;
const SIDE: usize = 32;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn time<F: FnMut()>(iters: usize, mut f: F) -> (f64, Vec<f64>) {
    f(); // warm-up
    let runs: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    (median(runs.clone()), runs)
}

fn sequence(config: &BagelConfig) -> PackedSequence {
    let mut seq = PackedSequence::new();
    let ids: Vec<u32> = (0..TEXT as u32).map(|i| 1000 + i).collect();
    seq.push_text(&ids);
    seq.push_noisy_latents(
        (SIDE, SIDE),
        config.start_of_image_id,
        config.end_of_image_id,
        config.max_latent_size,
    )
    .expect("a 32 x 32 grid fits the latent table");
    seq.end_sample();
    seq
}

/// A random full-width layer, the plan of `seq` and standard-normal input hidden states.
fn setup<B: Backend>(
    config: &BagelConfig,
    seq: &PackedSequence,
) -> (DecoderLayer<B>, Plan<B>, Tensor<B, 2>) {
    let device = B::Device::default();
    let layer: DecoderLayer<B> = DecoderLayerConfig::new(config.clone()).init(&device);
    let plan = Plan::<B>::packed(seq, config, &device);
    let x = Tensor::<B, 2>::random(
        [seq.len(), config.hidden_size],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    (layer, plan, x)
}

fn forward<B: Backend>(
    config: &BagelConfig,
    seq: &PackedSequence,
    iters: usize,
) -> (f64, Vec<f64>) {
    let (layer, plan, x) = setup::<B>(config, seq);
    time(iters, || {
        let y = layer.forward_train(x.clone(), &plan);
        let s: f32 = y.sum().into_scalar().elem();
        assert!(s.is_finite());
    })
}

fn forward_backward<B: AutodiffBackend>(
    config: &BagelConfig,
    seq: &PackedSequence,
    iters: usize,
) -> (f64, Vec<f64>) {
    let (layer, plan, x) = setup::<B>(config, seq);
    time(iters, || {
        let x = x.clone().detach().require_grad();
        let loss = layer.forward_train(x.clone(), &plan).sum();
        let grads = loss.backward();
        let g = x.grad(&grads).expect("the input has a gradient");
        let s: f32 = g.abs().sum().into_scalar().elem();
        assert!(s.is_finite() && s > 0.0);
    })
}

/// One denoising step with text classifier-free guidance, at the layer: the noisy-latent block
/// (`<|vision_start|>`, 32 x 32 latents, `<|vision_end|>`) once after the prompt's cached keys
/// and values (the conditional velocity) and once after nothing (the unconditional one, the
/// official text-CFG context of a prompt without a system prompt), as `_forward_flow` runs its
/// two `forward_inference` calls per step. The prompt's keys and values are computed before
/// the clock starts, as `generate_image` caches the context before its first step.
fn denoise<B: Backend>(config: &BagelConfig, iters: usize) -> Timing {
    let device = B::Device::default();
    let layer: DecoderLayer<B> = DecoderLayerConfig::new(config.clone()).init(&device);
    let mut prompt = PackedSequence::new();
    let ids: Vec<u32> = (0..TEXT as u32).map(|i| 1000 + i).collect();
    prompt.push_text(&ids);
    prompt.end_sample();
    let normal = |n: usize| {
        Tensor::<B, 2>::random(
            [n, config.hidden_size],
            Distribution::Normal(0.0, 1.0),
            &device,
        )
    };
    let (_, prompt_kv) = layer
        .forward_inference(normal(TEXT), &Plan::packed(&prompt, config, &device), None)
        .expect("the prompt's plan");
    let mut block = PackedSequence::new();
    block
        .push_noisy_latents(
            (SIDE, SIDE),
            config.start_of_image_id,
            config.end_of_image_id,
            config.max_latent_size,
        )
        .expect("a 32 x 32 grid fits the latent table");
    let n = block.len();
    let plan = |prefix: usize| {
        Plan::<B>::block(
            &block.experts(),
            &vec![prefix as i64; n],
            prefix,
            false,
            config,
            &device,
        )
    };
    let (cond, uncond) = (plan(TEXT), plan(0));
    let x = normal(n);
    time(iters, || {
        let (c, _) = layer
            .forward_inference(x.clone(), &cond, Some(&prompt_kv))
            .expect("the conditional block after the prompt");
        let (u, _) = layer
            .forward_inference(x.clone(), &uncond, None)
            .expect("the unconditional block");
        let s: f32 = (c.sum() + u.sum()).into_scalar().elem();
        assert!(s.is_finite());
    })
}

/// The three measurements on one backend: `B` without autodiff, `A` with it.
fn all<B: Backend, A: AutodiffBackend>(
    config: &BagelConfig,
    seq: &PackedSequence,
    iters: usize,
) -> (Timing, Timing, Timing) {
    (
        forward::<B>(config, seq, iters),
        forward_backward::<A>(config, seq, iters),
        denoise::<B>(config, iters),
    )
}

/// A median in seconds and the runs it is the median of.
type Timing = (f64, Vec<f64>);

/// Forward, forward + backward and denoising-step medians (with their runs) on the backend and
/// float type the flags name; a backend this build lacks is an error naming the feature to enable.
fn run(
    backend: &str,
    dtype: &str,
    config: &BagelConfig,
    seq: &PackedSequence,
    iters: usize,
) -> Result<(Timing, Timing, Timing), String> {
    match (backend, dtype) {
        ("flex", "f32") => Ok(all::<Flex, Autodiff<Flex>>(config, seq, iters)),
        #[cfg(feature = "cuda")]
        ("cuda", "f32") => Ok(all::<
            burn::backend::Cuda<f32>,
            Autodiff<burn::backend::Cuda<f32>>,
        >(config, seq, iters)),
        #[cfg(feature = "cuda")]
        ("cuda", "bf16") => Ok(all::<
            burn::backend::Cuda<half::bf16>,
            Autodiff<burn::backend::Cuda<half::bf16>>,
        >(config, seq, iters)),
        #[cfg(feature = "wgpu")]
        ("wgpu", "f32") => Ok(all::<burn::backend::Wgpu, Autodiff<burn::backend::Wgpu>>(
            config, seq, iters,
        )),
        #[cfg(feature = "ndarray")]
        ("ndarray", "f32") => Ok(all::<
            burn::backend::NdArray<f32>,
            Autodiff<burn::backend::NdArray<f32>>,
        >(config, seq, iters)),
        #[cfg(feature = "candle")]
        #[allow(deprecated)]
        ("candle", "f32") => Ok(all::<
            burn::backend::Candle<f32>,
            Autodiff<burn::backend::Candle<f32>>,
        >(config, seq, iters)),
        #[cfg(feature = "tch")]
        ("tch", "f32") => Ok(all::<
            burn::backend::LibTorch<f32>,
            Autodiff<burn::backend::LibTorch<f32>>,
        >(config, seq, iters)),
        (b, d) => Err(format!(
            "--backend {b} --dtype {d} is not in this build: flex runs f32; cuda (f32, bf16), \
             wgpu, ndarray, candle and tch (f32) need `--features cuda|wgpu|ndarray|candle|tch`"
        )),
    }
}

/// The layer's largest products alone, on flex: the generation expert's MLP up (or gate)
/// projection of the 1024 latent tokens, `[1024, 3584] x [3584, 18944]`, and its two backward
/// products (`--matmul`, after `--iters`): what the layer's time comes down to. The PyTorch side:
/// `torch.randn(1024, 3584) @ torch.randn(3584, 18944)` and so on, on the same threads.
fn matmul_only(iters: usize) {
    let device = Default::default();
    let a = Tensor::<Flex, 2>::random([1024, 3584], Distribution::Normal(0.0, 1.0), &device);
    let b = Tensor::<Flex, 2>::random([3584, 18944], Distribution::Normal(0.0, 1.0), &device);
    let g = Tensor::<Flex, 2>::random([1024, 18944], Distribution::Normal(0.0, 1.0), &device);
    let flops = 2.0 * 1024.0 * 3584.0 * 18944.0;
    let report = |what: &str, f: &dyn Fn() -> Tensor<Flex, 2>| {
        let (t, runs) = time(iters, || {
            let s: f32 = f().slice([0..1, 0..1]).into_scalar().elem();
            assert!(s.is_finite());
        });
        println!(
            "flex {what}: median {t:.3} s ({:.0} GFLOP/s), runs {runs:.3?}",
            flops / t / 1e9
        );
    };
    report("x W [1024,3584]x[3584,18944]", &|| {
        a.clone().matmul(b.clone())
    });
    // The backward's two products of a Linear, with the transposed views burn passes them.
    report("g W^T (input gradient)", &|| {
        g.clone().matmul(b.clone().transpose())
    });
    report("x^T g (weight gradient)", &|| {
        a.clone().transpose().matmul(g.clone())
    });
    // The same product with x^T laid out in memory beforehand (the copy is not timed).
    let a_t = Tensor::<Flex, 2>::from_data(a.clone().transpose().into_data(), &device);
    report("x^T g, x^T contiguous", &|| a_t.clone().matmul(g.clone()));
}

fn main() {
    let mut iters = 3usize;
    let mut json: Option<String> = None;
    let (mut backend, mut dtype) = ("flex".to_string(), "f32".to_string());
    let mut glibc_defaults = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iters" => iters = args.next().and_then(|v| v.parse().ok()).expect("--iters N"),
            "--json" => json = args.next(),
            "--backend" => backend = args.next().expect("--backend flex|cuda|wgpu"),
            "--dtype" => dtype = args.next().expect("--dtype f32|bf16"),
            "--glibc-defaults" => glibc_defaults = true,
            "--matmul" => {
                matmul_only(iters);
                return;
            }
            other => panic!("unknown argument {other}"),
        }
    }
    // As the `srum` binary does; `--glibc-defaults` measures without it.
    let kept = !glibc_defaults && srum::allocator::keep_freed_buffers();
    // BAGEL-7B-MoT's backbone sizes (the defaults); one layer.
    let config = BagelConfig::new().with_num_hidden_layers(1);
    let seq = sequence(&config);
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    eprintln!(
        "burn {backend} {dtype}: 1 MoT layer, hidden {} intermediate {} heads {}/{} tokens {} threads {threads} iters {iters}",
        config.hidden_size,
        config.intermediate_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        seq.len()
    );
    let ((fwd, fwd_runs), (fb, fb_runs), (dn, dn_runs)) =
        match run(&backend, &dtype, &config, &seq, iters) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        };
    eprintln!("forward: median {fwd:.3} s, runs {fwd_runs:.3?}");
    eprintln!("forward+backward: median {fb:.3} s, runs {fb_runs:.3?}");
    eprintln!("denoising step (cond + uncond): median {dn:.3} s, runs {dn_runs:.3?}");
    let out = serde_json::json!({
        "side": format!("burn {backend} {dtype}"),
        "tokens": seq.len(),
        "threads": threads,
        "iters": iters,
        "freed_buffers_kept": kept,
        "forward_s": fwd,
        "forward_runs_s": fwd_runs,
        "forward_backward_s": fb,
        "forward_backward_runs_s": fb_runs,
        "denoise_s": dn,
        "denoise_runs_s": dn_runs,
        "peak_rss_mib": mib(peak_rss()),
    });
    println!("{out}");
    if let Some(path) = json {
        std::fs::write(&path, out.to_string()).expect("write --json");
    }
}
