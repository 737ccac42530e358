//! Our side of the side-by-side comparison with the PyTorch peer (`benches/reference/`), run by
//! `scripts/bench_vs_pytorch.sh` and `scripts/gpu_check.sh`.
//!
//! `peer --model DIR --json OUT [--dump FILE] [--iters K] [--device cpu|cuda|ndarray|candle]
//! [--only OP,OP]` (`--only`: just those operations, for profiling one or for
//! `scripts/bench_ref_rounds.sh`), or `peer --probe`: each basic op on this build's GPU backend
//! (CPU without one) against flex. Build it with `--features flex` for the reference model's
//! flex kernels, as the `srum` binary has them.
//!
//! Writes the timings of the operations the peer also times (same JSON schema as
//! `benches/reference/peer.py`) and, with `--dump`, one forward pass's inputs and outputs so the
//! peer can prove it computes the same thing. Threads: `RAYON_NUM_THREADS`, set by the script.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};
use srum::flow::{EulerSampler, EulerSamplerConfig, generate};
use srum::image::PixelImage;
use srum::model::{FlowGenerator, ImageCodec, ImageSize, LatentGrid};
use srum::reward::{BBox, Judgement, RewardComposer, RewardComposerConfig, ScoredRegion};

mod common;
use srum::train::{Constraint, SrumBatch, Trainer, TrainerConfig};
use srum_world::tiny::TinyUmm;
use srum_world::world::{Split, split_prompts};

struct Args {
    model: PathBuf,
    json: PathBuf,
    dump: Option<PathBuf>,
    iters: usize,
    device: String,
    /// Only these operations (`--only a,b`), for profiling one of them; all when absent.
    only: Option<Vec<String>>,
}

/// The operations `--only` can name.
const ONLY: [&str; 4] = [
    "train_step_anchor",
    "train_step_reference",
    "sample",
    "understand",
];

fn parse_args() -> Result<Args, String> {
    let mut kv: HashMap<String, String> = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        // cargo bench passes `--bench`; it takes no value.
        if k == "--bench" {
            continue;
        }
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        kv.insert(k.trim_start_matches("--").to_string(), v);
    }
    let need = |k: &str| kv.get(k).cloned().ok_or(format!("--{k} is required"));
    Ok(Args {
        model: need("model")?.into(),
        json: need("json")?.into(),
        dump: kv.get("dump").map(PathBuf::from),
        iters: match kv.get("iters") {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--iters {v}: not a number"))?,
            None => 5,
        },
        device: kv.get("device").cloned().unwrap_or_else(|| "cpu".into()),
        only: match kv.get("only") {
            None => None,
            Some(v) => {
                let ops: Vec<String> = v.split(',').map(str::to_string).collect();
                if let Some(bad) = ops.iter().find(|o| !ONLY.contains(&o.as_str())) {
                    return Err(format!("--only {bad}: not one of {}", ONLY.join(", ")));
                }
                Some(ops)
            }
        },
    })
}

/// Median seconds of `iters` runs after one warm-up run.
fn time<F: FnMut() -> Result<(), String>>(iters: usize, mut f: F) -> Result<f64, String> {
    f()?;
    let mut v = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let s = Instant::now();
        f()?;
        v.push(s.elapsed().as_secs_f64());
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

fn normal<B: Backend>(rng: &mut ChaCha8Rng, shape: [usize; 3], device: &B::Device) -> Tensor<B, 3> {
    srum::flow::host_normal::<B, _, 3>(rng, shape, device)
}

fn host(t: Tensor<impl Backend, 3>) -> Result<Vec<f32>, String> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| format!("{e:?}"))
}

fn run<B: AutodiffBackend>(a: &Args, device: &B::Device, name: &str) -> Result<(), String> {
    let (model, config) = TinyUmm::<B>::load_dir(&a.model, device).map_err(|e| e.to_string())?;
    let size = config.image_size;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let prompts: Vec<String> = split_prompts(Split::Train, 0)
        .iter()
        .map(|p| p.text())
        .collect();
    let pick = |rng: &mut ChaCha8Rng, n: usize| -> Vec<String> {
        (0..n)
            .map(|_| prompts[rng.random_range(0..prompts.len())].clone())
            .collect()
    };
    let n = model.latent_grid(ImageSize::square(size)).tokens();
    let (n, c) = (n, model.latent_channels());
    let inner = model.valid();
    let inner_device = device.clone();

    if let Some(path) = &a.dump {
        let b = 8;
        let ps = pick(&mut rng, b);
        let x_t = normal::<B::InnerBackend>(&mut rng, [b, n, c], &inner_device);
        let t_host: Vec<f32> = (0..b).map(|_| rng.random_range(0.0..1.0)).collect();
        let t = Tensor::from_data(TensorData::new(t_host.clone(), [b]), &inner_device);
        let text = inner.text_batch(&ps).map_err(|e| e.to_string())?;
        let scenes: Vec<PixelImage> = ps
            .iter()
            .map(|p| {
                srum_world::world::PromptSpec::parse(p)
                    .map(|s| s.sample_scene(&mut rng, size).render(size))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        let images = PixelImage::to_tensor::<B::InnerBackend>(&scenes, &inner_device)
            .map_err(|e| e.to_string())?;
        let v = inner.velocity(x_t.clone(), t, &text);
        let logits = inner
            .understand(images.clone(), &text)
            .map_err(|e| e.to_string())?;
        let f32s = |t: TensorData| {
            t.convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| format!("{e:?}"))
        };
        let ids: Vec<i64> = text
            .ids
            .clone()
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .map_err(|e| format!("{e:?}"))?;
        // The padding mask, rebuilt from the ids (slot 0 is `[CLS]`, `[PAD]` is id 0): bool
        // tensors read back differently per backend (u8 on CUDA).
        let m = ids.len() / b;
        let pad: Vec<u8> = ids
            .chunks(m)
            .flat_map(|row| std::iter::once(0u8).chain(row.iter().map(|&t| u8::from(t == 0))))
            .collect();
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
            ("x_t", Dtype::F32, vec![b, n, c], bytes(&host(x_t)?)),
            ("t", Dtype::F32, vec![b], bytes(&t_host)),
            (
                "ids",
                Dtype::I64,
                vec![b, m],
                ids.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            ("pad", Dtype::U8, vec![b, m + 1], pad),
            (
                "images",
                Dtype::F32,
                vec![b, 3, size, size],
                bytes(&f32s(images.into_data())?),
            ),
            ("velocity", Dtype::F32, vec![b, n, c], bytes(&host(v)?)),
            (
                "logits",
                Dtype::F32,
                vec![b, 2],
                bytes(&f32s(logits.into_data())?),
            ),
        ];
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(k, d, s, data)| {
                TensorView::new(*d, s.clone(), data)
                    .map(|v| (k.to_string(), v))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        safetensors::serialize_to_file(views, None, path).map_err(|e| e.to_string())?;
    }

    let mut ops = serde_json::Map::new();
    let mut record = |op: &str, seconds: f64, items: usize| {
        eprintln!("{op}: {seconds:.4} s ({items} items)");
        ops.insert(
            op.to_string(),
            serde_json::json!({"seconds": seconds, "items": items}),
        );
    };

    let want = |op: &str| a.only.as_ref().is_none_or(|o| o.iter().any(|x| x == op));
    for (op, constraint) in [
        ("train_step_anchor", Constraint::Anchor),
        ("train_step_reference", Constraint::ReferenceModel),
    ] {
        if !want(op) {
            continue;
        }
        let b = 32;
        let s = step_seconds(&model, size, b, constraint, a.iters, device)?;
        record(op, s, b);
    }

    let sampler = EulerSampler::new(EulerSamplerConfig::default());
    let ps = pick(&mut rng, 64);
    if want("sample") {
        let s = time(a.iters.min(3), || {
            let mut r = ChaCha8Rng::seed_from_u64(1);
            generate(
                &inner,
                &ps,
                ImageSize::square(size),
                &sampler,
                64,
                &mut r,
                &inner_device,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        })?;
        record("sample", s, 64);
    }

    if want("understand") {
        let imgs: Vec<PixelImage> = (0..64)
            .map(|_| PixelImage::filled(size, size, [1.0; 3]))
            .collect();
        let images = PixelImage::to_tensor::<B::InnerBackend>(&imgs, &inner_device)
            .map_err(|e| e.to_string())?;
        let text = inner.text_batch(&ps).map_err(|e| e.to_string())?;
        let s = time(a.iters, || {
            let l = inner
                .understand(images.clone(), &text)
                .map_err(|e| e.to_string())?;
            l.into_data();
            Ok(())
        })?;
        record("understand", s, 64);
    }

    if a.only.is_some() {
        return write_ops(a, name, ops);
    }
    let composer = RewardComposer::new(RewardComposerConfig::default());
    for side in [512usize, 1024] {
        let judgement = common::five_box_judgement(side);
        let s = time(a.iters * 4, || {
            let (map, _) = composer.compose(&judgement, ImageSize::new(side, side));
            std::hint::black_box(map);
            Ok(())
        })?;
        record(&format!("reward_map_{side}"), s, 1);
        // What training consumes: the map at the latent grid (BAGEL: 16 pixels per token).
        let grid = side / 16;
        let s = time(a.iters * 4, || {
            let (map, _) = composer.compose_latent(
                &judgement,
                ImageSize::new(side, side),
                LatentGrid::new(grid, grid),
            );
            std::hint::black_box(map);
            Ok(())
        })?;
        record(&format!("reward_map_latent_{side}"), s, 1);
    }

    write_ops(a, name, ops)
}

/// Writes the timings to `--json`.
fn write_ops(
    a: &Args,
    name: &str,
    ops: serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    let out = serde_json::json!({
        "implementation": "srum (burn 0.21)",
        "device": name,
        "threads": std::env::var("RAYON_NUM_THREADS").ok(),
        "ops": ops,
    });
    std::fs::write(
        &a.json,
        serde_json::to_string_pretty(&out).unwrap_or_default(),
    )
    .map_err(|e| format!("{}: {e}", a.json.display()))
}

/// Each basic op of the model on `device`, on fixed host data: matmul, batched matmul, softmax,
/// GELU, a LayerNorm-style normalisation, sum. Compared with flex to find which op loses
/// precision on a backend.
fn probe_ops<B: Backend>(device: &B::Device) -> Result<Vec<(&'static str, Vec<f32>)>, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let a = normal::<B>(&mut rng, [1, 512, 64], device).reshape([512, 64]);
    let w = normal::<B>(&mut rng, [1, 64, 192], device).reshape([64, 192]);
    let q = normal::<B>(&mut rng, [32, 81, 16], device);
    let k = normal::<B>(&mut rng, [32, 81, 16], device);
    let x = normal::<B>(&mut rng, [8, 81, 64], device);
    let host2 = |t: Tensor<B, 2>| host(t.unsqueeze::<3>());
    Ok(vec![
        ("matmul [512,64]x[64,192]", host2(a.clone().matmul(w))?),
        ("batched matmul q k^T", host(q.matmul(k.swap_dims(1, 2)))?),
        (
            "softmax",
            host(burn::tensor::activation::softmax(x.clone(), 2))?,
        ),
        ("gelu", host(burn::tensor::activation::gelu(x.clone()))?),
        (
            "normalise (x - mean) / sqrt(var + 1e-5)",
            host({
                let (var, mean) = x.clone().var_mean_bias(2);
                (x.clone() - mean) / (var + 1e-5).sqrt()
            })?,
        ),
        ("sum over 64", host(x.sum_dim(2))?),
    ])
}

fn probe<B: Backend>(device: &B::Device) -> Result<(), String> {
    let ours = probe_ops::<B>(device)?;
    let cpu = probe_ops::<burn::backend::Flex>(&Default::default())?;
    for ((name, a), (_, b)) in ours.iter().zip(&cpu) {
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
        println!("{name}: max abs diff vs flex {diff:.2e} (max |value| {scale:.2e})");
    }
    Ok(())
}

/// Median seconds of one `Trainer::step` (published recipe with `constraint`) on a batch of
/// `b` random latents with random rewards.
fn step_seconds<B: AutodiffBackend>(
    model: &TinyUmm<B>,
    size: usize,
    b: usize,
    constraint: Constraint,
    iters: usize,
    device: &B::Device,
) -> Result<f64, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let LatentGrid { rows: h, cols: w } = model.latent_grid(ImageSize::square(size));
    let (n, c) = (h * w, model.latent_channels());
    let prompts: Vec<String> = split_prompts(Split::Train, 0)
        .iter()
        .take(b)
        .map(|p| p.text())
        .collect();
    let cfg = TrainerConfig {
        constraint,
        ..TrainerConfig::default()
    };
    let mut trainer = Trainer::new(model.clone(), cfg, device).map_err(|e| e.to_string())?;
    let reward: Vec<f32> = (0..b * n).map(|_| rng.random_range(0.0..1.0)).collect();
    let batch = SrumBatch {
        prompts: prompts.iter().cycle().take(b).cloned().collect(),
        latents: normal::<B>(&mut rng, [b, n, c], device),
        anchor: None,
        reward: Tensor::from_data(TensorData::new(reward, [b, n]), device),
    };
    time(iters, || {
        trainer
            .step(batch.clone())
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}

/// How time scales with batch size, image size and number of reward regions, and the model's
/// two matmul shapes on their own: markdown tables on stdout (docs/PERFORMANCE.md's cost model).
fn scaling(model_dir: &std::path::Path, iters: usize) -> Result<(), String> {
    type Ad = Autodiff<burn::backend::Flex>;
    let device = Default::default();
    let (model, config) = TinyUmm::<Ad>::load_dir(model_dir, &device).map_err(|e| e.to_string())?;
    let size = config.image_size;
    println!("| batch | s / train step | ms / sample |\n|---:|---:|---:|");
    for b in [8usize, 16, 32, 64] {
        let s = step_seconds(&model, size, b, Constraint::Anchor, iters, &device)?;
        println!("| {b} | {s:.4} | {:.2} |", 1e3 * s / b as f64);
    }
    println!("\n| image side | latent tokens | s / train step (batch 32) |\n|---:|---:|---:|");
    for side in [32usize, 64] {
        let m = if side == size {
            model.clone()
        } else {
            let cfg = srum_world::tiny::TinyUmmConfig {
                image_size: side,
                ..config.clone()
            };
            cfg.init::<Ad>(model.tokenizer().clone(), &device)
        };
        let LatentGrid { rows: h, cols: w } = m.latent_grid(ImageSize::square(side));
        let s = step_seconds(&m, side, 32, Constraint::Anchor, iters, &device)?;
        println!("| {side} | {} | {s:.4} |", h * w);
    }
    println!("\n| regions | dense 512x512 (µs) | latent 32x32 from 512 (µs) |\n|---:|---:|---:|");
    let composer = RewardComposer::new(RewardComposerConfig::default());
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for k in [1usize, 5, 20, 50] {
        let j = Judgement {
            global: Some(0.3),
            regions: (0..k)
                .map(|i| {
                    let (x, y) = (rng.random_range(0.0..400.0), rng.random_range(0.0..400.0));
                    ScoredRegion {
                        bbox: BBox::new(x, y, x + rng.random_range(20.0..200.0), y + 100.0),
                        object: format!("object {i}"),
                        score: rng.random_range(-1.0..1.0),
                    }
                })
                .collect(),
        };
        let d = time(iters * 20, || {
            std::hint::black_box(composer.compose(&j, ImageSize::new(512, 512)));
            Ok(())
        })?;
        let l = time(iters * 20, || {
            std::hint::black_box(composer.compose_latent(
                &j,
                ImageSize::new(512, 512),
                LatentGrid::new(32, 32),
            ));
            Ok(())
        })?;
        println!("| {k} | {:.1} | {:.1} |", d * 1e6, l * 1e6);
    }
    println!("\n| matmul (flex, f32) | ms | GFLOP/s |\n|---|---:|---:|");
    type F = burn::backend::Flex;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for (m, k, n) in [
        (2592usize, 64usize, 192usize),
        (2592, 64, 64),
        (2592, 128, 64),
    ] {
        let a = normal::<F>(&mut rng, [1, m, k], &device).reshape([m, k]);
        let b = normal::<F>(&mut rng, [1, k, n], &device).reshape([k, n]);
        let s = time(iters * 20, || {
            // flex runs eagerly: the product is computed when `matmul` returns.
            std::hint::black_box(a.clone().matmul(b.clone()));
            Ok(())
        })?;
        let gf = 2.0 * (m * k * n) as f64 / s / 1e9;
        println!("| [{m},{k}]x[{k},{n}] | {:.3} | {gf:.1} |", s * 1e3);
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Some(pos) = std::env::args().position(|a| a == "--scaling") {
        let model = std::env::args()
            .nth(pos + 1)
            .unwrap_or_else(|| "assets/tiny-umm".into());
        return match scaling(std::path::Path::new(&model), 5) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if std::env::args().any(|a| a == "--probe") {
        #[cfg(feature = "cuda")]
        let r = probe::<burn::backend::Cuda>(&Default::default());
        #[cfg(not(feature = "cuda"))]
        let r = probe::<burn::backend::Flex>(&Default::default());
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let result = parse_args().and_then(|a| match a.device.as_str() {
        "cpu" => run::<Autodiff<burn::backend::Flex>>(&a, &Default::default(), "cpu (burn flex)"),
        #[cfg(feature = "ndarray")]
        "ndarray" => run::<Autodiff<burn::backend::NdArray<f32>>>(
            &a,
            &Default::default(),
            "cpu (burn ndarray)",
        ),
        #[cfg(feature = "candle")]
        #[allow(deprecated)]
        "candle" => run::<Autodiff<burn::backend::Candle<f32>>>(
            &a,
            &Default::default(),
            "cpu (burn candle)",
        ),
        #[cfg(feature = "cuda")]
        "cuda" => run::<Autodiff<burn::backend::Cuda>>(&a, &Default::default(), "cuda (burn cuda)"),
        other => Err(format!(
            "--device {other}: this build has cpu{}{}{}",
            if cfg!(feature = "cuda") { ", cuda" } else { "" },
            if cfg!(feature = "ndarray") {
                ", ndarray"
            } else {
                ""
            },
            if cfg!(feature = "candle") {
                ", candle"
            } else {
                ""
            }
        )),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
