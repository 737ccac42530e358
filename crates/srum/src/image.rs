//! Host-side RGB images: what region proposers, the PNG writer and the synthetic world read.

use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::error::{Result, SrumError};

/// An RGB image on the host, `f32` in `[0, 1]`, channels interleaved, rows top to bottom.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelImage {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `height * width * 3` values.
    pub data: Vec<f32>,
}

impl PixelImage {
    /// A `width x height` image filled with one colour.
    pub fn filled(width: usize, height: usize, rgb: [f32; 3]) -> Self {
        Self {
            width,
            height,
            data: rgb
                .iter()
                .copied()
                .cycle()
                .take(width * height * 3)
                .collect(),
        }
    }

    /// The colour at `(x, y)`.
    pub fn pixel(&self, x: usize, y: usize) -> [f32; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// 8-bit RGB bytes, for PNG writing.
    pub fn to_rgb8(&self) -> Vec<u8> {
        self.data
            .iter()
            .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect()
    }

    /// From 8-bit RGB bytes.
    pub fn from_rgb8(width: usize, height: usize, bytes: &[u8]) -> Result<Self> {
        if bytes.len() != width * height * 3 {
            return Err(SrumError::Shape(format!(
                "{} bytes for a {width}x{height} RGB image",
                bytes.len()
            )));
        }
        Ok(Self {
            width,
            height,
            data: bytes.iter().map(|&b| b as f32 / 255.0).collect(),
        })
    }

    /// Splits a batch tensor `[batch, 3, H, W]` into host images.
    pub fn from_tensor<B: Backend>(images: Tensor<B, 4>) -> Result<Vec<Self>> {
        let [b, c, h, w] = images.dims();
        if c != 3 {
            return Err(SrumError::Shape(format!("expected 3 channels, got {c}")));
        }
        let planar = images
            .permute([0, 2, 3, 1])
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| SrumError::Shape(format!("{e:?}")))?;
        Ok(planar
            .chunks_exact(h * w * 3)
            .take(b)
            .map(|chunk| Self {
                width: w,
                height: h,
                data: chunk.to_vec(),
            })
            .collect())
    }

    /// Stacks same-sized images into a batch tensor `[batch, 3, H, W]`.
    pub fn to_tensor<B: Backend>(images: &[Self], device: &B::Device) -> Result<Tensor<B, 4>> {
        let first = images
            .first()
            .ok_or_else(|| SrumError::Shape("no images".into()))?;
        let (w, h) = (first.width, first.height);
        let mut data = Vec::with_capacity(images.len() * w * h * 3);
        for (i, img) in images.iter().enumerate() {
            if (img.width, img.height) != (w, h) {
                return Err(SrumError::Shape(format!(
                    "image {i} is {}x{}, the batch is {w}x{h}",
                    img.width, img.height
                )));
            }
            data.extend_from_slice(&img.data);
        }
        Ok(
            Tensor::<B, 4>::from_data(TensorData::new(data, [images.len(), h, w, 3]), device)
                .permute([0, 3, 1, 2]),
        )
    }
}

/// Pixels to latent tokens for models without a VAE: `2 x - 1`, cut into `patch x patch` patches,
/// row-major over the patch grid.
///
/// Shapes: `images`: `[batch, 3, H, W]` in `[0, 1]` with `H`, `W` multiples of `patch`;
/// returns `[batch, (H / patch) * (W / patch), 3 * patch^2]`.
pub fn patchify<B: Backend>(images: Tensor<B, 4>, patch: usize) -> Tensor<B, 3> {
    let [b, c, h, w] = images.dims();
    let (gh, gw, p) = (h / patch, w / patch, patch);
    images
        .reshape([b, c, gh, p, gw, p])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b, gh * gw, c * p * p])
        .mul_scalar(2.0)
        .sub_scalar(1.0)
}

/// The inverse of [`patchify`], clamped into `[0, 1]`.
///
/// Shapes: `latents`: `[batch, gh * gw, 3 * patch^2]`; returns `[batch, 3, gh * patch, gw * patch]`.
pub fn unpatchify<B: Backend>(
    latents: Tensor<B, 3>,
    patch: usize,
    gh: usize,
    gw: usize,
) -> Tensor<B, 4> {
    let [b, _, _] = latents.dims();
    let p = patch;
    latents
        .add_scalar(1.0)
        .div_scalar(2.0)
        .clamp(0.0, 1.0)
        .reshape([b, gh, gw, 3, p, p])
        .permute([0, 3, 1, 4, 2, 5])
        .reshape([b, 3, gh * p, gw * p])
}
