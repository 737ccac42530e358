//! Per-layer gradient checkpointing gives the gradients of the plain backward.

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Distribution, Tensor};
use srum_bagel::{Bagel, PackedSequence, load_bagel};

type A = Autodiff<Flex>;
type I = Flex;

struct Compare<'a> {
    plain: &'a GradientsParams,
    ckpt: &'a GradientsParams,
    compared: usize,
    worst: f32,
}

impl ModuleVisitor<A> for Compare<'_> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<A, D>>) {
        let a = self.plain.get::<I, D>(p.id);
        let b = self.ckpt.get::<I, D>(p.id);
        match (a, b) {
            (None, None) => {}
            (Some(a), Some(b)) => {
                let scale = a.clone().abs().max().into_scalar().max(1e-6);
                let d = (a - b).abs().max().into_scalar() / scale;
                self.worst = self.worst.max(d);
                self.compared += 1;
            }
            (a, b) => panic!(
                "gradient present in one backward only: plain {}, checkpointed {}",
                a.is_some(),
                b.is_some()
            ),
        }
    }
}

#[test]
fn checkpointed_gradients_equal_the_plain_backward() {
    let device = Default::default();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-mha-odd");
    let model: Bagel<A> = load_bagel(&dir, &device).unwrap();
    let c = model.config().clone();
    let mut seq = PackedSequence::new();
    seq.push_text(&model.wrap_text(&[5, 6, 7, 8, 9]));
    seq.push_noisy_latents(
        (2, 3),
        c.start_of_image_id,
        c.end_of_image_id,
        c.max_latent_size,
    )
    .unwrap();
    // A second sample in the same pack: attention stays within each.
    seq.push_text(&model.wrap_text(&[10, 11]));
    seq.push_noisy_latents(
        (1, 2),
        c.start_of_image_id,
        c.end_of_image_id,
        c.max_latent_size,
    )
    .unwrap();
    let n = seq.latent_tokens();
    let d = c.patch_latent_dim();
    let x0 = Tensor::<A, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
    let noise = Tensor::<A, 2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
    let t = Tensor::<A, 1>::random([n], Distribution::Uniform(0.1, 0.9), &device);
    let r = Tensor::<A, 1>::random([n], Distribution::Uniform(-1.0, 1.0), &device);

    let plain = model
        .flow_loss(&seq, x0.clone(), noise.clone(), t.clone(), r.clone(), 0.5)
        .unwrap();
    let loss_plain = plain.terms.total.clone().into_scalar();
    let plain = GradientsParams::from_grads(plain.terms.total.backward(), &model);
    let (loss, ckpt) = model
        .flow_loss_checkpointed(&seq, x0, noise, t, r, 0.5)
        .unwrap();
    assert!((loss - loss_plain).abs() <= 1e-6 * loss_plain.abs().max(1.0));
    let mut cmp = Compare {
        plain: &plain,
        ckpt: &ckpt,
        compared: 0,
        worst: 0.0,
    };
    model.visit(&mut cmp);
    assert_eq!(cmp.compared, plain.len(), "every gradient compared");
    assert!(cmp.compared > 50, "{} gradients", cmp.compared);
    eprintln!(
        "{} gradients, worst relative difference {:e}",
        cmp.compared, cmp.worst
    );
    assert!(cmp.worst < 1e-4, "worst relative difference {}", cmp.worst);
}
