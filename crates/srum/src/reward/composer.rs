//! The dual reward composer: global and local scores into one dense map.

use serde::{Deserialize, Serialize};

use super::resize::axis_weights;
use super::{Judgement, RewardMap};
use crate::model::{ImageSize, LatentGrid};

/// Which scores enter the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RewardMode {
    /// Global factor times local regions (the paper's dual reward; default).
    #[default]
    Dual,
    /// Only the global score: a uniform map `base * (g + 1) / 2`.
    GlobalOnly,
    /// Only the regions: the global factor is left out.
    LocalOnly,
}

/// How overlapping regions combine at a pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Combine {
    /// `max(base, (s_1 + 1) / 2, (s_2 + 1) / 2, ...)`: the reference rule (default).
    #[default]
    Max,
    /// Mean of `(s + 1) / 2` over the regions covering the pixel; `base` where none does.
    Mean,
}

/// Settings of the [`RewardComposer`]. The defaults are the reference implementation's rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RewardComposerConfig {
    /// Value of a pixel no region covers, before the global factor. Default 0.5 (neutral).
    pub base: f32,
    /// Which scores are used. Default [`RewardMode::Dual`].
    pub mode: RewardMode,
    /// How overlapping regions combine. Default [`Combine::Max`].
    pub combine: Combine,
    /// Map scores to +1 (when > 0) or -1 before use, as the reference's `binarize`. Default false.
    pub binarize: bool,
    /// Return `2 R - 1` in `[-1, 1]` instead of `R` in `[0, 1]` (the "repel" variant). Default false.
    pub signed: bool,
}

impl Default for RewardComposerConfig {
    fn default() -> Self {
        Self {
            base: 0.5,
            mode: RewardMode::Dual,
            combine: Combine::Max,
            binarize: false,
            signed: false,
        }
    }
}

/// What the composer had to skip or repair, so nothing is dropped silently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComposeStats {
    /// Regions applied to the map.
    pub regions_used: usize,
    /// Regions skipped for an invalid box (non-finite, reversed, empty, or outside the image).
    pub invalid_boxes: usize,
    /// Scores (global or region) outside `[-1, 1]` that were clamped.
    pub clamped_scores: usize,
    /// Scores that were NaN or infinite and were dropped.
    pub non_finite_scores: usize,
}

impl ComposeStats {
    /// Adds another image's counts to these.
    pub fn add(&mut self, other: &ComposeStats) {
        self.regions_used += other.regions_used;
        self.invalid_boxes += other.invalid_boxes;
        self.clamped_scores += other.clamped_scores;
        self.non_finite_scores += other.non_finite_scores;
    }
}

/// Composes a [`Judgement`] into a dense [`RewardMap`] (stage 2 of SRUM).
///
/// ```
/// use srum::model::ImageSize;
/// use srum::reward::{BBox, Judgement, RewardComposer, ScoredRegion};
///
/// let judgement = Judgement {
///     global: Some(0.0), // neutral layout: factor (0 + 1) / 2
///     regions: vec![ScoredRegion { bbox: BBox::new(0.0, 0.0, 2.0, 1.0), object: "a red circle".into(), score: 1.0 }],
/// };
/// let (map, stats) = RewardComposer::default().compose(&judgement, ImageSize::new(4, 2));
/// assert_eq!(map.values(), &[0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]);
/// assert_eq!(stats.regions_used, 1);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RewardComposer {
    /// The rule in use.
    pub config: RewardComposerConfig,
}

/// `(s + 1) / 2` after the score has been sanitised.
fn unit(score: f32) -> f32 {
    (score + 1.0) / 2.0
}

impl RewardComposer {
    /// A composer with the given rule.
    pub fn new(config: RewardComposerConfig) -> Self {
        Self { config }
    }

    /// Clamps into `[-1, 1]`, drops non-finite values and applies `binarize`, counting repairs.
    fn sanitize(&self, score: f32, stats: &mut ComposeStats) -> Option<f32> {
        if !score.is_finite() {
            stats.non_finite_scores += 1;
            tracing::warn!(score, "non-finite reward score dropped");
            return None;
        }
        let clamped = score.clamp(-1.0, 1.0);
        if clamped != score {
            stats.clamped_scores += 1;
            tracing::warn!(score, "reward score outside [-1, 1] clamped");
        }
        Some(if self.config.binarize {
            if clamped > 0.0 { 1.0 } else { -1.0 }
        } else {
            clamped
        })
    }

    /// Checks the judgement's scores and boxes once, for an image of `width x height`.
    fn prepare(
        &self,
        judgement: &Judgement,
        width: usize,
        height: usize,
    ) -> (Regions, ComposeStats) {
        let cfg = &self.config;
        let mut stats = ComposeStats::default();
        let mut boxes = Vec::new();
        if cfg.mode != RewardMode::GlobalOnly {
            for region in &judgement.regions {
                let Some(score) = self.sanitize(region.score, &mut stats) else {
                    continue;
                };
                let Some(b) = region.bbox.pixel_bounds(width, height) else {
                    stats.invalid_boxes += 1;
                    tracing::debug!(bbox = ?region.bbox, "invalid region box skipped");
                    continue;
                };
                stats.regions_used += 1;
                boxes.push((b, unit(score)));
            }
        }
        let factor = if cfg.mode != RewardMode::LocalOnly {
            let g = judgement
                .global
                .and_then(|g| self.sanitize(g, &mut stats))
                .unwrap_or(0.0);
            Some(unit(g))
        } else {
            None
        };
        let regions = Regions {
            boxes,
            base: cfg.base,
            combine: cfg.combine,
            factor,
            signed: cfg.signed,
        };
        (regions, stats)
    }

    /// The map at image resolution (one value per pixel of `size`) and what was skipped.
    ///
    /// The map is constant between box edges, so each band of rows between two horizontal
    /// edges is computed once, as runs between vertical edges, and copied down the band: every
    /// pixel is written once, with the same float operations as the pixel-by-pixel rule.
    pub fn compose(&self, judgement: &Judgement, size: ImageSize) -> (RewardMap, ComposeStats) {
        let ImageSize { width, height } = size;
        let (regions, stats) = self.prepare(judgement, width, height);
        let mut values = vec![0f32; width * height];
        let xs = regions.edges(width, |&((x0, _, x1, _), _)| (x0, x1));
        let ys = regions.edges(height, |&((_, y0, _, y1), _)| (y0, y1));
        if width > 0 {
            for band in ys.windows(2) {
                let (ya, yb) = (band[0], band[1]);
                let (first, rest) = values[ya * width..yb * width].split_at_mut(width);
                for run in xs.windows(2) {
                    first[run[0]..run[1]].fill(regions.at(run[0], ya));
                }
                for row in rest.chunks_exact_mut(width) {
                    row.copy_from_slice(first);
                }
            }
        }
        (RewardMap::from_full(size.grid(), values), stats)
    }

    /// The global score as composing reads it: a non-finite one dropped, the rest clamped to
    /// `[-1, 1]` (and binarized when configured); 0 where the judge gave none.
    pub fn global_score(&self, judgement: &Judgement) -> f32 {
        judgement
            .global
            .and_then(|g| self.sanitize(g, &mut ComposeStats::default()))
            .unwrap_or(0.0)
    }

    /// The map resized to a latent token `grid`, row-major in token order: the same
    /// numbers as [`compose`](Self::compose) followed by [`RewardMap::resize`], but computed
    /// only at the (up to) four image pixels each token's bilinear sample reads, so the cost
    /// grows with the grid, not with the image. An image with no pixels rewards nothing.
    pub fn compose_latent(
        &self,
        judgement: &Judgement,
        size: ImageSize,
        grid: LatentGrid,
    ) -> (RewardMap, ComposeStats) {
        let ImageSize { width, height } = size;
        let LatentGrid { rows: h, cols: w } = grid;
        let (regions, stats) = self.prepare(judgement, width, height);
        let mut values = Vec::with_capacity(h * w);
        if width > 0 && height > 0 && h > 0 && w > 0 {
            let ys = axis_weights(height, h);
            let xs = axis_weights(width, w);
            // One needed source row, sampled at the needed columns: (value at x0, at x1).
            let sample_row = |y: usize| -> Vec<(f32, f32)> {
                xs.iter()
                    .map(|&(x0, x1, _, _)| (regions.at(x0, y), regions.at(x1, y)))
                    .collect()
            };
            for &(y0, y1, hy0, hy1) in &ys {
                let r0 = sample_row(y0);
                let r1 = if y1 == y0 { r0.clone() } else { sample_row(y1) };
                for ((&(_, _, wx0, wx1), &(a0, a1)), &(b0, b1)) in xs.iter().zip(&r0).zip(&r1) {
                    values.push(hy0 * (wx0 * a0 + wx1 * a1) + hy1 * (wx0 * b0 + wx1 * b1));
                }
            }
        }
        if values.len() != grid.tokens() {
            return (RewardMap::filled(grid, 0.0), stats);
        }
        (RewardMap::from_full(grid, values), stats)
    }
}

/// A box in pixels, `(x0, y0, x1, y1)` with exclusive ends, and its value `(s + 1) / 2`.
type ValuedBox = ((usize, usize, usize, usize), f32);

/// A judgement checked against one image size: its usable boxes and the global factor.
struct Regions {
    boxes: Vec<ValuedBox>,
    base: f32,
    combine: Combine,
    /// `(g + 1) / 2`; absent in local-only mode.
    factor: Option<f32>,
    signed: bool,
}

impl Regions {
    /// The reference rule at pixel `(x, y)`: the boxes over the base, combined in box order as
    /// the dense rule accumulates them, times the global factor, then optionally signed.
    #[inline]
    fn at(&self, x: usize, y: usize) -> f32 {
        let inside = |b: &&ValuedBox| {
            let (x0, y0, x1, y1) = b.0;
            x0 <= x && x < x1 && y0 <= y && y < y1
        };
        let mut v = self.base;
        match self.combine {
            Combine::Max => {
                for (_, value) in self.boxes.iter().filter(inside) {
                    v = v.max(*value);
                }
            }
            Combine::Mean => {
                let (mut sum, mut count) = (0f32, 0u32);
                for (_, value) in self.boxes.iter().filter(inside) {
                    sum += value;
                    count += 1;
                }
                if count > 0 {
                    v = sum / count as f32;
                }
            }
        }
        if let Some(f) = self.factor {
            v *= f;
        }
        if self.signed { 2.0 * v - 1.0 } else { v }
    }

    /// `0`, `len` and every box edge along one axis, sorted and distinct: the map is constant
    /// between two consecutive edges.
    fn edges(&self, len: usize, axis: impl Fn(&ValuedBox) -> (usize, usize)) -> Vec<usize> {
        let mut e = vec![0, len];
        for b in &self.boxes {
            let (a, z) = axis(b);
            e.extend([a, z]);
        }
        e.sort_unstable();
        e.dedup();
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reward::{BBox, ScoredRegion};

    /// The global score is read as composing reads it: none and non-finite count 0, the rest
    /// is clamped, and binarized when configured.
    #[test]
    fn global_score_reads_as_composing_does() {
        let read = |binarize: bool, g: Option<f32>| {
            RewardComposer::new(RewardComposerConfig {
                binarize,
                ..Default::default()
            })
            .global_score(&Judgement {
                global: g,
                regions: vec![],
            })
        };
        assert_eq!(read(false, None), 0.0);
        assert_eq!(read(false, Some(f32::NAN)), 0.0);
        assert_eq!(read(false, Some(1.7)), 1.0);
        assert_eq!(read(false, Some(-0.3)), -0.3);
        assert_eq!(read(true, Some(0.2)), 1.0);
        assert_eq!(read(true, Some(-0.2)), -1.0);
    }

    fn region(b: [f64; 4], score: f32) -> ScoredRegion {
        ScoredRegion {
            bbox: BBox::new(b[0], b[1], b[2], b[3]),
            object: "x".into(),
            score,
        }
    }

    #[test]
    fn no_regions_is_half_times_global_factor() {
        let j = Judgement {
            global: Some(0.5),
            regions: vec![],
        };
        let (m, _) = RewardComposer::default().compose(&j, ImageSize::new(3, 2));
        assert!(m.values().iter().all(|&v| (v - 0.5 * 0.75).abs() < 1e-7));
        let (m, _) = RewardComposer::default().compose(&Judgement::default(), ImageSize::new(3, 2));
        assert!(m.values().iter().all(|&v| v == 0.25));
    }

    #[test]
    fn max_rule_and_truncation() {
        let j = Judgement {
            global: Some(1.0),
            regions: vec![
                region([0.9, 0.0, 2.7, 1.0], 1.0),
                region([1.0, 0.0, 3.0, 1.0], -1.0),
            ],
        };
        // Box 1 truncates to x in [0, 2); box 2 scores 0 which never lowers the base 0.5.
        let (m, s) = RewardComposer::default().compose(&j, ImageSize::new(3, 2));
        assert_eq!(m.values(), &vec![1.0, 1.0, 0.5, 0.5, 0.5, 0.5]);
        assert_eq!(s.regions_used, 2);
    }

    #[test]
    fn bad_boxes_and_scores_are_counted() {
        let j = Judgement {
            global: Some(f32::NAN),
            regions: vec![
                region([2.0, 0.0, 1.0, 1.0], 1.0),
                region([f64::NAN, 0.0, 1.0, 1.0], 1.0),
                region([5.0, 5.0, 9.0, 9.0], 1.0),
                region([0.0, 0.0, 1.0, 1.0], 7.0),
            ],
        };
        let (m, s) = RewardComposer::default().compose(&j, ImageSize::new(3, 2));
        assert_eq!(s.invalid_boxes, 3);
        assert_eq!(s.clamped_scores, 1);
        assert_eq!(s.non_finite_scores, 1);
        assert_eq!(m.values()[0], 0.5);
        assert_eq!(m.values()[1], 0.25);
    }

    #[test]
    fn variants() {
        let j = Judgement {
            global: Some(0.0),
            regions: vec![
                region([0.0, 0.0, 2.0, 1.0], 1.0),
                region([1.0, 0.0, 3.0, 1.0], 0.0),
            ],
        };
        let c = |mode, combine, signed| {
            RewardComposer::new(RewardComposerConfig {
                mode,
                combine,
                signed,
                ..Default::default()
            })
            .compose(&j, ImageSize::new(3, 1))
            .0
            .into_values()
        };
        assert_eq!(
            c(RewardMode::Dual, Combine::Max, false),
            vec![0.5, 0.5, 0.25]
        );
        assert_eq!(
            c(RewardMode::LocalOnly, Combine::Max, false),
            vec![1.0, 1.0, 0.5]
        );
        assert_eq!(
            c(RewardMode::LocalOnly, Combine::Mean, false),
            vec![1.0, 0.75, 0.5]
        );
        assert_eq!(
            c(RewardMode::GlobalOnly, Combine::Max, false),
            vec![0.25; 3]
        );
        assert_eq!(
            c(RewardMode::LocalOnly, Combine::Max, true),
            vec![1.0, 1.0, 0.0]
        );
    }

    /// The rule written pixel by pixel, as the reference code states it: fill, max (or mean)
    /// per box, multiply, sign.
    fn naive(c: &RewardComposer, j: &Judgement, width: usize, height: usize) -> Vec<f32> {
        let cfg = c.config;
        let mut m = vec![cfg.base; width * height];
        let mut sum = vec![0f32; width * height];
        let mut count = vec![0u32; width * height];
        if cfg.mode != RewardMode::GlobalOnly {
            for r in &j.regions {
                let Some(score) = c.sanitize(r.score, &mut ComposeStats::default()) else {
                    continue;
                };
                let Some((x0, y0, x1, y1)) = r.bbox.pixel_bounds(width, height) else {
                    continue;
                };
                for y in y0..y1 {
                    for x in x0..x1 {
                        let i = y * width + x;
                        m[i] = m[i].max(unit(score));
                        sum[i] += unit(score);
                        count[i] += 1;
                    }
                }
            }
        }
        if cfg.combine == Combine::Mean {
            for i in 0..m.len() {
                if count[i] > 0 {
                    m[i] = sum[i] / count[i] as f32;
                }
            }
        }
        if cfg.mode != RewardMode::LocalOnly {
            let g = c.global_score(j);
            m.iter_mut().for_each(|v| *v *= unit(g));
        }
        if cfg.signed {
            m.iter_mut().for_each(|v| *v = 2.0 * *v - 1.0);
        }
        m
    }

    #[test]
    fn banded_and_latent_paths_equal_the_pixel_rule() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for case in 0..300 {
            let (w, h) = (rng.random_range(1..70), rng.random_range(1..70));
            let n = rng.random_range(0..7);
            let regions = (0..n)
                .map(|_| {
                    let mut c = || rng.random_range(-10.0..80.0);
                    region([c(), c(), c(), c()], rng.random_range(-1.5..1.5))
                })
                .collect();
            let j = Judgement {
                global: rng.random_bool(0.8).then(|| rng.random_range(-1.0..1.0)),
                regions,
            };
            let config = RewardComposerConfig {
                mode: [
                    RewardMode::Dual,
                    RewardMode::GlobalOnly,
                    RewardMode::LocalOnly,
                ][case % 3],
                combine: if case % 4 == 0 {
                    Combine::Mean
                } else {
                    Combine::Max
                },
                signed: case % 5 == 0,
                binarize: case % 7 == 0,
                base: 0.5,
            };
            let c = RewardComposer::new(config);
            let (dense, _) = c.compose(&j, ImageSize::new(w, h));
            assert_eq!(
                dense.values(),
                naive(&c, &j, w, h),
                "case {case}: {w}x{h} {config:?}"
            );
            let (gh, gw) = (rng.random_range(1..40), rng.random_range(1..40));
            let grid = LatentGrid::new(gh, gw);
            let (latent, _) = c.compose_latent(&j, ImageSize::new(w, h), grid);
            assert_eq!(
                latent,
                dense.resize(grid),
                "case {case}: {w}x{h} -> {gh}x{gw}"
            );
        }
    }
}
