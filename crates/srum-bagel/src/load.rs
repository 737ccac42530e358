//! Loading the official checkpoint: `ema.safetensors` by official tensor name, read through a
//! memory map one tensor at a time, converted from bf16/f16/f32 to the backend's float type.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Tensor, TensorData, backend::Backend};
use safetensors::{Dtype, SafeTensors};

use crate::bagel::Bagel;
use crate::config::BagelConfig;
use crate::error::{BagelError, Result};
use crate::vae::{AutoEncoder, VaeConfig};

/// Prefixes of the official tensors of the understanding side: read when the model has a ViT,
/// skipped (not an error) when it was built without one.
pub const KNOWN_UNUSED_PREFIXES: [&str; 3] = ["vit_model.", "connector.", "vit_pos_embed."];

/// PEFT's prefix of adapter tensor names.
pub(crate) const PEFT_PREFIX: &str = "base_model.model.";

/// Whether an official name is an adapter's.
pub(crate) fn is_adapter(official: &str) -> bool {
    official.starts_with(PEFT_PREFIX)
}

const VIT_LAYERS: &str = "vit_model.vision_model.encoder.layers.";

/// The official name of the parameter at burn module path `path`.
pub(crate) fn official_name(path: &str) -> String {
    // Adapters take PEFT's names: `base_model.model.<projection>.lora_A.weight`.
    for (ours, peft) in [("_lora.lora_a.", ".lora_A."), ("_lora.lora_b.", ".lora_B.")] {
        if let Some((stem, rest)) = path.split_once(ours) {
            return format!("{PEFT_PREFIX}{stem}{peft}{rest}");
        }
    }
    // burn's RmsNorm calls its gain `gamma`; PyTorch's Qwen2RMSNorm calls it `weight`.
    if let Some(stem) = path.strip_suffix(".gamma") {
        return official_name(&format!("{stem}.weight"));
    }
    // burn's LayerNorm and GroupNorm call their shift `beta`.
    if let Some(stem) = path.strip_suffix(".beta") {
        return format!("{stem}.bias");
    }
    if let Some(rest) = path.strip_prefix("time_embedder.fc_in.") {
        return format!("time_embedder.mlp.0.{rest}");
    }
    if let Some(rest) = path.strip_prefix("time_embedder.fc_out.") {
        return format!("time_embedder.mlp.2.{rest}");
    }
    path.to_string()
}

/// Linear weights are `[out, in]` in PyTorch and `[in, out]` in burn; the embedding table and
/// the position table have the same layout in both.
pub(crate) fn is_linear_weight(official: &str, rank: usize) -> bool {
    rank == 2
        && official.ends_with(".weight")
        && !official.ends_with("embed_tokens.weight")
        && !official.ends_with("position_embedding.weight")
}

/// A memory-mapped safetensors file.
struct MappedFile {
    path: PathBuf,
    map: memmap2::Mmap,
}

impl MappedFile {
    fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| BagelError::io(path, e))?;
        // SAFETY: the map is read-only and lives only while loading; a checkpoint being
        // rewritten underneath us is outside what this loader supports, as with any reader.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| BagelError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
        })
    }

    fn tensors(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.map)
            .map_err(|e| BagelError::checkpoint(&self.path, format!("not a safetensors file: {e}")))
    }
}

/// Values of a tensor as f32, row-major.
fn to_f32(dtype: Dtype, bytes: &[u8]) -> std::result::Result<Vec<f32>, String> {
    match dtype {
        Dtype::BF16 => Ok(bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()),
        Dtype::F16 => Ok(bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()),
        Dtype::F32 => Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()),
        other => Err(format!("dtype {other:?} (expected BF16, F16 or F32)")),
    }
}

pub(crate) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

struct Filler<'a> {
    st: &'a SafeTensors<'a>,
    want: &'a dyn Fn(&str) -> bool,
    stack: Vec<String>,
    seen: HashSet<String>,
    missing: Vec<String>,
    misshapen: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for Filler<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let name = official_name(&self.stack.join("."));
        if !(self.want)(&name) {
            return param;
        }
        // The shape comes without materialising the (lazy) random initial value.
        let want = param.lazy_shape().dims::<D>().to_vec();
        let Ok(view) = self.st.tensor(&name) else {
            self.missing.push(name);
            return param;
        };
        self.seen.insert(name.clone());
        let linear = is_linear_weight(&name, D);
        let file_shape = view.shape().to_vec();
        let expected: Vec<usize> = if linear {
            want.iter().rev().copied().collect()
        } else {
            want.clone()
        };
        if file_shape != expected {
            self.misshapen
                .push(format!("`{name}`: file {file_shape:?}, model {expected:?}"));
            return param;
        }
        let values = match to_f32(view.dtype(), view.data()) {
            Ok(v) => v,
            Err(e) => {
                self.misshapen.push(format!("`{name}`: {e}"));
                return param;
            }
        };
        let values = if linear {
            transpose(&values, file_shape[0], file_shape[1])
        } else {
            values
        };
        let device = param.lazy_device();
        let id = param.id;
        let tensor = Tensor::<B, D>::from_data(TensorData::new(values, want), &device);
        param.transform_for_load(tensor, id)
    }
}

/// Fills `module`'s parameters from the safetensors file at `path` by official name. Every
/// missing, unexpected or misshapen tensor is named in the one error; tensors for which
/// `skip(name)` holds are left unread.
fn fill<B: Backend, M: Module<B>>(
    module: M,
    path: &Path,
    skip: impl Fn(&str) -> bool,
    want: &dyn Fn(&str) -> bool,
) -> Result<M> {
    let file = MappedFile::open(path)?;
    let st = file.tensors()?;
    let mut filler = Filler {
        st: &st,
        want,
        stack: Vec::new(),
        seen: HashSet::new(),
        missing: Vec::new(),
        misshapen: Vec::new(),
    };
    let module = module.map(&mut filler);
    let mut unexpected: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| !filler.seen.contains(*n) && !skip(n))
        .map(str::to_string)
        .collect();
    unexpected.sort();
    let mut problems = Vec::new();
    if !filler.missing.is_empty() {
        problems.push(format!("missing tensors: {}", filler.missing.join(", ")));
    }
    if !unexpected.is_empty() {
        problems.push(format!("unexpected tensors: {}", unexpected.join(", ")));
    }
    if !filler.misshapen.is_empty() {
        problems.push(format!(
            "misshapen tensors: {}",
            filler.misshapen.join("; ")
        ));
    }
    if problems.is_empty() {
        Ok(module)
    } else {
        Err(BagelError::checkpoint(path, problems.join(". ")))
    }
}

/// Fills `model`'s parameters from the safetensors file at `path` by official name. Every
/// missing, unexpected or misshapen tensor is named in the one error. Skipped: the ViT side
/// ([`KNOWN_UNUSED_PREFIXES`]) when the model has no ViT, and the ViT layers beyond those
/// built (the official file holds one more than BAGEL runs).
pub fn load_weights<B: Backend>(model: Bagel<B>, path: impl AsRef<Path>) -> Result<Bagel<B>> {
    let built = model.config().vit.as_ref().map(|v| v.num_hidden_layers);
    fill(
        model,
        path.as_ref(),
        |name: &str| match built {
            None => KNOWN_UNUSED_PREFIXES.iter().any(|p| name.starts_with(p)),
            Some(n) => name
                .strip_prefix(VIT_LAYERS)
                .and_then(|rest| rest.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| i >= n),
        },
        &|name| !is_adapter(name),
    )
}

/// Fills the adapters of `model` from a PEFT `adapter_model.safetensors`; every adapter must be
/// there and nothing else may be.
pub(crate) fn load_adapter_weights<B: Backend>(model: Bagel<B>, path: &Path) -> Result<Bagel<B>> {
    fill(model, path, |_| false, &is_adapter)
}

/// Sets BAGEL's four special ids from the tokenizer, as the official `add_special_tokens`
/// does; `path` names the tokenizer in errors.
pub(crate) fn special_ids_from(
    config: &mut BagelConfig,
    tokenizer: &tokenizers::Tokenizer,
    path: &Path,
) -> Result<()> {
    let id = |token: &str| {
        tokenizer
            .token_to_id(token)
            .ok_or_else(|| BagelError::config(path, token, "BAGEL's special token is missing"))
    };
    config.bos_token_id = id("<|im_start|>")?;
    config.eos_token_id = id("<|im_end|>")?;
    config.start_of_image_id = id("<|vision_start|>")?;
    config.end_of_image_id = id("<|vision_end|>")?;
    Ok(())
}

/// Builds the model described by the checkpoint folder `dir` (see [`BagelConfig::from_dir`];
/// the special token ids come from `dir/tokenizer.json` when there is one) and loads
/// `dir/ema.safetensors` into it.
pub fn load_bagel<B: Backend>(dir: impl AsRef<Path>, device: &B::Device) -> Result<Bagel<B>> {
    let dir = dir.as_ref();
    let mut config = BagelConfig::from_dir(dir)?;
    if let Some(tokenizer) = load_tokenizer(dir)? {
        special_ids_from(&mut config, &tokenizer, &dir.join("tokenizer.json"))?;
    }
    load_weights(config.init(device), dir.join("ema.safetensors"))
}

/// The autoencoder of the checkpoint folder `dir`: sizes from `dir/vae_config.json` when
/// present (FLUX's otherwise), weights from `dir/ae.safetensors`.
pub fn load_vae<B: Backend>(dir: impl AsRef<Path>, device: &B::Device) -> Result<AutoEncoder<B>> {
    let dir = dir.as_ref();
    let cfg = dir.join("vae_config.json");
    let config = if cfg.is_file() {
        VaeConfig::from_json(&cfg)?
    } else {
        VaeConfig::new()
    };
    fill(
        config.init(device),
        &dir.join("ae.safetensors"),
        |_| false,
        &|_| true,
    )
}

/// Collects parameters in the official layout (names, `[out, in]` linears) as bf16 bytes.
struct Export<'a> {
    want: &'a dyn Fn(&str) -> bool,
    stack: Vec<String>,
    out: Vec<(String, Vec<usize>, Vec<u8>)>,
}

impl<B: Backend> burn::module::ModuleVisitor<B> for Export<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let name = official_name(&self.stack.join("."));
        if !(self.want)(&name) {
            return;
        }
        let t = param.val();
        let mut shape = t.dims().to_vec();
        let mut v = t
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default();
        if is_linear_weight(&name, D) {
            v = transpose(&v, shape[0], shape[1]);
            shape.reverse();
        }
        let bytes = v
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect();
        self.out.push((name, shape, bytes));
    }
}

/// Every parameter of `module` under its official name, `[out, in]` for linears, as bf16
/// bytes: what the official checkpoints hold.
pub(crate) fn export_bf16<B: Backend, M: Module<B>>(
    module: &M,
    want: &dyn Fn(&str) -> bool,
) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let mut e = Export {
        want,
        stack: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut e);
    e.out.sort_by(|a, b| a.0.cmp(&b.0));
    e.out
}

/// Writes `module`'s parameters to `path` as the official code stores them (bf16, official
/// names), so `load_state_dict` of the official model reads the file back. LoRA adapters are
/// not included (see [`crate::Bagel::save_lora`]).
pub fn save_weights<B: Backend, M: Module<B>>(module: &M, path: impl AsRef<Path>) -> Result<()> {
    write_bf16(&export_bf16(module, &|n| !is_adapter(n)), path.as_ref())
}

/// Writes exported entries as a safetensors file, atomically.
pub(crate) fn write_bf16(entries: &[(String, Vec<usize>, Vec<u8>)], path: &Path) -> Result<()> {
    let views = entries
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(Dtype::BF16, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| BagelError::checkpoint(path, format!("`{n}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| BagelError::checkpoint(path, e.to_string()))?;
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| BagelError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| BagelError::io(path, e))
}

/// The tokenizer in `dir/tokenizer.json`, or `None` when the folder has none.
pub fn load_tokenizer(dir: impl AsRef<Path>) -> Result<Option<tokenizers::Tokenizer>> {
    let path = dir.as_ref().join("tokenizer.json");
    if !path.is_file() {
        return Ok(None);
    }
    tokenizers::Tokenizer::from_file(&path)
        .map(Some)
        .map_err(|e| BagelError::config(&path, "<file>", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    fn tiny() -> BagelConfig {
        BagelConfig::new()
            .with_vocab_size(16)
            .with_hidden_size(8)
            .with_intermediate_size(12)
            .with_num_hidden_layers(1)
            .with_num_attention_heads(2)
            .with_num_key_value_heads(1)
            .with_latent_channel(1)
            .with_max_latent_size(2)
            .with_frequency_embedding_size(6)
    }

    fn write(entries: &[(String, Vec<usize>, Vec<u8>)], path: &Path) {
        let views: Vec<_> = entries
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(Dtype::BF16, s.clone(), b).unwrap(),
                )
            })
            .collect();
        std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    fn export(model: &Bagel<B>) -> Vec<(String, Vec<usize>, Vec<u8>)> {
        export_bf16(model, &|_| true)
    }

    #[test]
    fn round_trip_and_every_problem_named() {
        let device = Default::default();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ema.safetensors");
        let a = tiny().init::<B>(&device);
        let mut entries = export(&a);
        let names: Vec<_> = entries.iter().map(|e| e.0.clone()).collect();
        assert!(names.contains(&"time_embedder.mlp.2.bias".to_string()));
        assert!(names.contains(
            &"language_model.model.layers.0.self_attn.q_norm_moe_gen.weight".to_string()
        ));
        assert!(names.contains(&"latent_pos_embed.pos_embed".to_string()));
        entries.push(("vit_model.x.weight".into(), vec![1], vec![0, 0]));
        write(&entries, &path);
        let b = load_weights(tiny().init::<B>(&device), &path).unwrap();
        let ea = export(&a);
        let eb = export(&b);
        assert_eq!(ea, eb, "bf16 values survive a round trip");

        // Rename one, drop one, misshape one, add one.
        let mut bad = entries.clone();
        bad[0].0 = format!("{}_renamed", bad[0].0);
        let dropped = bad.remove(1).0;
        let i = bad
            .iter()
            .position(|e| e.0.ends_with("vae2llm.bias"))
            .unwrap();
        bad[i].1 = vec![bad[i].1[0] + 1];
        bad[i].2.extend([0, 0]);
        write(&bad, &path);
        let err = load_weights(tiny().init::<B>(&device), &path)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&entries[0].0), "{err}");
        assert!(err.contains(&format!("{}_renamed", entries[0].0)), "{err}");
        assert!(err.contains(&dropped), "{err}");
        assert!(err.contains("`vae2llm.bias`"), "{err}");
        assert!(!err.contains("vit_model"), "{err}");
    }
}
