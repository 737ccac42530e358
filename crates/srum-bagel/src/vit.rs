//! The understanding ViT: SigLIP as BAGEL runs it (NaViT: images of any aspect ratio, one
//! learned position per patch slot `row * max_side + col`, full attention within an image), and
//! the connector that maps its features into the backbone.

use std::path::Path;

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu_approximate, softmax};
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use serde_json::Value;

use crate::error::BagelError;

// Not `Result`: burn's `Config` derive expands code that names `Result` with serde's errors.
type Res<T> = std::result::Result<T, BagelError>;

/// Sizes of the SigLIP vision tower. The defaults are BAGEL-7B-MoT's (SigLIP so400m/14 at 980
/// pixels, 26 of its 27 layers).
#[derive(Config, Debug, PartialEq)]
pub struct VitConfig {
    /// Width of the tower.
    #[config(default = 1152)]
    pub hidden_size: usize,
    /// Hidden width of each MLP.
    #[config(default = 4304)]
    pub intermediate_size: usize,
    /// Layers built and run (the official loaders drop the file's last one).
    #[config(default = 26)]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[config(default = 16)]
    pub num_attention_heads: usize,
    /// Side of a square patch, in pixels.
    #[config(default = 14)]
    pub patch_size: usize,
    /// Side of the position table, in patches (`image_size / patch_size`, 70 for 980 pixels).
    #[config(default = 70)]
    pub max_patches_per_side: usize,
    /// Epsilon of every LayerNorm.
    #[config(default = 1e-6)]
    pub layer_norm_eps: f64,
}

fn field(v: &Value, path: &Path, key: &str) -> Res<usize> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| BagelError::config(path, key, "missing or not a whole number"))
}

impl VitConfig {
    /// Reads an official `vit_config.json` (a Hugging Face SigLIP vision config). As the
    /// official loaders do, one layer fewer than the file names is built (BAGEL takes the
    /// features of the second-to-last layer) and the 2D RoPE variant is off.
    pub fn from_json(path: impl AsRef<Path>) -> Res<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| BagelError::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| BagelError::config(path, "<file>", format!("not valid JSON: {e}")))?;
        if let Some(act) = v.get("hidden_act").and_then(Value::as_str)
            && act != "gelu_pytorch_tanh"
        {
            return Err(BagelError::config(
                path,
                "hidden_act",
                format!("`{act}` is not supported (only `gelu_pytorch_tanh`)"),
            ));
        }
        let layers = field(&v, path, "num_hidden_layers")?;
        if layers < 2 {
            return Err(BagelError::config(
                path,
                "num_hidden_layers",
                "needs at least 2 (the last one is not used)",
            ));
        }
        let patch = field(&v, path, "patch_size")?;
        let image = field(&v, path, "image_size")?;
        let config = Self::new()
            .with_hidden_size(field(&v, path, "hidden_size")?)
            .with_intermediate_size(field(&v, path, "intermediate_size")?)
            .with_num_hidden_layers(layers - 1)
            .with_num_attention_heads(field(&v, path, "num_attention_heads")?)
            .with_patch_size(patch)
            .with_max_patches_per_side(image / patch.max(1))
            .with_layer_norm_eps(
                v.get("layer_norm_eps")
                    .and_then(Value::as_f64)
                    .unwrap_or(1e-6),
            );
        config.validate_at(path)?;
        Ok(config)
    }

    /// Width of one patch token, `3 * patch_size^2` (588 for BAGEL-7B).
    pub fn patch_dim(&self) -> usize {
        3 * self.patch_size * self.patch_size
    }

    pub(crate) fn validate_at(&self, path: &Path) -> Res<()> {
        for (name, n) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("patch_size", self.patch_size),
            ("max_patches_per_side", self.max_patches_per_side),
        ] {
            if n == 0 {
                return Err(BagelError::config(path, name, "must be positive"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(BagelError::config(
                path,
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        Ok(())
    }

    /// A freshly initialised tower.
    pub fn init<B: Backend>(&self, device: &B::Device) -> VitModel<B> {
        let h = self.hidden_size;
        let norm = || {
            LayerNormConfig::new(h)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let layers = (0..self.num_hidden_layers)
            .map(|_| VitLayer {
                self_attn: VitAttention {
                    q_proj: LinearConfig::new(h, h).init(device),
                    k_proj: LinearConfig::new(h, h).init(device),
                    v_proj: LinearConfig::new(h, h).init(device),
                    out_proj: LinearConfig::new(h, h).init(device),
                    heads: self.num_attention_heads,
                },
                layer_norm1: norm(),
                mlp: VitMlp {
                    fc1: LinearConfig::new(h, self.intermediate_size).init(device),
                    fc2: LinearConfig::new(self.intermediate_size, h).init(device),
                },
                layer_norm2: norm(),
            })
            .collect();
        let side = self.max_patches_per_side;
        VitModel {
            vision_model: VisionTransformer {
                embeddings: VitEmbeddings {
                    patch_embedding: LinearConfig::new(self.patch_dim(), h).init(device),
                    position_embedding: EmbeddingConfig::new(side * side, h).init(device),
                },
                encoder: VitEncoder { layers },
                post_layernorm: norm(),
            },
        }
    }
}

/// `vit_model` in the official checkpoint.
#[derive(Module, Debug)]
pub struct VitModel<B: Backend> {
    vision_model: VisionTransformer<B>,
}

#[derive(Module, Debug)]
struct VisionTransformer<B: Backend> {
    embeddings: VitEmbeddings<B>,
    encoder: VitEncoder<B>,
    post_layernorm: LayerNorm<B>,
}

/// The patch embedding, stored as a Linear over `(py, px, c)`-ordered patch pixels (the
/// official `convert_conv2d_to_linear`), and the learned position table.
#[derive(Module, Debug)]
struct VitEmbeddings<B: Backend> {
    patch_embedding: Linear<B>,
    position_embedding: Embedding<B>,
}

#[derive(Module, Debug)]
struct VitEncoder<B: Backend> {
    layers: Vec<VitLayer<B>>,
}

#[derive(Module, Debug)]
struct VitLayer<B: Backend> {
    self_attn: VitAttention<B>,
    layer_norm1: LayerNorm<B>,
    mlp: VitMlp<B>,
    layer_norm2: LayerNorm<B>,
}

#[derive(Module, Debug)]
struct VitAttention<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    out_proj: Linear<B>,
    heads: usize,
}

#[derive(Module, Debug)]
struct VitMlp<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
}

impl<B: Backend> VitAttention<B> {
    /// Full (bidirectional) attention among the `n` patches of one image.
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let [n, h] = x.dims();
        let d = h / self.heads;
        let split = |t: Tensor<B, 2>| t.reshape([n, self.heads, d]).swap_dims(0, 1);
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let scores = q
            .matmul(k.swap_dims(1, 2))
            .mul_scalar(1.0 / (d as f64).sqrt());
        let out = softmax(scores, 2).matmul(v).swap_dims(0, 1).reshape([n, h]);
        self.out_proj.forward(out)
    }
}

impl<B: Backend> VitModel<B> {
    /// Features of one image's patches after the post-layernorm.
    ///
    /// Shapes: `patches`: `[n, 3 * p * p]` (see [`vit_patchify`]), `positions`: `[n]` (see
    /// [`vit_positions`]); returns `[n, vit_hidden]`.
    pub fn forward(&self, patches: Tensor<B, 2>, positions: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        let vm = &self.vision_model;
        let mut x = vm.embeddings.patch_embedding.forward(patches)
            + vm.embeddings
                .position_embedding
                .forward(positions.unsqueeze::<2>())
                .squeeze_dim(0);
        for layer in &vm.encoder.layers {
            let a = layer
                .self_attn
                .forward(layer.layer_norm1.forward(x.clone()));
            x = x + a;
            let m = layer.layer_norm2.forward(x.clone());
            x = x.clone()
                + layer
                    .mlp
                    .fc2
                    .forward(gelu_approximate(layer.mlp.fc1.forward(m)));
        }
        vm.post_layernorm.forward(x)
    }
}

/// Configuration of a [`Connector`].
#[derive(Config, Debug)]
pub struct ConnectorConfig {
    /// ViT width.
    pub in_dim: usize,
    /// Backbone width.
    pub out_dim: usize,
}

impl ConnectorConfig {
    /// A freshly initialised connector.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Connector<B> {
        Connector {
            fc1: LinearConfig::new(self.in_dim, self.out_dim).init(device),
            fc2: LinearConfig::new(self.out_dim, self.out_dim).init(device),
        }
    }
}

/// ViT features to backbone width: Linear, GELU (tanh), Linear (`connector`).
#[derive(Module, Debug)]
pub struct Connector<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
}

impl<B: Backend> Connector<B> {
    /// Shapes: `x`: `[n, vit_hidden]` to `[n, hidden]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.fc2.forward(gelu_approximate(self.fc1.forward(x)))
    }
}

/// An image cut into `p x p` patches, row-major over the patch grid, each patch's pixels
/// ordered `(py, px, c)` (the official `patchify`).
///
/// Shapes: `image`: `[3, H, W]` with `H`, `W` multiples of `p`; returns
/// `[(H / p) * (W / p), 3 * p * p]`.
pub fn vit_patchify<B: Backend>(image: Tensor<B, 3>, p: usize) -> Tensor<B, 2> {
    crate::generation::patchify(image, p)
}

/// Position ids of an `h x w` patch grid, `row * max_side + col` (the official
/// `get_flattened_position_ids_extrapolate`).
pub fn vit_positions(h: usize, w: usize, max_side: usize) -> Vec<i64> {
    (0..h)
        .flat_map(|r| (0..w).map(move |c| (r * max_side + c) as i64))
        .collect()
}

pub(crate) fn int_tensor<B: Backend>(values: Vec<i64>, device: &B::Device) -> Tensor<B, 1, Int> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}
