//! The memory model of a SRUM step: the table for BAGEL-7B-MoT, and a check of the model
//! against the peak memory of a real step on the CPU.
//!
//! ```text
//! cargo run --release -p srum-bagel --example memory_model                 # BAGEL-7B-MoT table
//! cargo run --release -p srum-bagel --example memory_model -- --measure medium   # one step, predicted vs measured
//! cargo run --release -p srum-bagel --example memory_model -- --measure medium --checkpointing
//! ```

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};
use srum_bagel::{
    BagelConfig, LoraConfig, MemoryPrecision, PackedSequence, StepShape, Trained, VaeConfig,
    VitConfig, param_counts, step_memory,
};

#[path = "shared/proc_memory.rs"]
mod proc_memory;
use proc_memory::{peak_rss, rss};

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn table() {
    let config = BagelConfig::new().with_vit(Some(VitConfig::new()));
    let vae = VaeConfig::new();
    let c = param_counts(&config, &vae);
    println!(
        "BAGEL-7B-MoT: {:.2}B parameters (each expert {:.2}B, embeddings + lm_head {:.2}B, ViT {:.0}M, VAE {:.0}M)\n",
        c.total() as f64 / 1e9,
        c.generation_expert as f64 / 1e9,
        (c.embeddings + c.lm_head) as f64 / 1e9,
        c.vit as f64 / 1e6,
        c.vae as f64 / 1e6
    );
    println!(
        "| trained | precision | pixels | checkpointing | frozen | trained | master | grads | AdamW | activations | total (GiB) |"
    );
    println!("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let sets = [
        ("generation expert", Trained::GenerationExpert),
        ("language model", Trained::LanguageModel),
        ("LoRA r16", Trained::Lora(LoraConfig::default())),
    ];
    for (name, trained) in &sets {
        for (pname, precision) in [
            ("f32", MemoryPrecision::F32),
            ("bf16", MemoryPrecision::Bf16),
            ("bf16 + f32 master", MemoryPrecision::Bf16MasterF32),
        ] {
            for (px, tokens) in [(512, 1024), (1024, 4096)] {
                for ckpt in [false, true] {
                    let shape = StepShape {
                        trained: trained.clone(),
                        precision,
                        image_tokens: tokens,
                        prompt_tokens: 64,
                        batch: 1,
                        checkpointing: ckpt,
                    };
                    let m = step_memory(&config, &vae, &shape);
                    println!(
                        "| {name} | {pname} | {px} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                        if ckpt { "on" } else { "off" },
                        gib(m.frozen_weights),
                        gib(m.trained_weights),
                        gib(m.master_weights),
                        gib(m.gradients),
                        gib(m.optimizer),
                        gib(m.activations),
                        gib(m.total())
                    );
                }
            }
        }
    }
}

/// One forward and backward, as `measure` takes it, on a model of a few thousand parameters.
fn warm_up(checkpointing: bool) -> Result<(), String> {
    type A = Autodiff<Flex>;
    let config = BagelConfig::new()
        .with_vocab_size(16)
        .with_hidden_size(16)
        .with_intermediate_size(32)
        .with_num_hidden_layers(1)
        .with_num_attention_heads(2)
        .with_num_key_value_heads(1)
        .with_max_latent_size(4)
        .with_bos_token_id(1)
        .with_eos_token_id(2)
        .with_start_of_image_id(3)
        .with_end_of_image_id(4);
    let device = Default::default();
    let model = config.init::<A>(&device);
    let mut seq = PackedSequence::new();
    seq.push_text(&model.wrap_text(&[5, 6]));
    seq.push_noisy_latents((2, 2), 3, 4, config.max_latent_size)
        .map_err(|e| e.to_string())?;
    let d = config.patch_latent_dim();
    let x0 = Tensor::<A, 2>::random([4, d], Distribution::Normal(0.0, 1.0), &device);
    let noise = Tensor::<A, 2>::random([4, d], Distribution::Normal(0.0, 1.0), &device);
    let t = Tensor::<A, 1>::full([4], 0.5, &device);
    let r = Tensor::<A, 1>::ones([4], &device);
    if checkpointing {
        drop(
            model
                .flow_loss_checkpointed(&seq, x0, noise, t, r, 0.5)
                .map_err(|e| e.to_string())?,
        );
    } else {
        let loss = model
            .flow_loss(&seq, x0, noise, t, r, 0.5)
            .map_err(|e| e.to_string())?;
        drop(loss.terms.total.backward());
    }
    Ok(())
}

/// One forward and backward of the SRUM loss on a random model, generation expert trained:
/// the peak resident memory above what the process held before it, against the model's
/// weights + gradients + activations (no optimizer step: AdamW's moments are exact counts).
fn measure(which: &str, checkpointing: bool) -> Result<(), String> {
    type A = Autodiff<Flex>;
    let (config, prompt, (gh, gw)) = match which {
        "tiny" => (
            BagelConfig::new()
                .with_vocab_size(256)
                .with_hidden_size(64)
                .with_intermediate_size(192)
                .with_num_hidden_layers(2)
                .with_num_attention_heads(4)
                .with_num_key_value_heads(2)
                .with_max_latent_size(16),
            16,
            (16, 16),
        ),
        "medium" => (
            BagelConfig::new()
                .with_vocab_size(4096)
                .with_hidden_size(512)
                .with_intermediate_size(1536)
                .with_num_hidden_layers(8)
                .with_num_attention_heads(8)
                .with_num_key_value_heads(2)
                .with_max_latent_size(32),
            64,
            (32, 32),
        ),
        other => return Err(format!("--measure tiny|medium, not {other}")),
    };
    let config = config
        .with_bos_token_id(1)
        .with_eos_token_id(2)
        .with_start_of_image_id(3)
        .with_end_of_image_id(4);
    let device = Default::default();
    // A first step pages in the code it runs and starts the thread pool: a few MiB the
    // process holds once, whatever the model. A step of a far smaller model pays for them
    // before the baseline is taken, so that what is measured is the step's own memory.
    warm_up(checkpointing)?;
    let base = rss();
    let model = config.init::<A>(&device);
    // Materialise every weight (initialisation is lazy) before the step.
    let _ = burn::module::Module::num_params(&model);
    let model = {
        struct Touch;
        impl burn::module::ModuleMapper<A> for Touch {
            fn map_float<const D: usize>(
                &mut self,
                p: burn::module::Param<Tensor<A, D>>,
            ) -> burn::module::Param<Tensor<A, D>> {
                let _ = p.val();
                p
            }
        }
        burn::module::Module::map(model, &mut Touch)
    };
    let ids: Vec<u32> = (0..prompt as u32).map(|i| 5 + i % 200).collect();
    let mut seq = PackedSequence::new();
    seq.push_text(&model.wrap_text(&ids));
    seq.push_noisy_latents((gh, gw), 3, 4, config.max_latent_size)
        .map_err(|e| e.to_string())?;
    let n = gh * gw;
    let d = config.patch_latent_dim();
    let x0 = Tensor::<A, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
    let noise = Tensor::<A, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
    let t = Tensor::<A, 1>::full([n], 0.5, &device);
    let r = Tensor::<A, 1>::ones([n], &device);
    let weights = rss().saturating_sub(base);
    let start = Instant::now();
    if checkpointing {
        let (_, grads) = model
            .flow_loss_checkpointed(&seq, x0, noise, t, r, 0.5)
            .map_err(|e| e.to_string())?;
        drop(grads);
    } else {
        let loss = model
            .flow_loss(&seq, x0, noise, t, r, 0.5)
            .map_err(|e| e.to_string())?;
        drop(loss.terms.total.backward());
    }
    let secs = start.elapsed().as_secs_f64();
    let peak = peak_rss().saturating_sub(base);
    let shape = StepShape {
        trained: Trained::LanguageModel,
        precision: MemoryPrecision::F32,
        image_tokens: n + 2,
        prompt_tokens: prompt + 2,
        batch: 1,
        checkpointing,
    };
    let vae = VaeConfig::new()
        .with_ch(32)
        .with_ch_mult(vec![1])
        .with_num_res_blocks(0);
    let m = step_memory(&config, &vae, &shape);
    // The model here has no ViT and no VAE: count the backbone and heads only.
    let counts = param_counts(&config, &vae);
    let w = 4 * (counts.total() - counts.vae);
    let predicted = w + m.gradients + m.activations;
    let allocator = match std::env::var("MALLOC_MMAP_THRESHOLD_") {
        Ok(v) => format!("glibc, MALLOC_MMAP_THRESHOLD_={v}"),
        Err(_) => "glibc defaults".into(),
    };
    println!("allocator: {allocator}");
    println!(
        "{which}{}: {} tokens, {:.1}M parameters; weights {:.0} MiB resident (predicted {:.0}); step peak above start {:.0} MiB, predicted weights + grads + activations {:.0} MiB ({:+.1} %); step {secs:.1} s",
        if checkpointing { " (checkpointed)" } else { "" },
        prompt + 2 + n + 2,
        counts.total() as f64 / 1e6,
        weights as f64 / 1048576.0,
        w as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        predicted as f64 / 1048576.0,
        100.0 * (predicted as f64 - peak as f64) / peak as f64
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [] => {
            table();
            Ok(())
        }
        [flag, which] if flag == "--measure" => measure(which, false),
        [flag, which, c] if flag == "--measure" && c == "--checkpointing" => measure(which, true),
        _ => Err("usage: memory_model [--measure tiny|medium [--checkpointing]]".into()),
    };
    if let Err(e) = result {
        eprintln!("memory_model: {e}");
        std::process::exit(2);
    }
}
