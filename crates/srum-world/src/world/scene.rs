//! Scenes: coloured shapes on a white canvas, and their deterministic rendering.

use serde::{Deserialize, Serialize};

use srum::image::PixelImage;

/// The palette. Colours are far apart so that a blurry generation still has a nearest colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// (0.9, 0.1, 0.1)
    Red,
    /// (0.1, 0.7, 0.2)
    Green,
    /// (0.15, 0.3, 0.95)
    Blue,
    /// (0.95, 0.8, 0.1)
    Yellow,
}

impl Color {
    /// Every colour.
    pub const ALL: [Color; 4] = [Color::Red, Color::Green, Color::Blue, Color::Yellow];

    /// RGB in `[0, 1]`.
    pub fn rgb(self) -> [f32; 3] {
        match self {
            Color::Red => [0.9, 0.1, 0.1],
            Color::Green => [0.1, 0.7, 0.2],
            Color::Blue => [0.15, 0.3, 0.95],
            Color::Yellow => [0.95, 0.8, 0.1],
        }
    }

    /// The word for it.
    pub fn word(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
        }
    }
}

/// Shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// Fills about 79% of its box.
    Circle,
    /// Fills its box.
    Square,
    /// Upright isosceles: fills about half its box.
    Triangle,
}

impl Shape {
    /// Every shape.
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    /// The singular noun.
    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    /// The plural noun.
    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
        }
    }
}

/// One object in a scene.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Object {
    /// Its colour.
    pub color: Color,
    /// Its shape.
    pub shape: Shape,
    /// Centre column, pixels.
    pub cx: f32,
    /// Centre row, pixels.
    pub cy: f32,
    /// Half the side of its bounding box, pixels.
    pub radius: f32,
}

impl Object {
    /// Whether pixel `(x, y)` (its centre at `x + 0.5, y + 0.5`) is inside.
    pub fn covers(&self, x: usize, y: usize) -> bool {
        let (px, py) = (x as f32 + 0.5 - self.cx, y as f32 + 0.5 - self.cy);
        let r = self.radius;
        match self.shape {
            Shape::Circle => px * px + py * py <= r * r,
            Shape::Square => px.abs() <= r * 0.9 && py.abs() <= r * 0.9,
            Shape::Triangle => py >= -r && py <= r && px.abs() <= (py + r) / 2.0,
        }
    }
}

/// A scene: objects on a white background.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Scene {
    /// Objects, drawn in order.
    pub objects: Vec<Object>,
}

impl Scene {
    /// Renders the scene at `size x size` pixels.
    pub fn render(&self, size: usize) -> PixelImage {
        let mut img = PixelImage::filled(size, size, [1.0, 1.0, 1.0]);
        for o in &self.objects {
            let (x0, x1) = (
                (o.cx - o.radius - 1.0).max(0.0) as usize,
                ((o.cx + o.radius + 1.0) as usize).min(size),
            );
            let (y0, y1) = (
                (o.cy - o.radius - 1.0).max(0.0) as usize,
                ((o.cy + o.radius + 1.0) as usize).min(size),
            );
            let rgb = o.color.rgb();
            for y in y0..y1 {
                for x in x0..x1 {
                    if o.covers(x, y) {
                        let i = (y * size + x) * 3;
                        img.data[i..i + 3].copy_from_slice(&rgb);
                    }
                }
            }
        }
        img
    }
}
