//! LoRA on the tiny random BAGEL of `tests/data/tiny-gqa`: a fresh adapter changes nothing,
//! merged weights give the adapters' outputs, the PEFT files read back, and training moves
//! the adapters only, the base bit for bit untouched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::tensor::{Distribution, Tensor, TensorData};
use safetensors::SafeTensors;
use srum::model::{FlowGenerator, Generator, ImageCodec, ImageSize, ParamRole};
use srum::reward::RewardMap;
use srum::train::{SrumBatch, Trainer, TrainerConfig};
use srum_bagel::{BagelModel, BagelTemplates, LoraConfig};

type B = Flex;
type A = Autodiff<Flex>;
const SIZE: ImageSize = ImageSize::new(48, 32);

fn folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny-gqa")
}

fn load<Bk: burn::tensor::backend::Backend>(dir: &Path) -> BagelModel<Bk> {
    BagelModel::<Bk>::load(dir, BagelTemplates::default(), &Default::default())
        .unwrap()
        .with_generation_size(SIZE)
        .unwrap()
}

fn lora() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    }
}

/// The velocity of two fixed latents for two prompts.
fn velocity(model: &BagelModel<B>) -> Vec<f32> {
    let device = Default::default();
    let x = Tensor::<B, 3>::from_data(
        burn::tensor::TensorData::new(
            (0..2 * 6 * 64)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect::<Vec<_>>(),
            [2, 6, 64],
        ),
        &device,
    );
    let cond = model
        .condition(&["a red circle".into(), "two squares".into()])
        .unwrap();
    model
        .velocity(x, Tensor::from_floats([0.3, 0.9], &device), &cond)
        .into_data()
        .to_vec()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Sets every adapter parameter (a module path through a `*_lora` field) to noise uniform in
/// [-0.35, 0.35] (standard deviation 0.2) from a fixed linear congruential stream, replacing
/// the initial values: lora_A's are drawn from the backend's generator, which the other test
/// of this binary draws from too, so adding to them gave other adapters, and another bf16
/// rounding, from run to run.
#[derive(Default)]
struct Jitter {
    path: Vec<String>,
    state: u64,
}

impl Jitter {
    fn next(&mut self) -> f32 {
        self.state = self
            .state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.7
    }
}

impl<Bk: burn::tensor::backend::Backend> ModuleMapper<Bk> for Jitter {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<Bk, D>>) -> Param<Tensor<Bk, D>> {
        if !self.path.iter().any(|m| m.ends_with("_lora")) {
            return p;
        }
        let shape = p.lazy_shape();
        let noise: Vec<f32> = (0..shape.num_elements()).map(|_| self.next()).collect();
        p.map(move |t| Tensor::from_data(TensorData::new(noise, shape), &t.device()))
    }
}

fn tensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

#[test]
fn a_fresh_adapter_changes_nothing_and_merging_keeps_the_adapters_outputs() {
    let base = load::<B>(&folder());
    let v0 = velocity(&base);
    let adapted = base.with_lora(lora()).unwrap();
    assert_eq!(
        velocity(&adapted),
        v0,
        "B = 0: the outputs are the base's exactly"
    );

    let trained = adapted.map(&mut Jitter::default());
    let v1 = velocity(&trained);
    assert!(max_diff(&v1, &v0) > 1e-2, "the adapters act");
    let merged = trained.clone().merge_lora();
    assert!(merged.lora().is_none() && !merged.bagel().has_lora());
    let d = max_diff(&velocity(&merged), &v1);
    assert!(d < 1e-4, "merged weights differ from the adapters by {d}");

    // PEFT files: names, shapes, config; read back they give the same outputs (to bf16).
    let dir = tempfile::tempdir().unwrap();
    trained.save_dir(dir.path(), folder()).unwrap();
    let peft = tensors(&dir.path().join("adapter_model.safetensors"));
    assert_eq!(peft.len(), 2 * 7 * 2, "2 layers x 7 projections x (A, B)");
    let (shape, _) =
        &peft["base_model.model.language_model.model.layers.1.mlp_moe_gen.down_proj.lora_A.weight"];
    assert_eq!(shape, &vec![4, 96], "lora_A is [r, in]");
    let (shape, _) = &peft["base_model.model.language_model.model.layers.0.self_attn.k_proj_moe_gen.lora_B.weight"];
    assert_eq!(shape, &vec![32, 4], "lora_B is [out, r]");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    // The base weights are written unchanged.
    let ema = tensors(&dir.path().join("ema.safetensors"));
    let orig = tensors(&folder().join("ema.safetensors"));
    assert_eq!(ema.len(), orig.len());
    assert!(
        orig.iter().all(|(k, v)| ema[k] == *v),
        "base weights bit for bit"
    );

    let back = load::<B>(dir.path());
    assert_eq!(back.lora(), Some(&lora()));
    let d = max_diff(&velocity(&back), &v1);
    assert!(
        d < 0.05,
        "adapters read back differ by {d} (bf16 rounding only)"
    );

    let missing = tempfile::tempdir().unwrap();
    back.save_dir(missing.path(), folder()).unwrap();
    std::fs::write(
        missing.path().join("adapter_config.json"),
        serde_json::to_string(&LoraConfig { rank: 5, ..lora() }.peft_json()).unwrap(),
    )
    .unwrap();
    let err = BagelModel::<B>::load(
        missing.path(),
        BagelTemplates::default(),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("adapter_model.safetensors") && err.contains("misshapen"),
        "{err}"
    );
}

#[test]
fn lora_training_moves_the_adapters_only() {
    let device = Default::default();
    let model = load::<A>(&folder()).with_lora(lora()).unwrap();
    let roles = model.param_roles();
    let mut trainable = 0;
    for id in burn::module::list_param_ids(&model) {
        match roles.role(id) {
            ParamRole::Generation => trainable += 1,
            ParamRole::Frozen => {}
            other => panic!("a LoRA model's parameter is {other:?}"),
        }
    }
    assert_eq!(trainable, 28);
    let grid = model.latent_grid(SIZE);
    let config = TrainerConfig {
        lr: 1e-2,
        warmup_steps: 0,
        ..TrainerConfig::default()
    };
    let mut trainer = Trainer::new(model, config, &device).unwrap();
    for _ in 0..2 {
        let latents = Tensor::<A, 3>::random([2, 6, 64], Distribution::Normal(0.0, 1.0), &device);
        let maps = [RewardMap::filled(grid, 1.0), RewardMap::filled(grid, 0.5)];
        let batch = SrumBatch::from_maps(
            vec!["a red circle".into(), "a cat".into()],
            latents,
            grid,
            &maps,
        )
        .unwrap();
        assert!(trainer.step(batch).unwrap().loss.is_finite());
    }
    let trained = trainer.model().valid();
    let dir = tempfile::tempdir().unwrap();
    trained.save_dir(dir.path(), folder()).unwrap();
    let ema = tensors(&dir.path().join("ema.safetensors"));
    let orig = tensors(&folder().join("ema.safetensors"));
    assert!(
        orig.iter().all(|(k, v)| ema[k] == *v),
        "base weights bit for bit"
    );
    let peft = tensors(&dir.path().join("adapter_model.safetensors"));
    let moved = peft
        .iter()
        .filter(|(k, (_, b))| k.contains("lora_B") && b.iter().any(|&x| x != 0))
        .count();
    assert_eq!(moved, 14, "every lora_B left zero");
}
