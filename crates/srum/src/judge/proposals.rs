//! Region proposals: where in an image the judge should look.
//!
//! The paper uses SAM; these built-in proposers need no weights. Boxes are in image pixels,
//! `[x_min, y_min, x_max, y_max)` with exclusive ends, sorted largest first.

use crate::image::PixelImage;
use crate::reward::BBox;

/// Proposes boxes for an image, largest first.
pub trait RegionProposer {
    /// Boxes in pixels, sorted by area (largest first).
    fn propose(&self, image: &PixelImage) -> Vec<BBox>;
}

/// Foreground connected components: background is the median border colour, foreground is
/// every pixel that differs from it by more than `threshold` in some channel; 8-connected
/// components of at least `min_area` pixels become boxes, and smaller fragments are merged
/// into a component whose box they touch (within `merge_distance` pixels) or dropped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnectedComponents {
    /// Per-channel difference from the background that makes a pixel foreground. Default 0.15.
    pub threshold: f32,
    /// Smallest component kept on its own, in pixels. Default 4.
    pub min_area: usize,
    /// How far (pixels) a fragment may be from a component's box to be merged into it. Default 1.
    pub merge_distance: usize,
    /// Split components by colour too (objects of different colours that touch). Default true.
    pub split_by_colour: bool,
}

impl Default for ConnectedComponents {
    fn default() -> Self {
        Self {
            threshold: 0.15,
            min_area: 4,
            merge_distance: 1,
            split_by_colour: true,
        }
    }
}

/// The median of the border pixels, per channel.
pub fn border_colour(image: &PixelImage) -> [f32; 3] {
    let (w, h) = (image.width, image.height);
    let mut chans = [Vec::new(), Vec::new(), Vec::new()];
    for y in 0..h {
        for x in 0..w {
            if x == 0 || y == 0 || x + 1 == w || y + 1 == h {
                let p = image.pixel(x, y);
                for c in 0..3 {
                    chans[c].push(p[c]);
                }
            }
        }
    }
    let mut out = [0.0; 3];
    for c in 0..3 {
        let v = &mut chans[c];
        if v.is_empty() {
            continue;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        out[c] = v[v.len() / 2];
    }
    out
}

fn close(a: [f32; 3], b: [f32; 3], t: f32) -> bool {
    (0..3).all(|c| (a[c] - b[c]).abs() <= t)
}

#[derive(Debug, Clone, Copy)]
struct Component {
    x0: usize,
    y0: usize,
    x1: usize,
    y1: usize,
    area: usize,
}

impl Component {
    fn gap(&self, o: &Component) -> usize {
        let dx = if o.x0 >= self.x1 {
            o.x0 - self.x1
        } else {
            self.x0.saturating_sub(o.x1)
        };
        let dy = if o.y0 >= self.y1 {
            o.y0 - self.y1
        } else {
            self.y0.saturating_sub(o.y1)
        };
        dx.max(dy)
    }
    fn absorb(&mut self, o: &Component) {
        self.x0 = self.x0.min(o.x0);
        self.y0 = self.y0.min(o.y0);
        self.x1 = self.x1.max(o.x1);
        self.y1 = self.y1.max(o.y1);
        self.area += o.area;
    }
}

impl RegionProposer for ConnectedComponents {
    fn propose(&self, image: &PixelImage) -> Vec<BBox> {
        let (w, h) = (image.width, image.height);
        if w == 0 || h == 0 || image.data.len() != w * h * 3 {
            return Vec::new();
        }
        let bg = border_colour(image);
        let fg: Vec<bool> = (0..w * h)
            .map(|i| !close(image.pixel(i % w, i / w), bg, self.threshold))
            .collect();
        let mut label = vec![usize::MAX; w * h];
        let mut comps = Vec::new();
        let mut stack = Vec::new();
        for start in 0..w * h {
            if !fg[start] || label[start] != usize::MAX {
                continue;
            }
            let id = comps.len();
            let seed = image.pixel(start % w, start / w);
            let mut c = Component {
                x0: w,
                y0: h,
                x1: 0,
                y1: 0,
                area: 0,
            };
            label[start] = id;
            stack.push(start);
            while let Some(i) = stack.pop() {
                let (x, y) = (i % w, i / w);
                c.x0 = c.x0.min(x);
                c.y0 = c.y0.min(y);
                c.x1 = c.x1.max(x + 1);
                c.y1 = c.y1.max(y + 1);
                c.area += 1;
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                        if (dx, dy) == (0, 0)
                            || nx < 0
                            || ny < 0
                            || nx >= w as i64
                            || ny >= h as i64
                        {
                            continue;
                        }
                        let j = ny as usize * w + nx as usize;
                        if fg[j]
                            && label[j] == usize::MAX
                            && (!self.split_by_colour
                                || close(
                                    image.pixel(nx as usize, ny as usize),
                                    seed,
                                    2.0 * self.threshold,
                                ))
                        {
                            label[j] = id;
                            stack.push(j);
                        }
                    }
                }
            }
            comps.push(c);
        }
        let (mut big, small): (Vec<Component>, Vec<Component>) =
            comps.into_iter().partition(|c| c.area >= self.min_area);
        for frag in small {
            if let Some(target) = big
                .iter_mut()
                .filter(|b| b.gap(&frag) <= self.merge_distance)
                .min_by_key(|b| b.gap(&frag))
            {
                target.absorb(&frag);
            }
        }
        big.sort_by(|a, b| {
            b.area
                .cmp(&a.area)
                .then(a.y0.cmp(&b.y0))
                .then(a.x0.cmp(&b.x0))
        });
        big.iter()
            .map(|c| BBox::new(c.x0 as f64, c.y0 as f64, c.x1 as f64, c.y1 as f64))
            .collect()
    }
}

/// A fixed `rows x cols` grid of boxes covering the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridProposer {
    /// Rows of the grid.
    pub rows: usize,
    /// Columns of the grid.
    pub cols: usize,
}

impl RegionProposer for GridProposer {
    fn propose(&self, image: &PixelImage) -> Vec<BBox> {
        let (rows, cols) = (self.rows.max(1), self.cols.max(1));
        let edge = |i: usize, n: usize, size: usize| (i * size / n) as f64;
        let mut out = Vec::new();
        for r in 0..rows {
            for c in 0..cols {
                let b = BBox::new(
                    edge(c, cols, image.width),
                    edge(r, rows, image.height),
                    edge(c + 1, cols, image.width),
                    edge(r + 1, rows, image.height),
                );
                if b.x_max > b.x_min && b.y_max > b.y_min {
                    out.push(b);
                }
            }
        }
        // Equal areas (up to rounding): keep reading order, largest first.
        out.sort_by(|a, b| {
            let area = |b: &BBox| (b.x_max - b.x_min) * (b.y_max - b.y_min);
            area(b).total_cmp(&area(a))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paint(img: &mut PixelImage, x0: usize, y0: usize, x1: usize, y1: usize, rgb: [f32; 3]) {
        for y in y0..y1 {
            for x in x0..x1 {
                let i = (y * img.width + x) * 3;
                img.data[i..i + 3].copy_from_slice(&rgb);
            }
        }
    }

    #[test]
    fn finds_objects_largest_first_and_merges_fragments() {
        let mut img = PixelImage::filled(32, 32, [1.0, 1.0, 1.0]);
        paint(&mut img, 2, 2, 8, 8, [1.0, 0.0, 0.0]); // 36 px
        paint(&mut img, 15, 10, 25, 20, [0.0, 0.0, 1.0]); // 100 px
        paint(&mut img, 26, 10, 27, 11, [0.0, 0.0, 1.0]); // 1 px, 1 px from the blue box
        paint(&mut img, 2, 28, 3, 29, [0.0, 1.0, 0.0]); // isolated speck: dropped
        let boxes = ConnectedComponents::default().propose(&img);
        assert_eq!(
            boxes,
            vec![
                BBox::new(15.0, 10.0, 27.0, 20.0),
                BBox::new(2.0, 2.0, 8.0, 8.0)
            ]
        );
    }

    #[test]
    fn touching_objects_of_different_colours_split() {
        let mut img = PixelImage::filled(16, 16, [0.0, 0.0, 0.0]);
        paint(&mut img, 2, 2, 8, 8, [1.0, 0.0, 0.0]);
        paint(&mut img, 8, 2, 12, 8, [0.0, 1.0, 0.0]);
        assert_eq!(ConnectedComponents::default().propose(&img).len(), 2);
        let joined = ConnectedComponents {
            split_by_colour: false,
            ..Default::default()
        };
        assert_eq!(joined.propose(&img), vec![BBox::new(2.0, 2.0, 12.0, 8.0)]);
    }

    #[test]
    fn grid_covers_the_image() {
        let img = PixelImage::filled(10, 6, [0.0; 3]);
        let boxes = GridProposer { rows: 2, cols: 3 }.propose(&img);
        assert_eq!(boxes.len(), 6);
        let area: f64 = boxes
            .iter()
            .map(|b| (b.x_max - b.x_min) * (b.y_max - b.y_min))
            .sum();
        assert_eq!(area, 60.0);
    }
}
