//! `ToyUmm`: the smallest honest [`UnifiedModel`](srum::model::UnifiedModel), for tests, examples and as a template.
//!
//! It has no VAE: latents are `2 * pixels - 1` cut into `patch x patch` patches. Prompts are a
//! hashed bag of words through a shared embedding table. The generator is a per-token MLP with a
//! learned position embedding; the understanding head scores an image's mean colour against the
//! question's embedding. It is far too small to draw anything: it exists so that every code
//! path of the trainer runs in milliseconds.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use srum::error::{Result, SrumError};
use srum::image::PixelImage;
use srum::model::{
    FlowGenerator, Generator, ImageCodec, ImageSize, LatentGrid, ParamRole, ParamRoles,
    Understanding,
};

/// Configuration of [`ToyUmm`].
#[derive(Config, Debug)]
pub struct ToyUmmConfig {
    /// Side of the square RGB images, in pixels.
    #[config(default = 8)]
    pub image_size: usize,
    /// Side of a latent patch, in pixels.
    #[config(default = 2)]
    pub patch: usize,
    /// Buckets of the hashed prompt vocabulary.
    #[config(default = 64)]
    pub vocab: usize,
    /// Width of the prompt embedding.
    #[config(default = 16)]
    pub d_cond: usize,
    /// Hidden width of the velocity MLP.
    #[config(default = 32)]
    pub hidden: usize,
}

/// A tiny unified model: see the [module docs](self).
#[derive(Module, Debug)]
pub struct ToyUmm<B: Backend> {
    /// Shared: prompt embedding table `[vocab, d_cond]`, used by both abilities.
    prompt_table: Param<Tensor<B, 2>>,
    /// Generation: token, time and prompt to hidden.
    gen_in: Linear<B>,
    /// Generation: learned position embedding `[tokens, hidden]`.
    gen_pos: Param<Tensor<B, 2>>,
    /// Generation: hidden to velocity.
    gen_out: Linear<B>,
    /// Understanding only: (mean colour, question) to a score logit.
    und_head: Linear<B>,
    image_size: usize,
    patch: usize,
    vocab: usize,
}

impl ToyUmmConfig {
    /// Builds the model with random weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ToyUmm<B> {
        let grid = self.image_size / self.patch;
        let channels = 3 * self.patch * self.patch;
        let normal = Initializer::Normal {
            mean: 0.0,
            std: 0.5,
        };
        ToyUmm {
            prompt_table: normal.init([self.vocab, self.d_cond], device),
            gen_in: LinearConfig::new(channels + 1 + self.d_cond, self.hidden).init(device),
            gen_pos: Initializer::Normal {
                mean: 0.0,
                std: 0.1,
            }
            .init([grid * grid, self.hidden], device),
            gen_out: LinearConfig::new(self.hidden, channels).init(device),
            und_head: LinearConfig::new(3 + self.d_cond, 1).init(device),
            image_size: self.image_size,
            patch: self.patch,
            vocab: self.vocab,
        }
    }
}

/// The mean of `table`'s rows (one per hashed word bucket) over each text's words:
/// `[texts, d]` for a `[vocab, d]` table; an empty text embeds to zeros.
pub(crate) fn bag_of_words<B: Backend>(texts: &[String], table: Tensor<B, 2>) -> Tensor<B, 2> {
    let vocab = table.dims()[0];
    let device = table.device();
    let mut counts = vec![0f32; texts.len() * vocab];
    for (i, text) in texts.iter().enumerate() {
        let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
        for w in &words {
            counts[i * vocab + word_bucket(w, vocab)] += 1.0 / words.len() as f32;
        }
    }
    let bow = Tensor::<B, 2>::from_data(TensorData::new(counts, [texts.len(), vocab]), &device);
    bow.matmul(table)
}

fn word_bucket(word: &str, vocab: usize) -> usize {
    // FNV-1a: stable across platforms and runs.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in word.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % vocab as u64) as usize
}

impl<B: Backend> ToyUmm<B> {
    fn grid(&self) -> usize {
        self.image_size / self.patch
    }

    /// Bag-of-words embedding: `[batch, d_cond]`; an empty prompt embeds to zeros.
    fn embed(&self, texts: &[String]) -> Tensor<B, 2> {
        bag_of_words(texts, self.prompt_table.val())
    }

    fn check_images(&self, images: &Tensor<B, 4>) -> Result<()> {
        let [_, c, h, w] = images.dims();
        if c != 3 || h != self.image_size || w != self.image_size {
            return Err(SrumError::Model(format!(
                "ToyUmm takes [batch, 3, {s}, {s}] images, got [_, {c}, {h}, {w}]",
                s = self.image_size
            )));
        }
        Ok(())
    }
}

impl<B: Backend> Understanding<B> for ToyUmm<B> {
    fn answer(&self, images: Tensor<B, 4>, questions: &[String]) -> Result<Vec<String>> {
        // A question listing boxes ("Region k: [x0, y0, x1, y1]") gets one block per box;
        // any other question gets a whole-image "Score:" line.
        let boxes: Vec<Vec<[usize; 4]>> = questions
            .iter()
            .map(|q| question_boxes(q, self.image_size))
            .collect();
        let probs = self.region_probabilities(images, questions, &boxes)?;
        Ok(boxes
            .iter()
            .zip(probs)
            .map(|(b, p)| {
                if b.is_empty() {
                    format!(
                        "Score: {:.3}\nReason: mean colour against the prompt.",
                        2.0 * p[0] - 1.0
                    )
                } else {
                    p.iter()
                        .enumerate()
                        .map(|(k, p)| {
                            format!(
                                "Region ID: {}\nIdentified Object: a patch\nScore: {:.3}",
                                k + 1,
                                2.0 * p - 1.0
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n---\n")
                }
            })
            .collect())
    }

    fn yes_no_probabilities(
        &self,
        images: Tensor<B, 4>,
        questions: &[String],
    ) -> Option<Result<Vec<(f32, f32)>>> {
        let whole = vec![Vec::new(); questions.len()];
        Some(
            self.region_probabilities(images, questions, &whole)
                .map(|p| p.into_iter().map(|p| (p[0], 1.0 - p[0])).collect()),
        )
    }
}

impl<B: Backend> ImageCodec<B> for ToyUmm<B> {
    fn latent_channels(&self) -> usize {
        3 * self.patch * self.patch
    }

    fn latent_grid(&self, size: ImageSize) -> LatentGrid {
        LatentGrid::new(size.height / self.patch, size.width / self.patch)
    }

    fn encode_images(&self, images: Tensor<B, 4>) -> Result<Tensor<B, 3>> {
        self.check_images(&images)?;
        Ok(srum::image::patchify(images, self.patch))
    }

    fn decode_latents(&self, latents: Tensor<B, 3>, size: ImageSize) -> Result<Tensor<B, 4>> {
        let ImageSize { width, height } = size;
        let [_, n, c] = latents.dims();
        let (g, p) = (self.grid(), self.patch);
        if width != self.image_size || height != self.image_size || n != g * g || c != 3 * p * p {
            return Err(SrumError::Model(format!(
                "ToyUmm decodes [batch, {}, {}] latents to {s}x{s}, got [_, {n}, {c}] to {width}x{height}",
                g * g,
                3 * p * p,
                s = self.image_size
            )));
        }
        Ok(srum::image::unpatchify(latents, p, g, g))
    }
}

impl<B: Backend> Generator<B> for ToyUmm<B> {
    type Condition = Tensor<B, 2>;

    fn condition(&self, prompts: &[String]) -> Result<Tensor<B, 2>> {
        Ok(self.embed(prompts))
    }

    fn unconditional(&self, batch: usize) -> Result<Tensor<B, 2>> {
        Ok(self.embed(&vec![String::new(); batch]))
    }

    fn param_roles(&self) -> ParamRoles {
        ParamRoles::default()
            .with_module(ParamRole::Shared, &self.prompt_table)
            .with_module(ParamRole::Generation, &self.gen_in)
            .with_module(ParamRole::Generation, &self.gen_pos)
            .with_module(ParamRole::Generation, &self.gen_out)
            .with_module(ParamRole::Understanding, &self.und_head)
    }
}

impl<B: Backend> FlowGenerator<B> for ToyUmm<B> {
    fn velocity(
        &self,
        x_t: Tensor<B, 3>,
        t: Tensor<B, 1>,
        condition: &Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        let [b, n, _] = x_t.dims();
        let d = condition.dims()[1];
        let t = t.reshape([b, 1, 1]).expand([b, n, 1]);
        let cond = condition.clone().reshape([b, 1, d]).expand([b, n, d]);
        let h = self.gen_in.forward(Tensor::cat(vec![x_t, t, cond], 2));
        let h = gelu(h + self.gen_pos.val().unsqueeze_dim::<3>(0));
        self.gen_out.forward(h)
    }
}

/// Boxes listed in a question as `Region k: [x0, y0, x1, y1]`, clamped to the image.
fn question_boxes(question: &str, size: usize) -> Vec<[usize; 4]> {
    question
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("Region ")?;
            let (_, coords) = rest.split_once(": [")?;
            let coords = coords.strip_suffix(']')?;
            let v: Vec<f64> = coords
                .split(',')
                .map(|c| c.trim().parse().ok())
                .collect::<Option<_>>()?;
            let c = |x: f64| (x.max(0.0) as usize).min(size);
            let b = [c(*v.first()?), c(*v.get(1)?), c(*v.get(2)?), c(*v.get(3)?)];
            (b[0] < b[2] && b[1] < b[3]).then_some(b)
        })
        .collect()
}

impl<B: Backend> ToyUmm<B> {
    /// For each question, the probability that each listed box (or the whole image when none is
    /// listed) matches it: the understanding head on (mean colour of the crop, question).
    fn region_probabilities(
        &self,
        images: Tensor<B, 4>,
        questions: &[String],
        boxes: &[Vec<[usize; 4]>],
    ) -> Result<Vec<Vec<f32>>> {
        self.check_images(&images)?;
        let [b, _, _, _] = images.dims();
        if questions.len() != b {
            return Err(SrumError::Shape(format!(
                "{} questions for {b} images",
                questions.len()
            )));
        }
        let pixels = PixelImage::from_tensor(images)?;
        let whole = [0, 0, self.image_size, self.image_size];
        let (mut colours, mut owner) = (Vec::new(), Vec::new());
        for (i, img) in pixels.iter().enumerate() {
            let list: &[[usize; 4]] = if boxes[i].is_empty() {
                std::slice::from_ref(&whole)
            } else {
                &boxes[i]
            };
            for bx in list {
                let mut sum = [0f32; 3];
                for y in bx[1]..bx[3] {
                    for x in bx[0]..bx[2] {
                        let p = img.pixel(x, y);
                        (0..3).for_each(|c| sum[c] += p[c]);
                    }
                }
                let n = ((bx[2] - bx[0]) * (bx[3] - bx[1])) as f32;
                colours.extend(sum.map(|v| v / n));
                owner.push(i);
            }
        }
        let device = self.prompt_table.device();
        let m = owner.len();
        let colour = Tensor::<B, 2>::from_data(TensorData::new(colours, [m, 3]), &device);
        let ids: Vec<i32> = owner.iter().map(|&i| i as i32).collect();
        let q = self.embed(questions).select(
            0,
            Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [m]), &device),
        );
        let p = sigmoid(self.und_head.forward(Tensor::cat(vec![colour, q], 1)))
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| SrumError::Model(format!("{e:?}")))?;
        let mut out = vec![Vec::new(); b];
        for (i, p) in owner.into_iter().zip(p) {
            out[i].push(p);
        }
        Ok(out)
    }
}

/// Kind tag of [`ToyUmm`] in a [`ModelCard`](srum::model::ModelCard).
pub const TOY_KIND: &str = "toy-umm";

impl<B: Backend> ToyUmm<B> {
    /// Writes `model.json` and `model.safetensors` into `dir` (created if missing).
    pub fn save_dir(&self, config: &ToyUmmConfig, dir: impl AsRef<std::path::Path>) -> Result<()> {
        let dir = dir.as_ref();
        srum::model::ModelCard::write(dir, TOY_KIND, config)?;
        srum::train::save_weights(self, dir.join("model.safetensors"))
    }

    /// Loads a model saved by [`ToyUmm::save_dir`].
    pub fn load_dir(
        dir: impl AsRef<std::path::Path>,
        device: &B::Device,
    ) -> Result<(Self, ToyUmmConfig)> {
        let dir = dir.as_ref();
        let card_path = dir.join("model.json");
        let config: ToyUmmConfig = srum::model::ModelCard::read_config(dir, TOY_KIND)?;
        if config.patch == 0
            || config.image_size == 0
            || !config.image_size.is_multiple_of(config.patch)
            || config.vocab == 0
        {
            return Err(SrumError::Checkpoint {
                path: card_path,
                message: "config: image_size must be a positive multiple of patch, vocab > 0"
                    .into(),
            });
        }
        let model =
            srum::train::load_weights(config.init::<B>(device), dir.join("model.safetensors"))?;
        Ok((model, config))
    }
}
