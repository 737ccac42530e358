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
        serde_json::from_slice(&bytes).map_err(|e| SrumError::Checkpoint {
            path,
            message: format!("not a model card: {e}"),
        })
    }

    /// Reads `dir/model.json`, checks it is of `kind` and returns its config.
    pub fn read_config<C: DeserializeOwned>(dir: &Path, kind: &str) -> Result<C> {
        let card = Self::read(dir)?;
        let path = dir.join("model.json");
        if card.kind != kind {
            return Err(SrumError::Checkpoint {
                path,
                message: format!("model kind `{}`, expected `{kind}`", card.kind),
            });
        }
        serde_json::from_value(card.config).map_err(|e| SrumError::Checkpoint {
            path,
            message: format!("bad config: {e}"),
        })
    }
}
