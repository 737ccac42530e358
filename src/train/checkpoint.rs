//! Weights in safetensors, and directories written atomically.
//!
//! A checkpoint directory holds `model.safetensors`, optionally `ema.safetensors`,
//! `optimizer.mpk` (burn's named MessagePack record, full precision) and `trainer.json`
//! (config, step counters, RNG seed). It is written to a temporary sibling directory, synced,
//! then renamed into place, so a crash leaves either the old checkpoint or the new one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ParamId};
use burn::tensor::backend::Backend;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::params::{collect_params, load_params};
use crate::error::{Result, SrumError};

const IDS_KEY: &str = "srum.param_ids";

fn ckpt_err(path: &Path, message: impl Into<String>) -> SrumError {
    SrumError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Serializes every float parameter of `module` as f32 safetensors, keyed by module path,
/// with parameter ids in the metadata (so optimizer state can be matched on resume).
pub fn weights_to_safetensors<B: Backend, M: Module<B>>(module: &M) -> Result<Vec<u8>> {
    let params = collect_params(module);
    // Ordered, so the same weights always give the same bytes.
    let mut ids = std::collections::BTreeMap::new();
    let mut bufs = Vec::with_capacity(params.len());
    for p in params {
        let values = p
            .flat
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| SrumError::Shape(format!("tensor `{}`: {e:?}", p.path)))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        ids.insert(p.path.clone(), p.id.val());
        bufs.push((p.path, p.shape, bytes));
    }
    let views = bufs
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| SrumError::Shape(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([(
        IDS_KEY.to_string(),
        serde_json::to_string(&ids).map_err(|e| SrumError::Model(e.to_string()))?,
    )]);
    safetensors::serialize(views, Some(meta)).map_err(|e| SrumError::Model(e.to_string()))
}

/// Loads f32 safetensors produced by [`weights_to_safetensors`] (or any file with the same
/// paths) into `module`. Missing, extra and mis-shaped tensors are all named in one error.
pub fn weights_from_safetensors<B: Backend, M: Module<B>>(
    module: M,
    bytes: &[u8],
    origin: &Path,
) -> Result<M> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| ckpt_err(origin, format!("not a safetensors file: {e}")))?;
    let (_, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| ckpt_err(origin, e.to_string()))?;
    let ids: HashMap<String, u64> = match meta.metadata().as_ref().and_then(|m| m.get(IDS_KEY)) {
        Some(s) => {
            serde_json::from_str(s).map_err(|e| ckpt_err(origin, format!("bad {IDS_KEY}: {e}")))?
        }
        None => HashMap::new(),
    };
    let current: HashMap<String, ParamId> = collect_params(&module)
        .into_iter()
        .map(|p| (p.path, p.id))
        .collect();
    let mut values = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(ckpt_err(
                origin,
                format!("tensor `{name}` is {:?}, expected F32", view.dtype()),
            ));
        }
        let floats: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        // Keep the saved id when there is one (optimizer state refers to it); else the model's.
        let id = ids
            .get(&name)
            .map(|&v| ParamId::from(v))
            .or_else(|| current.get(&name).copied())
            .unwrap_or_default();
        values.insert(name, (id, view.shape().to_vec(), floats));
    }
    load_params(module, &values).map_err(|errs| ckpt_err(origin, errs.join("; ")))
}

/// Saves `module`'s weights to a safetensors file, atomically.
pub fn save_weights<B: Backend, M: Module<B>>(module: &M, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    write_file_atomic(path, &weights_to_safetensors(module)?)
}

/// Loads weights from a safetensors file into `module`.
pub fn load_weights<B: Backend, M: Module<B>>(module: M, path: impl AsRef<Path>) -> Result<M> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| SrumError::io(path, e))?;
    weights_from_safetensors(module, &bytes, path)
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = tmp_sibling(path);
    let mut f = std::fs::File::create(&tmp).map_err(|e| SrumError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| SrumError::io(&tmp, e))?;
    f.sync_all().map_err(|e| SrumError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| SrumError::io(path, e))
}

fn tmp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes a directory atomically: `fill` populates a temporary sibling, which then replaces
/// `dir` (the previous contents are removed only after the new directory is in place).
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| SrumError::io(parent, e))?;
    }
    let tmp = tmp_sibling(dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| SrumError::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| SrumError::io(&tmp, e))?;
    fill(&tmp)?;
    if let Ok(d) = std::fs::File::open(&tmp) {
        let _ = d.sync_all();
    }
    let old = dir.with_file_name(format!(
        ".{}.old-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let had_old = dir.exists();
    if had_old {
        std::fs::rename(dir, &old).map_err(|e| SrumError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| SrumError::io(dir, e))?;
    if had_old {
        std::fs::remove_dir_all(&old).map_err(|e| SrumError::io(&old, e))?;
    }
    Ok(())
}
