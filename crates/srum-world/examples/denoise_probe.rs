//! Where the generator loses the object: its one-step clean estimate `x0_hat = x_t - t v` of
//! renders noised to several times (how well it denoises, per time), and of its own samples
//! along the Euler trajectory from pure noise (when it commits to a layout). A diagnostic for
//! the reference model's generator; it reads renders, never the oracle.
//!
//! `cargo run --release -p srum-world --example denoise_probe -- CHECKPOINT_DIR OUT.png`
//!
//! Prints the mean squared error of `x0_hat` per time over 96 renders of one- and two-object
//! prompts, and writes a sheet: per row, for one prompt, the render, then `x0_hat` at
//! t = 0.95, 0.8, 0.6, 0.4, 0.2, 0.05; then, for a sample from noise, `x0_hat` at every other
//! Euler step (guidance 4) and the final image.

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use srum::flow::{EulerSampler, EulerSamplerConfig, Guidance, host_normal, noisy_latents};
use srum::image::PixelImage;
use srum::model::{FlowGenerator, Generator, ImageCodec, ImageSize};
use srum_world::tiny::TinyUmm;
use srum_world::world::drawing_prompts;

type B = Flex;

const TIMES: [f32; 6] = [0.95, 0.8, 0.6, 0.4, 0.2, 0.05];

fn main() -> srum::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(out)) = (args.get(1), args.get(2)) else {
        return Err(srum::SrumError::config(
            "arguments",
            "usage: denoise_probe CHECKPOINT_DIR OUT.png",
        ));
    };
    let device = Default::default();
    let (model, config) = TinyUmm::<B>::load_dir(dir, &device)?;
    let size = config.image_size;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let prompts = drawing_prompts();
    let specs: Vec<_> = (0..4).flat_map(|_| prompts.clone()).collect();
    let texts: Vec<String> = specs.iter().map(|p| p.text()).collect();
    let renders: Vec<PixelImage> = specs
        .iter()
        .map(|p| p.sample_scene(&mut rng, size).render(size))
        .collect();
    let n = renders.len();
    let x0 = model.encode_images(PixelImage::to_tensor::<B>(&renders, &device)?)?;
    let cond = model.condition(&texts)?;
    let estimate = |x_t: Tensor<B, 3>, t: f32| {
        let tt = Tensor::<B, 1>::from_data(TensorData::new(vec![t; n], [n]), &device);
        let v = model.velocity(x_t.clone(), tt, &cond);
        x_t - v.mul_scalar(t)
    };
    let mut rows: Vec<Vec<PixelImage>> = (0..8).map(|i| vec![renders[i].clone()]).collect();
    println!("| t | MSE of x0_hat (pixels in [0, 1]) |\n|---:|---:|");
    for t in TIMES {
        let eps = host_normal::<B, _, 3>(&mut rng, x0.dims(), &device);
        let tt = Tensor::<B, 1>::from_data(TensorData::new(vec![t; n], [n]), &device);
        let x_hat = estimate(noisy_latents(x0.clone(), eps, tt), t);
        // Latents are pixels as `2 x - 1`: a quarter of their squared error is the pixels'.
        let mse: f32 = (x_hat.clone().clamp(-1.0, 1.0) - x0.clone())
            .powi_scalar(2)
            .mean()
            .into_scalar()
            / 4.0;
        println!("| {t} | {mse:.4} |");
        let imgs = PixelImage::from_tensor(
            model.decode_latents(x_hat.clamp(-1.0, 1.0), ImageSize::square(size))?,
        )?;
        for (row, img) in rows.iter_mut().zip(imgs) {
            row.push(img);
        }
    }
    // At t = 1 the input is pure noise and the best estimate is the prompt's mean image,
    // whatever the noise: how much the estimate still moves with the noise.
    {
        let reps = 8;
        let texts8: Vec<String> = (0..reps).map(|_| texts[0].clone()).collect();
        let c = model.condition(&texts8)?;
        let dims = [reps, x0.dims()[1], x0.dims()[2]];
        let noise = host_normal::<B, _, 3>(&mut rng, dims, &device);
        let one = Tensor::<B, 1>::from_data(TensorData::new(vec![1.0f32; reps], [reps]), &device);
        let est = (noise.clone() - model.velocity(noise, one, &c)).clamp(-1.0, 1.0);
        let mean = est.clone().mean_dim(0);
        let spread: f32 = (est - mean).powi_scalar(2).mean().into_scalar() / 4.0;
        println!(
            "\nat t = 1, `{}`: variance of x0_hat over {reps} noises {spread:.4} (pixels; 0 for the ideal estimate)",
            texts[0]
        );
    }
    // How far a patch's input reaches: perturb one patch of the noisy input and see how much
    // the estimate of each patch moves, by (Chebyshev) distance in patches. A network that
    // decides patch by patch moves only the perturbed one.
    {
        let g = size / model.patch_size();
        let tokens = g * g;
        let ch = x0.dims()[2];
        println!(
            "\n| t | reach at distance 0 | 1 | 2 | 3+ (mean squared change per patch, relative to distance 0) |\n|---:|---:|---:|---:|---:|"
        );
        for t in [0.9f32, 0.7, 0.5] {
            let eps = host_normal::<B, _, 3>(&mut rng, x0.dims(), &device);
            let tt = Tensor::<B, 1>::from_data(TensorData::new(vec![t; n], [n]), &device);
            let x_t = noisy_latents(x0.clone(), eps, tt);
            let base = estimate(x_t.clone(), t);
            // Patch `j` of each image gets extra noise of standard deviation 0.5.
            let mut mask = vec![0f32; n * tokens * ch];
            let mut picked = Vec::with_capacity(n);
            for i in 0..n {
                let j = rand::Rng::random_range(&mut rng, 0..tokens);
                picked.push(j);
                for c in 0..ch {
                    mask[(i * tokens + j) * ch + c] = 1.0;
                }
            }
            let mask = Tensor::<B, 3>::from_data(TensorData::new(mask, [n, tokens, ch]), &device);
            let kick = host_normal::<B, _, 3>(&mut rng, x0.dims(), &device).mul_scalar(0.5) * mask;
            let moved = estimate(x_t + kick, t);
            let change: Vec<f32> = (moved - base)
                .powi_scalar(2)
                .mean_dim(2)
                .into_data()
                .to_vec::<f32>()
                .unwrap_or_default();
            let mut sum = [0f64; 4];
            let mut count = [0usize; 4];
            for (i, &j) in picked.iter().enumerate() {
                for k in 0..tokens {
                    let d = (k / g).abs_diff(j / g).max((k % g).abs_diff(j % g)).min(3);
                    sum[d] += f64::from(change[i * tokens + k]);
                    count[d] += 1;
                }
            }
            let mean: Vec<f64> = (0..4).map(|d| sum[d] / count[d].max(1) as f64).collect();
            println!(
                "| {t} | 1 | {:.4} | {:.4} | {:.4} |",
                mean[1] / mean[0],
                mean[2] / mean[0],
                mean[3] / mean[0]
            );
        }
    }
    // The trajectory of the first eight prompts from pure noise.
    let k = 8;
    let cond8 = model.condition(&texts[..k])?;
    let uncond = model.unconditional(k)?;
    let sampler = EulerSampler::new(EulerSamplerConfig::default());
    let noise = host_normal::<B, _, 3>(&mut rng, [k, x0.dims()[1], x0.dims()[2]], &device);
    let mut trail: Vec<Tensor<B, 3>> = Vec::new();
    let mut calls = 0usize;
    let x = sampler.sample_from(noise, 1.0, |x, t, g| {
        let c = match g {
            Guidance::Conditional => &cond8,
            Guidance::Unconditional => &uncond,
        };
        let v = model.velocity(x.clone(), t.clone(), c);
        if matches!(g, Guidance::Conditional) {
            if calls.is_multiple_of(2) {
                let t0: f32 = t.clone().narrow(0, 0, 1).into_scalar();
                trail.push(x - v.clone().mul_scalar(t0));
            }
            calls += 1;
        }
        Ok(v)
    })?;
    trail.push(x);
    for step in trail {
        let imgs = PixelImage::from_tensor(
            model.decode_latents(step.clamp(-1.0, 1.0), ImageSize::square(size))?,
        )?;
        for (row, img) in rows.iter_mut().zip(imgs) {
            row.push(img);
        }
    }
    write_sheet(out, &rows, size)
}

fn write_sheet(path: &str, rows: &[Vec<PixelImage>], size: usize) -> srum::Result<()> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let (cell, gap) = (size + 2, 2);
    let (w, h) = (cols * cell + gap, rows.len() * cell + gap);
    let mut buf = vec![128u8; w * h * 3];
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let rgb = img.to_rgb8();
            for y in 0..size {
                for x in 0..size {
                    let (sx, sy) = (gap + c * cell + x, gap + r * cell + y);
                    let (s, d) = ((y * size + x) * 3, (sy * w + sx) * 3);
                    buf[d..d + 3].copy_from_slice(&rgb[s..s + 3]);
                }
            }
        }
    }
    image::save_buffer(
        path,
        &buf,
        w as u32,
        h as u32,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| srum::SrumError::config("OUT", format!("{path}: {e}")))
}
