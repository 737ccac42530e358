//! Image sizes and token grids as types, so that `(width, height)` and `(h, w)` cannot be
//! swapped silently.

use serde::{Deserialize, Serialize};

/// An image's size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageSize {
    /// Pixels per row.
    pub width: usize,
    /// Rows.
    pub height: usize,
}

impl ImageSize {
    /// A `width x height` image.
    pub const fn new(width: usize, height: usize) -> Self {
        Self { width, height }
    }

    /// A square image of side `side`.
    pub const fn square(side: usize) -> Self {
        Self::new(side, side)
    }

    /// Pixels in all.
    pub const fn pixels(self) -> usize {
        self.width * self.height
    }

    /// The pixel grid: `height` rows of `width` pixels (for maps at image resolution).
    pub const fn grid(self) -> LatentGrid {
        LatentGrid::new(self.height, self.width)
    }
}

impl std::fmt::Display for ImageSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// A grid of `rows x cols` cells, flattened row-major: latent tokens, or the pixels of a map at
/// image resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LatentGrid {
    /// Token rows (the latent height).
    pub rows: usize,
    /// Tokens per row (the latent width).
    pub cols: usize,
}

impl LatentGrid {
    /// A grid of `rows x cols` tokens.
    pub const fn new(rows: usize, cols: usize) -> Self {
        Self { rows, cols }
    }

    /// Tokens in all.
    pub const fn tokens(self) -> usize {
        self.rows * self.cols
    }
}

impl std::fmt::Display for LatentGrid {
    /// `rows x cols`, the order `srum reward-map --grid` reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.rows, self.cols)
    }
}
