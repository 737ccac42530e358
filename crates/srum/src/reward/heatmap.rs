//! Reward maps as pictures a person can read.

use super::RewardMap;

/// Colour stops of the heatmap, from 0 (dark purple: punished) to 1 (yellow: rewarded).
const STOPS: [[f32; 3]; 5] = [
    [0.05, 0.03, 0.25],
    [0.42, 0.10, 0.50],
    [0.80, 0.25, 0.35],
    [0.98, 0.55, 0.15],
    [0.99, 0.95, 0.40],
];

/// The colour of a value in `[0, 1]` (clamped; NaN is drawn as 0).
pub fn heat_colour(value: f32) -> [u8; 3] {
    let v = if value.is_nan() {
        0.0
    } else {
        value.clamp(0.0, 1.0)
    };
    let pos = v * (STOPS.len() - 1) as f32;
    let i = (pos as usize).min(STOPS.len() - 2);
    let f = pos - i as f32;
    let mut rgb = [0u8; 3];
    for (c, out) in rgb.iter_mut().enumerate() {
        *out = ((STOPS[i][c] * (1.0 - f) + STOPS[i + 1][c] * f) * 255.0).round() as u8;
    }
    rgb
}

impl RewardMap {
    /// RGB bytes of the map drawn as a heatmap, each cell a `scale x scale` block.
    /// Returns `(width, height, bytes)`.
    pub fn heatmap_rgb(&self, scale: usize) -> (usize, usize, Vec<u8>) {
        let scale = scale.max(1);
        let grid = self.grid();
        let (w, h) = (grid.cols * scale, grid.rows * scale);
        let mut out = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                out.extend_from_slice(&heat_colour(
                    self.values()[(y / scale) * grid.cols + x / scale],
                ));
            }
        }
        (w, h, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_and_blocks() {
        assert_eq!(heat_colour(0.0), [13, 8, 64]);
        assert_eq!(heat_colour(1.0), heat_colour(7.0));
        let m = RewardMap::new(crate::model::LatentGrid::new(1, 2), vec![0.0, 1.0]).unwrap();
        let (w, h, px) = m.heatmap_rgb(2);
        assert_eq!((w, h, px.len()), (4, 2, 24));
        assert_eq!(&px[0..3], &px[3..6]);
        assert_ne!(&px[0..3], &px[6..9]);
    }
}
