//! Weights in safetensors, and directories written atomically.
//!
//! A checkpoint version holds `model.safetensors`, optionally `ema.safetensors` and
//! `reference.safetensors`, `optimizer.mpk` (burn's named MessagePack record, full precision)
//! and `trainer.json` (config, step counters, RNG seed). Versions live in
//! `dir/step-NNNNNNNNN/`, and `dir/LATEST` names the newest complete one; see
//! [`write_dir_atomic`] for why a crash at any point leaves a usable checkpoint.

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

/// Loads f32 safetensors produced by the trainer's checkpoints or [`save_weights`] (or any file with the same
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

/// Name of the pointer file inside a checkpoint directory.
pub const LATEST: &str = "LATEST";

/// Writes a new version of the checkpoint directory `dir`, crash-safe at every point.
///
/// `fill` populates `dir/<version>.tmp`; that folder is synced and renamed to `dir/<version>`,
/// then `dir/LATEST` (written through a temporary file and a rename) is pointed at it, and only
/// then are older versions removed. A crash leaves `LATEST` naming a complete version (or no
/// `LATEST` at all, before the first one is done); leftover `.tmp` folders are ignored.
pub fn write_dir_atomic(
    dir: &Path,
    version: &str,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| SrumError::io(dir, e))?;
    let tmp = dir.join(format!("{version}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| SrumError::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| SrumError::io(&tmp, e))?;
    fill(&tmp)?;
    if let Ok(d) = std::fs::File::open(&tmp) {
        let _ = d.sync_all();
    }
    let done = dir.join(version);
    if done.exists() {
        std::fs::remove_dir_all(&done).map_err(|e| SrumError::io(&done, e))?;
    }
    std::fs::rename(&tmp, &done).map_err(|e| SrumError::io(&done, e))?;
    write_file_atomic(&dir.join(LATEST), version.as_bytes())?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    for entry in std::fs::read_dir(dir)
        .map_err(|e| SrumError::io(dir, e))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != version && name != LATEST && entry.path().is_dir() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

/// The complete version `LATEST` points to inside a checkpoint directory written by
/// [`write_dir_atomic`], or `dir` itself for a flat directory without `LATEST`.
pub fn latest_version(dir: &Path) -> Result<PathBuf> {
    let pointer = dir.join(LATEST);
    match std::fs::read_to_string(&pointer) {
        Ok(v) => {
            let v = v.trim();
            let rel = Path::new(v);
            if v.is_empty()
                || rel.components().count() != 1
                || rel.is_absolute()
                || v.contains("..")
            {
                return Err(ckpt_err(&pointer, format!("`{v}` is not a version name")));
            }
            let p = dir.join(v);
            if !p.is_dir() {
                return Err(ckpt_err(
                    &pointer,
                    format!("names `{v}`, which does not exist"),
                ));
            }
            Ok(p)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(dir.to_path_buf()),
        Err(e) => Err(SrumError::io(&pointer, e)),
    }
}
