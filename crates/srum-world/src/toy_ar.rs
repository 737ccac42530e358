//! `ToyArGenerator`: the smallest honest autoregressive image-token generator, for tests and as
//! a template for models that draw discrete tokens one after another (Janus-Pro, Emu3).
//!
//! Its codec is a fixed eight-colour tokenizer: each `patch x patch` patch becomes one code, the
//! three bits of whether its mean red, green and blue exceed one half; a code decodes to a patch
//! of that colour. Its generator predicts token `i` from the previous token, the position and a
//! hashed bag of the prompt's words. It has no understanding: stage 2 of SRUM needs only a
//! [`Generator`], and this model shows that a token generator trains under
//! [`NextTokenCrossEntropy`](srum::train::NextTokenCrossEntropy) with the trainer unchanged.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use srum::error::{Result, SrumError};
use srum::model::{
    Generator, ImageCodec, ImageSize, LatentGrid, ParamRole, ParamRoles, TokenGenerator,
};

/// Codes of the eight-colour tokenizer: `4 * red + 2 * green + blue`, each bit set when the
/// patch's mean of that colour exceeds one half.
pub const CODES: usize = 8;

/// Configuration of [`ToyArGenerator`].
#[derive(Config, Debug)]
pub struct ToyArConfig {
    /// Side of the square RGB images, in pixels.
    #[config(default = 8)]
    pub image_size: usize,
    /// Side of the patch one token covers, in pixels.
    #[config(default = 2)]
    pub patch: usize,
    /// Buckets of the hashed prompt vocabulary.
    #[config(default = 64)]
    pub vocab: usize,
    /// Width of the embeddings and the hidden layer.
    #[config(default = 16)]
    pub d_model: usize,
}

/// A tiny autoregressive generator over eight colour codes: see the [module docs](self).
#[derive(Module, Debug)]
pub struct ToyArGenerator<B: Backend> {
    /// Shared: prompt embedding table `[vocab, d_model]`.
    prompt_table: Param<Tensor<B, 2>>,
    /// Generation: embedding of the previous token, `[CODES + 1, d_model]` (the last row is the
    /// start token).
    token_table: Param<Tensor<B, 2>>,
    /// Generation: learned position embedding `[tokens, d_model]`.
    position: Param<Tensor<B, 2>>,
    /// Generation: one hidden layer.
    hidden: Linear<B>,
    /// Generation: hidden to next-token logits.
    head: Linear<B>,
    image_size: usize,
    patch: usize,
    vocab: usize,
}

impl ToyArConfig {
    /// Builds the model with random weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ToyArGenerator<B> {
        let tokens = (self.image_size / self.patch).pow(2);
        let normal = |std| Initializer::Normal { mean: 0.0, std };
        ToyArGenerator {
            prompt_table: normal(0.5).init([self.vocab, self.d_model], device),
            token_table: normal(0.5).init([CODES + 1, self.d_model], device),
            position: normal(0.1).init([tokens, self.d_model], device),
            hidden: LinearConfig::new(self.d_model, self.d_model).init(device),
            head: LinearConfig::new(self.d_model, CODES).init(device),
            image_size: self.image_size,
            patch: self.patch,
            vocab: self.vocab,
        }
    }
}

impl<B: Backend> ToyArGenerator<B> {
    fn grid(&self) -> usize {
        self.image_size / self.patch
    }

    /// Bag-of-words embedding `[batch, d_model]`; an empty prompt embeds to zeros.
    fn embed(&self, texts: &[String]) -> Tensor<B, 2> {
        crate::toy::bag_of_words(texts, self.prompt_table.val())
    }
}

impl<B: Backend> ImageCodec<B> for ToyArGenerator<B> {
    fn latent_channels(&self) -> usize {
        1
    }

    fn latent_grid(&self, size: ImageSize) -> LatentGrid {
        LatentGrid::new(size.height / self.patch, size.width / self.patch)
    }

    fn encode_images(&self, images: Tensor<B, 4>) -> Result<Tensor<B, 3>> {
        let [b, c, h, w] = images.dims();
        let s = self.image_size;
        if c != 3 || h != s || w != s {
            return Err(SrumError::Model(format!(
                "ToyArGenerator takes [batch, 3, {s}, {s}] images, got [{b}, {c}, {h}, {w}]"
            )));
        }
        let device = images.device();
        let pixels = images
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| SrumError::Model(format!("reading images: {e:?}")))?;
        let (g, p) = (self.grid(), self.patch);
        let mut codes = Vec::with_capacity(b * g * g);
        for i in 0..b {
            for row in 0..g {
                for col in 0..g {
                    let mut code = 0;
                    for ch in 0..3 {
                        let mut sum = 0f32;
                        for y in row * p..(row + 1) * p {
                            let line = ((i * 3 + ch) * s + y) * s;
                            sum += pixels[line + col * p..line + (col + 1) * p]
                                .iter()
                                .sum::<f32>();
                        }
                        if sum / (p * p) as f32 > 0.5 {
                            code |= 4 >> ch;
                        }
                    }
                    codes.push(code as f32);
                }
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(codes, [b, g * g, 1]),
            &device,
        ))
    }

    fn decode_latents(&self, latents: Tensor<B, 3>, size: ImageSize) -> Result<Tensor<B, 4>> {
        let [b, n, c] = latents.dims();
        let (s, g, p) = (self.image_size, self.grid(), self.patch);
        if size != ImageSize::square(s) || n != g * g || c != 1 {
            return Err(SrumError::Model(format!(
                "ToyArGenerator decodes [batch, {}, 1] codes to {s}x{s}, got [_, {n}, {c}] to {size}",
                g * g
            )));
        }
        let device = latents.device();
        let codes = latents
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| SrumError::Model(format!("reading codes: {e:?}")))?;
        let mut pixels = vec![0f32; b * 3 * s * s];
        for (t, &code) in codes.iter().enumerate() {
            if !(code.fract() == 0.0 && (0.0..CODES as f32).contains(&code)) {
                return Err(SrumError::Model(format!(
                    "token {} of image {} is {code}, not a code in 0..{CODES}",
                    t % n,
                    t / n
                )));
            }
            let (i, row, col) = (t / n, (t % n) / g, t % g);
            for ch in 0..3 {
                let on = (code as usize) & (4 >> ch) != 0;
                for y in row * p..(row + 1) * p {
                    let line = ((i * 3 + ch) * s + y) * s;
                    pixels[line + col * p..line + (col + 1) * p].fill(if on { 1.0 } else { 0.0 });
                }
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(pixels, [b, 3, s, s]),
            &device,
        ))
    }
}

impl<B: Backend> Generator<B> for ToyArGenerator<B> {
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
            .with_module(ParamRole::Generation, &self.token_table)
            .with_module(ParamRole::Generation, &self.position)
            .with_module(ParamRole::Generation, &self.hidden)
            .with_module(ParamRole::Generation, &self.head)
    }
}

impl<B: Backend> TokenGenerator<B> for ToyArGenerator<B> {
    fn vocab_size(&self) -> usize {
        CODES
    }

    fn next_token_logits(
        &self,
        tokens: Tensor<B, 2, Int>,
        condition: &Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        let [b, n] = tokens.dims();
        let d = self.token_table.dims()[1];
        // Row i reads the token before it; row 0 reads the start token.
        let start = Tensor::<B, 2, Int>::full([b, 1], CODES as i64, &tokens.device());
        let previous = if n > 1 {
            Tensor::cat(vec![start, tokens.narrow(1, 0, n - 1)], 1)
        } else {
            start
        };
        let embedded = self
            .token_table
            .val()
            .select(0, previous.reshape([b * n]))
            .reshape([b, n, d]);
        let h = embedded
            + self.position.val().narrow(0, 0, n).unsqueeze_dim::<3>(0)
            + condition.clone().reshape([b, 1, d]);
        self.head.forward(gelu(self.hidden.forward(h)))
    }
}
