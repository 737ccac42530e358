//! The prompt grammar, its categories (those of T2I-CompBench that make sense here), scene
//! sampling for a prompt, hard negatives, and the fixed train / held-out split.

use rand::Rng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

use super::scene::{Color, Object, Scene, Shape};
use srum::error::{Result, SrumError};

/// A noun phrase: a coloured shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Np {
    /// Colour.
    pub color: Color,
    /// Shape.
    pub shape: Shape,
}

impl Np {
    /// Every noun phrase.
    pub fn all() -> Vec<Np> {
        Color::ALL
            .iter()
            .flat_map(|&color| Shape::ALL.iter().map(move |&shape| Np { color, shape }))
            .collect()
    }

    /// Whether `object` is this coloured shape.
    pub fn describes(self, object: &Object) -> bool {
        object.color == self.color && object.shape == self.shape
    }

    /// "a red circle".
    pub fn text(self) -> String {
        format!("a {} {}", self.color.word(), self.shape.word())
    }
}

/// A 2D relation between object centres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Relation {
    /// Mostly horizontal, subject to the left.
    LeftOf,
    /// Mostly horizontal, subject to the right.
    RightOf,
    /// Mostly vertical, subject higher.
    Above,
    /// Mostly vertical, subject lower.
    Below,
}

impl Relation {
    /// Every relation.
    pub const ALL: [Relation; 4] = [
        Relation::LeftOf,
        Relation::RightOf,
        Relation::Above,
        Relation::Below,
    ];

    /// The words.
    pub fn text(self) -> &'static str {
        match self {
            Relation::LeftOf => "left of",
            Relation::RightOf => "right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }

    /// The opposite relation.
    pub fn flipped(self) -> Relation {
        match self {
            Relation::LeftOf => Relation::RightOf,
            Relation::RightOf => Relation::LeftOf,
            Relation::Above => Relation::Below,
            Relation::Below => Relation::Above,
        }
    }

    /// Whether centre `a` is in this relation to centre `b` (T2I-CompBench's rule: the
    /// displacement along the relation's axis dominates and has the right sign).
    pub fn holds(self, a: (f32, f32), b: (f32, f32)) -> bool {
        let (dx, dy) = (a.0 - b.0, a.1 - b.1);
        match self {
            Relation::LeftOf => dx < 0.0 && dx.abs() > dy.abs(),
            Relation::RightOf => dx > 0.0 && dx.abs() > dy.abs(),
            Relation::Above => dy < 0.0 && dy.abs() > dx.abs(),
            Relation::Below => dy > 0.0 && dy.abs() > dx.abs(),
        }
    }
}

/// The T2I-CompBench categories we cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// Colour binding: "a red circle and a blue circle".
    Color,
    /// Shape binding: "a red circle and a red square".
    Shape,
    /// 2D spatial: "a green triangle left of a yellow circle".
    Spatial,
    /// Numeracy: "three blue squares".
    Numeracy,
    /// Mixtures: "a red circle above a blue square and a green triangle".
    Complex,
    /// One object ("a red circle"); used in training, not a benchmark category.
    Single,
}

impl Category {
    /// The benchmark categories, in table order.
    pub const BENCHMARK: [Category; 5] = [
        Category::Color,
        Category::Shape,
        Category::Spatial,
        Category::Numeracy,
        Category::Complex,
    ];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Category::Color => "color",
            Category::Shape => "shape",
            Category::Spatial => "spatial",
            Category::Numeracy => "numeracy",
            Category::Complex => "complex",
            Category::Single => "single",
        }
    }
}

/// A parsed prompt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PromptSpec {
    /// "a red circle" or "a red circle and a blue square".
    Objects(Vec<Np>),
    /// "a red circle left of a blue square".
    Relation(Np, Relation, Np),
    /// "three blue squares" (2 to 4).
    Count(usize, Np),
    /// "`<relation>` and `<one object>`".
    Complex(Np, Relation, Np, Np),
}

const NUMBERS: [&str; 5] = ["zero", "one", "two", "three", "four"];

fn parse_np(words: &[&str]) -> Option<Np> {
    if words.len() != 3 || words[0] != "a" {
        return None;
    }
    let color = *Color::ALL.iter().find(|c| c.word() == words[1])?;
    let shape = *Shape::ALL.iter().find(|s| s.word() == words[2])?;
    Some(Np { color, shape })
}

fn parse_relation(words: &[&str]) -> Option<(Np, Relation, Np)> {
    if words.len() < 7 {
        return None;
    }
    let a = parse_np(&words[..3])?;
    for r in Relation::ALL {
        let rw: Vec<&str> = r.text().split(' ').collect();
        if words.len() == 6 + rw.len() && words[3..3 + rw.len()] == rw[..] {
            return Some((a, r, parse_np(&words[3 + rw.len()..])?));
        }
    }
    None
}

impl PromptSpec {
    /// The prompt text.
    pub fn text(&self) -> String {
        match self {
            PromptSpec::Objects(nps) => nps
                .iter()
                .map(|n| n.text())
                .collect::<Vec<_>>()
                .join(" and "),
            PromptSpec::Relation(a, r, b) => format!("{} {} {}", a.text(), r.text(), b.text()),
            PromptSpec::Count(n, np) => {
                format!("{} {} {}", NUMBERS[*n], np.color.word(), np.shape.plural())
            }
            PromptSpec::Complex(a, r, b, c) => {
                format!("{} {} {} and {}", a.text(), r.text(), b.text(), c.text())
            }
        }
    }

    /// Parses a prompt of the grammar; anything else is an error naming the prompt.
    pub fn parse(prompt: &str) -> Result<Self> {
        let words: Vec<&str> = prompt.split_whitespace().collect();
        let bad = || SrumError::Model(format!("prompt `{prompt}` is not in the world's grammar"));
        let parts: Vec<&[&str]> = words.split(|w| *w == "and").collect();
        if parts.len() == 2
            && let (Some((a, r, b)), Some(c)) = (parse_relation(parts[0]), parse_np(parts[1]))
        {
            return Ok(PromptSpec::Complex(a, r, b, c));
        }
        if parts.len() == 1 {
            if let Some((a, r, b)) = parse_relation(&words) {
                return Ok(PromptSpec::Relation(a, r, b));
            }
            if words.len() == 3
                && let Some(n) = NUMBERS[2..].iter().position(|w| *w == words[0])
            {
                let color = *Color::ALL
                    .iter()
                    .find(|c| c.word() == words[1])
                    .ok_or_else(bad)?;
                let shape = *Shape::ALL
                    .iter()
                    .find(|s| s.plural() == words[2])
                    .ok_or_else(bad)?;
                return Ok(PromptSpec::Count(n + 2, Np { color, shape }));
            }
        }
        let nps: Option<Vec<Np>> = parts.iter().map(|p| parse_np(p)).collect();
        match nps {
            Some(nps) if !nps.is_empty() && nps.len() <= 2 => Ok(PromptSpec::Objects(nps)),
            _ => Err(bad()),
        }
    }

    /// Its benchmark category.
    pub fn category(&self) -> Category {
        match self {
            PromptSpec::Objects(n) if n.len() == 1 => Category::Single,
            PromptSpec::Objects(n) if n[0].color == n[1].color => Category::Shape,
            PromptSpec::Objects(_) => Category::Color,
            PromptSpec::Relation(..) => Category::Spatial,
            PromptSpec::Count(..) => Category::Numeracy,
            PromptSpec::Complex(..) => Category::Complex,
        }
    }

    /// The noun phrases it mentions.
    pub fn nps(&self) -> Vec<Np> {
        match self {
            PromptSpec::Objects(n) => n.clone(),
            PromptSpec::Relation(a, _, b) => vec![*a, *b],
            PromptSpec::Count(_, n) => vec![*n],
            PromptSpec::Complex(a, _, b, c) => vec![*a, *b, *c],
        }
    }

    /// Whether `scene` satisfies the prompt: each object present (a count exactly), and the
    /// relation holding between some instance of its subject and of its object.
    pub fn holds_in(&self, scene: &Scene) -> bool {
        let count = |np: &Np| scene.objects.iter().filter(|o| np.describes(o)).count();
        let related = |a: &Np, r: &Relation, b: &Np| {
            scene.objects.iter().filter(|o| a.describes(o)).any(|x| {
                scene
                    .objects
                    .iter()
                    .filter(|o| b.describes(o))
                    .any(|y| !std::ptr::eq(x, y) && r.holds((x.cx, x.cy), (y.cx, y.cy)))
            })
        };
        match self {
            PromptSpec::Objects(nps) => nps.iter().all(|n| count(n) >= 1),
            PromptSpec::Count(n, np) => count(np) == *n,
            PromptSpec::Relation(a, r, b) => related(a, r, b),
            PromptSpec::Complex(a, r, b, c) => related(a, r, b) && count(c) >= 1,
        }
    }

    /// A random scene that satisfies the prompt on a `size x size` canvas.
    pub fn sample_scene<R: Rng>(&self, rng: &mut R, size: usize) -> Scene {
        let s = size as f32;
        for _ in 0..1000 {
            let (nps, n): (Vec<Np>, usize) = match self {
                PromptSpec::Count(n, np) => (vec![*np; *n], *n),
                other => {
                    let v = other.nps();
                    let n = v.len();
                    (v, n)
                }
            };
            let r_max = if n >= 3 { 4.5 } else { 6.0 };
            let objects: Vec<Object> = nps
                .iter()
                .map(|np| {
                    let radius = rng.random_range(3.5..r_max);
                    Object {
                        color: np.color,
                        shape: np.shape,
                        cx: rng.random_range(radius + 1.0..s - radius - 1.0),
                        cy: rng.random_range(radius + 1.0..s - radius - 1.0),
                        radius,
                    }
                })
                .collect();
            let apart = objects.iter().enumerate().all(|(i, a)| {
                objects[i + 1..].iter().all(|b| {
                    let gap = (a.cx - b.cx).abs().max((a.cy - b.cy).abs()) - a.radius - b.radius;
                    gap >= 2.0
                })
            });
            let related = match self {
                PromptSpec::Relation(_, r, _) | PromptSpec::Complex(_, r, _, _) => {
                    let (a, b) = (objects[0], objects[1]);
                    // A margin, so the relation is unambiguous to see.
                    r.holds((a.cx, a.cy), (b.cx, b.cy))
                        && ((a.cx - b.cx).abs() - (a.cy - b.cy).abs()).abs() > 3.0
                }
                _ => true,
            };
            if apart && related {
                return Scene { objects };
            }
        }
        Scene::default()
    }

    /// A hard negative: the same words with one thing changed (swapped colours, flipped
    /// relation, count off by one, another colour or shape).
    pub fn corrupt<R: Rng>(&self, rng: &mut R) -> PromptSpec {
        let other_color = |rng: &mut R, c: Color| {
            *Color::ALL
                .iter()
                .filter(|x| **x != c)
                .collect::<Vec<_>>()
                .choose(rng)
                .copied()
                .unwrap_or(&c)
        };
        let other_shape = |rng: &mut R, s: Shape| {
            *Shape::ALL
                .iter()
                .filter(|x| **x != s)
                .collect::<Vec<_>>()
                .choose(rng)
                .copied()
                .unwrap_or(&s)
        };
        let tweak = |rng: &mut R, np: Np| {
            if rng.random_bool(0.5) {
                Np {
                    color: other_color(rng, np.color),
                    ..np
                }
            } else {
                Np {
                    shape: other_shape(rng, np.shape),
                    ..np
                }
            }
        };
        match self {
            PromptSpec::Objects(nps) => {
                let mut v = nps.clone();
                if v.len() == 2 && v[0].color != v[1].color && rng.random_bool(0.5) {
                    let (a, b) = (v[0].color, v[1].color);
                    v[0].color = b;
                    v[1].color = a;
                } else {
                    let i = rng.random_range(0..v.len());
                    v[i] = tweak(rng, v[i]);
                }
                PromptSpec::Objects(v)
            }
            PromptSpec::Relation(a, r, b) => match rng.random_range(0..3) {
                0 => PromptSpec::Relation(*a, r.flipped(), *b),
                1 if a.color != b.color => PromptSpec::Relation(
                    Np {
                        color: b.color,
                        ..*a
                    },
                    *r,
                    Np {
                        color: a.color,
                        ..*b
                    },
                ),
                _ => PromptSpec::Relation(tweak(rng, *a), *r, *b),
            },
            PromptSpec::Count(n, np) => {
                let m = if *n == 4 || (*n > 2 && rng.random_bool(0.5)) {
                    n - 1
                } else {
                    n + 1
                };
                if rng.random_bool(0.8) {
                    PromptSpec::Count(m, *np)
                } else {
                    PromptSpec::Count(*n, tweak(rng, *np))
                }
            }
            PromptSpec::Complex(a, r, b, c) => match rng.random_range(0..3) {
                0 => PromptSpec::Complex(*a, r.flipped(), *b, *c),
                1 => PromptSpec::Complex(*a, *r, *b, tweak(rng, *c)),
                _ => PromptSpec::Complex(tweak(rng, *a), *r, *b, *c),
            },
        }
    }

    /// Whether the prompt belongs to the held-out split. A pair of noun phrases is held out
    /// when its hash falls in a fixed third; a prompt is held out when any pair of its objects
    /// is (counts: a fifth of `(n, object)` pairs). So no training prompt, of any category,
    /// puts two held-out-paired objects together.
    pub fn is_held_out(&self) -> bool {
        let hash = |key: &str| {
            let mut h: u64 = 0xcbf29ce484222325;
            for b in key.bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x100000001b3);
            }
            h
        };
        match self {
            PromptSpec::Count(n, np) => hash(&format!("{n}:{}", np.text())) % 5 == 0,
            other => {
                let nps = other.nps();
                nps.iter().enumerate().any(|(i, a)| {
                    nps[i + 1..].iter().any(|b| {
                        let (x, y) = if a <= b { (a, b) } else { (b, a) };
                        x != y && hash(&format!("{}|{}", x.text(), y.text())) % 3 == 0
                    })
                })
            }
        }
    }
}

/// Every prompt of the grammar (complex ones: every relation with every third object).
pub fn all_prompts() -> Vec<PromptSpec> {
    let nps = Np::all();
    let mut out = Vec::new();
    for &a in &nps {
        out.push(PromptSpec::Objects(vec![a]));
        for &b in &nps {
            if a.shape == b.shape && a.color != b.color {
                out.push(PromptSpec::Objects(vec![a, b]));
            }
            if a.color == b.color && a.shape != b.shape {
                out.push(PromptSpec::Objects(vec![a, b]));
            }
            if a != b {
                for r in Relation::ALL {
                    out.push(PromptSpec::Relation(a, r, b));
                    for &c in &nps {
                        if c != a && c != b {
                            out.push(PromptSpec::Complex(a, r, b, c));
                        }
                    }
                }
            }
        }
        for n in 2..=4 {
            out.push(PromptSpec::Count(n, a));
        }
    }
    out
}

/// The prompts SRUM rolls out: the training split's benchmark prompts (single objects left out,
/// as they are no compositional test), in grammar order.
pub fn rollout_prompts() -> Vec<String> {
    split_prompts(Split::Train, 0)
        .into_iter()
        .filter(|p| p.category() != Category::Single)
        .map(|p| p.text())
        .collect()
}

/// Which prompts a split holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// Prompts for pretraining and SRUM rollouts.
    Train,
    /// Evaluation prompts whose object combinations no training prompt has.
    Heldout,
}

/// The prompts of a split: every one for `Train`; for `Heldout`, a fixed sample of at most
/// `per_category` per benchmark category (deterministic).
pub fn split_prompts(split: Split, per_category: usize) -> Vec<PromptSpec> {
    let all = all_prompts();
    match split {
        Split::Train => all.into_iter().filter(|p| !p.is_held_out()).collect(),
        Split::Heldout => {
            let mut out = Vec::new();
            for cat in Category::BENCHMARK {
                let v: Vec<PromptSpec> = all
                    .iter()
                    .filter(|p| p.is_held_out() && p.category() == cat)
                    .cloned()
                    .collect();
                let step = (v.len() / per_category.max(1)).max(1);
                out.extend(v.into_iter().step_by(step).take(per_category));
            }
            out
        }
    }
}
