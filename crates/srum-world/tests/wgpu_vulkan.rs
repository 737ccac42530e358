//! The trainer on wgpu, through Mesa's software Vulkan driver (lavapipe), against flex.
//!
//! Run with `cargo test -p srum-world --features wgpu --test wgpu_vulkan` on a machine with
//! Mesa's software Vulkan driver (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`).
//! Without the driver the test fails, naming the package: it never passes by skipping.
#![cfg(feature = "wgpu")]

// One set of helpers for every crate's tests.
#[path = "../../srum/tests/common/mod.rs"]
mod common;

use burn::backend::wgpu::{RuntimeOptions, WgpuDevice, graphics::Vulkan, init_setup};
use burn::backend::{Autodiff, Wgpu};
use common::*;
use srum::train::{AdamWSettings, Trainer, TrainerConfig, load_weights, save_weights};
use srum_world::toy::ToyUmmConfig;

type Gpu = Autodiff<Wgpu>;

/// Agreement bound: the backends sum in different orders, so bits differ, but after a few
/// AdamW steps at lr 1e-3 every weight stays within this distance.
const TOLERANCE: f32 = 1e-4;

/// AdamW epsilon for this comparison. The recipe's 1e-15 turns a gradient that is rounding
/// noise (|g| ~ 1e-9) into a full `lr` step whose sign is the noise's, so one such element
/// differs by `2 * lr` between backends (seen on CI: 2.0e-3). With epsilon well above the
/// rounding noise the update is continuous in the gradient, and agreement measures the
/// backends, not the sign of noise.
const EPSILON: f32 = 1e-3;

/// What to install when the driver is missing.
const DRIVER_HINT: &str = "Mesa's software Vulkan driver (lavapipe) is needed: install the Debian/Ubuntu \
     packages `mesa-vulkan-drivers` and `libvulkan1` (`.ci/run` does)";

/// Where the Vulkan loader looks for driver manifests on Linux, and lavapipe's manifest name.
fn lavapipe_installed() -> bool {
    if std::env::var_os("VK_ICD_FILENAMES").is_some()
        || std::env::var_os("VK_DRIVER_FILES").is_some()
    {
        return true;
    }
    [
        "/usr/share/vulkan/icd.d",
        "/etc/vulkan/icd.d",
        "/usr/local/share/vulkan/icd.d",
    ]
    .iter()
    .filter_map(|d| std::fs::read_dir(d).ok())
    .flatten()
    .flatten()
    .any(|e| e.file_name().to_string_lossy().starts_with("lvp_icd"))
}

#[test]
fn trainer_on_software_vulkan_agrees_with_flex() {
    assert!(
        lavapipe_installed(),
        "no Vulkan driver manifest found. {DRIVER_HINT}"
    );
    let gpu = WgpuDevice::Cpu;
    let setup = std::panic::catch_unwind(|| init_setup::<Vulkan>(&gpu, RuntimeOptions::default()))
        .unwrap_or_else(|_| panic!("wgpu found no Vulkan CPU adapter. {DRIVER_HINT}"));
    let info = setup.adapter.get_info();
    eprintln!(
        "wgpu adapter: {} ({:?}, driver {})",
        info.name, info.device_type, info.driver
    );
    assert!(
        format!("{:?}", info.device_type) == "Cpu",
        "expected Mesa's software Vulkan device, got {info:?}"
    );

    let cpu = device();
    let dir = tempfile::tempdir().unwrap();
    let start = ToyUmmConfig::new().init::<CpuAd>(&cpu);
    save_weights(&start, dir.path().join("start.safetensors")).unwrap();
    let on_gpu = load_weights(
        ToyUmmConfig::new().init::<Gpu>(&gpu),
        dir.path().join("start.safetensors"),
    )
    .unwrap();

    let config = TrainerConfig::new()
        .with_lr(1e-3)
        .with_warmup_steps(1)
        .with_optimizer(
            AdamWSettings::new()
                .with_weight_decay(0.01)
                .with_epsilon(EPSILON),
        );
    let mut a = Trainer::new(start, config.clone(), &cpu).unwrap();
    let mut b = Trainer::new(on_gpu, config, &gpu).unwrap();
    for i in 0..4 {
        let ra = a.step(toy_batch(i, 4, &cpu)).unwrap();
        let rb = b.step(toy_batch(i, 4, &gpu)).unwrap();
        assert!(ra.updated() && rb.updated());
        assert!(
            (ra.loss - rb.loss).abs() <= 1e-5 * ra.loss.abs().max(1.0),
            "step {i}: loss {} vs {}",
            ra.loss,
            rb.loss
        );
    }
    let mut worst = 0f32;
    for ((path, x), (_, y)) in weights(a.model()).iter().zip(&weights(b.model())) {
        for (p, q) in x.iter().zip(y) {
            worst = worst.max((p - q).abs());
        }
        assert!(
            worst <= TOLERANCE,
            "`{path}`: flex and wgpu differ by {worst}"
        );
    }
    eprintln!("max |flex - wgpu| after 4 steps: {worst:e}");
}
