//! [`Bagel`]: the backbone with its language and generation heads, the training forward on a
//! packed sequence with the SRUM loss, and the flow velocity against a [`KvCache`].

use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use srum::train::{LossTerms, srum_loss};

use crate::backbone::{Backbone, BackboneConfig, Hidden, Plan};
use crate::cache::KvCache;
use crate::config::BagelConfig;
use crate::error::{BagelError, Result};
use crate::generation::{
    PositionEmbedding, PositionEmbeddingConfig, TimestepEmbedder, TimestepEmbedderConfig,
};
use crate::routing::Expert;
use crate::sequence::{PackedSequence, Slot};
use crate::vit::{Connector, ConnectorConfig, VitModel, vit_patchify, vit_positions};

/// The Qwen2 backbone and its untied `lm_head` (`language_model.*` in the checkpoint).
#[derive(Module, Debug)]
pub struct LanguageModel<B: Backend> {
    pub(crate) model: Backbone<B>,
    pub(crate) lm_head: Linear<B>,
}

/// BAGEL: the language model, the generation heads and (when configured) the understanding
/// ViT with its connector, under the official tensor names. The VAE is apart
/// ([`crate::AutoEncoder`]), as in the official checkpoint.
#[derive(Module, Debug)]
pub struct Bagel<B: Backend> {
    pub(crate) language_model: LanguageModel<B>,
    pub(crate) time_embedder: TimestepEmbedder<B>,
    pub(crate) vae2llm: Linear<B>,
    pub(crate) llm2vae: Linear<B>,
    pub(crate) latent_pos_embed: PositionEmbedding<B>,
    pub(crate) vit_model: Option<VitModel<B>>,
    pub(crate) connector: Option<Connector<B>>,
    pub(crate) vit_pos_embed: Option<PositionEmbedding<B>>,
    #[module(skip)]
    pub(crate) config: BagelConfig,
}

impl BagelConfig {
    /// A freshly (randomly) initialised model; [`crate::load_bagel`] fills one from a checkpoint.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Bagel<B> {
        let h = self.hidden_size;
        let latent = self.patch_latent_dim();
        Bagel {
            language_model: LanguageModel {
                model: BackboneConfig::new(self.clone()).init(device),
                lm_head: LinearConfig::new(h, self.vocab_size)
                    .with_bias(false)
                    .with_initializer(Initializer::Normal {
                        mean: 0.0,
                        std: 0.02,
                    })
                    .init(device),
            },
            time_embedder: TimestepEmbedderConfig::new(h)
                .with_frequency_embedding_size(self.frequency_embedding_size)
                .init(device),
            vae2llm: LinearConfig::new(latent, h).init(device),
            // Zero, as the reference initialises it: a fresh model predicts zero velocity.
            llm2vae: LinearConfig::new(h, latent)
                .with_initializer(Initializer::Zeros)
                .init(device),
            latent_pos_embed: PositionEmbeddingConfig::new(self.max_latent_size, h).init(device),
            vit_model: self.vit.as_ref().map(|v| v.init(device)),
            connector: self
                .vit
                .as_ref()
                .map(|v| ConnectorConfig::new(v.hidden_size, h).init(device)),
            vit_pos_embed: self.vit.as_ref().map(|_| {
                PositionEmbeddingConfig::new(self.vit_max_num_patch_per_side, h).init(device)
            }),
            config: self.clone(),
        }
    }
}

/// The output of [`Bagel::forward_packed`].
#[derive(Debug, Clone)]
pub struct PackedOutput<B: Backend> {
    /// Hidden states of every token.
    pub hidden: Hidden<B>,
    /// The predicted velocity of every latent token, in push order: `[latents, latent_dim]`.
    pub velocity: Tensor<B, 2>,
}

/// The output of [`Bagel::flow_loss`].
#[derive(Debug, Clone)]
pub struct FlowLoss<B: Backend> {
    /// Per-token, per-channel squared error against `eps - x0`: `[latents, latent_dim]`.
    pub mse: Tensor<B, 2>,
    /// `mean(R * mse) + lambda * mean(mse)` and its two terms.
    pub terms: LossTerms<B>,
}

use crate::vit::int_tensor;

/// Where each latent token (push order) sits in the packed sequence.
pub(crate) fn latent_rows(seq: &PackedSequence) -> Vec<i64> {
    let mut rows = vec![0i64; seq.latent_tokens()];
    for (i, s) in seq.slots.iter().enumerate() {
        if let Slot::Latent { row, .. } = *s {
            rows[row] = i as i64;
        }
    }
    rows
}

/// The published recipe's SRUM loss on per-token velocities: `mean(R * mse) + lambda *
/// mean(mse)`, the generated image its own anchor.
///
/// Shapes: `velocity`, `target`: `[latents, latent_dim]`; `reward`: `[latents]`.
pub(crate) fn anchored_loss<B: Backend>(
    velocity: Tensor<B, 2>,
    target: Tensor<B, 2>,
    reward: Tensor<B, 1>,
    lambda: f32,
) -> LossTerms<B> {
    srum_loss(
        velocity.unsqueeze::<3>(),
        target.clone().unsqueeze::<3>(),
        reward.unsqueeze::<2>(),
        target.unsqueeze::<3>(),
        lambda,
    )
}

impl<B: Backend> Bagel<B> {
    /// The configuration the model was built with.
    pub fn config(&self) -> &BagelConfig {
        &self.config
    }

    pub(crate) fn device(&self) -> B::Device {
        self.vae2llm.weight.device()
    }

    pub(crate) fn backbone(&self) -> &Backbone<B> {
        &self.language_model.model
    }

    /// `[bos] ids [eos]`, the form every text split takes.
    pub fn wrap_text(&self, ids: &[u32]) -> Vec<u32> {
        let mut v = Vec::with_capacity(ids.len() + 2);
        v.push(self.config.bos_token_id);
        v.extend_from_slice(ids);
        v.push(self.config.eos_token_id);
        v
    }

    /// The training timestep from a raw draw `s ~ N(0, 1)`: `t = sigmoid(s)`, then shifted by
    /// `timestep_shift` as `shift t / (1 + (shift - 1) t)`.
    ///
    /// Shapes: `raw`: `[n]` to `[n]`.
    pub fn training_timesteps(&self, raw: Tensor<B, 1>) -> Tensor<B, 1> {
        let t = sigmoid(raw);
        let s = self.config.timestep_shift;
        t.clone().mul_scalar(s) / t.mul_scalar(s - 1.0).add_scalar(1.0)
    }

    /// Latent tokens as the backbone sees them: `vae2llm(x_t) + time(t) + pos`.
    ///
    /// Shapes: `x_t`: `[n, latent_dim]`, `t`: `[n]`, `positions`: `[n]`; returns `[n, hidden]`.
    fn embed_latents(
        &self,
        x_t: Tensor<B, 2>,
        t: Tensor<B, 1>,
        positions: Tensor<B, 1, Int>,
    ) -> Tensor<B, 2> {
        self.vae2llm.forward(x_t)
            + self.time_embedder.forward(t)
            + self.latent_pos_embed.forward(positions)
    }

    pub(crate) fn check_latents(&self, x: &Tensor<B, 2>, rows: usize, what: &str) -> Result<()> {
        let [n, c] = x.dims();
        let want = self.config.patch_latent_dim();
        if n != rows || c != want {
            return Err(BagelError::Input(format!(
                "{what} is [{n}, {c}], expected [{rows}, {want}]"
            )));
        }
        Ok(())
    }

    /// Embeds the tokens of `seq` in order; latent rows come from `x_t` at times `t`.
    pub(crate) fn embed_sequence(
        &self,
        seq: &PackedSequence,
        x_t: Tensor<B, 2>,
        t: Tensor<B, 1>,
    ) -> Tensor<B, 2> {
        let device = self.device();
        let mut ids = Vec::new();
        let mut lat_pos = vec![0i64; seq.latent_tokens()];
        let mut text_slot = Vec::new();
        for s in &seq.slots {
            match *s {
                Slot::Text(id) => {
                    text_slot.push(ids.len() as i64);
                    ids.push(id);
                }
                Slot::Latent { row, position } => {
                    lat_pos[row] = position as i64;
                    text_slot.push(-1 - row as i64);
                }
            }
        }
        let n_text = ids.len() as i64;
        let order: Vec<i64> = text_slot
            .into_iter()
            .map(|i| if i >= 0 { i } else { n_text + (-1 - i) })
            .collect();
        let mut parts = Vec::new();
        if !ids.is_empty() {
            parts.push(self.backbone().embed(&ids, &device));
        }
        if seq.latent_tokens() > 0 {
            parts.push(self.embed_latents(x_t, t, int_tensor(lat_pos, &device)));
        }
        Tensor::cat(parts, 0).select(0, int_tensor(order, &device))
    }

    /// The training forward (`Bagel.forward`): the whole packed sequence at once with its
    /// per-sample masks, latents through the generation expert, and `llm2vae` on every latent.
    ///
    /// Shapes: `x_t`: `[latents, latent_dim]` (noisy latents, push order), `t`: `[latents]`
    /// (the timestep of each latent token, already shifted).
    pub fn forward_packed(
        &self,
        seq: &PackedSequence,
        x_t: Tensor<B, 2>,
        t: Tensor<B, 1>,
        keep_layers: bool,
    ) -> Result<PackedOutput<B>> {
        if seq.is_empty() {
            return Err(BagelError::Input("empty packed sequence".into()));
        }
        let n_lat = seq.latent_tokens();
        self.check_latents(&x_t, n_lat, "x_t")?;
        let [nt] = t.dims();
        if nt != n_lat {
            return Err(BagelError::Input(format!(
                "{nt} timesteps for {n_lat} latent tokens"
            )));
        }
        let device = self.device();
        let bb = self.backbone();
        let plan = Plan::packed(seq, &self.config, &device);
        let x = self.embed_sequence(seq, x_t, t);
        let (hidden, _) = bb.forward(x, &plan, None, keep_layers);
        let velocity = if n_lat == 0 {
            Tensor::zeros([0, self.config.patch_latent_dim()], &device)
        } else {
            self.llm2vae.forward(
                hidden
                    .last
                    .clone()
                    .select(0, int_tensor(latent_rows(seq), &device)),
            )
        };
        Ok(PackedOutput { hidden, velocity })
    }

    /// The SRUM loss on a packed sequence: noises `x0` as `x_t = (1 - t) x0 + t eps`, predicts
    /// the velocity, and returns the per-token squared error against `eps - x0` with
    /// `mean(R * mse) + lambda * mean(mse)`: the anchor constraint with the generated image as
    /// its own anchor, the published recipe.
    ///
    /// Shapes: `x0`, `noise`: `[latents, latent_dim]`; `t`, `reward`: `[latents]`.
    pub fn flow_loss(
        &self,
        seq: &PackedSequence,
        x0: Tensor<B, 2>,
        noise: Tensor<B, 2>,
        t: Tensor<B, 1>,
        reward: Tensor<B, 1>,
        lambda: f32,
    ) -> Result<FlowLoss<B>> {
        Ok(self
            .flow_loss_traced(seq, x0, noise, t, reward, lambda, false)?
            .0)
    }

    /// [`Bagel::flow_loss`], also returning the noisy latents and the forward's output.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn flow_loss_traced(
        &self,
        seq: &PackedSequence,
        x0: Tensor<B, 2>,
        noise: Tensor<B, 2>,
        t: Tensor<B, 1>,
        reward: Tensor<B, 1>,
        lambda: f32,
        keep_layers: bool,
    ) -> Result<(FlowLoss<B>, Tensor<B, 2>, PackedOutput<B>)> {
        let x_t = self.noised(seq, &x0, &noise, &t, &reward)?;
        let out = self.forward_packed(seq, x_t.clone(), t, keep_layers)?;
        let target = noise - x0;
        let mse = (out.velocity.clone() - target.clone()).powi_scalar(2);
        let terms = anchored_loss(out.velocity.clone(), target, reward, lambda);
        Ok((FlowLoss { mse, terms }, x_t, out))
    }

    /// `x_t = (1 - t) x0 + t eps` after checking the shapes of a packed loss's inputs.
    pub(crate) fn noised(
        &self,
        seq: &PackedSequence,
        x0: &Tensor<B, 2>,
        noise: &Tensor<B, 2>,
        t: &Tensor<B, 1>,
        reward: &Tensor<B, 1>,
    ) -> Result<Tensor<B, 2>> {
        let n_lat = seq.latent_tokens();
        self.check_latents(x0, n_lat, "x0")?;
        self.check_latents(noise, n_lat, "noise")?;
        let [nr] = reward.dims();
        if nr != n_lat {
            return Err(BagelError::Input(format!(
                "{nr} rewards for {n_lat} latent tokens"
            )));
        }
        let tt = t.clone().unsqueeze_dim::<2>(1);
        Ok(x0.clone() * tt.clone().neg().add_scalar(1.0) + noise.clone() * tt)
    }

    /// The velocity of a noisy latent image of `h x w` patches after the context in `cache`
    /// (`_forward_flow` without guidance): the block `[start_of_image, latents, end_of_image]`
    /// on the cache's next RoPE position, full attention inside, every cached token visible;
    /// the cache is not changed.
    ///
    /// Shapes: `x_t`: `[h * w, latent_dim]` row-major; returns `[h * w, latent_dim]`.
    pub fn velocity(
        &self,
        cache: &KvCache<B>,
        x_t: Tensor<B, 2>,
        timestep: f32,
        grid: (usize, usize),
    ) -> Result<Tensor<B, 2>> {
        let hidden = self.flow_hidden(cache, x_t, timestep, grid, false)?;
        Ok(self.llm2vae.forward(hidden.last))
    }

    /// The hidden states of the latent tokens in [`Bagel::velocity`] (final, and every
    /// layer's when `keep_layers`): `[h * w, hidden]` each.
    pub(crate) fn flow_hidden(
        &self,
        cache: &KvCache<B>,
        x_t: Tensor<B, 2>,
        timestep: f32,
        (h, w): (usize, usize),
        keep_layers: bool,
    ) -> Result<Hidden<B>> {
        let c = &self.config;
        let mut block = PackedSequence::new();
        block.push_noisy_latents(
            (h, w),
            c.start_of_image_id,
            c.end_of_image_id,
            c.max_latent_size,
        )?;
        let n_lat = block.latent_tokens();
        self.check_latents(&x_t, n_lat, "x_t")?;
        let device = self.device();
        let t = Tensor::<B, 1>::from_data(TensorData::new(vec![timestep; n_lat], [n_lat]), &device);
        let x = self.embed_sequence(&block, x_t, t);
        let bb = self.backbone();
        let positions = vec![cache.next_position(); block.len()];
        let plan = Plan::block(
            &block.experts(),
            &positions,
            cache.len(),
            false,
            &self.config,
            &device,
        );
        let (hidden, _) = bb.forward(x, &plan, Some(cache), keep_layers);
        // The block is [start_of_image, latents, end_of_image].
        Ok(Hidden {
            last: hidden.last.narrow(0, 1, n_lat),
            layers: hidden
                .layers
                .into_iter()
                .map(|l| l.narrow(0, 1, n_lat))
                .collect(),
        })
    }

    /// The backbone-width embeddings of one image's ViT patches: ViT, connector, plus
    /// `vit_pos_embed` (`forward_cache_update_vit` before the backbone).
    ///
    /// Shapes: `image`: `[3, H, W]` in `[-1, 1]` with `H`, `W` multiples of the ViT patch;
    /// returns `[(H / p) * (W / p), hidden]`.
    pub fn vit_embed(&self, image: Tensor<B, 3>) -> Result<Tensor<B, 2>> {
        let (Some(vit), Some(connector), Some(pos), Some(vc)) = (
            &self.vit_model,
            &self.connector,
            &self.vit_pos_embed,
            &self.config.vit,
        ) else {
            return Err(BagelError::Input(
                "the model was built without a ViT (no vit_config.json)".into(),
            ));
        };
        let [c, hh, ww] = image.dims();
        let p = vc.patch_size;
        let side = self.config.vit_max_num_patch_per_side;
        if c != 3 || hh % p != 0 || ww % p != 0 || hh == 0 || ww == 0 {
            return Err(BagelError::Input(format!(
                "image is [{c}, {hh}, {ww}]; the ViT needs [3, H, W] with H and W multiples of {p}"
            )));
        }
        let (h, w) = (hh / p, ww / p);
        // The official code indexes both tables by `row * vit_max_num_patch_per_side + col`.
        let ids = vit_positions(h, w, side);
        let table = vc.max_patches_per_side * vc.max_patches_per_side;
        if w > side
            || ids
                .last()
                .is_some_and(|&i| i as usize >= table.min(side * side))
        {
            return Err(BagelError::Input(format!(
                "an image of {h} x {w} patches exceeds the ViT's position grid of {side} x {side}"
            )));
        }
        let device = self.device();
        let features = vit.forward(vit_patchify(image, p), int_tensor(ids.clone(), &device));
        Ok(connector.forward(features) + pos.forward(int_tensor(ids, &device)))
    }

    /// Runs an image through the ViT and appends the block `[start_of_image, patches,
    /// end_of_image]` to `cache` through the understanding expert, all on one RoPE position
    /// with full attention inside (`prepare_vit_images` + `forward_cache_update_vit`).
    /// Returns the block's hidden states after the final norm.
    ///
    /// Shapes: `image`: `[3, H, W]` in `[-1, 1]`.
    pub fn extend_image(
        &self,
        cache: &mut KvCache<B>,
        image: Tensor<B, 3>,
    ) -> Result<Tensor<B, 2>> {
        let patches = self.vit_embed(image)?;
        let [n, _] = patches.dims();
        let device = self.device();
        let bb = self.backbone();
        let c = &self.config;
        let x = Tensor::cat(
            vec![
                bb.embed(&[c.start_of_image_id], &device),
                patches,
                bb.embed(&[c.end_of_image_id], &device),
            ],
            0,
        );
        let len = n + 2;
        let plan = Plan::block(
            &vec![Expert::Understanding; len],
            &vec![cache.next_position(); len],
            cache.len(),
            false,
            &self.config,
            &device,
        );
        let (hidden, kvs) = bb.forward(x, &plan, Some(cache), false);
        cache.append(kvs, len, 1);
        Ok(hidden.last)
    }

    /// Runs a text block through the understanding expert after `cache`, causally, and
    /// appends it to the cache (`forward_cache_update_text`, and one step of `generate_text`).
    pub(crate) fn extend_text(
        &self,
        cache: &mut KvCache<B>,
        ids: &[u32],
        keep_layers: bool,
    ) -> Hidden<B> {
        let device = self.device();
        let bb = self.backbone();
        let start = cache.next_position();
        let positions: Vec<i64> = (0..ids.len() as i64).map(|i| start + i).collect();
        let experts = vec![Expert::Understanding; ids.len()];
        let plan = Plan::block(
            &experts,
            &positions,
            cache.len(),
            true,
            &self.config,
            &device,
        );
        let x = bb.embed(ids, &device);
        let (hidden, kvs) = bb.forward(x, &plan, Some(cache), keep_layers);
        cache.append(kvs, ids.len(), ids.len() as i64);
        hidden
    }
}
