//! The oracle scorer: reads a generated image (pixels only), finds the objects and scores them
//! against the prompt the way T2I-CompBench does. **Evaluation only**: nothing in training or
//! self-judgement calls it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::grammar::{Category, Np, PromptSpec};
use super::scene::{Color, Shape};
use srum::image::PixelImage;

/// An object the oracle found.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Nearest palette colour.
    pub color: Color,
    /// Shape from how it fills its box and how its mass splits between the box's halves.
    pub shape: Shape,
    /// Centre of mass, pixels.
    pub cx: f32,
    /// Centre of mass, pixels.
    pub cy: f32,
    /// Pixels.
    pub area: usize,
    /// Width of its bounding box, pixels.
    pub box_width: usize,
    /// Height of its bounding box, pixels.
    pub box_height: usize,
}

/// Detection settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Oracle {
    /// A pixel farther than this from every palette colour (and from white) is ignored. Default 0.35.
    pub color_tolerance: f32,
    /// Smallest component that counts at all, pixels. Default 6.
    pub min_area: usize,
    /// `Some((lo, hi))` (the strict oracle): only a component of `lo..=hi` pixels on a 32 x 32
    /// canvas (scaled with the canvas's area) whose bounding box is about square (sides within
    /// 3:2) is an object. The renderer's shapes span about 24 to 116 pixels there, in square
    /// boxes. Every other component, and every object of a prompt's colour
    /// that is not a shape the prompt gives that colour, is a stray, and a prompt with `n` noun
    /// phrases and `s` strays of its colours scores `n / (n + s)` of what its objects earn.
    /// `None` (default, T2I-CompBench's reading): every component is an object, and only the
    /// objects the prompt asks for count.
    pub object_area: Option<(usize, usize)>,
}

impl Default for Oracle {
    fn default() -> Self {
        Self {
            color_tolerance: 0.35,
            min_area: 6,
            object_area: None,
        }
    }
}

impl Oracle {
    /// The strict oracle: objects must be of a rendered shape's size, and strays of a
    /// prompt's colours count against it. A mosaic of the right colours scores near 0 here,
    /// not the partial credit the default gives it.
    pub fn strict() -> Self {
        Self {
            object_area: Some((20, 160)),
            ..Self::default()
        }
    }
}

fn dist(a: [f32; 3], b: [f32; 3]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

impl Oracle {
    /// Objects in the image: colour clustering to the palette, 4-connected components per
    /// colour, shape from how much of its box a component fills.
    pub fn detect(&self, image: &PixelImage) -> Vec<Detection> {
        self.components(image).into_iter().map(|(d, _)| d).collect()
    }

    /// [`Oracle::detect`]'s detections with the pixels of each (indices `y * width + x`).
    pub fn components(&self, image: &PixelImage) -> Vec<(Detection, Vec<usize>)> {
        let (w, h) = (image.width, image.height);
        let label: Vec<Option<usize>> = (0..w * h)
            .map(|i| {
                let p = image.pixel(i % w, i / w);
                let white = dist(p, [1.0; 3]);
                let (k, d) = Color::ALL
                    .iter()
                    .enumerate()
                    .map(|(k, c)| (k, dist(p, c.rgb())))
                    .min_by(|a, b| a.1.total_cmp(&b.1))?;
                (d <= self.color_tolerance && d < white).then_some(k)
            })
            .collect();
        let mut seen = vec![false; w * h];
        let mut out = Vec::new();
        for start in 0..w * h {
            let Some(k) = label[start] else { continue };
            if seen[start] {
                continue;
            }
            let (mut stack, mut pixels) = (vec![start], Vec::new());
            seen[start] = true;
            while let Some(i) = stack.pop() {
                pixels.push(i);
                let (x, y) = (i % w, i / w);
                let mut push = |j: usize| {
                    if !seen[j] && label[j] == Some(k) {
                        seen[j] = true;
                        stack.push(j);
                    }
                };
                if x > 0 {
                    push(i - 1);
                }
                if x + 1 < w {
                    push(i + 1);
                }
                if y > 0 {
                    push(i - w);
                }
                if y + 1 < h {
                    push(i + w);
                }
            }
            if pixels.len() < self.min_area {
                continue;
            }
            let xs = pixels.iter().map(|i| i % w);
            let ys = pixels.iter().map(|i| i / w);
            let (x0, x1) = (xs.clone().min().unwrap_or(0), xs.clone().max().unwrap_or(0));
            let (y0, y1) = (ys.clone().min().unwrap_or(0), ys.clone().max().unwrap_or(0));
            let fill = pixels.len() as f32 / ((x1 - x0 + 1) * (y1 - y0 + 1)) as f32;
            // An upright triangle keeps about a quarter of its mass in the top half of its box;
            // a circle half. Squares fill their box.
            let mid = (y0 + y1) as f32 / 2.0;
            let top = ys.clone().filter(|&y| (y as f32) < mid).count() as f32
                + 0.5 * ys.clone().filter(|&y| y as f32 == mid).count() as f32;
            let top_share = top / pixels.len() as f32;
            let shape = if fill > 0.95 {
                Shape::Square
            } else if top_share > 0.38 {
                Shape::Circle
            } else {
                Shape::Triangle
            };
            let n = pixels.len() as f32;
            let detection = Detection {
                color: Color::ALL[k],
                shape,
                cx: xs.map(|x| x as f32 + 0.5).sum::<f32>() / n,
                cy: ys.map(|y| y as f32 + 0.5).sum::<f32>() / n,
                area: pixels.len(),
                box_width: x1 - x0 + 1,
                box_height: y1 - y0 + 1,
            };
            out.push((detection, pixels));
        }
        out
    }

    /// Whether `d`, found in `image`, counts as an object: with [`Oracle::object_area`], of
    /// that size (scaled from a 32 x 32 canvas to the image's) in a box within 3:2 of square;
    /// without, always.
    pub fn is_object(&self, d: &Detection, image: &PixelImage) -> bool {
        let Some((lo, hi)) = self.object_area else {
            return true;
        };
        let a = d.area as f32 * 1024.0 / (image.width * image.height) as f32;
        let (w, h) = (d.box_width.max(1) as f32, d.box_height.max(1) as f32);
        a >= lo as f32 && a <= hi as f32 && w / h <= 1.5 && h / w <= 1.5
    }

    /// Score in `[0, 100]` of an image against a prompt: binding (each noun phrase present with
    /// its attributes), spatial (both present, centres in relation), numeracy (exact count),
    /// complex (mean of its parts).
    pub fn score(&self, image: &PixelImage, prompt: &PromptSpec) -> f32 {
        let all = self.detect(image);
        let is_object = |d: &Detection| self.is_object(d, image);
        let dets: Vec<Detection> = all.iter().copied().filter(|d| is_object(d)).collect();
        let nps = prompt.nps();
        // Strays: components of a prompt's colour that are not objects, or objects of a shape
        // the prompt does not give that colour.
        let strays = match self.object_area {
            Some(_) => all
                .iter()
                .filter(|d| nps.iter().any(|n| n.color == d.color))
                .filter(|d| {
                    !is_object(d) || !nps.iter().any(|n| n.color == d.color && n.shape == d.shape)
                })
                .count(),
            None => 0,
        };
        let penalty = nps.len() as f32 / (nps.len() + strays).max(1) as f32;
        penalty * self.score_objects(&dets, prompt)
    }

    /// The score of `dets` as the objects of the image.
    fn score_objects(&self, dets: &[Detection], prompt: &PromptSpec) -> f32 {
        let matching = |np: Np| {
            dets.iter()
                .filter(|d| d.color == np.color && d.shape == np.shape)
                .collect::<Vec<_>>()
        };
        let present = |np: Np| !matching(np).is_empty();
        let binding = |nps: &[Np]| {
            100.0 * nps.iter().filter(|n| present(**n)).count() as f32 / nps.len().max(1) as f32
        };
        let relation = |a: Np, r: super::grammar::Relation, b: Np| {
            let ok = matching(a).iter().any(|x| {
                matching(b)
                    .iter()
                    .any(|y| !std::ptr::eq(*x, *y) && r.holds((x.cx, x.cy), (y.cx, y.cy)))
            });
            if ok { 100.0 } else { 0.0 }
        };
        match prompt {
            PromptSpec::Objects(nps) => binding(nps),
            PromptSpec::Relation(a, r, b) => relation(*a, *r, *b),
            PromptSpec::Count(n, np) => {
                if matching(*np).len() == *n {
                    100.0
                } else {
                    0.0
                }
            }
            PromptSpec::Complex(a, r, b, c) => (relation(*a, *r, *b) + binding(&[*c])) / 2.0,
        }
    }
}

/// Mean oracle score per category and overall (the mean of the category means).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OracleReport {
    /// Category name to (mean score, count).
    pub categories: BTreeMap<String, (f32, usize)>,
    /// Mean of the category means.
    pub overall: f32,
}

impl OracleReport {
    /// Aggregates `(category, score)` pairs.
    pub fn from_scores(scores: &[(Category, f32)]) -> Self {
        let mut categories = BTreeMap::new();
        for cat in Category::BENCHMARK {
            let v: Vec<f32> = scores
                .iter()
                .filter(|(c, _)| *c == cat)
                .map(|(_, s)| *s)
                .collect();
            if !v.is_empty() {
                categories.insert(
                    cat.name().to_string(),
                    (v.iter().sum::<f32>() / v.len() as f32, v.len()),
                );
            }
        }
        let overall = if categories.is_empty() {
            0.0
        } else {
            categories.values().map(|(m, _)| m).sum::<f32>() / categories.len() as f32
        };
        Self {
            categories,
            overall,
        }
    }

    /// A markdown table: one column per category, then overall.
    pub fn markdown(&self, label: &str) -> String {
        let cats: Vec<&String> = self.categories.keys().collect();
        let mut s = format!(
            "| model | {} | overall |\n|---|{}---|\n",
            cats.iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(" | "),
            "---|".repeat(cats.len())
        );
        s.push_str(&format!(
            "| {label} | {} | {:.2} |\n",
            cats.iter()
                .map(|c| format!("{:.2}", self.categories[*c].0))
                .collect::<Vec<_>>()
                .join(" | "),
            self.overall
        ));
        s
    }
}
