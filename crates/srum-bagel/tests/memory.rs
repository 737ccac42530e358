//! The memory model's parameter counts against the models the port builds.

use std::path::Path;

use burn::backend::Flex;
use burn::module::Module;
use srum::model::{Generator, ParamRole};
use srum_bagel::{
    BagelConfig, BagelModel, BagelTemplates, LoraConfig, MemoryPrecision, StepShape, Trained,
    VaeConfig, VitConfig, lora_params, param_counts, step_memory,
};

type B = Flex;

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-mha-odd")
}

#[test]
fn counts_match_the_built_models_part_by_part() {
    let device = Default::default();
    let model = BagelModel::<B>::load(dir(), BagelTemplates::default(), &device).unwrap();
    let counts = param_counts(model.bagel().config(), model.vae().config());
    assert_eq!(counts.total() as usize, model.num_params());
    assert_eq!(counts.vae as usize, model.vae().num_params());
    let roles = model.param_roles();
    let mut generation = 0;
    let mut visitor = Sizes(&roles, &mut generation);
    model.visit(&mut visitor);
    assert_eq!(
        (counts.generation_expert + counts.generation_heads) as usize,
        generation
    );

    let lora = LoraConfig {
        rank: 3,
        ..LoraConfig::default()
    };
    let n = lora_params(model.bagel().config(), &lora);
    let adapted = model.with_lora(lora.clone()).unwrap();
    assert_eq!(adapted.num_params() as u64, counts.total() + n);
    let shape = StepShape {
        trained: Trained::Lora(lora),
        precision: MemoryPrecision::F32,
        image_tokens: 8,
        prompt_tokens: 5,
        batch: 1,
        checkpointing: false,
    };
    let mem = step_memory(adapted.bagel().config(), adapted.vae().config(), &shape);
    assert_eq!(mem.trained_weights, 4 * n);
    assert_eq!(mem.frozen_weights, 4 * counts.total());
    assert_eq!(mem.optimizer, 8 * n);
}

/// Sums the elements of the parameters with role Generation.
struct Sizes<'a>(&'a srum::model::ParamRoles, &'a mut usize);
impl burn::module::ModuleVisitor<B> for Sizes<'_> {
    fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<burn::tensor::Tensor<B, D>>) {
        if self.0.role(p.id) == ParamRole::Generation {
            *self.1 += p.lazy_shape().num_elements();
        }
    }
}

#[test]
fn bagel_7b_has_its_published_size() {
    let config = BagelConfig::new().with_vit(Some(VitConfig::new()));
    let counts = param_counts(&config, &VaeConfig::new());
    // Each expert is Qwen2.5-7B's decoder stack, 6.5B parameters; the FLUX VAE is 84M.
    let expert = counts.generation_expert as f64 / 1e9;
    assert!((6.4..6.6).contains(&expert), "{expert}");
    let vae = counts.vae as f64 / 1e6;
    assert!((83.0..85.0).contains(&vae), "{vae}");
    let total = counts.total() as f64 / 1e9;
    assert!((14.0..14.8).contains(&total), "{total}");
}
