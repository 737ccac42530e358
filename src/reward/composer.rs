//! The dual reward composer: global and local scores into one dense map.

use serde::{Deserialize, Serialize};

use super::{Judgement, RewardMap};

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
/// use srum::reward::{BBox, Judgement, RewardComposer, ScoredRegion};
///
/// let judgement = Judgement {
///     global: Some(0.0), // neutral layout: factor (0 + 1) / 2
///     regions: vec![ScoredRegion { bbox: BBox::new(0.0, 0.0, 2.0, 1.0), object: "a red circle".into(), score: 1.0 }],
/// };
/// let (map, stats) = RewardComposer::default().compose(&judgement, 4, 2);
/// assert_eq!(map.values, vec![0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]);
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

    /// The map at image resolution (`height x width` pixels) and what was skipped.
    pub fn compose(
        &self,
        judgement: &Judgement,
        width: usize,
        height: usize,
    ) -> (RewardMap, ComposeStats) {
        let cfg = &self.config;
        let mut stats = ComposeStats::default();
        let mut map = RewardMap::filled(height, width, cfg.base);

        if cfg.mode != RewardMode::GlobalOnly {
            // Mean mode keeps a running sum and count per pixel.
            let mut sum = vec![
                0f32;
                if cfg.combine == Combine::Mean {
                    width * height
                } else {
                    0
                }
            ];
            let mut count = vec![0u32; sum.len()];
            for region in &judgement.regions {
                let Some(score) = self.sanitize(region.score, &mut stats) else {
                    continue;
                };
                let Some((x0, y0, x1, y1)) = region.bbox.pixel_bounds(width, height) else {
                    stats.invalid_boxes += 1;
                    tracing::debug!(bbox = ?region.bbox, "invalid region box skipped");
                    continue;
                };
                stats.regions_used += 1;
                let value = unit(score);
                for y in y0..y1 {
                    let row = y * width;
                    match cfg.combine {
                        Combine::Max => map.values[row + x0..row + x1]
                            .iter_mut()
                            .for_each(|v| *v = v.max(value)),
                        Combine::Mean => (row + x0..row + x1).for_each(|i| {
                            sum[i] += value;
                            count[i] += 1;
                        }),
                    }
                }
            }
            if cfg.combine == Combine::Mean {
                for ((v, s), c) in map.values.iter_mut().zip(&sum).zip(&count) {
                    if *c > 0 {
                        *v = s / *c as f32;
                    }
                }
            }
        }

        if cfg.mode != RewardMode::LocalOnly {
            let g = judgement
                .global
                .and_then(|g| self.sanitize(g, &mut stats))
                .unwrap_or(0.0);
            let factor = unit(g);
            map.values.iter_mut().for_each(|v| *v *= factor);
        }
        if cfg.signed {
            map.values.iter_mut().for_each(|v| *v = 2.0 * *v - 1.0);
        }
        (map, stats)
    }

    /// The map resized to a latent token grid `(h, w)`, row-major in token order.
    pub fn compose_latent(
        &self,
        judgement: &Judgement,
        image_size: (usize, usize),
        grid: (usize, usize),
    ) -> (RewardMap, ComposeStats) {
        let (map, stats) = self.compose(judgement, image_size.0, image_size.1);
        (map.resize(grid.0, grid.1), stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reward::{BBox, ScoredRegion};

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
        let (m, _) = RewardComposer::default().compose(&j, 3, 2);
        assert!(m.values.iter().all(|&v| (v - 0.5 * 0.75).abs() < 1e-7));
        let (m, _) = RewardComposer::default().compose(&Judgement::default(), 3, 2);
        assert!(m.values.iter().all(|&v| v == 0.25));
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
        let (m, s) = RewardComposer::default().compose(&j, 3, 2);
        assert_eq!(m.values, vec![1.0, 1.0, 0.5, 0.5, 0.5, 0.5]);
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
        let (m, s) = RewardComposer::default().compose(&j, 3, 2);
        assert_eq!(s.invalid_boxes, 3);
        assert_eq!(s.clamped_scores, 1);
        assert_eq!(s.non_finite_scores, 1);
        assert_eq!(m.values[0], 0.5);
        assert_eq!(m.values[1], 0.25);
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
            .compose(&j, 3, 1)
            .0
            .values
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
}
