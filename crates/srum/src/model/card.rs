//! `model.json`: which model a directory of weights belongs to, and its config.

use std::path::Path;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{Result, SrumError};

/// The `model.json` next to a model's `model.safetensors`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard {
    /// Model kind (`"toy-umm"`, `"tiny-umm"`, ...).
    pub kind: String,
    /// The model's config.
    pub config: serde_json::Value,
}

impl ModelCard {
    /// Writes `dir/model.json` (atomically) for a model of `kind` with `config`.
    pub fn write(dir: &Path, kind: &str, config: &impl Serialize) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| SrumError::io(dir, e))?;
        let card = ModelCard {
            kind: kind.into(),
            config: serde_json::to_value(config).map_err(|e| SrumError::Model(e.to_string()))?,
        };
        let json = serde_json::to_vec_pretty(&card).map_err(|e| SrumError::Model(e.to_string()))?;
        crate::train::write_file_atomic(&dir.join("model.json"), &json)
    }

    /// Reads `dir/model.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("model.json");
        let bytes = std::fs::read(&path).map_err(|e| SrumError::io(&path, e))?;
        Self::parse(&bytes, &path)
    }

    /// Parses the bytes of a `model.json`; `path` names them in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| SrumError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("not a model card: {e}"),
        })
    }

    /// Reads `dir/model.json`, checks it is of `kind` and returns its config.
    pub fn read_config<C: DeserializeOwned>(dir: &Path, kind: &str) -> Result<C> {
        Self::read(dir)?.into_config(kind, &dir.join("model.json"))
    }

    /// Checks the card is of `kind` and returns its config; `path` names the card in errors.
    pub fn into_config<C: DeserializeOwned>(self, kind: &str, path: &Path) -> Result<C> {
        if self.kind != kind {
            return Err(SrumError::Checkpoint {
                path: path.to_path_buf(),
                message: format!("model kind `{}`, expected `{kind}`", self.kind),
            });
        }
        serde_json::from_value(self.config).map_err(|e| SrumError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("bad config: {e}"),
        })
    }
}
