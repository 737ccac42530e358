//! Stage 2 for an autoregressive generator: next-token cross-entropy weighted per token by the
//! reward map, on the toy token generator, through the same `Trainer`.

mod common;

use burn::module::AutodiffModule;
use burn::tensor::{Int, Tensor, TensorData};
use common::*;
use srum::model::{Generator, ImageCodec, ImageSize, TokenGenerator};
use srum::train::{
    Constraint, NextTokenCrossEntropy, Objective, SrumBatch, StepDraws, StepInput, Trainer,
    TrainerConfig,
};
use srum_world::toy_ar::{CODES, ToyArConfig, ToyArGenerator};

const PROMPTS: [&str; 2] = ["a red square", "a blue circle"];

fn codes_batch(tokens: &[Vec<i64>], reward: &[Vec<f32>]) -> SrumBatch<CpuAd> {
    let dev = device();
    let (b, n) = (tokens.len(), tokens[0].len());
    let flat: Vec<f32> = tokens.iter().flatten().map(|&t| t as f32).collect();
    let r: Vec<f32> = reward.iter().flatten().copied().collect();
    SrumBatch {
        prompts: PROMPTS
            .iter()
            .cycle()
            .take(b)
            .map(|s| s.to_string())
            .collect(),
        latents: Tensor::from_data(TensorData::new(flat, [b, n, 1]), &dev),
        anchor: None,
        reward: Tensor::from_data(TensorData::new(r, [b, n]), &dev),
    }
}

fn host(t: Tensor<CpuAd, 1>) -> f64 {
    t.into_scalar() as f64
}

/// Per token, `-log softmax(logits)[target]` from the model's own logits, in f64.
fn hand_cross_entropy(model: &ToyArGenerator<CpuAd>, tokens: &[Vec<i64>]) -> Vec<Vec<f64>> {
    let dev = device();
    let (b, n) = (tokens.len(), tokens[0].len());
    let ids: Vec<i64> = tokens.iter().flatten().copied().collect();
    let ids = Tensor::<CpuAd, 2, Int>::from_data(TensorData::new(ids, [b, n]), &dev);
    let prompts: Vec<String> = PROMPTS
        .iter()
        .cycle()
        .take(b)
        .map(|s| s.to_string())
        .collect();
    let cond = model.condition(&prompts).unwrap();
    let logits = model
        .next_token_logits(ids, &cond)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap();
    (0..b)
        .map(|i| {
            (0..n)
                .map(|j| {
                    let row = &logits[(i * n + j) * CODES..(i * n + j + 1) * CODES];
                    let max = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)) as f64;
                    let lse = max
                        + row
                            .iter()
                            .map(|&v| (v as f64 - max).exp())
                            .sum::<f64>()
                            .ln();
                    lse - row[tokens[i][j] as usize] as f64
                })
                .collect()
        })
        .collect()
}

fn sample_tokens(b: usize, n: usize, seed: u64) -> Vec<Vec<i64>> {
    (0..b)
        .map(|i| {
            (0..n)
                .map(|j| ((i as u64 * 31 + j as u64 * 7 + seed) % CODES as u64) as i64)
                .collect()
        })
        .collect()
}

/// The reward term is `mean_i R_i * CE_i` and the anchor term the unweighted mean `CE`, each
/// against a hand computation from the model's logits.
#[test]
fn each_tokens_cross_entropy_is_weighted_by_its_reward() {
    let dev = device();
    let model = ToyArConfig::new().init::<CpuAd>(&dev);
    let n = model.latent_grid(ImageSize::square(8)).tokens();
    let tokens = sample_tokens(2, n, 3);
    let reward: Vec<Vec<f32>> = (0..2)
        .map(|i| (0..n).map(|j| ((i * n + j) % 5) as f32 / 4.0).collect())
        .collect();
    let ce = hand_cross_entropy(&model, &tokens);
    let count = (2 * n) as f64;
    let want_reward: f64 = (0..2)
        .flat_map(|i| (0..n).map(move |j| (i, j)))
        .map(|(i, j)| reward[i][j] as f64 * ce[i][j])
        .sum::<f64>()
        / count;
    let want_anchor: f64 = ce.iter().flatten().sum::<f64>() / count;
    // A token with reward 0 must not count: the weighted mean is not the plain mean.
    assert!((want_reward - want_anchor).abs() > 1e-2);

    let config = TrainerConfig::new().with_lambda(0.5);
    let terms = NextTokenCrossEntropy
        .loss(
            &model,
            StepInput {
                batch: codes_batch(&tokens, &reward),
                config: &config,
                reference: None,
                draws: StepDraws {
                    seed: 0,
                    micro_step: 0,
                    first_sample: 0,
                },
                trainable: &[],
            },
        )
        .unwrap();
    let (r, c, t) = (
        host(terms.reward),
        host(terms.constraint),
        host(terms.total),
    );
    assert!((r - want_reward).abs() < 1e-5, "{r} vs {want_reward}");
    assert!((c - want_anchor).abs() < 1e-5, "{c} vs {want_anchor}");
    assert!((t - (want_reward + 0.5 * want_anchor)).abs() < 1e-5);
}

/// With the frozen-reference constraint, the constraint is the per-token KL to the starting
/// model: zero before the first update, positive once the weights moved.
#[test]
fn the_reference_constraint_is_the_kl_to_the_frozen_model() {
    let dev = device();
    let model = ToyArConfig::new().init::<CpuAd>(&dev);
    let n = model.latent_grid(ImageSize::square(8)).tokens();
    let tokens = sample_tokens(2, n, 1);
    let ones = vec![vec![1.0; n]; 2];
    let config = TrainerConfig::new()
        .with_lr(5e-2)
        .with_warmup_steps(1)
        .with_constraint(Constraint::ReferenceModel);
    let mut trainer = Trainer::with_objective(model, NextTokenCrossEntropy, config, &dev).unwrap();
    let first = trainer.step(codes_batch(&tokens, &ones)).unwrap();
    assert!(first.constraint_loss.abs() < 1e-6, "{first:?}");
    let mut last = first;
    for _ in 0..5 {
        last = trainer.step(codes_batch(&tokens, &ones)).unwrap();
    }
    assert!(last.constraint_loss > 1e-4, "{last:?}");
}

/// Two images of the same prompt, one drawn in the rewarded colour: with reward maps that
/// prefer the first, SRUM's trainer raises its likelihood over the second's far more than
/// uniform rewards (fine-tuning on both) do.
#[test]
fn srum_moves_a_token_generator_toward_the_rewarded_image() {
    let dev = device();
    let n = 16;
    let both = vec![vec![4i64; n], vec![1i64; n]];
    let prompt = "a red square";
    let gap = |m: &ToyArGenerator<CpuAd>| {
        let lp = log_prob_for(m, &both, prompt);
        lp[0] - lp[1]
    };
    let run = |reward_blue: f32| {
        let model = ToyArConfig::new().init::<CpuAd>(&dev);
        let before = gap(&model);
        let config = TrainerConfig::new()
            .with_lr(2e-2)
            .with_warmup_steps(1)
            .with_lambda(0.0);
        let mut trainer =
            Trainer::with_objective(model, NextTokenCrossEntropy, config, &dev).unwrap();
        let mut batch = codes_batch(&both, &[vec![1.0; n], vec![reward_blue; n]]);
        batch.prompts = vec![prompt.into(); 2];
        for _ in 0..40 {
            let report = trainer.step(batch.clone()).unwrap();
            assert!(report.updated() && report.loss.is_finite(), "{report:?}");
        }
        gap(&trainer.into_model()) - before
    };
    let rewarded = run(0.0);
    let uniform = run(1.0);
    assert!(
        rewarded > 5.0 && rewarded > uniform + 5.0,
        "log p(red) - log p(blue) moved {rewarded} with the reward map, {uniform} with uniform rewards"
    );
}

/// Log-probability of `tokens` under the model with every sequence prompted by `prompt`.
fn log_prob_for(model: &ToyArGenerator<CpuAd>, tokens: &[Vec<i64>], prompt: &str) -> Vec<f64> {
    let dev = device();
    let (b, n) = (tokens.len(), tokens[0].len());
    let ids: Vec<i64> = tokens.iter().flatten().copied().collect();
    let ids = Tensor::<CpuAd, 2, Int>::from_data(TensorData::new(ids, [b, n]), &dev);
    let cond = model.condition(&vec![prompt.to_string(); b]).unwrap();
    let logp =
        burn::tensor::activation::log_softmax(model.next_token_logits(ids.clone(), &cond), 2)
            .gather(2, ids.reshape([b, n, 1]))
            .reshape([b, n])
            .sum_dim(1)
            .valid()
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap();
    logp.into_iter().map(f64::from).collect()
}

/// Codes survive the codec: an image drawn from codes encodes back to them.
#[test]
fn the_colour_codec_round_trips() {
    let dev = device();
    let model = ToyArConfig::new().init::<Cpu>(&dev);
    let codes: Vec<f32> = (0..16).map(|i| (i % CODES) as f32).collect();
    let latents = Tensor::<Cpu, 3>::from_data(TensorData::new(codes.clone(), [1, 16, 1]), &dev);
    let image = model.decode_latents(latents, ImageSize::square(8)).unwrap();
    let back = model.encode_images(image).unwrap();
    assert_eq!(
        back.into_data().convert::<f32>().into_vec::<f32>().unwrap(),
        codes
    );
}

/// A latent that is not a code is an error naming the token and the sample.
#[test]
fn a_token_outside_the_vocabulary_is_refused() {
    let dev = device();
    let model = ToyArConfig::new().init::<CpuAd>(&dev);
    let mut tokens = sample_tokens(2, 16, 0);
    tokens[1][5] = CODES as i64;
    let mut trainer =
        Trainer::with_objective(model, NextTokenCrossEntropy, TrainerConfig::new(), &dev).unwrap();
    let err = trainer
        .step(codes_batch(&tokens, &vec![vec![1.0; 16]; 2]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("token 5 of sample 1"), "{err}");
    // The trainer keeps its model after the refusal.
    let ok = trainer
        .step(codes_batch(
            &sample_tokens(2, 16, 0),
            &vec![vec![1.0; 16]; 2],
        ))
        .unwrap();
    assert!(ok.loss.is_finite());
}
