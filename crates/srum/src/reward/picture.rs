//! Reward pictures: a judged image, its scored boxes and its reward map side by side, so a user
//! debugging a reward looks instead of reading numbers.

use super::heatmap::heat_colour;
use super::{Judgement, RewardMap};
use crate::image::PixelImage;
use crate::model::LatentGrid;

/// Gap between panels, in output pixels.
const GAP: usize = 4;

/// Three panels, each the image scaled up `scale` times: the image; the image with every scored
/// box outlined in the colour of its score (dark for -1, bright for +1, the heatmap scale);
/// the image under the reward map (resized to the image, blended half and half).
/// Returns `(width, height, rgb8 bytes)`.
pub fn reward_picture(
    image: &PixelImage,
    judgement: &Judgement,
    map: &RewardMap,
    scale: usize,
) -> (usize, usize, Vec<u8>) {
    let scale = scale.max(1);
    let (iw, ih) = (image.width, image.height);
    let (pw, ph) = (iw * scale, ih * scale);
    let width = 3 * pw + 2 * GAP;
    let mut out = vec![255u8; width * ph * 3];
    let full = map.resize(LatentGrid::new(ih, iw));
    let full = full.values();
    let lo = full.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = full.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Signed maps are in [-1, 1]; unsigned ones in [0, 1].
    let (lo, hi) = if lo < 0.0 {
        (-1.0, 1.0)
    } else {
        (0.0, hi.max(1.0))
    };
    let pixel = |x: usize, y: usize| -> [u8; 3] {
        let i = (y * iw + x) * 3;
        [0, 1, 2].map(|c| (image.data[i + c].clamp(0.0, 1.0) * 255.0).round() as u8)
    };
    for y in 0..ph {
        for x in 0..pw {
            let (sx, sy) = (x / scale, y / scale);
            let p = pixel(sx, sy);
            let v = (full[sy * iw + sx] - lo) / (hi - lo).max(1e-6);
            let h = heat_colour(v);
            let blend = [0, 1, 2].map(|c| ((p[c] as u16 + h[c] as u16) / 2) as u8);
            for (panel, rgb) in [(0, p), (1, p), (2, blend)] {
                let o = (y * width + panel * (pw + GAP) + x) * 3;
                out[o..o + 3].copy_from_slice(&rgb);
            }
        }
    }
    for r in &judgement.regions {
        let Some((x0, y0, x1, y1)) = r.bbox.pixel_bounds(iw, ih) else {
            continue;
        };
        let colour = heat_colour((r.score.clamp(-1.0, 1.0) + 1.0) / 2.0);
        let (x0, y0, x1, y1) = (
            x0 * scale,
            y0 * scale,
            (x1 * scale).max(1) - 1,
            (y1 * scale).max(1) - 1,
        );
        let mut put = |x: usize, y: usize| {
            if x < pw && y < ph {
                let o = (y * width + pw + GAP + x) * 3;
                out[o..o + 3].copy_from_slice(&colour);
            }
        };
        for x in x0..=x1 {
            put(x, y0);
            put(x, y1);
        }
        for y in y0..=y1 {
            put(x0, y);
            put(x1, y);
        }
    }
    (width, ph, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reward::{BBox, ScoredRegion};

    #[test]
    fn panels_boxes_and_map() {
        let image = PixelImage::filled(8, 8, [1.0; 3]);
        let judgement = Judgement {
            global: Some(0.0),
            regions: vec![ScoredRegion {
                bbox: BBox::new(2.0, 2.0, 6.0, 6.0),
                object: "x".into(),
                score: 1.0,
            }],
        };
        let map = RewardMap::filled(LatentGrid::new(2, 2), 0.5);
        let (w, h, rgb) = reward_picture(&image, &judgement, &map, 2);
        assert_eq!((w, h), (3 * 16 + 2 * GAP, 16));
        let at = |x: usize, y: usize| &rgb[(y * w + x) * 3..(y * w + x) * 3 + 3];
        // Panel 1 is the white image; panel 2 has the box corner in the +1 colour.
        assert_eq!(at(0, 0), &[255, 255, 255]);
        assert_eq!(at(16 + GAP + 4, 4), &heat_colour(1.0));
        assert_eq!(at(16 + GAP, 0), &[255, 255, 255]);
        // Panel 3 blends white with the heat colour of 0.5.
        let c = heat_colour(0.5);
        assert_eq!(at(2 * (16 + GAP), 0)[0], ((255 + c[0] as u16) / 2) as u8);
    }
}
