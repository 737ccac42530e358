//! Checking the port against a fixture folder written by `scripts/bagel_fixtures.py` (the
//! official PyTorch code run in fp32 on tiny bf16 weights); `tests/data/README.md` documents
//! every tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::bagel::Bagel;
use crate::cache::KvCache;
use crate::config::BagelConfig;
use crate::error::{BagelError, Result};
use crate::generation::{patchify, sincos_2d, unpatchify};
use crate::load::{is_linear_weight, load_vae, load_weights, official_name, transpose};
use crate::sequence::PackedSequence;
use crate::vae::AutoEncoder;
use crate::vit::{int_tensor, vit_patchify, vit_positions};
use srum::flow::{EulerSampler, EulerSamplerConfig};

/// One output compared with the reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The case tensor's name (`text.logits`, `loss.grad.vae2llm.weight`, ...); names ending in
    /// `(mismatches)` count differing integers instead.
    pub output: String,
    /// Largest absolute difference (or the mismatch count).
    pub max_abs_diff: f64,
    /// The most it may be.
    pub limit: f64,
}

impl Comparison {
    /// Whether the output is within its limit.
    pub fn passed(&self) -> bool {
        self.max_abs_diff <= self.limit
    }
}

/// Every comparison of one fixture folder.
#[derive(Debug, Clone)]
pub struct FixtureReport {
    /// The fixture's name.
    pub name: String,
    /// The fixture's tolerance on float outputs.
    pub tolerance: f64,
    /// One entry per output, in case order.
    pub comparisons: Vec<Comparison>,
}

impl FixtureReport {
    /// Whether every output is within its limit.
    pub fn passed(&self) -> bool {
        self.comparisons.iter().all(Comparison::passed)
    }
}

impl std::fmt::Display for FixtureReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "fixture {} (tolerance {:e})", self.name, self.tolerance)?;
        for c in &self.comparisons {
            let mark = if c.passed() { "ok  " } else { "FAIL" };
            writeln!(f, "  {mark} {:60} {:.3e}", c.output, c.max_abs_diff)?;
        }
        Ok(())
    }
}

struct Cases {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Cases {
    fn has(&self, name: &str) -> bool {
        SafeTensors::deserialize(&self.bytes).is_ok_and(|st| st.tensor(name).is_ok())
    }

    fn tensor(&self, name: &str, dtype: Dtype) -> Result<(Vec<usize>, Vec<u8>)> {
        let st = SafeTensors::deserialize(&self.bytes).map_err(|e| {
            BagelError::checkpoint(&self.path, format!("not a safetensors file: {e}"))
        })?;
        let view = st.tensor(name).map_err(|_| {
            BagelError::checkpoint(&self.path, format!("case tensor `{name}` missing"))
        })?;
        if view.dtype() != dtype {
            return Err(BagelError::checkpoint(
                &self.path,
                format!(
                    "case tensor `{name}` is {:?}, expected {dtype:?}",
                    view.dtype()
                ),
            ));
        }
        Ok((view.shape().to_vec(), view.data().to_vec()))
    }

    fn f32s(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (shape, b) = self.tensor(name, Dtype::F32)?;
        let v = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((shape, v))
    }

    fn i64s(&self, name: &str) -> Result<Vec<i64>> {
        let (_, b) = self.tensor(name, Dtype::I64)?;
        Ok(b.chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }

    fn ids(&self, name: &str) -> Result<Vec<u32>> {
        self.i64s(name)?
            .into_iter()
            .map(|i| {
                u32::try_from(i).map_err(|_| {
                    BagelError::checkpoint(&self.path, format!("`{name}` holds the id {i}"))
                })
            })
            .collect()
    }

    fn tensor_f32<B: Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let (shape, v) = self.f32s(name)?;
        if shape.len() != D {
            return Err(BagelError::checkpoint(
                &self.path,
                format!("case tensor `{name}` has shape {shape:?}, expected rank {D}"),
            ));
        }
        Ok(Tensor::from_data(TensorData::new(v, shape), device))
    }
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

struct Report {
    tol: f64,
    out: Vec<Comparison>,
}

impl Report {
    fn close(&mut self, name: &str, got: &[f32], shape: &[usize], want: &(Vec<usize>, Vec<f32>)) {
        let d = if got.len() != want.1.len() || shape != want.0.as_slice() {
            f64::INFINITY
        } else {
            got.iter()
                .zip(&want.1)
                .map(|(a, b)| (*a as f64 - *b as f64).abs())
                .fold(0.0, f64::max)
        };
        self.out.push(Comparison {
            output: name.to_string(),
            max_abs_diff: d,
            limit: self.tol,
        });
    }

    fn tensor<B: Backend, const D: usize>(
        &mut self,
        cases: &Cases,
        name: &str,
        got: Tensor<B, D>,
    ) -> Result<()> {
        let want = cases.f32s(name)?;
        let shape = got.dims().to_vec();
        self.close(name, &host(got), &shape, &want);
        Ok(())
    }

    fn count(&mut self, name: &str, mismatches: usize) {
        self.out.push(Comparison {
            output: format!("{name}(mismatches)"),
            max_abs_diff: mismatches as f64,
            limit: 0.0,
        });
    }

    fn ints(&mut self, name: &str, got: &[i64], want: &[i64]) {
        let m = if got.len() != want.len() {
            got.len().max(want.len())
        } else {
            got.iter().zip(want).filter(|(a, b)| a != b).count()
        };
        self.count(name, m);
    }
}

/// Gradients of the parameters named (officially) in `names`, in the official layout.
struct Grads<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    names: &'a [String],
    stack: Vec<String>,
    out: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Grads<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let name = official_name(&self.stack.join("."));
        if !self.names.contains(&name) {
            return;
        }
        let value = param.val();
        let mut shape = value.dims().to_vec();
        let mut v = match value.grad(self.grads) {
            Some(g) => host(g),
            None => vec![0.0; shape.iter().product()],
        };
        if is_linear_weight(&name, D) {
            v = transpose(&v, shape[0], shape[1]);
            shape.reverse();
        }
        self.out.insert(name, (shape, v));
    }
}

fn fixture_err(path: &Path, message: impl Into<String>) -> BagelError {
    BagelError::config(path, "<fixture>", message)
}

/// Loads the fixture folder `dir` (its config files and `ema.safetensors`), runs every case of
/// `cases.safetensors` (text prefill, greedy decoding, velocity, SRUM loss and its gradients)
/// and compares each output with the reference. `B` is the autodiff backend the gradients are
/// taken on; everything else runs on its inner backend.
pub fn verify_fixture<B: AutodiffBackend>(
    dir: impl AsRef<Path>,
    device: &B::Device,
) -> Result<FixtureReport> {
    let dir = dir.as_ref();
    let fx_path = dir.join("fixture.json");
    let text = std::fs::read_to_string(&fx_path).map_err(|e| BagelError::io(&fx_path, e))?;
    let fx: Value = serde_json::from_str(&text)
        .map_err(|e| fixture_err(&fx_path, format!("not valid JSON: {e}")))?;
    let name = fx
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    let tol = fx
        .get("tolerance")
        .and_then(Value::as_f64)
        .ok_or_else(|| BagelError::config(&fx_path, "tolerance", "missing"))?;
    let fc = fx
        .get("config")
        .ok_or_else(|| BagelError::config(&fx_path, "config", "missing"))?;
    let mut config = BagelConfig::from_dir(dir)?.with_bagel_overrides(fc, &fx_path)?;
    if let Some(st) = fc.get("special_tokens") {
        config = config.with_bagel_overrides(st, &fx_path)?;
    }
    if let Some(n) = fc
        .get("timestep_frequency_embedding_size")
        .and_then(Value::as_u64)
    {
        config.frequency_embedding_size = n as usize;
    }
    let lambda = fc
        .get("srum_lambda")
        .and_then(Value::as_f64)
        .ok_or_else(|| BagelError::config(&fx_path, "config.srum_lambda", "missing"))?;
    let grad_names: Vec<String> = fc
        .get("loss_grad_names")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();

    let model: Bagel<B> = load_weights(config.init(device), dir.join("ema.safetensors"))?;
    let cases_path = dir.join("cases.safetensors");
    let cases = Cases {
        bytes: std::fs::read(&cases_path).map_err(|e| BagelError::io(&cases_path, e))?,
        path: cases_path,
    };
    let mut r = Report {
        tol,
        out: Vec::new(),
    };
    // The table `init` computes, against the unrounded f32 one (the model itself uses the
    // checkpoint's bf16 copy, as the reference does).
    let table_name = "meta.latent_pos_embed_sincos_f32";
    if let Ok(want) = cases.f32s(table_name) {
        let side = config.max_latent_size;
        let got = sincos_2d(config.hidden_size, side);
        r.close(table_name, &got, &[side * side, config.hidden_size], &want);
    }
    let inner = model.valid();
    let inner_device = inner.device();
    let c = model.config().clone();

    // Text: prefill of the wrapped prompt, per-layer and final hidden states, logits.
    let ids = cases.ids("text.input_ids")?;
    let mut cache = KvCache::new();
    let hidden = inner.prefill_text(&mut cache, &ids, true)?;
    let positions: Vec<i64> = (0..ids.len() as i64).collect();
    r.ints(
        "meta.text.position_ids",
        &positions,
        &cases.i64s("meta.text.position_ids")?,
    );
    for (l, h) in hidden.layers.iter().enumerate() {
        r.tensor(&cases, &format!("text.hidden.{l}"), h.clone())?;
    }
    r.tensor(&cases, "text.hidden.final", hidden.last.clone())?;
    r.tensor(&cases, "text.logits", inner.logits(hidden.last))?;

    // Greedy decoding from bos on the same cache.
    let want_tokens = cases.i64s("greedy.tokens")?;
    let (tokens, logits) =
        inner.greedy_with_logits(&mut cache, c.bos_token_id, want_tokens.len())?;
    let got: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    r.ints("greedy.tokens", &got, &want_tokens);
    if !logits.is_empty() {
        r.tensor(&cases, "greedy.logits", Tensor::cat(logits, 0))?;
    }

    // Velocity against a prefilled prompt.
    let prompt = cases.ids("flow.prompt_ids")?;
    let grid = cases.i64s("flow.grid")?;
    let (h, w) = match grid.as_slice() {
        [h, w] if *h > 0 && *w > 0 => (*h as usize, *w as usize),
        _ => return Err(fixture_err(&cases.path, format!("flow.grid is {grid:?}"))),
    };
    let mut cache = KvCache::new();
    inner.prefill_text(&mut cache, &prompt, false)?;
    let x_t: Tensor<B::InnerBackend, 2> = cases.tensor_f32("flow.x_t", &inner_device)?;
    let t = cases
        .f32s("flow.timestep")?
        .1
        .first()
        .copied()
        .unwrap_or(0.0);
    let flow = inner.flow_hidden(&cache, x_t, t, (h, w), true)?;
    for (l, h) in flow.layers.iter().enumerate() {
        r.tensor(&cases, &format!("flow.hidden.{l}"), h.clone())?;
    }
    r.tensor(&cases, "flow.hidden.final", flow.last.clone())?;
    r.tensor(&cases, "flow.velocity", inner.llm2vae.forward(flow.last))?;

    // Training forward and SRUM loss with gradients.
    let raw_prompt = cases.ids("meta.loss.prompt_ids_raw")?;
    let grid = cases.i64s("loss.grid")?;
    let (h, w) = match grid.as_slice() {
        [h, w] if *h > 0 && *w > 0 => (*h as usize, *w as usize),
        _ => return Err(fixture_err(&cases.path, format!("loss.grid is {grid:?}"))),
    };
    let mut seq = PackedSequence::new();
    seq.push_text(&model.wrap_text(&raw_prompt));
    seq.push_noisy_latents(
        (h, w),
        c.start_of_image_id,
        c.end_of_image_id,
        c.max_latent_size,
    )?;
    r.ints(
        "meta.loss.packed_position_ids",
        seq.positions(),
        &cases.i64s("meta.loss.packed_position_ids")?,
    );
    let (mshape, mask) = cases.f32s("meta.loss.attention_mask")?;
    let mine = seq.sample_masks().into_iter().next().unwrap_or_default();
    let mismatches = if mshape.iter().product::<usize>() != mine.len() {
        mine.len().max(mask.len())
    } else {
        mine.iter()
            .zip(&mask)
            .filter(|(a, m)| **a != (**m == 0.0))
            .count()
    };
    r.count("meta.loss.attention_mask", mismatches);

    let padded: Tensor<B, 4> = cases.tensor_f32("loss.padded_latent", device)?;
    let [_, lc, lh, lw] = padded.dims();
    let x0 = patchify(padded.reshape([lc, lh, lw]), c.latent_patch_size);
    r.tensor(&cases, "loss.x0", x0.clone().inner())?;
    let noise: Tensor<B, 2> = cases.tensor_f32("loss.noise", device)?;
    let raw_t: Tensor<B, 1> = cases.tensor_f32("loss.timestep", device)?;
    let t = model.training_timesteps(raw_t);
    r.tensor(&cases, "loss.t", t.clone().inner())?;
    let n_lat = h * w;
    let t = t.repeat_dim(0, n_lat);
    let reward: Tensor<B, 1> = cases.tensor_f32("loss.reward", device)?;
    let (loss, x_t, out) =
        model.flow_loss_traced(&seq, x0, noise, t, reward, lambda as f32, true)?;
    r.tensor(&cases, "loss.x_t", x_t.inner())?;
    for (l, h) in out.hidden.layers.iter().enumerate() {
        r.tensor(&cases, &format!("loss.hidden.{l}"), h.clone().inner())?;
    }
    r.tensor(&cases, "loss.velocity", out.velocity.inner())?;
    r.tensor(&cases, "loss.mse", loss.mse.clone().inner())?;
    r.tensor(&cases, "loss.value", loss.terms.total.clone().inner())?;
    let grads = loss.terms.total.backward();
    let mut gv = Grads::<B> {
        grads: &grads,
        names: &grad_names,
        stack: Vec::new(),
        out: HashMap::new(),
    };
    model.visit(&mut gv);
    for gname in &grad_names {
        let key = format!("loss.grad.{gname}");
        let want = cases.f32s(&key)?;
        match gv.out.get(gname) {
            Some((shape, v)) => r.close(&key, v, shape, &want),
            None => r.out.push(Comparison {
                output: key,
                max_abs_diff: f64::INFINITY,
                limit: tol,
            }),
        }
    }
    if cases.has("vit.image") {
        verify_understanding(&inner, &cases, &mut r)?;
    }
    if dir.join("ae.safetensors").is_file() {
        let vae = load_vae::<B::InnerBackend>(dir, &inner_device)?;
        verify_vae(&vae, &cases, &mut r)?;
        if cases.has("gen.latent") {
            verify_sampling(&inner, &vae, &fx_path, fc, &cases, &mut r)?;
        }
    }
    Ok(FixtureReport {
        name,
        tolerance: tol,
        comparisons: r.out,
    })
}

/// ViT, connector, and a greedy answer about an image after a system prompt.
fn verify_understanding<B: Backend>(model: &Bagel<B>, cases: &Cases, r: &mut Report) -> Result<()> {
    let device = model.device();
    let c = model.config().clone();
    let (Some(vc), Some(vit), Some(connector)) = (&c.vit, &model.vit_model, &model.connector)
    else {
        return Err(fixture_err(
            &cases.path,
            "the fixture has ViT cases but no vit_config.json",
        ));
    };
    let image: Tensor<B, 3> = cases.tensor_f32("vit.image", &device)?;
    let [_, hh, ww] = image.dims();
    let p = vc.patch_size;
    let tokens = vit_patchify(image.clone(), p);
    r.tensor(cases, "meta.vit.tokens", tokens.clone())?;
    let ids = vit_positions(hh / p, ww / p, c.vit_max_num_patch_per_side);
    r.ints(
        "meta.vit.position_ids",
        &ids,
        &cases.i64s("meta.vit.position_ids")?,
    );
    let features = vit.forward(tokens, int_tensor(ids, &device));
    r.tensor(cases, "vit.features", features.clone())?;
    r.tensor(cases, "vit.connector", connector.forward(features))?;
    r.tensor(cases, "vit.embed", model.vit_embed(image.clone())?)?;

    let mut cache = KvCache::new();
    model.prefill_text(
        &mut cache,
        &model.wrap_text(&cases.ids("meta.und.system_ids_raw")?),
        false,
    )?;
    let block = model.extend_image(&mut cache, image)?;
    r.tensor(cases, "und.image_hidden.final", block)?;
    model.prefill_text(
        &mut cache,
        &model.wrap_text(&cases.ids("meta.und.question_ids_raw")?),
        false,
    )?;
    let want = cases.i64s("und.tokens")?;
    let (tokens, logits) = model.greedy_with_logits(&mut cache, c.bos_token_id, want.len())?;
    let got: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    r.ints("und.tokens", &got, &want);
    if !logits.is_empty() {
        r.tensor(cases, "und.logits", Tensor::cat(logits, 0))?;
    }
    Ok(())
}

/// Encoder moments, mean and sampled latents, and the decoder.
fn verify_vae<B: Backend>(vae: &AutoEncoder<B>, cases: &Cases, r: &mut Report) -> Result<()> {
    let device = vae.devices().into_iter().next().unwrap_or_default();
    let image: Tensor<B, 4> = cases.tensor_f32("vae.image", &device)?;
    r.tensor(cases, "vae.moments", vae.moments(image.clone()))?;
    r.tensor(cases, "vae.latent", vae.encode(image.clone()))?;
    let noise: Tensor<B, 4> = cases.tensor_f32("meta.vae.sample_noise", &device)?;
    r.tensor(cases, "vae.latent_sample", vae.encode_sample(image, noise))?;
    let latent: Tensor<B, 4> = cases.tensor_f32("vae.latent", &device)?;
    r.tensor(cases, "vae.decoded", vae.decode(latent))?;
    Ok(())
}

/// A whole text-to-image sample with guidance, and its decoding.
fn verify_sampling<B: Backend>(
    model: &Bagel<B>,
    vae: &AutoEncoder<B>,
    fx_path: &Path,
    fc: &Value,
    cases: &Cases,
    r: &mut Report,
) -> Result<()> {
    let device = model.device();
    let c = model.config().clone();
    let g = fc
        .get("gen")
        .ok_or_else(|| BagelError::config(fx_path, "config.gen", "missing"))?;
    let num = |key: &str| -> Result<f64> {
        g.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| BagelError::config(fx_path, format!("config.gen.{key}"), "missing"))
    };
    let interval = g
        .get("cfg_interval")
        .and_then(Value::as_array)
        .and_then(|a| Some((a.first()?.as_f64()?, a.get(1)?.as_f64()?)))
        .ok_or_else(|| BagelError::config(fx_path, "config.gen.cfg_interval", "missing"))?;
    if g.get("cfg_renorm_type").and_then(Value::as_str) != Some("global")
        || num("cfg_img_scale")? != 1.0
    {
        return Err(BagelError::config(
            fx_path,
            "config.gen",
            "only text guidance with global renorm is supported",
        ));
    }
    // `num_timesteps` times give one Euler step fewer.
    let sampler = EulerSampler::new(EulerSamplerConfig {
        steps: (num("num_timesteps")? as usize).saturating_sub(1),
        shift: num("timestep_shift")? as f32,
        guidance_scale: num("cfg_text_scale")? as f32,
        guidance_interval: (interval.0 as f32, interval.1 as f32),
        cfg_renorm: true,
        cfg_renorm_min: num("cfg_renorm_min")? as f32,
    });
    let grid = cases.i64s("flow.grid")?;
    let (h, w) = match grid.as_slice() {
        [h, w] if *h > 0 && *w > 0 => (*h as usize, *w as usize),
        _ => return Err(fixture_err(&cases.path, format!("flow.grid is {grid:?}"))),
    };
    let mut cond = KvCache::new();
    model.prefill_text(
        &mut cond,
        &model.wrap_text(&cases.ids("meta.gen.prompt_ids_raw")?),
        false,
    )?;
    let uncond = KvCache::new();
    let noise: Tensor<B, 2> = cases.tensor_f32("gen.noise", &device)?;
    let latent = model.sample_latent(&cond, &uncond, noise, (h, w), &sampler)?;
    r.tensor(cases, "gen.latent", latent.clone())?;
    let lat = unpatchify(latent.unsqueeze::<3>(), (h, w), c.latent_patch_size);
    r.tensor(cases, "gen.decoded", vae.decode(lat))?;
    Ok(())
}
