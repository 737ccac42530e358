//! Joint pretraining of both abilities on rendered data (training prompts only).
//!
//! Generation: rectified-flow matching on renders of training prompts, the prompt dropped 10%
//! of the time for classifier-free guidance. The loss is on the velocity whatever the head
//! predicts; with [`Prediction::Clean`](super::Prediction) that is JiT's "x-prediction,
//! v-loss". Understanding: yes/no on the atomic statements the model judges prompts by (each
//! object, count and relation), half of them true and half near misses (a swapped colour or
//! shape, a flipped relation, a count off by one), on single-object regions, on blank and
//! noise images (no), with imperfect inputs: noise blends, blur, the generator's own
//! one-step denoised estimates of renders and, with [`UnderstandingMix::samples`], its
//! multi-step completions of partly noised renders, since the judge must read imperfect
//! generations.
//! Labels come from the scene that was rendered, never from the oracle.

use std::time::Instant;

use burn::module::{AutodiffModule, ParamId, list_param_ids};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::model::{PATCH_CLASSES, TinyUmm, mask_to_region};
use crate::world::{Category, Np, PromptSpec, Relation, Split, split_prompts};
use srum::error::{Result, SrumError};
use srum::flow::{
    EulerSampler, EulerSamplerConfig, TimestepSampling, host_normal, noisy_latents,
    sample_timesteps,
};
use srum::image::PixelImage;
use srum::model::{FlowGenerator, Generator, ImageCodec, ImageSize, ParamRole};
use srum::train::learning_rate;

/// Pretraining settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PretrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Images per step for generation.
    pub batch: usize,
    /// Image/question pairs per step for understanding (`None`: same as `batch`).
    #[serde(default)]
    pub understanding_batch: Option<usize>,
    /// Peak learning rate (warmup 5% then cosine to a tenth).
    pub lr: f64,
    /// Seed of data and noise.
    pub seed: u64,
    /// Stop early after this many seconds (the steps' schedule is kept).
    pub time_budget_s: Option<f64>,
    /// Train only the understanding-only parameters ([`ParamRole::Understanding`]) on the
    /// understanding mix: the generator, and every parameter generation uses, stay bit for bit
    /// as loaded. For continuing a checkpoint whose judge lags its generator.
    #[serde(default)]
    pub understanding_only: bool,
    /// Train the generator alone: no understanding batch, no understanding loss (the
    /// understanding-only parameters get no gradient). For measuring the generator apart
    /// from what the judge's training does to the shared weights.
    #[serde(default)]
    pub generation_only: bool,
    /// Shift of the training timesteps (`t' = s t / (1 + (s - 1) t)`, as SD3 and BAGEL shift
    /// theirs): above 1 draws more high-noise times, where a sample's layout is decided. 1
    /// draws exactly what earlier versions drew.
    #[serde(default = "one_f32")]
    pub timestep_shift: f32,
    /// Keep an exponential moving average of the weights with this decay and return it
    /// instead of the last step's weights (the copy a flow model is sampled from). `None`:
    /// the last weights.
    #[serde(default)]
    pub ema: Option<f32>,
    /// Measure the generation loss on the clean estimate (`x_t - t v` against `x0`) rather
    /// than on the velocity: the velocity loss weighs a time's clean-image error by `1 / t^2`,
    /// so nearly clean times dominate it. false: the velocity loss, as earlier versions.
    #[serde(default)]
    pub clean_space_loss: bool,
    /// With the clean-space loss: weigh a time's clean-image error by `max(1, (t0 / t)^2)`
    /// (`t` at least 0.05), so high-noise times keep the clean-space weight and nearly clean
    /// ones, where edges are drawn, get up to `(t0 / 0.05)^2` of it (the velocity loss gives
    /// them `1 / t^2`). `None`: the plain clean-space loss.
    #[serde(default)]
    pub low_noise_boost: Option<f32>,
    /// Weigh the generation loss of pixels on and around an object (non-white in the clean
    /// image, grown by two pixels) by `1 + w`: a circle and a square of one size differ in a
    /// dozen pixels of 1,024, too small a share of a plain squared error to learn early.
    /// `None`: every pixel alike.
    #[serde(default)]
    pub object_weight: Option<f32>,
    /// What the understanding batch is made of.
    #[serde(default)]
    pub mix: UnderstandingMix,
    /// With a locate head: also train it on object statements (where the asked object is),
    /// not only on relations, for more examples of finding a named object.
    #[serde(default)]
    pub locate_objects: bool,
    /// Split every step into this many shards run on parallel threads, each drawing its share
    /// of both batches from its own random stream; their gradients are summed into one
    /// optimizer step. burn's CPU kernels are too small here to use a second core on their
    /// own, so this is how pretraining uses several. 1 runs the step on the calling thread and
    /// draws exactly what earlier versions drew; 0 is taken as 1.
    #[serde(default = "one")]
    pub shards: usize,
}

fn one() -> usize {
    1
}

fn one_f32() -> f32 {
    1.0
}

/// Relative weights of the kinds of example in the understanding batch; each pair's kind is
/// drawn with probability proportional to its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnderstandingMix {
    /// Object presence, half true, half near misses. Default 7.
    pub objects: u32,
    /// Exact counts, half true, half off by one. Default 3.
    pub counts: u32,
    /// Relations, half true, half flipped or swapped. Default 4.
    pub relations: u32,
    /// Single objects shown through a region mask. Default 2.
    pub regions: u32,
    /// The generator's own one-step estimates of renders. Default 2.
    pub estimates: u32,
    /// Blank and noise images (always no). Default 2.
    pub blank: u32,
    /// Object, count and relation statements about the generator's own multi-step completion
    /// of a partly noised render (SDEdit-style, unconditional, on the 20-step grid), labelled
    /// by the rule of the one-step estimates: from a start time in [`SAMPLE_CLEAR`] the render
    /// survives and the scene's truth is the label; from one in [`SAMPLE_REDRAWN`] the sampler
    /// has redrawn it and the answer is no. The judge must read images the sampler made, whose
    /// speckle and broken edges a render or a one-step estimate does not have. Default 0.
    #[serde(default)]
    pub samples: u32,
}

/// Below this time a one-step estimate or a completion still shows the render: it is labelled
/// by the rendered scene.
const CLEAR_BELOW: f32 = 0.25;

/// Above this time a one-step estimate or a completion no longer shows the render: every
/// statement about it is labelled false.
const REDRAWN_ABOVE: f32 = 0.7;

/// The label of a statement about the generator's redrawing of a render from time `t` (a
/// one-step estimate or a completion), given whether it `holds` in the rendered scene: the
/// scene's truth below [`CLEAR_BELOW`], false above [`REDRAWN_ABOVE`], none in between (the
/// render may or may not show through).
fn redrawn_label(t: f32, holds: bool) -> Option<bool> {
    if t < CLEAR_BELOW {
        Some(holds)
    } else if t > REDRAWN_ABOVE {
        Some(false)
    } else {
        None
    }
}

/// Start times of [`UnderstandingMix::samples`] completions labelled by the scene (one time
/// per shard and step; this band or [`SAMPLE_REDRAWN`], evenly). From below 0.1 the completion
/// is the render itself.
pub const SAMPLE_CLEAR: (f32, f32) = (0.1, CLEAR_BELOW);

/// Start times of [`UnderstandingMix::samples`] completions labelled false.
pub const SAMPLE_REDRAWN: (f32, f32) = (REDRAWN_ABOVE, 1.0);

impl Default for UnderstandingMix {
    fn default() -> Self {
        Self {
            objects: 7,
            counts: 3,
            relations: 4,
            regions: 2,
            estimates: 2,
            blank: 2,
            samples: 0,
        }
    }
}

/// One kind of understanding example; see [`UnderstandingMix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Object,
    Count,
    Relation,
    Region,
    Estimate,
    Blank,
    Sample,
}

impl UnderstandingMix {
    /// The weights in [`Kind`] order.
    fn weights(&self) -> [(Kind, u32); 7] {
        [
            (Kind::Object, self.objects),
            (Kind::Count, self.counts),
            (Kind::Relation, self.relations),
            (Kind::Region, self.regions),
            (Kind::Estimate, self.estimates),
            (Kind::Blank, self.blank),
            (Kind::Sample, self.samples),
        ]
    }

    /// The statement kind of a sample row: object, count or relation in the mix's own
    /// proportions of those (evenly when they are all zero).
    fn statement_kind<R: Rng>(&self, rng: &mut R) -> Kind {
        let total = self.objects + self.counts + self.relations;
        if total == 0 {
            return [Kind::Object, Kind::Count, Kind::Relation][rng.random_range(0..3)];
        }
        let u = rng.random_range(0..total);
        if u < self.objects {
            Kind::Object
        } else if u < self.objects + self.counts {
            Kind::Count
        } else {
            Kind::Relation
        }
    }

    /// Sum of the weights.
    pub fn total(&self) -> u32 {
        self.weights().iter().map(|(_, w)| w).sum()
    }

    /// The kind a uniform draw `u` in `0..total()` picks.
    fn kind(&self, mut u: u32) -> Kind {
        for (k, w) in self.weights() {
            if u < w {
                return k;
            }
            u -= w;
        }
        Kind::Blank
    }

    /// Parses `objects,counts,relations,regions,estimates,blank[,samples]` (as the CLI takes
    /// it; `samples` is 0 when left out).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |message: String| SrumError::config("mix", message);
        let v: Vec<u32> = s
            .split(',')
            .map(|x| x.trim().parse::<u32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| bad(format!("{s:?}: {e}")))?;
        let (objects, counts, relations, regions, estimates, blank, samples) = match v[..] {
            [o, c, r, g, e, b] => (o, c, r, g, e, b, 0),
            [o, c, r, g, e, b, s] => (o, c, r, g, e, b, s),
            _ => {
                return Err(bad(format!(
                    "{s:?}: want 6 or 7 weights \
                     (objects,counts,relations,regions,estimates,blank[,samples])"
                )));
            }
        };
        let mix = Self {
            objects,
            counts,
            relations,
            regions,
            estimates,
            blank,
            samples,
        };
        if mix.total() == 0 {
            return Err(bad(format!("{s:?}: the weights sum to zero")));
        }
        Ok(mix)
    }
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            steps: 4000,
            batch: 32,
            understanding_batch: None,
            lr: 1e-3,
            seed: 0,
            time_budget_s: None,
            understanding_only: false,
            generation_only: false,
            timestep_shift: 1.0,
            ema: None,
            clean_space_loss: false,
            low_noise_boost: None,
            object_weight: None,
            mix: UnderstandingMix::default(),
            locate_objects: false,
            shards: 1,
        }
    }
}

/// One step's losses.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PretrainReport {
    /// Step done (1-based).
    pub step: usize,
    /// Flow-matching loss.
    pub generation_loss: f32,
    /// Cross-entropy of the yes/no head.
    pub understanding_loss: f32,
    /// Fraction of the understanding batch answered correctly.
    pub understanding_accuracy: f32,
    /// Fraction of the batch's relation statements answered correctly (`None`: none drawn).
    #[serde(default)]
    pub relation_accuracy: Option<f32>,
    /// Mean squared error of the locate head (`None`: no locate head or no relation drawn).
    #[serde(default)]
    pub locate_loss: Option<f32>,
    /// Learning rate used.
    pub lr: f64,
}

fn blur(img: &PixelImage) -> PixelImage {
    let (w, h) = (img.width, img.height);
    let mut out = img.clone();
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let mut s = 0.0;
                let mut n = 0.0;
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                        if nx >= 0 && ny >= 0 && (nx as usize) < w && (ny as usize) < h {
                            s += img.data[(ny as usize * w + nx as usize) * 3 + c];
                            n += 1.0;
                        }
                    }
                }
                out.data[(y * w + x) * 3 + c] = s / n;
            }
        }
    }
    out
}

fn noisy<R: Rng>(rng: &mut R, img: &PixelImage, amount: f32) -> PixelImage {
    let mut out = img.clone();
    for v in &mut out.data {
        let n: f32 = StandardNormal.sample(rng);
        *v = (*v + amount * n * 0.5).clamp(0.0, 1.0);
    }
    out
}

/// Per-patch colour and shape classes of the object covering most of each patch (background
/// when no object covers a quarter of it), from the rendered scene. `region` keeps only pixels
/// inside that box, as the region-masked image shows. `asked` are the statement's objects, in
/// order: a patch's ground class is 1 + the index of the first of them its object is (0: none
/// of them, or background); with none asked there is no ground target.
fn patch_labels(
    scene: &crate::world::Scene,
    region: Option<[usize; 4]>,
    size: usize,
    patch: usize,
    asked: &[Np],
) -> PatchTargets {
    use crate::world::{Color, Shape};
    let g = size / patch;
    let in_region =
        |x: usize, y: usize| region.is_none_or(|b| x >= b[0] && x < b[2] && y >= b[1] && y < b[3]);
    let (mut colors, mut shapes) = (Vec::with_capacity(g * g), Vec::with_capacity(g * g));
    let mut ground = Vec::with_capacity(g * g);
    for py in 0..g {
        for px in 0..g {
            let mut best = (0usize, None);
            for o in &scene.objects {
                let mut n = 0;
                for y in py * patch..(py + 1) * patch {
                    for x in px * patch..(px + 1) * patch {
                        if in_region(x, y) && o.covers(x, y) {
                            n += 1;
                        }
                    }
                }
                if n > best.0 {
                    best = (n, Some(o));
                }
            }
            match best {
                (n, Some(o)) if n * 4 >= patch * patch => {
                    colors.push(Color::ALL.iter().position(|c| *c == o.color).unwrap_or(0) as i32);
                    shapes.push(Shape::ALL.iter().position(|s| *s == o.shape).unwrap_or(0) as i32);
                    ground.push(
                        asked
                            .iter()
                            .position(|np| np.describes(o))
                            .map_or(0, |i| i + 1),
                    );
                }
                _ => {
                    colors.push(4);
                    shapes.push(3);
                    ground.push(0);
                }
            }
        }
    }
    let mut centres = vec![0; g * g];
    for o in &scene.objects {
        let (x, y) = (o.cx.max(0.0) as usize, o.cy.max(0.0) as usize);
        if in_region(x, y) && x < size && y < size {
            centres[(y / patch) * g + x / patch] = 1;
        }
    }
    let ground = if asked.is_empty() {
        vec![-1; g * g]
    } else {
        ground.into_iter().map(|c| c.min(2) as i32).collect()
    };
    PatchTargets {
        colors,
        shapes,
        centres,
        ground,
    }
}

/// Weight of the locate head's squared error (positions are fractions of the side, so an
/// error of 3 pixels costs about 0.05, a tenth of an undecided yes/no).
const LOCATE_WEIGHT: f32 = 5.0;

/// Centre of the first object of `np` in `scene`, as fractions of the side.
fn object_position(scene: &crate::world::Scene, np: Np, size: usize) -> Option<[f32; 2]> {
    let o = scene.objects.iter().find(|o| np.describes(o))?;
    Some([o.cx / size as f32, o.cy / size as f32])
}

/// Per-patch targets of the understanding heads; `-1` is "no target".
struct PatchTargets {
    /// Colour class of the object under the patch (4: background).
    colors: Vec<i32>,
    /// Shape class of the object under the patch (3: background).
    shapes: Vec<i32>,
    /// 1 where an object's centre lies in the patch, else 0.
    centres: Vec<i32>,
    /// Which of the statement's objects covers the patch: 0 none, 1 the first, 2 the second.
    ground: Vec<i32>,
}

impl PatchTargets {
    fn none(n: usize) -> Self {
        Self {
            colors: vec![-1; n],
            shapes: vec![-1; n],
            centres: vec![-1; n],
            ground: vec![-1; n],
        }
    }
}

/// A training prompt, categories balanced.
fn pick<'a, R: Rng>(rng: &mut R, by_cat: &'a [Vec<PromptSpec>]) -> &'a PromptSpec {
    let cat = &by_cat[rng.random_range(0..by_cat.len())];
    &cat[rng.random_range(0..cat.len())]
}

/// The training prompts statements are drawn from.
struct Pools {
    /// Prompts by category, in a fixed category order (for balanced picks).
    by_cat: Vec<Vec<PromptSpec>>,
    /// The relation and complex prompts, for relation statements.
    rel_cats: Vec<Vec<PromptSpec>>,
    /// The numeracy prompts, for count statements.
    count_prompts: Vec<PromptSpec>,
    nps: Vec<Np>,
}

impl Pools {
    fn new(train: &[PromptSpec]) -> Self {
        let mut by_cat: Vec<Vec<PromptSpec>> = Vec::new();
        for cat in [
            Category::Single,
            Category::Color,
            Category::Shape,
            Category::Spatial,
            Category::Numeracy,
            Category::Complex,
        ] {
            let v: Vec<PromptSpec> = train
                .iter()
                .filter(|p| p.category() == cat)
                .cloned()
                .collect();
            if !v.is_empty() {
                by_cat.push(v);
            }
        }
        let rel_cats = by_cat
            .iter()
            .filter(|v| {
                v.first()
                    .is_some_and(|p| matches!(p.category(), Category::Spatial | Category::Complex))
            })
            .cloned()
            .collect();
        let count_prompts = train
            .iter()
            .filter(|p| p.category() == Category::Numeracy)
            .cloned()
            .collect();
        Self {
            by_cat,
            rel_cats,
            count_prompts,
            nps: Np::all(),
        }
    }
}

/// A scene and an atomic statement about it (see `tiny::model::atoms`): object presence with
/// hard negatives, exact counts off by one, relations flipped or swapped (any other kind).
/// `None` when the pool has nothing of that kind.
fn draw_statement<R: Rng>(
    rng: &mut R,
    kind: Kind,
    pools: &Pools,
    size: usize,
) -> Option<(crate::world::Scene, PromptSpec)> {
    if kind == Kind::Object {
        let p = pick(rng, &pools.by_cat);
        let shown = if rng.random_bool(0.5) {
            p.clone()
        } else {
            p.corrupt(rng)
        };
        let mut scene = shown.sample_scene(rng, size);
        if scene.objects.len() > 1 && rng.random_bool(0.2) {
            let i = rng.random_range(0..scene.objects.len());
            scene.objects.remove(i);
        }
        let asked = if rng.random_bool(0.7) {
            *p.nps().choose(rng)?
        } else {
            let o = scene.objects.choose(rng).copied();
            let np = o.map_or(pools.nps[0], |o| Np {
                color: o.color,
                shape: o.shape,
            });
            match PromptSpec::Objects(vec![np]).corrupt(rng) {
                PromptSpec::Objects(v) if rng.random_bool(0.7) => v[0],
                _ => np,
            }
        };
        Some((scene, PromptSpec::Objects(vec![asked])))
    } else if kind == Kind::Count {
        // Training-split counts only: held-out (n, object) pairs are never asked.
        let Some(PromptSpec::Count(n, np)) = pools.count_prompts.choose(rng).cloned() else {
            return None;
        };
        // Off by one, never 5: five objects rarely fit on the canvas.
        let shown_n = match rng.random_range(0..4) {
            0 => n - 1,
            1 if n < 4 => n + 1,
            1 => n - 1,
            _ => n,
        };
        let shown = if shown_n == 1 {
            PromptSpec::Objects(vec![np])
        } else {
            PromptSpec::Count(shown_n, np)
        };
        Some((shown.sample_scene(rng, size), PromptSpec::Count(n, np)))
    } else {
        let (a, r, b, c) = match pick(rng, &pools.rel_cats) {
            PromptSpec::Relation(a, r, b) => (*a, *r, *b, None),
            PromptSpec::Complex(a, r, b, c) => (*a, *r, *b, Some(*c)),
            _ => return None,
        };
        let shown_r = if rng.random_bool(0.5) {
            r
        } else {
            *Relation::ALL.choose(rng).unwrap_or(&r)
        };
        let shown = match (rng.random_bool(0.2), c) {
            (true, _) => PromptSpec::Relation(b, shown_r, a),
            (false, Some(c)) => PromptSpec::Complex(a, shown_r, b, c),
            (false, None) => PromptSpec::Relation(a, shown_r, b),
        };
        Some((shown.sample_scene(rng, size), PromptSpec::Relation(a, r, b)))
    }
}

/// A [`draw_statement`] whose truth is `want`, by rejection (at most 8 draws; the last draw
/// when none matched), with its truth in the scene.
fn draw_labelled<R: Rng>(
    rng: &mut R,
    kind: Kind,
    pools: &Pools,
    size: usize,
    want: bool,
) -> Option<(crate::world::Scene, PromptSpec, bool)> {
    let mut drawn = None;
    for _ in 0..8 {
        let Some((scene, spec)) = draw_statement(rng, kind, pools, size) else {
            continue;
        };
        let holds = spec.holds_in(&scene);
        drawn = Some((scene, spec, holds));
        if holds == want {
            break;
        }
    }
    drawn
}

/// One generation batch through the flow: clean latents `x0`, noise, timesteps (half
/// logit-normal, half uniform), noisy latents and the model's velocity.
struct FlowBatch<B: burn::tensor::backend::Backend> {
    x0: Tensor<B, 3>,
    eps: Tensor<B, 3>,
    t: Tensor<B, 1>,
    t_host: Vec<f32>,
    x_t: Tensor<B, 3>,
    v: Tensor<B, 3>,
    /// Per-value loss weights in the latents' layout, with an object weight.
    weight: Option<Tensor<B, 3>>,
}

impl<B: burn::tensor::backend::Backend> FlowBatch<B> {
    /// Flow-matching loss: mean squared error of the velocity against `eps - x0`; with
    /// `clean_space`, of the clean estimate `x_t - t v` against `x0` instead (the velocity's
    /// error times `t`), which weighs high-noise times, where the layout is decided, as much
    /// as nearly clean ones; times below `low_noise_boost` weighed up, and each squared value
    /// times its object weight where there is one.
    fn loss(&self, clean_space: bool, low_noise_boost: Option<f32>) -> Tensor<B, 1> {
        let err = self.v.clone() - (self.eps.clone() - self.x0.clone());
        let err = if clean_space {
            let b = self.t_host.len();
            let scale: Vec<f32> = self
                .t_host
                .iter()
                .map(|&t| clean_space_scale(t, low_noise_boost))
                .collect();
            let scale = Tensor::<B, 1>::from_data(TensorData::new(scale, [b]), &self.t.device());
            err * scale.reshape([b, 1, 1])
        } else {
            err
        };
        let square = err.powi_scalar(2);
        match &self.weight {
            Some(w) => (square * w.clone()).mean(),
            None => square.mean(),
        }
    }
}

/// What the velocity's error at time `t` is multiplied by (before squaring) in the clean-space
/// loss: `t`, so the square is the clean estimate's error, times `max(1, t0 / t)` with a low-noise
/// boost `t0` (`t` at least 0.05).
fn clean_space_scale(t: f32, low_noise_boost: Option<f32>) -> f32 {
    match low_noise_boost {
        None => t,
        Some(t0) => t * (t0 / t.max(0.05)).max(1.0),
    }
}

/// `images` encoded and noised to the times `t_host` (one per image) with standard-normal noise
/// drawn from `rng`: clean latents, noise, times and noisy latents.
#[allow(clippy::type_complexity)]
fn noised<B: burn::tensor::backend::Backend, R: Rng>(
    model: &TinyUmm<B>,
    images: &[PixelImage],
    t_host: &[f32],
    rng: &mut R,
    device: &B::Device,
) -> Result<(Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 1>, Tensor<B, 3>)> {
    let x0 = model.encode_images(PixelImage::to_tensor::<B>(images, device)?)?;
    let eps = host_normal::<B, _, 3>(rng, x0.dims(), device);
    let t = Tensor::<B, 1>::from_data(TensorData::new(t_host.to_vec(), [t_host.len()]), device);
    let x_t = noisy_latents(x0.clone(), eps.clone(), t.clone());
    Ok((x0, eps, t, x_t))
}

#[allow(clippy::too_many_arguments)]
fn flow_batch<B: burn::tensor::backend::Backend, R: Rng>(
    model: &TinyUmm<B>,
    rng: &mut R,
    shift: f32,
    object_weight: Option<f32>,
    images: &[PixelImage],
    prompts: &[String],
    device: &B::Device,
) -> Result<FlowBatch<B>> {
    let b = images.len();
    // Half logit-normal, half uniform: the ends of the schedule (pure noise, nearly clean)
    // are where sampling starts and finishes, and logit-normal alone rarely visits them.
    let ln = sample_timesteps(rng, b, TimestepSampling::default(), 1.0);
    let un = sample_timesteps(rng, b, TimestepSampling::Uniform, 1.0);
    let t_host: Vec<f32> = (0..b)
        .map(|i| if i % 2 == 0 { ln[i] } else { un[i] })
        // A shift of 1 returns `t` bit for bit (`1 t / (1 + 0 t)`).
        .map(|t| srum::flow::shift_timestep(t, shift))
        .collect();
    let (x0, eps, t, x_t) = noised(model, images, &t_host, rng, device)?;
    let cond = model.condition(prompts)?;
    let v = model.velocity(x_t.clone(), t.clone(), &cond);
    let weight = match object_weight {
        Some(w) => {
            let maps: Vec<PixelImage> = images.iter().map(|im| object_weights(im, w)).collect();
            Some(model.encode_images(PixelImage::to_tensor::<B>(&maps, device)?)?)
        }
        None => None,
    };
    Ok(FlowBatch {
        x0,
        eps,
        t,
        t_host,
        x_t,
        v,
        weight,
    })
}

/// A pixel is on or near an object when some pixel within two (Chebyshev) of it is not white.
const NEAR_OBJECT: usize = 2;

/// The loss weight of every pixel of `image` (as an image, all three channels alike): `1 + w`
/// on and around its objects, 1 elsewhere.
fn object_weights(image: &PixelImage, w: f32) -> PixelImage {
    let (wd, ht) = (image.width, image.height);
    let ink = |x: usize, y: usize| {
        let i = (y * wd + x) * 3;
        image.data[i..i + 3].iter().any(|&c| c < 0.9)
    };
    let mut out = PixelImage::filled(wd, ht, [1.0, 1.0, 1.0]);
    for y in 0..ht {
        for x in 0..wd {
            let near = (y.saturating_sub(NEAR_OBJECT)..(y + NEAR_OBJECT + 1).min(ht)).any(|yy| {
                (x.saturating_sub(NEAR_OBJECT)..(x + NEAR_OBJECT + 1).min(wd)).any(|xx| ink(xx, yy))
            });
            if near {
                let i = (y * wd + x) * 3;
                out.data[i..i + 3].fill(1.0 + w);
            }
        }
    }
    out
}

/// The generator's completions of `renders` (unconditional unless `prompts` is given): each
/// noised to time `t0` with noise from `rng`, then integrated on the 20-step Euler grid from
/// there (SDEdit). Pretraining's
/// [`UnderstandingMix::samples`] rows are these, with `t0` drawn from [`SAMPLE_CLEAR`] or
/// [`SAMPLE_REDRAWN`]; `prompts` conditions the velocity (no guidance), `None` leaves it
/// unconditional.
pub fn complete_renders<B: burn::tensor::backend::Backend, R: Rng>(
    model: &TinyUmm<B>,
    renders: &[PixelImage],
    prompts: Option<&[String]>,
    t0: f32,
    rng: &mut R,
    device: &B::Device,
) -> Result<Vec<PixelImage>> {
    if let Some(p) = prompts
        && p.len() != renders.len()
    {
        return Err(srum::error::SrumError::Shape(format!(
            "complete_renders: {} prompts for {} renders",
            p.len(),
            renders.len()
        )));
    }
    let size = model.image_size();
    let n = renders.len();
    let (_, _, _, x_t) = noised(model, renders, &vec![t0; n], rng, device)?;
    let cond = match prompts {
        Some(p) => model.condition(p)?,
        None => model.unconditional(n)?,
    };
    let sampler = EulerSampler::new(EulerSamplerConfig {
        guidance_scale: 1.0,
        ..Default::default()
    });
    let x = sampler.sample_from(x_t, t0, |x, t, _| Ok(model.velocity(x, t, &cond)))?;
    PixelImage::from_tensor(model.decode_latents(x, ImageSize::square(size))?)
}

/// The read-only inputs every shard of a step shares.
struct StepInputs<'a, B: AutodiffBackend> {
    config: &'a PretrainConfig,
    pools: &'a Pools,
    device: &'a B::Device,
    /// With `understanding_only`: the parameters that train.
    understanding_ids: Option<&'a [ParamId]>,
    /// How many shards the step is split into.
    shards: usize,
}

/// What one shard of a step computed: its gradients (already divided by the shard count) and
/// its share of the report.
struct ShardOut {
    grads: GradientsParams,
    generation_loss: f32,
    understanding_loss: f32,
    correct: usize,
    answered: usize,
    relation_correct: usize,
    relations: usize,
    locate_loss: Option<f32>,
}

/// The generation half of a step: rendered scenes, their prompts (one in ten left empty, for
/// classifier-free guidance) and what was asked for.
struct GenerationBatch {
    prompts: Vec<String>,
    images: Vec<PixelImage>,
    specs: Vec<PromptSpec>,
    scenes: Vec<crate::world::Scene>,
}

fn generation_batch(rng: &mut ChaCha8Rng, pools: &Pools, size: usize, b: usize) -> GenerationBatch {
    let mut g = GenerationBatch {
        prompts: Vec::with_capacity(b),
        images: Vec::with_capacity(b),
        specs: Vec::with_capacity(b),
        scenes: Vec::with_capacity(b),
    };
    for _ in 0..b {
        let p = pick(rng, &pools.by_cat);
        let scene = p.sample_scene(rng, size);
        g.images.push(scene.render(size));
        g.scenes.push(scene);
        g.specs.push(p.clone());
        g.prompts.push(if rng.random_bool(0.1) {
            String::new()
        } else {
            p.text()
        });
    }
    g
}

/// The understanding half of a step: image/statement pairs with their labels (0 yes, 1 no)
/// and the auxiliary heads' targets.
struct UnderstandingBatch {
    images: Vec<PixelImage>,
    prompts: Vec<String>,
    labels: Vec<i32>,
    patch_colors: Vec<i32>,
    patch_shapes: Vec<i32>,
    patch_centres: Vec<i32>,
    patch_ground: Vec<i32>,
    /// Where the located rows' two objects are (x, y twice; NaN where absent).
    locate: Vec<f32>,
    /// Rows of relation statements (for the relation accuracy).
    relation_rows: Vec<usize>,
    /// Rows with locate targets.
    locate_rows: Vec<usize>,
}

/// What one understanding row is drawn from: the step's settings and its generation half.
struct RowSource<'a, B: burn::tensor::backend::Backend> {
    config: &'a PretrainConfig,
    pools: &'a Pools,
    size: usize,
    patch: usize,
    generation: &'a GenerationBatch,
    /// The generation half's timesteps.
    t_host: &'a [f32],
    /// The generator's one-step estimates of the generation half's images.
    estimates: &'a [PixelImage],
    /// The generator without autodiff, for completing renders.
    inner: &'a TinyUmm<B>,
}

/// One drawn understanding row, before augmentation.
struct Row {
    image: PixelImage,
    prompt: String,
    yes: bool,
    targets: Option<PatchTargets>,
    /// Replaced by the sampler's completion of the render once all rows are drawn.
    complete: bool,
    /// Where the statement's objects are, for the locate head.
    locate: Option<[f32; 4]>,
    relation: bool,
}

/// Draws row `j` of kind `kind`; `None` where no such statement could be drawn.
fn understanding_row<B: burn::tensor::backend::Backend>(
    rng: &mut ChaCha8Rng,
    src: &RowSource<'_, B>,
    kind: Kind,
    j: usize,
) -> Option<Row> {
    let (config, pools, size, patch) = (src.config, src.pools, src.size, src.patch);
    let (by_cat, nps) = (&pools.by_cat, &pools.nps);
    let k = j % src.generation.images.len();
    let row = |image, prompt, yes, targets| Row {
        image,
        prompt,
        yes,
        targets,
        complete: false,
        locate: None,
        relation: false,
    };
    if kind == Kind::Sample {
        // The render stands in until the loop is done and the sampler completes it; the
        // label is then set by the start time. No patch or locate targets, since the
        // completion may move an edge or shade a colour.
        let want = rng.random_bool(0.5);
        let statement = config.mix.statement_kind(rng);
        let (scene, spec, holds) = draw_labelled(rng, statement, pools, size, want)?;
        return Some(Row {
            complete: true,
            ..row(scene.render(size), spec.text(), holds, None)
        });
    }
    if matches!(kind, Kind::Object | Kind::Count | Kind::Relation) {
        // Half true, half false statements: drawn freely, most statements about a
        // corrupted scene are still true (one atom of several is wrong), and a judge
        // trained on that says yes to near misses.
        let want = rng.random_bool(0.5);
        let (scene, spec, holds) = draw_labelled(rng, kind, pools, size, want)?;
        // Statements name one object or two (a relation); never a complex prompt's three.
        let targets = Some(patch_labels(&scene, None, size, patch, &spec.nps()));
        let at = |np: Np| object_position(&scene, np, size).unwrap_or([f32::NAN; 2]);
        let mut r = row(scene.render(size), spec.text(), holds, targets);
        match &spec {
            PromptSpec::Relation(a, _, b) => {
                let (a, b) = (at(*a), at(*b));
                r.relation = true;
                r.locate = Some([a[0], a[1], b[0], b[1]]);
            }
            PromptSpec::Objects(v) if config.locate_objects => {
                if let Some(np) = v.first() {
                    let a = at(*np);
                    r.locate = Some([a[0], a[1], f32::NAN, f32::NAN]);
                }
            }
            _ => {}
        }
        return Some(r);
    }
    if kind == Kind::Region {
        let p = pick(rng, by_cat);
        let scene = p.sample_scene(rng, size);
        let o = scene.objects.choose(rng).copied()?;
        let r = o.radius + 1.0;
        let bx = [
            (o.cx - r).max(0.0) as usize,
            (o.cy - r).max(0.0) as usize,
            ((o.cx + r) as usize).min(size),
            ((o.cy + r) as usize).min(size),
        ];
        let targets = Some(patch_labels(&scene, Some(bx), size, patch, &[]));
        let img = mask_to_region(&scene.render(size), bx);
        let np = Np {
            color: o.color,
            shape: o.shape,
        };
        let yes = rng.random_bool(0.5);
        let asked = if yes {
            np
        } else {
            *nps.iter()
                .filter(|x| **x != np)
                .collect::<Vec<_>>()
                .choose(rng)
                .copied()
                .unwrap_or(&np)
        };
        return Some(row(img, asked.text(), yes, targets));
    }
    if kind == Kind::Estimate {
        // The generator's estimate of a render: nearly clean estimates are judged by
        // the rendered scene's truth, blurred ones (high noise) show nothing.
        let t = src.t_host[k];
        let g = src.generation;
        let atom = g.specs[k]
            .nps()
            .choose(rng)
            .map(|n| PromptSpec::Objects(vec![*n]))
            .unwrap_or_else(|| PromptSpec::Objects(vec![nps[0]]));
        let yes = redrawn_label(t, atom.holds_in(&g.scenes[k]))?;
        let targets = (t < CLEAR_BELOW).then(|| patch_labels(&g.scenes[k], None, size, patch, &[]));
        return Some(row(src.estimates[k].clone(), atom.text(), yes, targets));
    }
    let p = pick(rng, by_cat);
    let asked = *p.nps().choose(rng).unwrap_or(&nps[0]);
    let blank = rng.random_bool(0.5);
    let (img, targets) = if blank {
        let t = patch_labels(&crate::world::Scene::default(), None, size, patch, &[]);
        (PixelImage::filled(size, size, [1.0; 3]), Some(t))
    } else {
        (
            noisy(rng, &PixelImage::filled(size, size, [0.5; 3]), 2.0),
            None,
        )
    };
    Some(row(img, asked.text(), false, targets))
}

/// The understanding batch, on the atomic statements the model judges (see
/// `tiny::model::atoms`), in the proportions of `config.mix`. Labels are the truth of the
/// statement in the scene that was rendered; statements are balanced between true and false.
fn understanding_batch<B: burn::tensor::backend::Backend>(
    rng: &mut ChaCha8Rng,
    src: &RowSource<'_, B>,
    ub: usize,
    device: &B::Device,
) -> Result<UnderstandingBatch> {
    let mix = &src.config.mix;
    let n_patches = (src.size / src.patch).pow(2);
    let mut u = UnderstandingBatch {
        images: Vec::with_capacity(ub),
        prompts: Vec::with_capacity(ub),
        labels: Vec::with_capacity(ub),
        patch_colors: Vec::with_capacity(ub * n_patches),
        patch_shapes: Vec::with_capacity(ub * n_patches),
        patch_centres: Vec::with_capacity(ub * n_patches),
        patch_ground: Vec::with_capacity(ub * n_patches),
        locate: Vec::with_capacity(ub * 4),
        relation_rows: Vec::new(),
        locate_rows: Vec::new(),
    };
    let mut sample_rows: Vec<usize> = Vec::new();
    for j in 0..ub {
        let kind = mix.kind(rng.random_range(0..mix.total()));
        let Some(row) = understanding_row(rng, src, kind, j) else {
            continue;
        };
        let index = u.labels.len();
        if row.complete {
            sample_rows.push(index);
        }
        if row.relation {
            u.relation_rows.push(index);
        }
        if let Some(l) = row.locate {
            u.locate_rows.push(index);
            u.locate.extend(l);
        }
        // Completions are imperfect already, and get no noise or blur.
        let augment = if kind == Kind::Sample {
            2
        } else {
            rng.random_range(0..4)
        };
        let img = match augment {
            0 => {
                let amount = rng.random_range(0.05..0.4);
                noisy(rng, &row.image, amount)
            }
            1 => blur(&row.image),
            _ => row.image,
        };
        let t = row.targets.unwrap_or_else(|| PatchTargets::none(n_patches));
        u.patch_colors.extend(t.colors);
        u.patch_shapes.extend(t.shapes);
        u.patch_centres.extend(t.centres);
        u.patch_ground.extend(t.ground);
        u.images.push(img);
        u.prompts.push(row.prompt);
        u.labels.push(if row.yes { 0i32 } else { 1 });
    }
    if !sample_rows.is_empty() {
        let renders: Vec<PixelImage> = sample_rows.iter().map(|&r| u.images[r].clone()).collect();
        let (lo, hi) = if rng.random_bool(0.5) {
            SAMPLE_CLEAR
        } else {
            SAMPLE_REDRAWN
        };
        let t0 = rng.random_range(lo..hi);
        for (&r, img) in sample_rows.iter().zip(complete_renders(
            src.inner, &renders, None, t0, rng, device,
        )?) {
            u.images[r] = img;
            // Yes only where the rule says the scene's truth and it is true (a start time
            // exactly at the redrawn band's lower end, which has no label, counts as redrawn).
            u.labels[r] = i32::from(redrawn_label(t0, u.labels[r] == 0) != Some(true));
        }
    }
    Ok(u)
}

/// Mean squared error of the locate head on the located rows, over the coordinates of
/// objects that are in the scene.
fn locate_loss<B: AutodiffBackend>(
    pred: Option<&Tensor<B, 2>>,
    u: &UnderstandingBatch,
    device: &B::Device,
) -> Option<Tensor<B, 1>> {
    let pred = pred?;
    if u.locate_rows.is_empty() {
        return None;
    }
    let n = u.locate_rows.len();
    let mask: Vec<f32> = u.locate.iter().map(|v| f32::from(v.is_finite())).collect();
    let target: Vec<f32> = u
        .locate
        .iter()
        .map(|v| if v.is_finite() { *v } else { 0.0 })
        .collect();
    let count = mask.iter().sum::<f32>().max(1.0);
    let rows = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            u.locate_rows.iter().map(|&r| r as i32).collect::<Vec<_>>(),
            [n],
        ),
        device,
    );
    let diff = pred.clone().select(0, rows)
        - Tensor::<B, 2>::from_data(TensorData::new(target, [n, 4]), device);
    let m = Tensor::<B, 2>::from_data(TensorData::new(mask, [n, 4]), device);
    Some((diff.powi_scalar(2) * m).sum().div_scalar(count))
}

/// Masked cross-entropy of per-patch `logits` (`[rows, patches, classes]`) against `targets`
/// (one per patch; negative: no target).
fn masked_patch_ce<B: AutodiffBackend>(
    logits: Tensor<B, 3>,
    targets: Vec<i32>,
    classes: usize,
    device: &B::Device,
) -> Tensor<B, 1> {
    let n = targets.len();
    let mask: Vec<f32> = targets
        .iter()
        .map(|&t| if t >= 0 { 1.0 } else { 0.0 })
        .collect();
    let count = mask.iter().sum::<f32>().max(1.0);
    let idx: Vec<i32> = targets.iter().map(|&t| t.max(0)).collect();
    let log_p = burn::tensor::activation::log_softmax(logits.reshape([n, classes]), 1);
    let picked = log_p.gather(
        1,
        Tensor::<B, 2, Int>::from_data(TensorData::new(idx, [n, 1]), device),
    );
    let m = Tensor::<B, 2>::from_data(TensorData::new(mask, [n, 1]), device);
    (picked * m).sum().div_scalar(count).neg()
}

/// The patch heads' loss: colour and shape classes, the grounding head where there is one,
/// and the object-centre logit where there is one.
fn patch_loss<B: AutodiffBackend>(
    patch_logits: Tensor<B, 3>,
    ground: Option<Tensor<B, 3>>,
    u: UnderstandingBatch,
    device: &B::Device,
) -> Tensor<B, 1> {
    let mut loss = masked_patch_ce(
        patch_logits.clone().narrow(2, 0, 5),
        u.patch_colors,
        5,
        device,
    ) + masked_patch_ce(
        patch_logits.clone().narrow(2, 5, 4),
        u.patch_shapes,
        4,
        device,
    );
    if let Some(g) = ground {
        loss = loss + masked_patch_ce(g, u.patch_ground, 3, device);
    }
    if patch_logits.dims()[2] > PATCH_CLASSES {
        // The centre logit as two classes (no, yes): the same masked cross-entropy.
        let c = patch_logits.narrow(2, PATCH_CLASSES, 1);
        loss + masked_patch_ce(
            Tensor::cat(vec![c.zeros_like(), c], 2),
            u.patch_centres,
            2,
            device,
        )
    } else {
        loss
    }
}

/// One shard of a pretraining step: draws `b` generation images and `ub` understanding pairs
/// from `rng`, and returns the gradients of their losses with respect to `model`.
fn shard_step<B: AutodiffBackend>(
    model: &TinyUmm<B>,
    rng: &mut ChaCha8Rng,
    inputs: &StepInputs<'_, B>,
    b: usize,
    ub: usize,
) -> Result<ShardOut> {
    let StepInputs {
        config,
        pools,
        device,
        understanding_ids,
        shards,
    } = *inputs;
    let size = model.image_size();
    let generation = generation_batch(rng, pools, size, b);
    // The flow-matching loss; with `understanding_only` the generator runs without autodiff
    // (its output still feeds the understanding mix) and its loss is only reported.
    let (gen_loss, gen_loss_host, x_t, v, t_inner, t_host) = if config.understanding_only {
        let f = flow_batch(
            &model.valid(),
            rng,
            config.timestep_shift,
            config.object_weight,
            &generation.images,
            &generation.prompts,
            device,
        )?;
        (
            None,
            f.loss(config.clean_space_loss, config.low_noise_boost),
            f.x_t,
            f.v,
            f.t,
            f.t_host,
        )
    } else {
        let f = flow_batch(
            model,
            rng,
            config.timestep_shift,
            config.object_weight,
            &generation.images,
            &generation.prompts,
            device,
        )?;
        let loss = f.loss(config.clean_space_loss, config.low_noise_boost);
        let host = loss.clone().inner();
        (
            Some(loss),
            host,
            f.x_t.inner(),
            f.v.inner(),
            f.t.inner(),
            f.t_host,
        )
    };
    if config.generation_only {
        let loss = match (gen_loss, shards) {
            (Some(g), 1) => g,
            (Some(g), n) => g.div_scalar(n as f32),
            (None, _) => {
                return Err(srum::error::SrumError::Training(
                    "pretraining: generation_only and understanding_only exclude each other".into(),
                ));
            }
        };
        let grads = GradientsParams::from_grads(loss.backward(), model);
        return Ok(ShardOut {
            grads,
            generation_loss: host(gen_loss_host),
            understanding_loss: f32::NAN,
            correct: 0,
            answered: 0,
            relation_correct: 0,
            relations: 0,
            locate_loss: None,
        });
    }

    // The generator's one-step denoised estimates, for imperfect understanding inputs.
    let x0_hat = (x_t - v * t_inner.reshape([b, 1, 1])).clamp(-1.0, 1.0);
    let inner = model.valid();
    let estimates =
        PixelImage::from_tensor(inner.decode_latents(x0_hat, ImageSize::square(size))?)?;
    let src = RowSource {
        config,
        pools,
        size,
        patch: model.patch_size(),
        generation: &generation,
        t_host: &t_host,
        estimates: &estimates,
        inner: &inner,
    };
    let u = understanding_batch(rng, &src, ub, device)?;

    let nb = u.labels.len();
    let text = model.text_batch(&u.prompts)?;
    let heads = model.understand_heads(PixelImage::to_tensor::<B>(&u.images, device)?, &text)?;
    let locate_loss = locate_loss(heads.locate.as_ref(), &u, device);
    let labels = u.labels.clone();
    let relation_rows = u.relation_rows.clone();
    let logits = heads.answer;
    let patch_loss = patch_loss(heads.patches, heads.ground, u, device);
    let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(labels.clone(), [nb]), device);
    let log_p = burn::tensor::activation::log_softmax(logits.clone(), 1);
    let und_loss = log_p.gather(1, targets.reshape([nb, 1])).mean().neg();
    let pred: Vec<i64> = logits
        .clone()
        .inner()
        .argmax(1)
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .unwrap_or_default();
    let correct = pred
        .iter()
        .zip(&labels)
        .filter(|(p, l)| **p == **l as i64)
        .count();

    let relation_correct = relation_rows
        .iter()
        .filter(|&&r| pred.get(r).is_some_and(|p| *p == labels[r] as i64))
        .count();
    let locate_host = locate_loss.as_ref().map(|l| l.clone().inner());
    let mut und_terms = und_loss.clone() + patch_loss.mul_scalar(0.5);
    if let Some(l) = locate_loss {
        und_terms = und_terms + l.mul_scalar(LOCATE_WEIGHT);
    }
    let loss = match gen_loss {
        Some(g) => g + und_terms,
        None => und_terms,
    };
    // Each shard's losses are means over its share: dividing by the shard count makes the
    // summed gradients those of the mean over the whole step.
    let loss = match shards {
        1 => loss,
        n => loss.div_scalar(n as f32),
    };
    let mut grads = loss.backward();
    let grads = match understanding_ids {
        Some(ids) => GradientsParams::from_params(&mut grads, model, ids),
        None => GradientsParams::from_grads(grads, model),
    };
    Ok(ShardOut {
        grads,
        generation_loss: host(gen_loss_host),
        understanding_loss: host(und_loss),
        correct,
        answered: nb,
        relation_correct,
        relations: relation_rows.len(),
        locate_loss: locate_host.map(host),
    })
}

/// A one-value loss on the host (NaN where it cannot be read).
fn host<B: burn::tensor::backend::Backend>(t: Tensor<B, 1>) -> f32 {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map(|v| v[0])
        .unwrap_or(f32::NAN)
}

/// `total` split into `parts` near-equal shares, the larger ones first.
fn shares(total: usize, parts: usize) -> Vec<usize> {
    (0..parts)
        .map(|i| total / parts + usize::from(i < total % parts))
        .collect()
}

/// Pretrains `model` in place of itself and returns it; `on_step` sees every report and the
/// weights after that step (for snapshots along the schedule).
pub fn pretrain<B: AutodiffBackend>(
    mut model: TinyUmm<B>,
    config: &PretrainConfig,
    device: &B::Device,
    mut on_step: impl FnMut(&PretrainReport, &TinyUmm<B>),
) -> Result<TinyUmm<B>> {
    let train = split_prompts(Split::Train, 0);
    let pools = Pools::new(&train);
    let shards = config.shards.max(1);
    let b = config.batch;
    let ub = config.understanding_batch.unwrap_or(b);
    if let Some(w) = config.object_weight
        && !(w.is_finite() && w >= 0.0)
    {
        return Err(srum::error::SrumError::Training(format!(
            "pretraining: object_weight must be at least 0, got {w}"
        )));
    }
    if let Some(t0) = config.low_noise_boost {
        if !(t0.is_finite() && t0 > 0.0) {
            return Err(srum::error::SrumError::Training(format!(
                "pretraining: low_noise_boost must be positive, got {t0}"
            )));
        }
        if !config.clean_space_loss {
            return Err(srum::error::SrumError::Training(
                "pretraining: low_noise_boost weighs the clean-space loss; set clean_space_loss"
                    .into(),
            ));
        }
    }
    if config.generation_only && config.understanding_only {
        return Err(srum::error::SrumError::Training(
            "pretraining: generation_only and understanding_only exclude each other".into(),
        ));
    }
    if !(config.timestep_shift.is_finite() && config.timestep_shift > 0.0) {
        return Err(srum::error::SrumError::Training(format!(
            "pretraining: timestep_shift must be positive, got {}",
            config.timestep_shift
        )));
    }
    if b < shards || (ub < shards && !config.generation_only) {
        return Err(srum::error::SrumError::Training(format!(
            "pretraining: {shards} shards need at least {shards} images and pairs per step \
             (batch {b}, understanding batch {ub})"
        )));
    }
    let (gen_shares, und_shares) = (shares(b, shards), shares(ub, shards));
    // Shard 0 draws from the seed's own stream, so one shard is the unsharded run.
    let mut rngs: Vec<ChaCha8Rng> = (0..shards)
        .map(|s| {
            let mut r = ChaCha8Rng::seed_from_u64(config.seed);
            if s > 0 {
                r.set_stream(s as u64);
            }
            r
        })
        .collect();
    let mut optim = AdamWConfig::new()
        .with_weight_decay(0.01)
        .init::<B, TinyUmm<B>>();
    let warmup = (config.steps / 20) as u64;
    let decay = srum::train::LrDecay::Cosine {
        total_steps: config.steps as u64,
        min_lr: config.lr / 10.0,
    };
    let understanding_ids: Option<Vec<ParamId>> = config.understanding_only.then(|| {
        let roles = model.param_roles();
        list_param_ids(&model)
            .into_iter()
            .filter(|id| roles.role(*id) == ParamRole::Understanding)
            .collect()
    });
    let inputs = StepInputs {
        config,
        pools: &pools,
        device,
        understanding_ids: understanding_ids.as_deref(),
        shards,
    };
    if let Some(decay) = config.ema
        && !(0.0..1.0).contains(&decay)
    {
        return Err(srum::error::SrumError::Training(format!(
            "pretraining: ema decay must be in [0, 1), got {decay}"
        )));
    }
    // Started from the first step's weights: before it, a lazily initialised parameter's
    // copy could draw values of its own.
    let mut ema: Option<srum::train::Ema<TinyUmm<B::InnerBackend>>> = None;
    let start = Instant::now();
    for step in 0..config.steps {
        if config
            .time_budget_s
            .is_some_and(|t| start.elapsed().as_secs_f64() > t)
        {
            tracing::info!(step, "pretraining time budget reached");
            break;
        }
        let outs: Vec<ShardOut> = if shards == 1 {
            vec![shard_step(&model, &mut rngs[0], &inputs, b, ub)?]
        } else {
            // Every shard runs on its own copy of the weights: fresh autodiff leaves, so each
            // shard's graph is its own and the backward passes run in parallel (burn locks a
            // graph while it runs backward). Gradients come back keyed by parameter id. Each
            // copy is made by its own `valid()`: cloning an inner module drops the parameters'
            // `require_grad` (burn 0.21), and the copy would then get no gradients.
            std::thread::scope(|scope| {
                let handles: Vec<_> = rngs
                    .iter_mut()
                    .enumerate()
                    .map(|(s, rng)| {
                        let copy = TinyUmm::<B>::from_inner(model.valid());
                        let (inputs, gb, ub) = (&inputs, gen_shares[s], und_shares[s]);
                        scope.spawn(move || shard_step(&copy, rng, inputs, gb, ub))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(srum::error::SrumError::Training(
                                "a pretraining shard panicked".into(),
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })?
        };
        let n = outs.len() as f32;
        let mean = |f: fn(&ShardOut) -> f32| outs.iter().map(f).sum::<f32>() / n;
        let (generation_loss, understanding_loss) =
            (mean(|o| o.generation_loss), mean(|o| o.understanding_loss));
        let sum = |f: fn(&ShardOut) -> usize| outs.iter().map(f).sum::<usize>();
        let (correct, answered) = (sum(|o| o.correct), sum(|o| o.answered));
        let (relation_correct, relations) = (sum(|o| o.relation_correct), sum(|o| o.relations));
        let locates: Vec<f32> = outs.iter().filter_map(|o| o.locate_loss).collect();
        let locate_loss =
            (!locates.is_empty()).then(|| locates.iter().sum::<f32>() / locates.len() as f32);
        let mut shard_grads: Vec<GradientsParams> = outs.into_iter().map(|o| o.grads).collect();
        let grads = if shard_grads.len() == 1 {
            shard_grads.remove(0)
        } else {
            let mut sum = GradientsAccumulator::<TinyUmm<B>>::new();
            for g in shard_grads {
                sum.accumulate(&model, g);
            }
            sum.grads()
        };
        let lr = learning_rate(config.lr, warmup, decay, step as u64);
        model = optim.step(lr, model, grads);
        match (ema.as_mut(), config.ema) {
            (Some(e), _) => e.update(&model.valid())?,
            (None, Some(decay)) => ema = Some(srum::train::Ema::new(model.valid(), decay)?),
            (None, None) => {}
        }
        on_step(
            &PretrainReport {
                step: step + 1,
                generation_loss,
                understanding_loss,
                understanding_accuracy: correct as f32 / answered.max(1) as f32,
                relation_accuracy: (relations > 0)
                    .then(|| relation_correct as f32 / relations as f32),
                locate_loss,
                lr,
            },
            &model,
        );
    }
    Ok(match ema {
        Some(e) => TinyUmm::from_inner(e.into_model()),
        None => model,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{Color, Object, Scene, Shape};

    /// The object weight covers the ink and two pixels around it, in every channel, and
    /// nothing else.
    #[test]
    fn object_weights_cover_the_ink_and_two_pixels_around() {
        let mut im = PixelImage::filled(10, 10, [1.0, 1.0, 1.0]);
        let i = (5 * 10 + 5) * 3;
        im.data[i..i + 3].copy_from_slice(&[1.0, 0.0, 0.0]);
        let w = object_weights(&im, 3.0);
        for y in 0..10 {
            for x in 0..10 {
                let want = if (3..=7).contains(&x) && (3..=7).contains(&y) {
                    4.0
                } else {
                    1.0
                };
                let j = (y * 10 + x) * 3;
                assert_eq!(&w.data[j..j + 3], &[want; 3], "({x}, {y})");
            }
        }
        let blank = PixelImage::filled(4, 4, [1.0, 1.0, 1.0]);
        assert!(object_weights(&blank, 3.0).data.iter().all(|&v| v == 1.0));
    }

    /// The boosted clean-space loss keeps the clean-space weight above `t0` and gives the
    /// squared clean error `(t0 / t)^2` below it, `t` floored at 0.05.
    #[test]
    fn the_low_noise_boost_weighs_nearly_clean_times_up() {
        for t in [0.01_f32, 0.05, 0.2, 0.6, 1.0] {
            assert_eq!(clean_space_scale(t, None), t);
        }
        let t0 = 0.5;
        for t in [0.6_f32, 0.9, 1.0] {
            assert_eq!(clean_space_scale(t, Some(t0)), t);
        }
        // The velocity error times the scale is the clean error (err_v * t) times t0 / t.
        for t in [0.1_f32, 0.25, 0.4] {
            let clean_weight = (clean_space_scale(t, Some(t0)) / t).powi(2);
            assert!((clean_weight - (t0 / t).powi(2)).abs() < 1e-4 * clean_weight);
        }
        let floor = (clean_space_scale(0.01, Some(t0)) / 0.01).powi(2);
        assert!((floor - 100.0).abs() < 1e-2, "{floor}");
    }

    /// The default mix draws kinds exactly as the fixed twentieths did before the mix was
    /// configurable, so older pretraining commands still make the same checkpoints.
    #[test]
    fn default_mix_keeps_the_fixed_twentieths() {
        let mix = UnderstandingMix::default();
        assert_eq!(mix.total(), 20);
        let kinds: Vec<Kind> = (0..20).map(|u| mix.kind(u)).collect();
        let want = |k: Kind, n: usize| std::iter::repeat_n(k, n);
        let expected: Vec<Kind> = want(Kind::Object, 7)
            .chain(want(Kind::Count, 3))
            .chain(want(Kind::Relation, 4))
            .chain(want(Kind::Region, 2))
            .chain(want(Kind::Estimate, 2))
            .chain(want(Kind::Blank, 2))
            .collect();
        assert_eq!(kinds, expected);
        assert_eq!(UnderstandingMix::parse("7,3,4,2,2,2").unwrap(), mix);
        let zero = UnderstandingMix::parse("0,5,0,0,0,0").unwrap();
        assert!((0..5).all(|u| zero.kind(u) == Kind::Count));
        // The seventh weight, samples, comes last and is 0 when left out (and in older
        // configs' JSON).
        let with = UnderstandingMix::parse("7,3,4,2,2,2,5").unwrap();
        assert_eq!((with.samples, with.total()), (5, 25));
        assert!((20..25).all(|u| with.kind(u) == Kind::Sample));
        let old: UnderstandingMix = serde_json::from_str(
            r#"{"objects":7,"counts":3,"relations":4,"regions":2,"estimates":2,"blank":2}"#,
        )
        .unwrap();
        assert_eq!(old, mix);
    }

    /// Redrawn images keep the scene's truth only while the render shows through; the bands
    /// sample completions start in always give a label.
    #[test]
    fn redrawn_labels_follow_the_start_time() {
        assert_eq!(redrawn_label(0.1, true), Some(true));
        assert_eq!(redrawn_label(0.24, false), Some(false));
        assert_eq!(redrawn_label(0.5, true), None);
        assert_eq!(redrawn_label(0.71, true), Some(false));
        for (lo, hi) in [SAMPLE_CLEAR, SAMPLE_REDRAWN] {
            for i in 1..100 {
                let t = lo + (hi - lo) * i as f32 / 100.0;
                assert!(redrawn_label(t, true).is_some(), "{t}");
            }
        }
    }

    /// Sample rows ask object, count and relation statements in the mix's proportions of them.
    #[test]
    fn sample_statements_follow_the_mix() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mix = UnderstandingMix::parse("2,0,1,0,0,0,1").unwrap();
        let kinds: Vec<Kind> = (0..3000).map(|_| mix.statement_kind(&mut rng)).collect();
        let n = |k: Kind| kinds.iter().filter(|x| **x == k).count();
        assert_eq!(n(Kind::Count), 0);
        assert!(
            (1850..2150).contains(&n(Kind::Object)),
            "{}",
            n(Kind::Object)
        );
        let none = UnderstandingMix::parse("0,0,0,0,0,0,1").unwrap();
        let kinds: Vec<Kind> = (0..300).map(|_| none.statement_kind(&mut rng)).collect();
        for k in [Kind::Object, Kind::Count, Kind::Relation] {
            assert!(kinds.contains(&k));
        }
    }

    #[test]
    fn bad_mixes_are_errors_that_say_why() {
        for (s, why) in [
            ("7,3,4", "want 6 or 7 weights"),
            ("7,3,4,2,2,2,1,1", "want 6 or 7 weights"),
            ("7,3,4,2,2,x", "invalid digit"),
            ("0,0,0,0,0,0", "sum to zero"),
        ] {
            let e = UnderstandingMix::parse(s).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(s), "{s}: {e}");
        }
    }

    /// Centre targets mark the patch holding each object's centre, and only inside a region.
    #[test]
    fn centre_targets_mark_one_patch_per_object() {
        let obj = |cx: f32, cy: f32| Object {
            color: Color::Red,
            shape: Shape::Square,
            cx,
            cy,
            radius: 3.5,
        };
        let scene = Scene {
            objects: vec![obj(5.5, 6.0), obj(21.0, 26.5)],
        };
        let t = patch_labels(&scene, None, 32, 4, &[]);
        let marked: Vec<usize> = (0..64).filter(|&i| t.centres[i] == 1).collect();
        // (5.5, 6.0) is in patch row 1, column 1; (21.0, 26.5) in row 6, column 5.
        assert_eq!(marked, vec![8 + 1, 6 * 8 + 5]);
        assert!(t.centres.iter().all(|&c| c == 0 || c == 1));
        let t = patch_labels(&scene, Some([0, 0, 12, 12]), 32, 4, &[]);
        let marked: Vec<usize> = (0..64).filter(|&i| t.centres[i] == 1).collect();
        assert_eq!(marked, vec![9]);
    }

    /// Ground targets mark the patches of each asked object by its place in the statement, and
    /// nothing for an object that is not asked or a statement about nothing in the scene.
    #[test]
    fn ground_targets_follow_the_statements_objects() {
        let obj = |color, shape, cx: f32, cy: f32| Object {
            color,
            shape,
            cx,
            cy,
            radius: 3.5,
        };
        let scene = Scene {
            objects: vec![
                obj(Color::Red, Shape::Square, 5.5, 6.0),
                obj(Color::Blue, Shape::Circle, 21.0, 26.5),
            ],
        };
        let red_square = Np {
            color: Color::Red,
            shape: Shape::Square,
        };
        let blue_circle = Np {
            color: Color::Blue,
            shape: Shape::Circle,
        };
        let t = patch_labels(&scene, None, 32, 4, &[blue_circle, red_square]);
        // The square's centre patch (row 1, column 1) and the circle's (row 6, column 5).
        assert_eq!((t.ground[8 + 1], t.ground[6 * 8 + 5]), (2, 1));
        // Every patch the ground target marks is one the colour target gives an object.
        for (g, c) in t.ground.iter().zip(&t.colors) {
            assert_eq!(*g != 0, *c != 4);
        }
        let t = patch_labels(&scene, None, 32, 4, &[red_square]);
        assert_eq!(t.ground.iter().filter(|&&g| g == 2).count(), 0);
        assert!(t.ground[8 + 1] == 1 && t.ground[6 * 8 + 5] == 0);
        let red_circle = Np {
            color: Color::Red,
            shape: Shape::Circle,
        };
        let t = patch_labels(&scene, None, 32, 4, &[red_circle]);
        assert!(t.ground.iter().all(|&g| g == 0));
        let t = patch_labels(&scene, None, 32, 4, &[]);
        assert!(t.ground.iter().all(|&g| g == -1));
    }

    /// A shard's copy of the weights gets the model's own gradients, keyed by parameter id and
    /// divided by the shard count: the same draws through a copy at two shards give exactly
    /// half of each gradient the model gets at one shard.
    #[test]
    fn a_shard_copy_gets_the_models_gradients_over_the_shard_count() {
        use burn::backend::{Autodiff, Flex};
        type Ad = Autodiff<Flex>;
        let dev = Default::default();
        let config = super::super::TinyUmmConfig::new()
            .with_d_model(16)
            .with_n_heads(2)
            .with_n_layers(1)
            .with_d_ff(32)
            .with_locate_head(Some(true));
        let model = config.init::<Ad>(super::super::build_tokenizer().unwrap(), &dev);
        let train = split_prompts(Split::Train, 0);
        let pools = Pools::new(&train);
        let pc = PretrainConfig::default();
        let inputs = |shards| StepInputs::<Ad> {
            config: &pc,
            pools: &pools,
            device: &dev,
            understanding_ids: None,
            shards,
        };
        let rng = ChaCha8Rng::seed_from_u64(9);
        let whole = shard_step(&model, &mut rng.clone(), &inputs(1), 3, 5).unwrap();
        let copy = TinyUmm::<Ad>::from_inner(model.valid());
        let half = shard_step(&copy, &mut rng.clone(), &inputs(2), 3, 5).unwrap();
        assert_eq!(whole.answered, half.answered);
        let ids = list_param_ids(&model);
        // All but the heads a draw may not reach (no relation drawn: no locate gradient).
        assert!(whole.grads.len() + 2 >= ids.len(), "{}", whole.grads.len());
        assert_eq!(half.grads.len(), whole.grads.len());
        let grad = |g: &GradientsParams, id| -> Option<Vec<f32>> {
            let t = g
                .get::<Flex, 2>(id)
                .map(|t| t.into_data())
                .or_else(|| g.get::<Flex, 1>(id).map(|t| t.into_data()))
                .or_else(|| g.get::<Flex, 3>(id).map(|t| t.into_data()));
            t.map(|t| t.to_vec().unwrap())
        };
        for id in ids {
            let (Some(w), Some(h)) = (grad(&whole.grads, id), grad(&half.grads, id)) else {
                assert!(grad(&whole.grads, id).is_none() && grad(&half.grads, id).is_none());
                continue;
            };
            assert_eq!(w.len(), h.len());
            for (w, h) in w.iter().zip(&h) {
                assert!(
                    (w / 2.0 - h).abs() <= 1e-6 * (1.0 + w.abs()),
                    "{id}: {w} vs {h}"
                );
            }
        }
    }

    /// Free draws about corrupted scenes are mostly true; the labelled draws are not, for every
    /// statement kind (presence, count, relation).
    #[test]
    fn labelled_statements_are_balanced() {
        let train = split_prompts(Split::Train, 0);
        let pools = Pools::new(&train);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for kind in [Kind::Object, Kind::Count, Kind::Relation] {
            let n = 300;
            let mut matched = 0;
            for i in 0..n {
                let want = i % 2 == 0;
                let (scene, spec, holds) =
                    draw_labelled(&mut rng, kind, &pools, 32, want).expect("a statement");
                assert_eq!(holds, spec.holds_in(&scene));
                matched += usize::from(holds == want);
            }
            assert!(matched * 100 >= n * 95, "{kind:?}: {matched}/{n} as wanted");
        }
    }
}
