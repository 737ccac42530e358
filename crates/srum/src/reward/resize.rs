//! Dense reward maps and PyTorch-exact bilinear resizing.

use serde::{Deserialize, Serialize};

/// A dense, row-major `height x width` map of per-pixel (or per-latent-token) rewards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardMap {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `height * width` values, row-major.
    pub values: Vec<f32>,
}

impl RewardMap {
    /// A map filled with `value`.
    pub fn filled(height: usize, width: usize, value: f32) -> Self {
        Self {
            height,
            width,
            values: vec![value; height * width],
        }
    }

    /// Resizes to `(height, width)` with PyTorch's `F.interpolate(mode="bilinear",
    /// align_corners=False)` semantics, so the result is row-major in latent-token order.
    pub fn resize(&self, height: usize, width: usize) -> RewardMap {
        RewardMap {
            height,
            width,
            values: resize_bilinear(&self.values, self.height, self.width, height, width),
        }
    }

    /// Mean of all values (0 for an empty map).
    pub fn mean(&self) -> f32 {
        if self.values.is_empty() {
            return 0.0;
        }
        (self.values.iter().map(|&v| v as f64).sum::<f64>() / self.values.len() as f64) as f32
    }
}

/// Source index and weights along one axis, as ATen's `upsample_bilinear2d` computes them
/// (float arithmetic, `align_corners=False`, scale = in / out, negative sources clamped to 0).
pub(crate) fn axis_weights(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|dst| {
            let src = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            let l1 = src - i0 as f32;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// Bilinear resize of a row-major `in_h x in_w` grid to `out_h x out_w`, matching
/// `torch.nn.functional.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)`.
///
/// An empty input or output gives an empty result.
pub fn resize_bilinear(
    input: &[f32],
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    if in_h == 0 || in_w == 0 || out_h == 0 || out_w == 0 || input.len() != in_h * in_w {
        return Vec::new();
    }
    let ys = axis_weights(in_h, out_h);
    let xs = axis_weights(in_w, out_w);
    let mut out = Vec::with_capacity(out_h * out_w);
    for &(y0, y1, hy0, hy1) in &ys {
        let r0 = &input[y0 * in_w..(y0 + 1) * in_w];
        let r1 = &input[y1 * in_w..(y1 + 1) * in_w];
        for &(x0, x1, wx0, wx1) in &xs {
            out.push(hy0 * (wx0 * r0[x0] + wx1 * r0[x1]) + hy1 * (wx0 * r1[x0] + wx1 * r1[x1]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_identity() {
        let v: Vec<f32> = (0..12).map(|i| i as f32).collect();
        assert_eq!(resize_bilinear(&v, 3, 4, 3, 4), v);
    }

    #[test]
    fn downsample_by_two_averages_pairs() {
        // align_corners=False with exact 2x: each output samples the midpoint of a 2x2 block.
        let v = vec![0.0, 2.0, 4.0, 6.0];
        assert_eq!(resize_bilinear(&v, 1, 4, 1, 2), vec![1.0, 5.0]);
    }

    #[test]
    fn upsample_matches_torch_closed_form() {
        // torch: F.interpolate(tensor([[[[0., 1.]]]]), size=(1, 4), mode="bilinear")
        // = [0.0, 0.25, 0.75, 1.0]
        assert_eq!(
            resize_bilinear(&[0.0, 1.0], 1, 2, 1, 4),
            vec![0.0, 0.25, 0.75, 1.0]
        );
    }
}
