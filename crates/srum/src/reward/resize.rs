//! Dense reward maps and PyTorch-exact bilinear resizing.

use serde::{Deserialize, Serialize};

use crate::error::{Result, SrumError};
use crate::model::LatentGrid;

/// A dense, row-major map of rewards over a grid: one value per latent token, or per pixel of
/// an image-resolution map. Its grid and its values always agree in size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "MapParts", into = "MapParts")]
pub struct RewardMap {
    grid: LatentGrid,
    values: Vec<f32>,
}

/// The serialized form: `{"height", "width", "values"}`, checked on the way in.
#[derive(Serialize, Deserialize)]
struct MapParts {
    height: usize,
    width: usize,
    values: Vec<f32>,
}

impl TryFrom<MapParts> for RewardMap {
    type Error = SrumError;
    fn try_from(p: MapParts) -> Result<Self> {
        RewardMap::new(LatentGrid::new(p.height, p.width), p.values)
    }
}

impl From<RewardMap> for MapParts {
    fn from(m: RewardMap) -> Self {
        MapParts {
            height: m.grid.rows,
            width: m.grid.cols,
            values: m.values,
        }
    }
}

impl RewardMap {
    /// A map of `values`, row-major over `grid`; an error unless there is one value per cell.
    pub fn new(grid: LatentGrid, values: Vec<f32>) -> Result<Self> {
        if values.len() != grid.tokens() {
            return Err(SrumError::Shape(format!(
                "a {grid} reward map needs {} values, got {}",
                grid.tokens(),
                values.len()
            )));
        }
        Ok(Self { grid, values })
    }

    /// A map whose `values` the caller has built for `grid`.
    pub(crate) fn from_full(grid: LatentGrid, values: Vec<f32>) -> Self {
        debug_assert_eq!(values.len(), grid.tokens());
        Self { grid, values }
    }

    /// A map filled with `value`.
    pub fn filled(grid: LatentGrid, value: f32) -> Self {
        Self {
            grid,
            values: vec![value; grid.tokens()],
        }
    }

    /// The grid the values lie on.
    pub fn grid(&self) -> LatentGrid {
        self.grid
    }

    /// The values, row-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The values, row-major, by value.
    pub fn into_values(self) -> Vec<f32> {
        self.values
    }

    /// Resizes to `grid` with PyTorch's `F.interpolate(mode="bilinear", align_corners=False)`
    /// semantics, so the result is row-major in latent-token order.
    pub fn resize(&self, grid: LatentGrid) -> RewardMap {
        let from = self.grid;
        RewardMap {
            grid,
            values: resize_bilinear(&self.values, from.rows, from.cols, grid.rows, grid.cols),
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
