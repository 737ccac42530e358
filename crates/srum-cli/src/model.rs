//! Which model a command runs (`--model`): the reference model (TinyUmm, a model directory
//! with `model.json`) or BAGEL-7B-MoT (an official checkpoint folder), and what differs between
//! them: how a folder is loaded and written, how prompts are checked, the image size and the
//! default sampler. Everything else is generic over the srum traits.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use srum::flow::{EulerSampler, EulerSamplerConfig};
use srum::model::ImageSize;
use srum_bagel::{BagelModel, BagelTemplates};
use srum_world::tiny::{TinyUmm, TinyUmmConfig};

use crate::world::SamplingArgs;

/// The kinds of model `--model` names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelKind {
    /// The reference model: a directory with model.json, model.safetensors, tokenizer.json.
    #[default]
    Tiny,
    /// BAGEL-7B-MoT: an official folder (llm_config.json, vit_config.json, config.json,
    /// ema.safetensors, ae.safetensors [+ vae_config.json], tokenizer.json).
    Bagel,
}

/// The image size BAGEL generates (and its commands read) unless `--image-size` says otherwise.
pub const BAGEL_DEFAULT_SIZE: ImageSize = ImageSize::square(512);

/// `--model` and `--image-size`, shared by the commands that run a model.
#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// What --checkpoint is: `tiny` (a reference-model directory) or `bagel` (an official
    /// BAGEL-7B-MoT folder: llm_config.json, vit_config.json, config.json, ema.safetensors,
    /// ae.safetensors [+ vae_config.json], tokenizer.json).
    #[arg(long, value_enum, default_value_t = ModelKind::Tiny)]
    pub model: ModelKind,
    /// With --model bagel: the image size `WxH` (default 512x512; each side a multiple of 16,
    /// at most 16 x the model's max_latent_size). The reference model's size is its own.
    #[arg(long, value_parser = parse_image_size)]
    pub image_size: Option<ImageSize>,
}

/// `WxH` (e.g. `512x512`, `32x48`).
pub fn parse_image_size(s: &str) -> Result<ImageSize, String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("image size `{s}` is not WxH, e.g. 512x512"))?;
    let n = |v: &str| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| (1..=16384).contains(&n))
            .ok_or_else(|| format!("image size `{s}`: `{v}` is not a side in 1..=16384"))
    };
    Ok(ImageSize::new(n(w)?, n(h)?))
}

impl ModelArgs {
    /// Rejects the BAGEL-only flags for the reference model. `templates` is the command's
    /// BAGEL templates flag, named `flag`.
    pub fn check(&self, templates: Option<&Path>, flag: &str) -> Result<(), String> {
        if self.model == ModelKind::Tiny {
            if self.image_size.is_some() {
                return Err(
                    "--image-size is for --model bagel (the reference model's image size is its model.json's)"
                        .into(),
                );
            }
            if templates.is_some() {
                return Err(format!("{flag} is for --model bagel"));
            }
        }
        Ok(())
    }

    /// The size BAGEL's images are: `--image-size`, else 512x512.
    pub fn bagel_size(&self) -> ImageSize {
        self.image_size.unwrap_or(BAGEL_DEFAULT_SIZE)
    }
}

/// Loads BAGEL from an official folder with the templates in `templates` (JSON; default
/// [`BagelTemplates::default`]), generating `size` images when given.
pub fn load_bagel<B: Backend>(
    dir: &Path,
    templates: Option<&Path>,
    size: Option<ImageSize>,
    device: &B::Device,
) -> Result<BagelModel<B>, String> {
    let templates = match templates {
        Some(p) => BagelTemplates::from_json(p).map_err(|e| e.to_string())?,
        None => BagelTemplates::default(),
    };
    let model = BagelModel::<B>::load(dir, templates, device).map_err(|e| e.to_string())?;
    match size {
        Some(s) => model
            .with_generation_size(s)
            .map_err(|e| format!("--image-size: {e}")),
        None => Ok(model),
    }
}

/// A loaded model with what writing it back as a folder of its kind needs.
// One per process, matched on once and moved into generic code: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Loaded<B: Backend> {
    /// The reference model and its config (written to `model.json`).
    Tiny(TinyUmm<B>, TinyUmmConfig),
    /// BAGEL, and the folder it was loaded from, whose configuration, tokenizer and VAE files
    /// [`BagelModel::save_dir`] copies.
    Bagel(BagelModel<B>, PathBuf),
}

impl<B: Backend> Loaded<B> {
    /// Loads `checkpoint` as `args` says; `templates` is the command's BAGEL templates file,
    /// passed as flag `flag`.
    pub fn load(
        args: &ModelArgs,
        templates: Option<&Path>,
        flag: &str,
        checkpoint: &Path,
        device: &B::Device,
    ) -> Result<Self, String> {
        args.check(templates, flag)?;
        Ok(match args.model {
            ModelKind::Tiny => {
                let (m, c) =
                    TinyUmm::<B>::load_dir(checkpoint, device).map_err(|e| e.to_string())?;
                Loaded::Tiny(m, c)
            }
            ModelKind::Bagel => Loaded::Bagel(
                load_bagel(checkpoint, templates, Some(args.bagel_size()), device)?,
                checkpoint.to_path_buf(),
            ),
        })
    }

    /// The size of the images it generates.
    pub fn image_size(&self) -> ImageSize {
        match self {
            Loaded::Tiny(_, c) => ImageSize::square(c.image_size),
            Loaded::Bagel(m, _) => m.generation_size(),
        }
    }

    /// Whether the model can read `prompt`: the reference model's tokenizer knows every word
    /// and the prompt fits; BAGEL's tokenizer encodes it to at least one token.
    pub fn check_prompt(&self, prompt: &str) -> Result<(), String> {
        match self {
            Loaded::Tiny(m, _) => m
                .text_batch(&[prompt.to_string()])
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Loaded::Bagel(m, _) => match m.encode_text(prompt) {
                Ok(ids) if ids.is_empty() => Err(format!("{prompt:?} encodes to no tokens")),
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    /// Prompts from a file, one per line (blank lines skipped), each checked with
    /// [`Loaded::check_prompt`]; an error names the file and line.
    pub fn read_prompts(&self, path: &Path) -> Result<Vec<String>, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut prompts = Vec::new();
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
            let p = line.trim();
            if p.is_empty() {
                continue;
            }
            self.check_prompt(p)
                .map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
            prompts.push(p.to_string());
        }
        Ok(prompts)
    }

    /// The sampler: the reference model's defaults (20 Euler steps, guidance 4), or BAGEL's
    /// rollout sampler ([`srum_bagel::rollout_sampler`]); `--steps` and `--guidance` override
    /// either when given.
    pub fn sampler(&self, s: &SamplingArgs) -> Result<EulerSampler, String> {
        s.sampler_from(match self {
            Loaded::Tiny(..) => EulerSamplerConfig::default(),
            Loaded::Bagel(..) => srum_bagel::rollout_sampler(),
        })
    }
}
