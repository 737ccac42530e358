//! Gradient checkpointing per decoder layer for the training forward: only each layer's input
//! is kept; the backward recomputes one layer at a time from it, so the activations held at
//! once are one layer's instead of every layer's.

use std::collections::HashSet;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor};
use srum::train::LossTerms;

use crate::backbone::Plan;
use crate::bagel::{Bagel, anchored_loss, latent_rows};
use crate::error::{BagelError, Result};
use crate::sequence::PackedSequence;
use crate::vit::int_tensor;

/// Adds the gradients a backward pass left on `module`'s parameters to `out`, for the
/// parameters in `keep` (all of them when `None`).
struct Collect<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    keep: Option<&'a HashSet<ParamId>>,
    out: &'a mut GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.keep.is_some_and(|k| !k.contains(&param.id)) {
            return;
        }
        if let Some(g) = param.val().grad(self.grads) {
            let g = match self.out.remove::<B::InnerBackend, D>(param.id) {
                Some(prev) => prev + g,
                None => g,
            };
            self.out.register::<B::InnerBackend, D>(param.id, g);
        }
    }
}

impl<B: AutodiffBackend> Bagel<B> {
    /// [`Bagel::flow_loss`] with its gradients, each decoder layer checkpointed: the forward
    /// runs without a graph and keeps only the layers' inputs; the backward goes from the top
    /// down, recomputing one layer with a graph from its input and pulling the gradient of its
    /// output through it. The gradients equal those of `flow_loss(..).terms.total.backward()`
    /// up to float rounding. Returns the loss and the gradients by parameter.
    ///
    /// Shapes: `x0`, `noise`: `[latents, latent_dim]`; `t`, `reward`: `[latents]`.
    pub fn flow_loss_checkpointed(
        &self,
        seq: &PackedSequence,
        x0: Tensor<B, 2>,
        noise: Tensor<B, 2>,
        t: Tensor<B, 1>,
        reward: Tensor<B, 1>,
        lambda: f32,
    ) -> Result<(f32, GradientsParams)> {
        let x_t = self.noised(seq, &x0, &noise, &t, &reward)?;
        let target = (noise - x0).detach();
        let loss = |v| anchored_loss(v, target, reward, lambda);
        let (terms, grads) = self.checkpointed_gradients(seq, x_t.detach(), t, loss, 1.0, None)?;
        Ok((terms[0], grads))
    }

    /// The gradients of `scale * loss(velocity).total` over the packed training forward,
    /// each decoder layer recomputed in the backward (see [`Bagel::flow_loss_checkpointed`]),
    /// kept for the parameters in `keep` (all when `None`). Returns the host terms
    /// `[total, reward, constraint]` of the unscaled loss and the gradients.
    ///
    /// Shapes: `x_t`: `[latents, latent_dim]`, `t`: `[latents]`; `loss` takes the velocity
    /// of the latent rows, `[latents, latent_dim]`.
    pub(crate) fn checkpointed_gradients(
        &self,
        seq: &PackedSequence,
        x_t: Tensor<B, 2>,
        t: Tensor<B, 1>,
        loss: impl FnOnce(Tensor<B, 2>) -> LossTerms<B>,
        scale: f32,
        keep: Option<&HashSet<ParamId>>,
    ) -> Result<([f32; 3], GradientsParams)> {
        let n_lat = seq.latent_tokens();
        if seq.is_empty() || n_lat == 0 {
            return Err(BagelError::Input(
                "checkpointed training needs latent tokens".into(),
            ));
        }
        self.check_latents(&x_t, n_lat, "x_t")?;
        let [nt] = t.dims();
        if nt != n_lat {
            return Err(BagelError::Input(format!(
                "{nt} timesteps for {n_lat} latent tokens"
            )));
        }
        let device = self.device();
        let mut out = GradientsParams::new();
        let collect = |grads: &B::Gradients, out: &mut GradientsParams| {
            self.visit(&mut Collect::<B> { grads, keep, out });
        };

        // Forward without a graph, keeping each layer's input.
        let embedded = self.embed_sequence(seq, x_t, t);
        let inner = self.valid();
        let inner_plan = Plan::packed(seq, &self.config, &inner.device());
        let mut inputs = Vec::with_capacity(inner.backbone().layers().len() + 1);
        let mut x = embedded.clone().inner();
        for layer in inner.backbone().layers() {
            inputs.push(x.clone());
            x = layer
                .forward(
                    x,
                    &inner_plan.routing,
                    &inner_plan.rope,
                    &inner_plan.segments,
                    None,
                )
                .0;
        }

        // The top: final norms, llm2vae on the latent rows, the loss.
        let plan = Plan::packed(seq, &self.config, &device);
        let top = Tensor::<B, 2>::from_inner(x).require_grad();
        let hidden = self.backbone().final_norm(top.clone(), &plan.routing);
        let velocity = self
            .llm2vae
            .forward(hidden.select(0, int_tensor(latent_rows(seq), &device)));
        let terms = loss(velocity);
        let host = Tensor::cat(
            vec![
                terms.total.clone().inner().cast(DType::F32),
                terms.reward.inner().cast(DType::F32),
                terms.constraint.inner().cast(DType::F32),
            ],
            0,
        )
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| BagelError::Input(format!("reading the loss: {e:?}")))?;
        let grads = terms.total.mul_scalar(scale).backward();
        collect(&grads, &mut out);
        let mut g = top
            .grad(&grads)
            .ok_or_else(|| BagelError::Input("no gradient reached the last layer".into()))?;

        // Down the layers, one recomputation each.
        for (layer, input) in self.backbone().layers().iter().zip(inputs).rev() {
            let x = Tensor::<B, 2>::from_inner(input).require_grad();
            let (y, _) = layer.forward(x.clone(), &plan.routing, &plan.rope, &plan.segments, None);
            let grads = (y * Tensor::from_inner(g)).sum().backward();
            collect(&grads, &mut out);
            g = x
                .grad(&grads)
                .ok_or_else(|| BagelError::Input("no gradient reached a layer's input".into()))?;
        }

        // The bottom: embeddings, vae2llm, time embedder.
        let grads = (embedded * Tensor::from_inner(g)).sum().backward();
        collect(&grads, &mut out);
        Ok(([host[0], host[1], host[2]], out))
    }
}
