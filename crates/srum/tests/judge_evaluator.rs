//! The self-evaluator end to end on the toy model: proposals, questions, retries, and the
//! judgements flowing through the composer into `Trainer::step`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::module::AutodiffModule;
use burn::tensor::{Tensor, backend::Backend};
use common::*;
use srum::image::PixelImage;
use srum::judge::{
    ConnectedComponents, GridProposer, JudgeMode, SelfEvaluator, SelfEvaluatorConfig,
};
use srum::model::{ImageCodec, ImageSize, Understanding};
use srum::reward::RewardComposer;
use srum::train::{SrumBatch, Trainer, TrainerConfig};
use srum_world::toy::{ToyUmm, ToyUmmConfig};

/// Two coloured squares on white, 8x8.
fn pictures(n: usize) -> Vec<PixelImage> {
    (0..n)
        .map(|i| {
            let mut img = PixelImage::filled(8, 8, [1.0, 1.0, 1.0]);
            for (x0, y0, rgb) in [(1, 1, [1.0, 0.0, 0.0]), (4 + i % 2, 4, [0.0, 0.0, 1.0])] {
                for y in y0..y0 + 3 {
                    for x in x0..x0 + 3 {
                        let k = (y * 8 + x) * 3;
                        img.data[k..k + 3].copy_from_slice(&rgb);
                    }
                }
            }
            img
        })
        .collect()
}

fn prompts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                "a red square and a blue square"
            } else {
                "a blue square left of a red square"
            }
            .to_string()
        })
        .collect()
}

#[test]
fn judgements_flow_into_trainer_step() {
    let dev = device();
    let model = ToyUmmConfig::new().init::<CpuAd>(&dev);
    let images = PixelImage::to_tensor::<CpuAd>(&pictures(4), &dev).unwrap();
    let prompts = prompts(4);
    let evaluator = SelfEvaluator::new(
        SelfEvaluatorConfig::default(),
        ConnectedComponents::default(),
    )
    .unwrap();
    let out = evaluator
        .judge(&model.valid(), images.clone().inner(), &prompts)
        .unwrap();
    assert_eq!(out.len(), 4);
    for o in &out {
        let g = o.judgement.global.unwrap();
        assert!((-1.0..=1.0).contains(&g));
        assert!(!o.global_defaulted);
        assert_eq!(o.proposals.len(), 2, "two squares proposed");
        assert_eq!(
            o.judgement.regions.len(),
            2,
            "both regions scored: {:?}",
            o.raw_regions
        );
        assert_eq!(o.retries, 0);
    }
    assert_eq!(out[0].proposals[0].to_array(), [1.0, 1.0, 4.0, 4.0]);

    let composer = RewardComposer::default();
    let grid = model.latent_grid(ImageSize::square(8));
    let maps: Vec<_> = out
        .iter()
        .map(|o| {
            composer
                .compose_latent(&o.judgement, ImageSize::square(8), grid)
                .0
        })
        .collect();
    // A region with a positive score lifts its pixels above the base (the max rule): the map is
    // uniform exactly when no region scored above 0.
    for (o, m) in out.iter().zip(&maps) {
        let lifted = o.judgement.regions.iter().any(|r| r.score > 0.0);
        let uniform = m.values().iter().all(|&v| v == m.values()[0]);
        assert_eq!(lifted, !uniform, "{:?}", o.judgement);
    }
    let latents = model.encode_images(images).unwrap();
    let batch = SrumBatch::from_maps(prompts, latents, grid, &maps).unwrap();
    let mut trainer = Trainer::new(model, TrainerConfig::new().with_lr(1e-3), &dev).unwrap();
    let report = trainer.step(batch).unwrap();
    assert!(report.updated() && report.loss.is_finite());
    let mean: f32 = maps.iter().map(|m| m.mean()).sum::<f32>() / 4.0;
    assert!((report.mean_reward - mean).abs() < 1e-5);
}

/// The toy model's understanding, but its first `fail` answers are garbage. The evaluator
/// needs nothing else of a model.
struct Flaky<B: Backend> {
    inner: ToyUmm<B>,
    calls: Arc<AtomicUsize>,
    fail: usize,
}

impl<B: Backend> Understanding<B> for Flaky<B> {
    fn answer(&self, images: Tensor<B, 4>, q: &[String]) -> srum::Result<Vec<String>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail {
            return Ok(vec!["<think>hmm, Score: 1".to_string(); q.len()]);
        }
        self.inner.answer(images, q)
    }
}

#[test]
fn unparsable_answers_are_retried_then_defaulted() {
    let dev = device();
    let images = PixelImage::to_tensor::<Cpu>(&pictures(2), &dev).unwrap();
    let config = SelfEvaluatorConfig {
        local: false,
        default_global: 0.0,
        ..Default::default()
    };
    let evaluator = SelfEvaluator::new(config, GridProposer { rows: 2, cols: 2 }).unwrap();
    let flaky = |fail| Flaky {
        inner: ToyUmmConfig::new().init::<Cpu>(&dev),
        calls: Arc::new(AtomicUsize::new(0)),
        fail,
    };
    let once = flaky(1);
    let out = evaluator.judge(&once, images.clone(), &prompts(2)).unwrap();
    assert_eq!(once.calls.load(Ordering::SeqCst), 2);
    assert!(out.iter().all(|o| o.retries == 1 && !o.global_defaulted));
    let never = flaky(usize::MAX);
    let out = evaluator.judge(&never, images, &prompts(2)).unwrap();
    assert_eq!(never.calls.load(Ordering::SeqCst), 4, "1 try + 3 retries");
    assert!(
        out.iter()
            .all(|o| o.global_defaulted && o.judgement.global == Some(0.0) && o.retries == 3)
    );
}

#[test]
fn modes_and_options() {
    let dev = device();
    let model = ToyUmmConfig::new().init::<Cpu>(&dev);
    let images = PixelImage::to_tensor::<Cpu>(&pictures(2), &dev).unwrap();
    let judge = |config: SelfEvaluatorConfig| {
        SelfEvaluator::new(config, ConnectedComponents::default())
            .unwrap()
            .judge(&model, images.clone(), &prompts(2))
            .unwrap()
    };
    let sample = judge(SelfEvaluatorConfig {
        sample_level_only: true,
        ..Default::default()
    });
    assert!(sample.iter().all(|o| o.judgement.regions.len() == 1
        && o.judgement.regions[0].bbox.to_array() == [0.0, 0.0, 8.0, 8.0]));
    let bin = judge(SelfEvaluatorConfig {
        binarize: true,
        ..Default::default()
    });
    assert!(
        bin.iter()
            .all(|o| o.judgement.regions.iter().all(|r| r.score.abs() == 1.0)
                && o.judgement.global.unwrap().abs() == 1.0)
    );
    let one = judge(SelfEvaluatorConfig {
        max_regions: 1,
        ..Default::default()
    });
    assert!(one.iter().all(|o| o.judgement.regions.len() == 1));
    let filtered = judge(SelfEvaluatorConfig {
        filter_relevance: true,
        ..Default::default()
    });
    assert!(filtered.iter().all(|o| o.proposals.len() <= 2));
    let yes_no = judge(SelfEvaluatorConfig {
        mode: JudgeMode::YesNo,
        ..Default::default()
    });
    for o in &yes_no {
        assert!(o.judgement.global.is_some());
        assert_eq!(o.judgement.regions.len(), 2);
        assert!(
            o.judgement
                .regions
                .iter()
                .all(|r| r.object.contains("square"))
        );
    }
    let none = judge(SelfEvaluatorConfig {
        global: false,
        local: false,
        ..Default::default()
    });
    assert!(
        none.iter()
            .all(|o| o.judgement.global.is_none() && o.judgement.regions.is_empty())
    );
}
