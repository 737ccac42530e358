//! What the self-evaluator says about one image.

use serde::{Deserialize, Serialize};

/// An axis-aligned box `[x_min, y_min, x_max, y_max]` in image pixels, as the judge wrote it.
///
/// Coordinates stay floats here; the composer truncates them toward zero and clamps them to the
/// image, as the reference does with Python's `int()`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BBox {
    /// Left edge (inclusive).
    pub x_min: f64,
    /// Top edge (inclusive).
    pub y_min: f64,
    /// Right edge (exclusive).
    pub x_max: f64,
    /// Bottom edge (exclusive).
    pub y_max: f64,
}

impl BBox {
    /// A box from `[x_min, y_min, x_max, y_max]`.
    pub fn new(x_min: f64, y_min: f64, x_max: f64, y_max: f64) -> Self {
        Self {
            x_min,
            y_min,
            x_max,
            y_max,
        }
    }

    /// The box as `[x_min, y_min, x_max, y_max]`.
    pub fn to_array(self) -> [f64; 4] {
        [self.x_min, self.y_min, self.x_max, self.y_max]
    }

    /// Pixel bounds after truncation toward zero and clamping to a `width x height` image:
    /// `(x0, y0, x1, y1)` with exclusive ends, or `None` when the box is not finite or is
    /// empty or reversed (`x_min >= x_max` or `y_min >= y_max`).
    pub fn pixel_bounds(self, width: usize, height: usize) -> Option<(usize, usize, usize, usize)> {
        let c = self.to_array();
        if c.iter().any(|v| !v.is_finite()) {
            return None;
        }
        // Python int(): truncation toward zero, before clamping.
        let t: Vec<f64> = c.iter().map(|v| v.trunc()).collect();
        if t[0] >= t[2] || t[1] >= t[3] {
            return None;
        }
        let cx = |v: f64| v.clamp(0.0, width as f64) as usize;
        let cy = |v: f64| v.clamp(0.0, height as f64) as usize;
        let (x0, y0, x1, y1) = (cx(t[0]), cy(t[1]), cx(t[2]), cy(t[3]));
        if x0 >= x1 || y0 >= y1 {
            return None;
        }
        Some((x0, y0, x1, y1))
    }
}

/// One region the judge scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredRegion {
    /// Where the region is.
    pub bbox: BBox,
    /// What the judge identified there.
    pub object: String,
    /// Score in `[-1, 1]`: 1 correct and relevant, 0 neutral, -1 contradicts the prompt.
    pub score: f32,
}

/// The self-evaluation of one image: a global layout score and scored regions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// Global layout score in `[-1, 1]`; `None` when the judge gave none (treated as 0.0).
    pub global: Option<f32>,
    /// Scored regions, in the order the judge gave them.
    pub regions: Vec<ScoredRegion>,
}
