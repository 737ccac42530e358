//! [`BagelModel`]: BAGEL with its VAE and tokenizer as one unified model for SRUM: it answers
//! questions about images (ViT, greedy text), encodes and decodes images (VAE, 2x2 patches),
//! and generates by flow matching with the prompt in a KV cache.

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{ElementConversion, Tensor, backend::Backend};
use serde::{Deserialize, Serialize};
use srum::model::{
    FlowGenerator, Generator, ImageCodec, ImageSize, LatentGrid, ParamRole, ParamRoles,
    Understanding,
};

use crate::bagel::Bagel;
use crate::cache::KvCache;
use crate::config::BagelConfig;
use crate::error::{BagelError, Result};
use crate::generation::{patchify, unpatchify};
use crate::load::{
    is_adapter, load_tokenizer, load_vae, load_weights, official_name, save_weights,
    special_ids_from,
};
use crate::lora::LoraConfig;
use crate::vae::AutoEncoder;

/// The official inferencer's system prompt for understanding with a reasoning trace.
pub const VLM_THINK_SYSTEM_PROMPT: &str = "You should first think about the reasoning process in the mind and then provide the user with the answer. \nThe reasoning process is enclosed within <think> </think> tags, i.e. <think> reasoning process here </think> answer here";

/// The official inferencer's system prompt for generation with a planning trace.
pub const GEN_THINK_SYSTEM_PROMPT: &str = "You should first think about the planning process in the mind and then generate the image. \nThe planning process is enclosed within <think> </think> tags, i.e. <think> planning process here </think> image here";

/// What BAGEL is told and how long it may talk, for the judge and for the rollout. Defaults
/// follow the SRUM reference drivers: the judge thinks (greedy, up to 1,024 tokens), the
/// rollout does not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BagelTemplates {
    /// Whether the judge gets `judge_system_prompt` before the image and question.
    pub judge_think: bool,
    /// The judge's system prompt.
    pub judge_system_prompt: String,
    /// Most tokens of an answer, reasoning included.
    pub max_answer_tokens: usize,
    /// Whether the rollout writes a plan (greedy) after the prompt, before the image.
    pub generation_think: bool,
    /// The rollout's system prompt when it thinks.
    pub generation_system_prompt: String,
    /// Most tokens of a plan.
    pub max_think_tokens: usize,
}

impl Default for BagelTemplates {
    fn default() -> Self {
        Self {
            judge_think: true,
            judge_system_prompt: VLM_THINK_SYSTEM_PROMPT.into(),
            max_answer_tokens: 1024,
            generation_think: false,
            generation_system_prompt: GEN_THINK_SYSTEM_PROMPT.into(),
            max_think_tokens: 1000,
        }
    }
}

impl BagelTemplates {
    /// Reads templates from a JSON file; absent fields keep their defaults, unknown ones are
    /// an error naming the file.
    pub fn from_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| BagelError::io(path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| BagelError::config(path, format!("line {}", e.line()), e.to_string()))
    }
}

/// The files of an official checkpoint folder besides `ema.safetensors` (and the adapters).
pub const CHECKPOINT_FILES: [&str; 10] = [
    "llm_config.json",
    "vit_config.json",
    "config.json",
    "vae_config.json",
    "ae.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
];

/// Text side of a [`BagelModel`]: not parameters, carried along.
#[derive(Debug, Clone)]
struct TextSide {
    tokenizer: tokenizers::Tokenizer,
    lora: Option<LoraConfig>,
    templates: BagelTemplates,
    generation_size: ImageSize,
}

/// BAGEL as a [`srum::model::UnifiedModel`]: [`Bagel`], its [`AutoEncoder`] and its tokenizer.
///
/// Images cross the traits in `[0, 1]`. Generation is for one image size, set with
/// [`BagelModel::with_generation_size`] (default 512 x 512), so a condition knows its grid.
#[derive(Module, Debug)]
pub struct BagelModel<B: Backend> {
    bagel: Bagel<B>,
    vae: AutoEncoder<B>,
    #[module(skip)]
    text: TextSide,
}

/// A prompt's conditioning: one KV cache per image of the batch, for a latent grid.
#[derive(Debug, Clone)]
pub struct BagelCondition<B: Backend> {
    caches: Vec<KvCache<B>>,
    grid: LatentGrid,
}

impl<B: Backend> BagelCondition<B> {
    /// The context of each image.
    pub fn caches(&self) -> &[KvCache<B>] {
        &self.caches
    }
}

impl<B: Backend> BagelModel<B> {
    /// Puts the parts together; fails when the tokenizer lacks BAGEL's special tokens or the
    /// VAE's latents do not fit the backbone.
    pub fn new(
        bagel: Bagel<B>,
        vae: AutoEncoder<B>,
        tokenizer: tokenizers::Tokenizer,
        templates: BagelTemplates,
    ) -> Result<Self> {
        let c = bagel.config();
        if vae.config().z_channels != c.latent_channel {
            return Err(BagelError::Input(format!(
                "the VAE has {} latent channels, the backbone expects {}",
                vae.config().z_channels,
                c.latent_channel
            )));
        }
        let size = ImageSize::square(512.min(c.max_latent_size * Self::stride_of(&bagel, &vae)));
        let model = Self {
            bagel,
            vae,
            text: TextSide {
                tokenizer,
                lora: None,
                templates,
                generation_size: size,
            },
        };
        model.check_size(size)?;
        Ok(model)
    }

    /// Loads an official checkpoint folder: `llm_config.json`, `vit_config.json`,
    /// `config.json`, `ema.safetensors`, `ae.safetensors` (with `vae_config.json` when not
    /// FLUX's) and `tokenizer.json`.
    pub fn load(
        dir: impl AsRef<Path>,
        templates: BagelTemplates,
        device: &B::Device,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let tokenizer = load_tokenizer(dir)?
            .ok_or_else(|| BagelError::config(dir.join("tokenizer.json"), "<file>", "missing"))?;
        let mut config = BagelConfig::from_dir(dir)?;
        special_ids_from(&mut config, &tokenizer, &dir.join("tokenizer.json"))?;
        if config.vit.is_none() {
            return Err(BagelError::config(
                dir.join("vit_config.json"),
                "<file>",
                "missing: the judge needs the ViT",
            ));
        }
        let bagel = load_weights(config.init(device), dir.join("ema.safetensors"))?;
        let vae = load_vae(dir, device)?;
        if dir.join("adapter_config.json").is_file() {
            let (bagel, lora) = bagel.load_lora(dir)?;
            let mut model = Self::new(bagel, vae, tokenizer, templates)?;
            model.text.lora = Some(lora);
            return Ok(model);
        }
        Self::new(bagel, vae, tokenizer, templates)
    }

    /// Writes the model as an official checkpoint folder `dir`: `ema.safetensors` (bf16,
    /// official names, the VAE not included) and, copied from the folder it was loaded from,
    /// the configuration, tokenizer and VAE files present there. The official code loads the
    /// result as it loads the published checkpoint.
    pub fn save_dir(&self, dir: impl AsRef<Path>, source: impl AsRef<Path>) -> Result<()> {
        let (dir, source) = (dir.as_ref(), source.as_ref());
        std::fs::create_dir_all(dir).map_err(|e| BagelError::io(dir, e))?;
        for name in CHECKPOINT_FILES {
            let from = source.join(name);
            if from.is_file() && from != dir.join(name) {
                std::fs::copy(&from, dir.join(name)).map_err(|e| BagelError::io(&from, e))?;
            }
        }
        save_weights(&self.bagel, dir.join("ema.safetensors"))?;
        match &self.text.lora {
            Some(lora) => self.bagel.save_lora(dir, lora),
            None => Ok(()),
        }
    }

    /// Trains LoRA adapters instead of the weights: every weight frozen (no gradients), fresh
    /// adapters where `config` targets, and [`Generator::param_roles`] marking the adapters
    /// as the only trainable parameters. [`BagelModel::save_dir`] then also writes them in the
    /// PEFT layout (`adapter_config.json`, `adapter_model.safetensors`), and
    /// [`BagelModel::load`] reads them back.
    pub fn with_lora(mut self, config: LoraConfig) -> Result<Self> {
        if self.text.lora.is_some() {
            return Err(BagelError::Input(
                "the model already has LoRA adapters".into(),
            ));
        }
        self.bagel = self.bagel.with_lora(&config)?;
        self.text.lora = Some(config);
        Ok(self)
    }

    /// The adapters' settings, when the model has adapters.
    pub fn lora(&self) -> Option<&LoraConfig> {
        self.text.lora.as_ref()
    }

    /// Folds the adapters into the weights (a model without adapters, which
    /// [`BagelModel::save_dir`] writes as full weights).
    pub fn merge_lora(mut self) -> Self {
        self.bagel = self.bagel.merge_lora();
        self.text.lora = None;
        self
    }

    /// Generates `size` images (its sides multiples of 16, at most `16 * max_latent_size`).
    pub fn with_generation_size(mut self, size: ImageSize) -> Result<Self> {
        self.check_size(size)?;
        self.text.generation_size = size;
        Ok(self)
    }

    /// The image size generation is for.
    pub fn generation_size(&self) -> ImageSize {
        self.text.generation_size
    }

    /// The model itself.
    pub fn bagel(&self) -> &Bagel<B> {
        &self.bagel
    }

    /// The autoencoder.
    pub fn vae(&self) -> &AutoEncoder<B> {
        &self.vae
    }

    /// The prompts and limits in use.
    pub fn templates(&self) -> &BagelTemplates {
        &self.text.templates
    }

    /// Token ids of `text` (no special tokens added).
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        self.text
            .tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| BagelError::Input(format!("cannot tokenize {text:?}: {e}")))
    }

    fn decode_text(&self, ids: &[u32]) -> Result<String> {
        self.text
            .tokenizer
            .decode(ids, true)
            .map_err(|e| BagelError::Input(format!("cannot detokenize: {e}")))
    }

    fn stride_of(bagel: &Bagel<B>, vae: &AutoEncoder<B>) -> usize {
        vae.config().downsample() * bagel.config().latent_patch_size
    }

    /// Pixels per latent token along each side (16 for BAGEL-7B).
    pub fn stride(&self) -> usize {
        Self::stride_of(&self.bagel, &self.vae)
    }

    fn check_size(&self, size: ImageSize) -> Result<()> {
        let s = self.stride();
        let max = self.bagel.config().max_latent_size * s;
        let ok = |n: usize| n > 0 && n.is_multiple_of(s) && n <= max;
        if ok(size.width) && ok(size.height) {
            Ok(())
        } else {
            Err(BagelError::Input(format!(
                "image size {}x{}: each side must be a positive multiple of {s} and at most {max}",
                size.width, size.height
            )))
        }
    }

    /// Appends `[bos] text [eos]` to the context.
    fn push_text(&self, cache: &mut KvCache<B>, text: &str) -> Result<()> {
        let ids = self.encode_text(text)?;
        self.bagel
            .prefill_text(cache, &self.bagel.wrap_text(&ids), false)?;
        Ok(())
    }

    /// Greedy text after the context, up to `max` tokens or `eos`.
    fn continue_text(&self, cache: &mut KvCache<B>, max: usize) -> Result<String> {
        let c = self.bagel.config();
        let mut scratch = cache.clone();
        let ids = self
            .bagel
            .greedy_until(&mut scratch, c.bos_token_id, max, c.eos_token_id)?;
        self.decode_text(&ids)
    }

    /// The official ViT transform for one image in `[0, 1]`: resized so that its long side is
    /// at most the ViT's reach (980 pixels for BAGEL-7B) and its short side at least 224 (or
    /// the reach), each a multiple of the patch, then mapped to `[-1, 1]`. Bicubic without
    /// antialiasing (the official transform antialiases when it shrinks).
    fn vit_input(&self, image: Tensor<B, 3>) -> Result<Tensor<B, 3>> {
        let c = self.bagel.config();
        let vit = c
            .vit
            .as_ref()
            .ok_or_else(|| BagelError::Input("the model has no ViT".into()))?;
        let p = vit.patch_size;
        let reach = (c.vit_max_num_patch_per_side.min(vit.max_patches_per_side) * p).min(980);
        let [_, h, w] = image.dims();
        let (nh, nw) = vit_target_size(h, w, reach, 224.min(reach), p);
        let image = if (nh, nw) == (h, w) {
            image
        } else {
            interpolate(
                image.unsqueeze::<4>(),
                [nh, nw],
                InterpolateOptions::new(InterpolateMode::Bicubic).with_align_corners(false),
            )
            .squeeze_dim::<3>(0)
            .clamp(0.0, 1.0)
        };
        Ok(image.mul_scalar(2.0).sub_scalar(1.0))
    }
}

/// The output size of the official `MaxLongEdgeMinShortEdgeResize` (without its pixel cap,
/// which BAGEL's settings never reach below 980 pixels a side).
pub(crate) fn vit_target_size(
    h: usize,
    w: usize,
    max: usize,
    min: usize,
    stride: usize,
) -> (usize, usize) {
    let (hf, wf) = (h as f64, w as f64);
    let mut scale = (max as f64 / hf.max(wf)).min(1.0);
    scale = scale.max(min as f64 / hf.min(wf));
    let fit = |v: f64| -> usize {
        let v = v.round();
        ((v / stride as f64).round() as usize * stride).max(stride)
    };
    let (mut nh, mut nw) = (fit(hf * scale), fit(wf * scale));
    if nh.max(nw) > max {
        let s = max as f64 / nh.max(nw) as f64;
        (nh, nw) = (fit(nh as f64 * s), fit(nw as f64 * s));
    }
    (nh, nw)
}

impl<B: Backend> Understanding<B> for BagelModel<B> {
    fn answer(&self, images: Tensor<B, 4>, questions: &[String]) -> srum::Result<Vec<String>> {
        let [b, c, _, _] = images.dims();
        if b != questions.len() || c != 3 {
            return Err(BagelError::Input(format!(
                "{b} images of {c} channels for {} questions; expected one RGB image per question",
                questions.len()
            ))
            .into());
        }
        let t = &self.text.templates;
        let mut out = Vec::with_capacity(b);
        for (i, q) in questions.iter().enumerate() {
            let mut cache = KvCache::new();
            if t.judge_think {
                self.push_text(&mut cache, &t.judge_system_prompt)?;
            }
            let image = images.clone().narrow(0, i, 1).squeeze_dim::<3>(0);
            self.bagel
                .extend_image(&mut cache, self.vit_input(image)?)?;
            self.push_text(&mut cache, q)?;
            out.push(self.continue_text(&mut cache, t.max_answer_tokens)?);
        }
        Ok(out)
    }
}

impl<B: Backend> ImageCodec<B> for BagelModel<B> {
    fn latent_channels(&self) -> usize {
        self.bagel.config().patch_latent_dim()
    }

    fn latent_grid(&self, size: ImageSize) -> LatentGrid {
        let s = self.stride();
        LatentGrid::new(size.height / s, size.width / s)
    }

    fn encode_images(&self, images: Tensor<B, 4>) -> srum::Result<Tensor<B, 3>> {
        let [b, _, h, w] = images.dims();
        self.check_size(ImageSize::new(w, h))?;
        let z = self.vae.encode(images.mul_scalar(2.0).sub_scalar(1.0));
        let p = self.bagel.config().latent_patch_size;
        let tokens: Vec<Tensor<B, 2>> = (0..b)
            .map(|i| patchify(z.clone().narrow(0, i, 1).squeeze_dim::<3>(0), p))
            .collect();
        Ok(Tensor::stack(tokens, 0))
    }

    fn decode_latents(&self, latents: Tensor<B, 3>, size: ImageSize) -> srum::Result<Tensor<B, 4>> {
        self.check_size(size)?;
        let grid = self.latent_grid(size);
        let c = self.bagel.config();
        let [b, n, ch] = latents.dims();
        if n != grid.tokens() || ch != c.patch_latent_dim() {
            return Err(BagelError::Input(format!(
                "latents are [{b}, {n}, {ch}], expected [{b}, {}, {}] for {}x{}",
                grid.tokens(),
                c.patch_latent_dim(),
                size.width,
                size.height
            ))
            .into());
        }
        let lat = unpatchify(latents, (grid.rows, grid.cols), c.latent_patch_size);
        Ok(self
            .vae
            .decode(lat)
            .mul_scalar(0.5)
            .add_scalar(0.5)
            .clamp(0.0, 1.0))
    }
}

/// Records every parameter's official name.
struct Names {
    stack: Vec<String>,
    out: Vec<(ParamId, String)>,
}

impl<B: Backend> ModuleVisitor<B> for Names {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.out
            .push((param.id, official_name(&self.stack.join("."))));
    }
}

/// The SRUM recipe's role of an official BAGEL tensor: the generation expert and heads are
/// trained; the understanding expert is shared (the prompt runs through it); the ViT side and
/// `lm_head` serve understanding only; fixed position tables are frozen.
pub fn bagel_param_role(official: &str) -> ParamRole {
    if official.ends_with("pos_embed.pos_embed") {
        ParamRole::Frozen
    } else if official.starts_with("vit_model.")
        || official.starts_with("connector.")
        || official.starts_with("language_model.lm_head.")
    {
        ParamRole::Understanding
    } else if official.contains("_moe_gen")
        || official.starts_with("time_embedder.")
        || official.starts_with("vae2llm.")
        || official.starts_with("llm2vae.")
    {
        ParamRole::Generation
    } else {
        ParamRole::Shared
    }
}

impl<B: Backend> Generator<B> for BagelModel<B> {
    type Condition = BagelCondition<B>;

    fn condition(&self, prompts: &[String]) -> srum::Result<Self::Condition> {
        let t = &self.text.templates;
        let mut caches = Vec::with_capacity(prompts.len());
        for p in prompts {
            let mut cache = KvCache::new();
            if t.generation_think {
                self.push_text(&mut cache, &t.generation_system_prompt)?;
            }
            self.push_text(&mut cache, p)?;
            if t.generation_think {
                let plan = self.continue_text(&mut cache, t.max_think_tokens)?;
                self.push_text(&mut cache, &plan)?;
            }
            caches.push(cache);
        }
        Ok(BagelCondition {
            caches,
            grid: self.latent_grid(self.text.generation_size),
        })
    }

    fn unconditional(&self, batch: usize) -> srum::Result<Self::Condition> {
        // The official text-CFG context holds what preceded the prompt: nothing, or the
        // system prompt when thinking.
        let t = &self.text.templates;
        let mut cache = KvCache::new();
        if t.generation_think {
            self.push_text(&mut cache, &t.generation_system_prompt)?;
        }
        Ok(BagelCondition {
            caches: vec![cache; batch],
            grid: self.latent_grid(self.text.generation_size),
        })
    }

    fn param_roles(&self) -> ParamRoles {
        let mut names = Names {
            stack: Vec::new(),
            out: Vec::new(),
        };
        self.bagel.visit(&mut names);
        let lora = self.text.lora.is_some();
        let roles = names
            .out
            .into_iter()
            .fold(ParamRoles::default(), |r, (id, name)| {
                let role = match (lora, is_adapter(&name)) {
                    (_, true) => ParamRole::Generation,
                    (true, false) => ParamRole::Frozen,
                    (false, false) => bagel_param_role(&name),
                };
                r.with_param(role, id)
            });
        roles.with_module(ParamRole::Frozen, &self.vae)
    }
}

impl<B: Backend> FlowGenerator<B> for BagelModel<B> {
    /// Each image against its own cache. Panics when the tokens do not match the condition's
    /// grid, which [`ImageCodec::latent_grid`] of the generation size prevents.
    fn velocity(
        &self,
        x_t: Tensor<B, 3>,
        t: Tensor<B, 1>,
        condition: &Self::Condition,
    ) -> Tensor<B, 3> {
        let [b, n, _] = x_t.dims();
        let grid = condition.grid;
        assert!(
            b == condition.caches.len() && n == grid.tokens(),
            "BAGEL velocity: {b} images of {n} tokens against {} conditions for a {}x{} grid",
            condition.caches.len(),
            grid.rows,
            grid.cols
        );
        let times: Vec<f32> = t
            .into_data()
            .iter::<f32>()
            .map(|v| v.elem::<f32>())
            .collect();
        let v: Vec<Tensor<B, 2>> = (0..b)
            .map(|i| {
                self.bagel
                    .velocity(
                        &condition.caches[i],
                        x_t.clone().narrow(0, i, 1).squeeze_dim::<2>(0),
                        times[i],
                        (grid.rows, grid.cols),
                    )
                    .expect("shapes checked above")
            })
            .collect();
        Tensor::stack(v, 0)
    }
}
