//! LoRA (low-rank adapters) on chosen linear layers of the backbone: `y = W x + (alpha / r)
//! B A dropout(x)`, `A` random, `B` zero, so a fresh adapter changes nothing. The base weights
//! are frozen; adapters save in the PEFT layout and merge into the base on request.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::error::{BagelError, Result};

/// Which layers get adapters and how large they are. The defaults adapt the generation
/// expert's attention and MLP projections, rank 16, alpha 16, no dropout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank `r` of `B A`.
    pub rank: usize,
    /// `alpha`; the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f64,
    /// An adapter goes on every projection whose official module name (e.g.
    /// `language_model.model.layers.3.self_attn.q_proj_moe_gen`) ends with one of these, as PEFT's
    /// `target_modules` match.
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: [
                "self_attn.q_proj_moe_gen",
                "self_attn.k_proj_moe_gen",
                "self_attn.v_proj_moe_gen",
                "self_attn.o_proj_moe_gen",
                "mlp_moe_gen.gate_proj",
                "mlp_moe_gen.up_proj",
                "mlp_moe_gen.down_proj",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl LoraConfig {
    /// Rejects a zero rank, a dropout outside `[0, 1)` or no targets.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, m: String| Err(BagelError::config("<lora config>", field, m));
        if self.rank == 0 {
            return bad("rank", "must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(
                "dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            );
        }
        if !self.alpha.is_finite() {
            return bad("alpha", "must be finite".into());
        }
        if self.target_modules.is_empty() {
            return bad("target_modules", "names no layer".into());
        }
        Ok(())
    }

    /// Whether the projection with official module name `name` gets an adapter.
    pub fn targets(&self, name: &str) -> bool {
        self.target_modules
            .iter()
            .any(|t| name == t || name.ends_with(&format!(".{t}")))
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The PEFT `adapter_config.json` for these settings.
    pub fn peft_json(&self) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.target_modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "inference_mode": false,
            "modules_to_save": null,
            "task_type": null,
        })
    }

    /// Reads the settings back from a PEFT `adapter_config.json`.
    pub fn from_peft_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| BagelError::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| BagelError::config(path, "<file>", format!("not valid JSON: {e}")))?;
        let num = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_f64)
                .ok_or_else(|| BagelError::config(path, k, "missing or not a number"))
        };
        let targets = v
            .get("target_modules")
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect::<Vec<_>>()
            })
            .ok_or_else(|| BagelError::config(path, "target_modules", "missing or not a list"))?;
        let c = Self {
            rank: num("r")? as usize,
            alpha: num("lora_alpha")?,
            dropout: v
                .get("lora_dropout")
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(0.0),
            target_modules: targets,
        };
        c.validate()
            .map_err(|e| BagelError::config(path, "<file>", e.to_string()))?;
        Ok(c)
    }
}

/// One adapter: `lora_A` (`in -> r`, random), `lora_B` (`r -> out`, zero).
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    lora_a: Linear<B>,
    lora_b: Linear<B>,
    dropout: Dropout,
    scale: f64,
}

impl<B: Backend> LoraAdapter<B> {
    /// A fresh adapter for a `d_in -> d_out` projection: A as PEFT initialises it (Kaiming
    /// uniform), B zero.
    pub fn new(d_in: usize, d_out: usize, config: &LoraConfig, device: &B::Device) -> Self {
        Self {
            lora_a: LinearConfig::new(d_in, config.rank)
                .with_bias(false)
                .with_initializer(Initializer::KaimingUniform {
                    gain: 1.0 / 3f64.sqrt(),
                    fan_out_only: false,
                })
                .init(device),
            lora_b: LinearConfig::new(config.rank, d_out)
                .with_bias(false)
                .with_initializer(Initializer::Zeros)
                .init(device),
            dropout: DropoutConfig::new(config.dropout).init(),
            scale: config.scale(),
        }
    }

    /// The update `(alpha / r) B A dropout(x)`.
    ///
    /// Shapes: `x`: `[n, d_in]` to `[n, d_out]`.
    pub fn delta<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.lora_b
            .forward(self.lora_a.forward(self.dropout.forward(x)))
            .mul_scalar(self.scale)
    }

    /// `(alpha / r) A B` in burn's `[in, out]` layout: what merging adds to the base weight.
    pub(crate) fn weight_delta(&self) -> Tensor<B, 2> {
        self.lora_a
            .weight
            .val()
            .matmul(self.lora_b.weight.val())
            .mul_scalar(self.scale)
    }
}

/// A base projection, its adapter when it has one: the one place both are applied.
pub(crate) fn project<B: Backend>(
    base: &Linear<B>,
    adapter: &Option<LoraAdapter<B>>,
    x: Tensor<B, 2>,
) -> Tensor<B, 2> {
    match adapter {
        Some(a) => base.forward(x.clone()) + a.delta(x),
        None => base.forward(x),
    }
}

/// Adds an adapter when `name` is targeted.
pub(crate) fn attach<B: Backend>(
    slot: &mut Option<LoraAdapter<B>>,
    base: &Linear<B>,
    name: &str,
    config: &LoraConfig,
) {
    if config.targets(name) {
        let [d_in, d_out] = base.weight.shape().dims();
        let device = base.weight.device();
        *slot = Some(LoraAdapter::new(d_in, d_out, config, &device));
    }
}

/// Folds an adapter into its base weight and removes it.
pub(crate) fn merge<B: Backend>(slot: &mut Option<LoraAdapter<B>>, base: &mut Linear<B>) {
    if let Some(a) = slot.take() {
        let w = base.weight.val() + a.weight_delta();
        base.weight = Param::from_tensor(w).set_require_grad(base.weight.is_require_grad());
    }
}

/// Official names of every adapter parameter of a module.
struct AdapterNames {
    stack: Vec<String>,
    found: usize,
}

impl<B: Backend> burn::module::ModuleVisitor<B> for AdapterNames {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<B, D>>) {
        if crate::load::is_adapter(&crate::load::official_name(&self.stack.join("."))) {
            self.found += 1;
        }
    }
}

impl<B: Backend> crate::bagel::Bagel<B> {
    /// Freezes every weight (no gradients at all) and adds fresh adapters where `config`
    /// targets: the model computes exactly what it did until the adapters train.
    pub fn with_lora(self, config: &LoraConfig) -> Result<Self> {
        config.validate()?;
        let mut model = self.no_grad();
        model.language_model.model.attach_lora(config);
        if !model.has_lora() {
            return Err(BagelError::config(
                "<lora config>",
                "target_modules",
                format!("{:?} matches no projection", config.target_modules),
            ));
        }
        Ok(model)
    }

    /// Whether any adapter is attached.
    pub fn has_lora(&self) -> bool {
        let mut v = AdapterNames {
            stack: Vec::new(),
            found: 0,
        };
        self.visit(&mut v);
        v.found > 0
    }

    /// Folds every adapter into its base weight (`W + (alpha / r) B A`) and removes them.
    pub fn merge_lora(mut self) -> Self {
        self.language_model.model.merge_lora();
        self
    }

    /// Writes the adapters in the PEFT layout: `dir/adapter_config.json` and
    /// `dir/adapter_model.safetensors` (bf16, `base_model.model.<official name>.lora_A.weight`
    /// `[r, in]` and `.lora_B.weight` `[out, r]`).
    pub fn save_lora(&self, dir: impl AsRef<Path>, config: &LoraConfig) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| BagelError::io(dir, e))?;
        let cfg = dir.join("adapter_config.json");
        let text = serde_json::to_string_pretty(&config.peft_json())
            .map_err(|e| BagelError::config(&cfg, "<file>", e.to_string()))?;
        std::fs::write(&cfg, text + "\n").map_err(|e| BagelError::io(&cfg, e))?;
        let entries = crate::load::export_bf16(self, &crate::load::is_adapter);
        crate::load::write_bf16(&entries, &dir.join("adapter_model.safetensors"))
    }

    /// Attaches the adapters a PEFT folder describes (`adapter_config.json`) and fills them
    /// from its `adapter_model.safetensors`.
    pub fn load_lora(self, dir: impl AsRef<Path>) -> Result<(Self, LoraConfig)> {
        let dir = dir.as_ref();
        let config = LoraConfig::from_peft_json(dir.join("adapter_config.json"))?;
        let model = self.with_lora(&config)?;
        let model =
            crate::load::load_adapter_weights(model, &dir.join("adapter_model.safetensors"))?;
        Ok((model, config))
    }
}
