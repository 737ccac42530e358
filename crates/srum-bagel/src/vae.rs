//! The FLUX autoencoder BAGEL generates in (`ae.safetensors`): images in `[-1, 1]` to 16-channel
//! latents at 1/8 resolution and back.

use std::path::Path;

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::ops::PadMode;
use burn::tensor::{Tensor, backend::Backend};
use serde_json::Value;

use crate::error::BagelError;

// Not `Result`: burn's `Config` derive expands code that names `Result` with serde's errors.
type Res<T> = std::result::Result<T, BagelError>;

/// Sizes of the autoencoder. The defaults are FLUX.1's, which BAGEL-7B-MoT uses (the official
/// `load_ae` hard-codes them; a folder may override them in `vae_config.json`).
#[derive(Config, Debug, PartialEq)]
pub struct VaeConfig {
    /// Image channels.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Channels of the first level.
    #[config(default = 128)]
    pub ch: usize,
    /// Channel multiplier of each level; every level but the last halves the resolution.
    #[config(default = "vec![1, 2, 4, 4]")]
    pub ch_mult: Vec<usize>,
    /// Residual blocks per level (the decoder has one more).
    #[config(default = 2)]
    pub num_res_blocks: usize,
    /// Latent channels.
    #[config(default = 16)]
    pub z_channels: usize,
    /// `z = scale_factor * (mean - shift_factor)`.
    #[config(default = 0.3611)]
    pub scale_factor: f64,
    /// See `scale_factor`.
    #[config(default = 0.1159)]
    pub shift_factor: f64,
}

const GROUPS: usize = 32;

impl VaeConfig {
    /// Reads `vae_config.json` (the field names of the official `AutoEncoderParams`).
    pub fn from_json(path: impl AsRef<Path>) -> Res<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| BagelError::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| BagelError::config(path, "<file>", format!("not valid JSON: {e}")))?;
        let int = |key: &str, default: usize| -> Res<usize> {
            match v.get(key) {
                None => Ok(default),
                Some(x) => x.as_u64().map(|n| n as usize).ok_or_else(|| {
                    BagelError::config(path, key, format!("expected a whole number, got {x}"))
                }),
            }
        };
        let float = |key: &str, default: f64| -> Res<f64> {
            match v.get(key) {
                None => Ok(default),
                Some(x) => x.as_f64().ok_or_else(|| {
                    BagelError::config(path, key, format!("expected a number, got {x}"))
                }),
            }
        };
        let d = Self::new();
        let ch_mult = match v.get("ch_mult") {
            None => d.ch_mult.clone(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_u64().map(|n| n as usize))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| BagelError::config(path, "ch_mult", "expected whole numbers"))?,
            Some(x) => {
                return Err(BagelError::config(
                    path,
                    "ch_mult",
                    format!("expected a list, got {x}"),
                ));
            }
        };
        let out_ch = int("out_ch", 3)?;
        let in_ch = int("in_channels", 3)?;
        if out_ch != in_ch {
            return Err(BagelError::config(
                path,
                "out_ch",
                format!("{out_ch} differs from in_channels {in_ch}"),
            ));
        }
        let config = Self {
            in_channels: in_ch,
            ch: int("ch", d.ch)?,
            ch_mult,
            num_res_blocks: int("num_res_blocks", d.num_res_blocks)?,
            z_channels: int("z_channels", d.z_channels)?,
            scale_factor: float("scale_factor", d.scale_factor)?,
            shift_factor: float("shift_factor", d.shift_factor)?,
        };
        config.validate_at(path)?;
        Ok(config)
    }

    /// Pixels per latent pixel along each side (8 for FLUX).
    pub fn downsample(&self) -> usize {
        1 << self.ch_mult.len().saturating_sub(1)
    }

    pub(crate) fn validate_at(&self, path: &Path) -> Res<()> {
        if self.ch_mult.is_empty() {
            return Err(BagelError::config(path, "ch_mult", "must not be empty"));
        }
        for (i, m) in self.ch_mult.iter().enumerate() {
            let c = self.ch * m;
            if c == 0 || !c.is_multiple_of(GROUPS) {
                return Err(BagelError::config(
                    path,
                    "ch_mult",
                    format!(
                        "level {i} has {c} channels; GroupNorm(32) needs a positive multiple of 32"
                    ),
                ));
            }
        }
        if self.z_channels == 0 || self.in_channels == 0 {
            return Err(BagelError::config(path, "z_channels", "must be positive"));
        }
        if self.scale_factor == 0.0 || !self.scale_factor.is_finite() {
            return Err(BagelError::config(
                path,
                "scale_factor",
                "must be finite and non-zero",
            ));
        }
        Ok(())
    }

    /// A freshly initialised autoencoder.
    pub fn init<B: Backend>(&self, device: &B::Device) -> AutoEncoder<B> {
        let levels = self.ch_mult.len();
        let mut down = Vec::with_capacity(levels);
        let mut block_in = self.ch;
        for (i, m) in self.ch_mult.iter().enumerate() {
            let block_out = self.ch * m;
            let mut blocks = Vec::new();
            for _ in 0..self.num_res_blocks {
                blocks.push(ResnetBlock::new(block_in, block_out, device));
                block_in = block_out;
            }
            down.push(DownLevel {
                block: blocks,
                downsample: (i + 1 != levels).then(|| Resample {
                    conv: conv(
                        block_in,
                        block_in,
                        3,
                        PaddingConfig2d::Valid,
                        [2, 2],
                        device,
                    ),
                }),
            });
        }
        let top = block_in;
        let encoder = Encoder {
            conv_in: conv3(self.in_channels, self.ch, device),
            down,
            mid: Mid::new(top, device),
            norm_out: group_norm(top, device),
            conv_out: conv3(top, 2 * self.z_channels, device),
        };
        let mut up: Vec<UpLevel<B>> = Vec::with_capacity(levels);
        let mut block_in = top;
        for i in (0..levels).rev() {
            let block_out = self.ch * self.ch_mult[i];
            let mut blocks = Vec::new();
            for _ in 0..=self.num_res_blocks {
                blocks.push(ResnetBlock::new(block_in, block_out, device));
                block_in = block_out;
            }
            up.push(UpLevel {
                block: blocks,
                upsample: (i != 0).then(|| Resample {
                    conv: conv3(block_in, block_in, device),
                }),
            });
        }
        // The official list is indexed by level: `up.0` is the full-resolution level.
        up.reverse();
        let decoder = Decoder {
            conv_in: conv3(self.z_channels, top, device),
            mid: Mid::new(top, device),
            up,
            norm_out: group_norm(block_in, device),
            conv_out: conv3(block_in, self.in_channels, device),
        };
        AutoEncoder {
            encoder,
            decoder,
            config: self.clone(),
        }
    }
}

fn conv<B: Backend>(
    i: usize,
    o: usize,
    k: usize,
    padding: PaddingConfig2d,
    stride: [usize; 2],
    device: &B::Device,
) -> Conv2d<B> {
    Conv2dConfig::new([i, o], [k, k])
        .with_padding(padding)
        .with_stride(stride)
        .init(device)
}

fn conv3<B: Backend>(i: usize, o: usize, device: &B::Device) -> Conv2d<B> {
    conv(
        i,
        o,
        3,
        PaddingConfig2d::Explicit(1, 1, 1, 1),
        [1, 1],
        device,
    )
}

fn conv1<B: Backend>(i: usize, o: usize, device: &B::Device) -> Conv2d<B> {
    conv(i, o, 1, PaddingConfig2d::Valid, [1, 1], device)
}

fn group_norm<B: Backend>(c: usize, device: &B::Device) -> GroupNorm<B> {
    GroupNormConfig::new(GROUPS, c)
        .with_epsilon(1e-6)
        .init(device)
}

/// The FLUX autoencoder: `encoder` and `decoder` under their official names.
#[derive(Module, Debug)]
pub struct AutoEncoder<B: Backend> {
    encoder: Encoder<B>,
    decoder: Decoder<B>,
    #[module(skip)]
    config: VaeConfig,
}

#[derive(Module, Debug)]
struct Encoder<B: Backend> {
    conv_in: Conv2d<B>,
    down: Vec<DownLevel<B>>,
    mid: Mid<B>,
    norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
}

#[derive(Module, Debug)]
struct Decoder<B: Backend> {
    conv_in: Conv2d<B>,
    mid: Mid<B>,
    up: Vec<UpLevel<B>>,
    norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
}

#[derive(Module, Debug)]
struct DownLevel<B: Backend> {
    block: Vec<ResnetBlock<B>>,
    downsample: Option<Resample<B>>,
}

#[derive(Module, Debug)]
struct UpLevel<B: Backend> {
    block: Vec<ResnetBlock<B>>,
    upsample: Option<Resample<B>>,
}

/// A stride-2 convolution after zero padding right and bottom (down), or nearest 2x upsampling
/// then a convolution (up).
#[derive(Module, Debug)]
struct Resample<B: Backend> {
    conv: Conv2d<B>,
}

#[derive(Module, Debug)]
struct Mid<B: Backend> {
    block_1: ResnetBlock<B>,
    attn_1: AttnBlock<B>,
    block_2: ResnetBlock<B>,
}

impl<B: Backend> Mid<B> {
    fn new(c: usize, device: &B::Device) -> Self {
        Self {
            block_1: ResnetBlock::new(c, c, device),
            attn_1: AttnBlock {
                norm: group_norm(c, device),
                q: conv1(c, c, device),
                k: conv1(c, c, device),
                v: conv1(c, c, device),
                proj_out: conv1(c, c, device),
            },
            block_2: ResnetBlock::new(c, c, device),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.block_2
            .forward(self.attn_1.forward(self.block_1.forward(x)))
    }
}

#[derive(Module, Debug)]
struct ResnetBlock<B: Backend> {
    norm1: GroupNorm<B>,
    conv1: Conv2d<B>,
    norm2: GroupNorm<B>,
    conv2: Conv2d<B>,
    nin_shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock<B> {
    fn new(i: usize, o: usize, device: &B::Device) -> Self {
        Self {
            norm1: group_norm(i, device),
            conv1: conv3(i, o, device),
            norm2: group_norm(o, device),
            conv2: conv3(o, o, device),
            nin_shortcut: (i != o).then(|| conv1(i, o, device)),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let x = match &self.nin_shortcut {
            Some(c) => c.forward(x),
            None => x,
        };
        x + h
    }
}

/// Single-head self-attention over all pixels, with 1x1-convolution projections.
#[derive(Module, Debug)]
struct AttnBlock<B: Backend> {
    norm: GroupNorm<B>,
    q: Conv2d<B>,
    k: Conv2d<B>,
    v: Conv2d<B>,
    proj_out: Conv2d<B>,
}

impl<B: Backend> AttnBlock<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let n = self.norm.forward(x.clone());
        let tokens = |t: Tensor<B, 4>| t.reshape([b, c, h * w]).swap_dims(1, 2);
        let q = tokens(self.q.forward(n.clone()));
        let k = tokens(self.k.forward(n.clone()));
        let v = tokens(self.v.forward(n));
        let scores = q
            .matmul(k.swap_dims(1, 2))
            .mul_scalar(1.0 / (c as f64).sqrt());
        let out = softmax(scores, 2)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([b, c, h, w]);
        x + self.proj_out.forward(out)
    }
}

/// Nearest-neighbour 2x upsampling.
fn upsample_nearest<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}

impl<B: Backend> AutoEncoder<B> {
    /// The configuration it was built with.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The encoder's raw output, the Gaussian's mean and log-variance stacked on channels.
    ///
    /// Shapes: `images`: `[b, 3, H, W]` in `[-1, 1]`, `H`, `W` multiples of the downsampling;
    /// returns `[b, 2 * z, H / 8, W / 8]`.
    pub fn moments(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        let e = &self.encoder;
        let mut h = e.conv_in.forward(images);
        for level in &e.down {
            for block in &level.block {
                h = block.forward(h);
            }
            if let Some(d) = &level.downsample {
                h = d.conv.forward(h.pad((0, 1, 0, 1), PadMode::Constant(0.0)));
            }
        }
        let h = e.mid.forward(h);
        e.conv_out.forward(silu(e.norm_out.forward(h)))
    }

    /// Latents from the Gaussian's mean, `scale * (mean - shift)`: the deterministic encoding.
    ///
    /// Shapes: `images`: `[b, 3, H, W]` in `[-1, 1]`; returns `[b, z, H / 8, W / 8]`.
    pub fn encode(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        let z = self.config.z_channels;
        let mean = self.moments(images).narrow(1, 0, z);
        self.scale(mean)
    }

    /// Latents from a sample of the Gaussian, `mean + exp(logvar / 2) * noise`, then scaled
    /// as in [`AutoEncoder::encode`] (the official encoder samples).
    ///
    /// Shapes: `images`: `[b, 3, H, W]`; `noise`: `[b, z, H / 8, W / 8]`; returns the same.
    pub fn encode_sample(&self, images: Tensor<B, 4>, noise: Tensor<B, 4>) -> Tensor<B, 4> {
        let z = self.config.z_channels;
        let m = self.moments(images);
        let mean = m.clone().narrow(1, 0, z);
        let std = m.narrow(1, z, z).mul_scalar(0.5).exp();
        self.scale(mean + std * noise)
    }

    fn scale(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        z.sub_scalar(self.config.shift_factor)
            .mul_scalar(self.config.scale_factor)
    }

    /// Images in `[-1, 1]` (not clamped) from latents.
    ///
    /// Shapes: `latents`: `[b, z, h, w]`; returns `[b, 3, 8 h, 8 w]`.
    pub fn decode(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        let d = &self.decoder;
        let z = latents
            .div_scalar(self.config.scale_factor)
            .add_scalar(self.config.shift_factor);
        let mut h = d.mid.forward(d.conv_in.forward(z));
        for level in d.up.iter().rev() {
            for block in &level.block {
                h = block.forward(h);
            }
            if let Some(u) = &level.upsample {
                h = u.conv.forward(upsample_nearest(h));
            }
        }
        d.conv_out.forward(silu(d.norm_out.forward(h)))
    }
}
