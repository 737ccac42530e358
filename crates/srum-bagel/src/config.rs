//! [`BagelConfig`]: the sizes of the language backbone and the settings of the generation head,
//! read from an official checkpoint folder.

use std::path::{Path, PathBuf};

use burn::config::Config;
use serde_json::Value;

use crate::error::BagelError;
use crate::vit::VitConfig;

// Not `Result`: burn's `Config` derive expands code that names `Result` with serde's errors.
type Res<T> = std::result::Result<T, BagelError>;

/// Sizes and settings of a BAGEL mixture-of-transformers model. The defaults are BAGEL-7B-MoT's
/// (Qwen2.5-7B backbone, FLUX VAE latents, the inference settings of the official app).
#[derive(Config, Debug, PartialEq)]
pub struct BagelConfig {
    /// Vocabulary size (rows of `embed_tokens` and `lm_head`).
    #[config(default = 152064)]
    pub vocab_size: usize,
    /// Width of the backbone.
    #[config(default = 3584)]
    pub hidden_size: usize,
    /// Hidden width of each SwiGLU MLP.
    #[config(default = 18944)]
    pub intermediate_size: usize,
    /// Decoder layers.
    #[config(default = 28)]
    pub num_hidden_layers: usize,
    /// Query heads.
    #[config(default = 28)]
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    #[config(default = 4)]
    pub num_key_value_heads: usize,
    /// RoPE base period.
    #[config(default = 1_000_000.0)]
    pub rope_theta: f64,
    /// Epsilon of every RMSNorm.
    #[config(default = 1e-6)]
    pub rms_norm_eps: f64,
    /// Per-head RMSNorm on queries and keys before RoPE (BAGEL always turns it on).
    #[config(default = true)]
    pub qk_norm: bool,
    /// Side of a latent patch: `p x p` VAE latent pixels make one token.
    #[config(default = 2)]
    pub latent_patch_size: usize,
    /// Channels of the VAE latent (`z_channels`).
    #[config(default = 16)]
    pub latent_channel: usize,
    /// Side of the latent position table, in patches (64 in the official inference app).
    #[config(default = 64)]
    pub max_latent_size: usize,
    /// Shift of the flow timesteps, `s t / (1 + (s - 1) t)`, used by the training forward.
    #[config(default = 1.0)]
    pub timestep_shift: f64,
    /// Width of the sinusoidal timestep features fed to the time embedder.
    #[config(default = 256)]
    pub frequency_embedding_size: usize,
    /// `<|im_start|>`, opening every text split.
    #[config(default = 151644)]
    pub bos_token_id: u32,
    /// `<|im_end|>`, closing every text split.
    #[config(default = 151645)]
    pub eos_token_id: u32,
    /// `<|vision_start|>`, opening every image split.
    #[config(default = 151652)]
    pub start_of_image_id: u32,
    /// `<|vision_end|>`, closing every image split.
    #[config(default = 151653)]
    pub end_of_image_id: u32,
    /// Side of the ViT position grid the backbone's `vit_pos_embed` covers, in patches.
    #[config(default = 70)]
    pub vit_max_num_patch_per_side: usize,
    /// The understanding ViT; `None` builds the backbone and generation heads alone.
    #[config(default = "None")]
    pub vit: Option<VitConfig>,
}

const BUILT_IN: &str = "<built-in config>";

fn usize_field(v: &Value, path: &Path, key: &str) -> Res<Option<usize>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            BagelError::config(path, key, format!("expected a whole number, got {x}"))
        }),
    }
}

fn f64_field(v: &Value, path: &Path, key: &str) -> Res<Option<f64>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| BagelError::config(path, key, format!("expected a number, got {x}"))),
    }
}

fn required<T>(value: Option<T>, path: &Path, key: &str) -> Res<T> {
    value.ok_or_else(|| BagelError::config(path, key, "missing"))
}

fn read_json(path: &Path) -> Res<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| BagelError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| BagelError::config(path, "<file>", format!("not valid JSON: {e}")))
}

impl BagelConfig {
    /// Per-head width, `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Width of one latent token, `latent_patch_size^2 * latent_channel` (64 for BAGEL-7B).
    pub fn patch_latent_dim(&self) -> usize {
        self.latent_patch_size * self.latent_patch_size * self.latent_channel
    }

    /// Reads the backbone sizes from an official `llm_config.json` (a Hugging Face Qwen2
    /// config); the generation settings keep their defaults. BAGEL forces `qk_norm` on and
    /// unties `lm_head`, as the official loaders do.
    pub fn from_llm_config_json(path: impl AsRef<Path>) -> Res<Self> {
        let path = path.as_ref();
        let v = read_json(path)?;
        let act = v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("silu");
        if act != "silu" {
            return Err(BagelError::config(
                path,
                "hidden_act",
                format!("`{act}` is not supported (only `silu`)"),
            ));
        }
        if let Some(s) = v.get("rope_scaling")
            && !s.is_null()
        {
            return Err(BagelError::config(
                path,
                "rope_scaling",
                "only the default RoPE (null) is supported",
            ));
        }
        if v.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
            return Err(BagelError::config(
                path,
                "use_sliding_window",
                "sliding-window attention is not supported",
            ));
        }
        let hidden_size = required(usize_field(&v, path, "hidden_size")?, path, "hidden_size")?;
        let heads = required(
            usize_field(&v, path, "num_attention_heads")?,
            path,
            "num_attention_heads",
        )?;
        let config = Self::new()
            .with_vocab_size(required(
                usize_field(&v, path, "vocab_size")?,
                path,
                "vocab_size",
            )?)
            .with_hidden_size(hidden_size)
            .with_intermediate_size(required(
                usize_field(&v, path, "intermediate_size")?,
                path,
                "intermediate_size",
            )?)
            .with_num_hidden_layers(required(
                usize_field(&v, path, "num_hidden_layers")?,
                path,
                "num_hidden_layers",
            )?)
            .with_num_attention_heads(heads)
            // Hugging Face's Qwen2 falls back to multi-head attention when the field is absent.
            .with_num_key_value_heads(
                usize_field(&v, path, "num_key_value_heads")?.unwrap_or(heads),
            )
            .with_rope_theta(f64_field(&v, path, "rope_theta")?.unwrap_or(10_000.0))
            .with_rms_norm_eps(f64_field(&v, path, "rms_norm_eps")?.unwrap_or(1e-6));
        config.validate_at(path)?;
        Ok(config)
    }

    /// Applies the BAGEL settings present in `v` (`latent_patch_size`, `latent_channel`,
    /// `max_latent_size`, `timestep_shift`, `qk_norm` and the special token ids
    /// `bos_token_id`, `eos_token_id`, `start_of_image`, `end_of_image`); other keys are ignored.
    /// `path` only names the source in errors.
    pub fn with_bagel_overrides(mut self, v: &Value, path: impl AsRef<Path>) -> Res<Self> {
        let path = path.as_ref();
        if let Some(n) = usize_field(v, path, "latent_patch_size")? {
            self.latent_patch_size = n;
        }
        if let Some(n) = usize_field(v, path, "latent_channel")? {
            self.latent_channel = n;
        }
        if let Some(n) = usize_field(v, path, "max_latent_size")? {
            self.max_latent_size = n;
        }
        if let Some(n) = usize_field(v, path, "vit_max_num_patch_per_side")? {
            self.vit_max_num_patch_per_side = n;
        }
        if let Some(act) = v.get("connector_act")
            && act.as_str() != Some("gelu_pytorch_tanh")
        {
            return Err(BagelError::config(
                path,
                "connector_act",
                format!("{act} is not supported (only \"gelu_pytorch_tanh\")"),
            ));
        }
        if v.get("interpolate_pos").and_then(Value::as_bool) == Some(true) {
            return Err(BagelError::config(
                path,
                "interpolate_pos",
                "interpolated ViT positions are not supported (BAGEL-7B-MoT uses false)",
            ));
        }
        if let Some(x) = f64_field(v, path, "timestep_shift")? {
            self.timestep_shift = x;
        }
        if let Some(b) = v.get("qk_norm") {
            self.qk_norm = b
                .as_bool()
                .ok_or_else(|| BagelError::config(path, "qk_norm", "expected true or false"))?;
        }
        let token =
            |key: &str| -> Res<Option<u32>> { Ok(usize_field(v, path, key)?.map(|n| n as u32)) };
        if let Some(t) = token("bos_token_id")? {
            self.bos_token_id = t;
        }
        if let Some(t) = token("eos_token_id")? {
            self.eos_token_id = t;
        }
        if let Some(t) = token("start_of_image")?.or(token("start_of_image_id")?) {
            self.start_of_image_id = t;
        }
        if let Some(t) = token("end_of_image")?.or(token("end_of_image_id")?) {
            self.end_of_image_id = t;
        }
        self.validate_at(path)?;
        Ok(self)
    }

    /// Reads a checkpoint folder: `llm_config.json` (required) for the backbone,
    /// `vit_config.json` (optional) for the ViT, then the BAGEL settings found in
    /// `config.json` (optional; see [`BagelConfig::with_bagel_overrides`]).
    pub fn from_dir(dir: impl AsRef<Path>) -> Res<Self> {
        let dir = dir.as_ref();
        let mut config = Self::from_llm_config_json(dir.join("llm_config.json"))?;
        let vit = dir.join("vit_config.json");
        if vit.is_file() {
            config.vit = Some(VitConfig::from_json(&vit)?);
        }
        let extra = dir.join("config.json");
        if extra.is_file() {
            let v = read_json(&extra)?;
            return config.with_bagel_overrides(&v, &extra);
        }
        Ok(config)
    }

    /// Checks that the sizes describe a buildable model.
    pub fn validate(&self) -> Res<()> {
        self.validate_at(Path::new(BUILT_IN))
    }

    fn validate_at(&self, path: &Path) -> Res<()> {
        let bad = |field: &str, message: String| {
            Err(BagelError::config(PathBuf::from(path), field, message))
        };
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("latent_patch_size", self.latent_patch_size),
            ("latent_channel", self.latent_channel),
            ("max_latent_size", self.max_latent_size),
        ];
        for (field, n) in positive {
            if n == 0 {
                return bad(field, "must be positive".into());
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(
                "num_attention_heads",
                format!("head width {} is odd; RoPE needs it even", self.head_dim()),
            );
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            );
        }
        if !self.hidden_size.is_multiple_of(4) {
            return bad(
                "hidden_size",
                "the 2D sin-cos latent positions need a multiple of 4".into(),
            );
        }
        if let Some(vit) = &self.vit {
            vit.validate_at(path)?;
            if self.vit_max_num_patch_per_side == 0 {
                return bad("vit_max_num_patch_per_side", "must be positive".into());
            }
        }
        if self.frequency_embedding_size == 0 {
            return bad("frequency_embedding_size", "must be positive".into());
        }
        if self.timestep_shift.is_nan() || self.timestep_shift <= 0.0 {
            return bad(
                "timestep_shift",
                format!("must be positive, got {}", self.timestep_shift),
            );
        }
        Ok(())
    }
}
