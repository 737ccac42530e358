//! Qwen2's SwiGLU feed-forward.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Tensor, backend::Backend};

use crate::lora::{LoraAdapter, LoraConfig, attach, merge, project};

/// Configuration of an [`Mlp`].
#[derive(Config, Debug)]
pub struct MlpConfig {
    /// Input and output width.
    pub hidden_size: usize,
    /// Width of the gated hidden layer.
    pub intermediate_size: usize,
    /// Weight initialisation (checkpoints overwrite it).
    #[config(default = "Initializer::Normal { mean: 0.0, std: 0.02 }")]
    pub initializer: Initializer,
}

impl MlpConfig {
    /// A freshly initialised MLP.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Mlp<B> {
        let linear = |i, o| {
            LinearConfig::new(i, o)
                .with_bias(false)
                .with_initializer(self.initializer.clone())
                .init(device)
        };
        Mlp {
            gate_proj: linear(self.hidden_size, self.intermediate_size),
            up_proj: linear(self.hidden_size, self.intermediate_size),
            down_proj: linear(self.intermediate_size, self.hidden_size),
            gate_proj_lora: None,
            up_proj_lora: None,
            down_proj_lora: None,
        }
    }
}

/// `down(silu(gate(x)) * up(x))`, no biases.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    gate_proj: Linear<B>,
    up_proj: Linear<B>,
    down_proj: Linear<B>,
    gate_proj_lora: Option<LoraAdapter<B>>,
    up_proj_lora: Option<LoraAdapter<B>>,
    down_proj_lora: Option<LoraAdapter<B>>,
}

impl<B: Backend> Mlp<B> {
    /// Shapes: `x`: `[n, hidden]` to `[n, hidden]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let gate = silu(project(&self.gate_proj, &self.gate_proj_lora, x.clone()));
        let up = project(&self.up_proj, &self.up_proj_lora, x);
        project(&self.down_proj, &self.down_proj_lora, gate * up)
    }

    /// Adds adapters to the projections `config` targets; `prefix` is the MLP's official name.
    pub(crate) fn attach_lora(&mut self, prefix: &str, config: &LoraConfig) {
        attach(
            &mut self.gate_proj_lora,
            &self.gate_proj,
            &format!("{prefix}.gate_proj"),
            config,
        );
        attach(
            &mut self.up_proj_lora,
            &self.up_proj,
            &format!("{prefix}.up_proj"),
            config,
        );
        attach(
            &mut self.down_proj_lora,
            &self.down_proj,
            &format!("{prefix}.down_proj"),
            config,
        );
    }

    /// Folds every adapter into its projection.
    pub(crate) fn merge_lora(&mut self) {
        merge(&mut self.gate_proj_lora, &mut self.gate_proj);
        merge(&mut self.up_proj_lora, &mut self.up_proj);
        merge(&mut self.down_proj_lora, &mut self.down_proj);
    }
}
