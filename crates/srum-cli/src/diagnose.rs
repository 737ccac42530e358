//! What the demo's self-rewards look like against the oracle, per prompt category: how spread
//! the rewards are, and how well the judge's global score ranks its own rollout images as the
//! oracle does, before training and after it (the same images re-judged by the trained model).
//! The oracle only measures here: nothing it says reaches training.

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData, backend::Backend};
use serde::Serialize;
use srum::flow::{extend_normals, image_rng, noisy_latents, velocity_target};
use srum::image::PixelImage;
use srum::model::{FlowGenerator, ImageCodec, LatentGrid};
use srum::reward::RewardComposer;
use srum::round::Sample;
use srum_world::world::{Oracle, PromptSpec, spearman};

/// One category's figures over a round's rollout images.
#[derive(Debug, Clone, Serialize)]
pub struct CategoryFigures {
    /// Images.
    pub n: usize,
    /// Mean and standard deviation of the judge's global score as composing reads it.
    pub global_mean: f32,
    /// See `global_mean`.
    pub global_std: f32,
    /// Mean and standard deviation over images of each reward map's mean: the map training
    /// weighs tokens by (1 everywhere for the `sft` and `best-of-k` baselines).
    pub map_mean: f32,
    /// See `map_mean`.
    pub map_std: f32,
    /// Mean oracle score of the images (0 to 100).
    pub oracle_mean: f32,
    /// Spearman correlation of the global score with the oracle's, judged before training.
    pub agreement: f32,
    /// The same after training, the images re-judged by the trained model.
    pub agreement_after: Option<f32>,
    /// Mean absolute change of the global score from re-judging.
    pub global_drift: Option<f32>,
}

fn mean_std(v: &[f32]) -> (f32, f32) {
    if v.is_empty() {
        return (f32::NAN, f32::NAN);
    }
    let n = v.len() as f64;
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n;
    (m as f32, var.sqrt() as f32)
}

/// One image's global score, map mean, oracle score and re-judged global score.
type Row = (f32, f32, f32, Option<f32>);

/// Per category (and `overall`): the figures of `samples`, their global scores read by
/// `composer`, with `after` the global scores the trained model gives the same images (same
/// order) where it re-judged them. A prompt outside the world's grammar is an error naming it.
pub fn rollout_figures(
    samples: &[Sample],
    after: Option<&[f32]>,
    composer: &RewardComposer,
    oracle: &Oracle,
) -> Result<BTreeMap<String, CategoryFigures>, String> {
    if let Some(a) = after
        && a.len() != samples.len()
    {
        return Err(format!(
            "re-judged {} images of {} rollout samples",
            a.len(),
            samples.len()
        ));
    }
    // (global, map mean, oracle, global after) per image, grouped by category.
    let mut groups: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        let spec = PromptSpec::parse(&s.prompt).map_err(|e| format!("rollout sample {i}: {e}"))?;
        let row = (
            composer.global_score(&s.judged.judgement),
            s.map.mean(),
            oracle.score(&s.image, &spec),
            after.map(|a| a[i]),
        );
        groups
            .entry(spec.category().name().to_string())
            .or_default()
            .push(row);
        groups.entry("overall".into()).or_default().push(row);
    }
    Ok(groups
        .into_iter()
        .map(|(cat, rows)| {
            let col = |f: fn(&Row) -> f32| -> Vec<f32> { rows.iter().map(f).collect() };
            let (g, m, o) = (col(|r| r.0), col(|r| r.1), col(|r| r.2));
            let (global_mean, global_std) = mean_std(&g);
            let (map_mean, map_std) = mean_std(&m);
            let after: Option<Vec<f32>> = rows.iter().map(|r| r.3).collect();
            let figures = CategoryFigures {
                n: rows.len(),
                global_mean,
                global_std,
                map_mean,
                map_std,
                oracle_mean: mean_std(&o).0,
                agreement: spearman(&g, &o),
                agreement_after: after.as_ref().map(|a| spearman(a, &o)),
                global_drift: after.as_ref().map(|a| {
                    mean_std(
                        &a.iter()
                            .zip(&g)
                            .map(|(x, y)| (x - y).abs())
                            .collect::<Vec<_>>(),
                    )
                    .0
                }),
            };
            (cat, figures)
        })
        .collect())
}

/// The figures as a Markdown table.
pub fn figures_table(figures: &BTreeMap<String, CategoryFigures>) -> String {
    let mut t = String::from(
        "| rollout category | images | global score | map mean | oracle | agreement before | after | global drift |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let opt = |v: Option<f32>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    for (cat, f) in figures {
        t.push_str(&format!(
            "| {cat} | {} | {:.3} ± {:.3} | {:.3} ± {:.3} | {:.1} | {:.3} | {} | {} |\n",
            f.n,
            f.global_mean,
            f.global_std,
            f.map_mean,
            f.map_std,
            f.oracle_mean,
            f.agreement,
            opt(f.agreement_after),
            opt(f.global_drift),
        ));
    }
    t
}

/// What the oracle makes of a latent token of a rollout image (measurement only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenKind {
    /// Covers part of an object the prompt asks for (its colour and shape, and an object by
    /// `oracle`'s size rule).
    Asked,
    /// Covers another blob of colour and no asked object.
    Other,
    /// Background only.
    Background,
}

impl TokenKind {
    fn name(self) -> &'static str {
        match self {
            Self::Asked => "asked object",
            Self::Other => "other blob",
            Self::Background => "background",
        }
    }
}

/// Each token's kind in `image`, drawn for `prompt`, row-major over `grid` (a token takes the
/// kind of any pixel of it: an asked object's first, then another blob's).
pub fn token_kinds(
    image: &PixelImage,
    prompt: &PromptSpec,
    grid: LatentGrid,
    oracle: &Oracle,
) -> Vec<TokenKind> {
    let (w, h) = (image.width.max(1), image.height.max(1));
    let nps = prompt.nps();
    let mut kinds = vec![TokenKind::Background; grid.rows * grid.cols];
    for (d, pixels) in oracle.components(image) {
        let asked = oracle.is_object(&d, image)
            && nps.iter().any(|n| n.color == d.color && n.shape == d.shape);
        for p in pixels {
            let (x, y) = (p % w, p / w);
            let t = (y * grid.rows / h) * grid.cols + x * grid.cols / w;
            if kinds[t] != TokenKind::Asked {
                kinds[t] = if asked {
                    TokenKind::Asked
                } else {
                    TokenKind::Other
                };
            }
        }
    }
    kinds
}

/// Each token's flow-matching error `|v(x_t, t) - (eps - x_0)|^2`, mean over channels and over
/// `times`, of `model` on the samples' images and prompts. The noise is drawn per image and
/// time from `seed` alone, so two models see the same noised images.
pub fn token_losses<B: Backend, M: FlowGenerator<B> + ImageCodec<B>>(
    model: &M,
    samples: &[Sample],
    times: &[f32],
    seed: u64,
    batch: usize,
    device: &B::Device,
) -> Result<Vec<Vec<f32>>, String> {
    let mut out = Vec::with_capacity(samples.len());
    for (c, chunk) in samples.chunks(batch.max(1)).enumerate() {
        let images: Vec<PixelImage> = chunk.iter().map(|s| s.image.clone()).collect();
        let prompts: Vec<String> = chunk.iter().map(|s| s.prompt.clone()).collect();
        let x0 = model
            .encode_images(PixelImage::to_tensor::<B>(&images, device).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let cond = model.condition(&prompts).map_err(|e| e.to_string())?;
        let [b, n, ch] = x0.dims();
        let mut sum = Tensor::<B, 2>::zeros([b, n], device);
        for (k, &t) in times.iter().enumerate() {
            let mut eps = Vec::with_capacity(b * n * ch);
            for i in 0..b {
                let mut rng = image_rng(seed.wrapping_add(k as u64), (c * batch.max(1) + i) as u64);
                eps = extend_normals(eps, &mut rng, n * ch);
            }
            let eps: Tensor<B, 3> = Tensor::from_data(TensorData::new(eps, [b, n, ch]), device);
            let x_t = noisy_latents(x0.clone(), eps.clone(), Tensor::full([b], t, device));
            let v = model.velocity(x_t, Tensor::full([b], t, device), &cond);
            let err = (v - velocity_target(x0.clone(), eps))
                .powi_scalar(2)
                .mean_dim(2);
            sum = sum + err.reshape([b, n]);
        }
        let mean = (sum / times.len().max(1) as f32).into_data();
        let v: Vec<f32> = mean.to_vec().map_err(|e| format!("{e:?}"))?;
        out.extend(v.chunks(n).map(<[f32]>::to_vec));
    }
    Ok(out)
}

/// One kind of token's figures over a round's rollout images.
#[derive(Debug, Clone, Serialize)]
pub struct TokenFigures {
    /// Tokens of this kind.
    pub tokens: usize,
    /// Mean reward-map value on them (training weighs each token by it, plus λ with the anchor).
    pub map_mean: f32,
    /// Mean flow-matching error on them before training (`token_losses`).
    pub loss_before: f32,
    /// The same after training, same noise.
    pub loss_after: f32,
}

/// Per token kind: the map and the error before and after training. All slices are per sample
/// in `samples`' order, each row over the sample's map grid.
pub fn token_figures(
    samples: &[Sample],
    kinds: &[Vec<TokenKind>],
    before: &[Vec<f32>],
    after: &[Vec<f32>],
) -> Result<BTreeMap<TokenKind, TokenFigures>, String> {
    if kinds.len() != samples.len() || before.len() != samples.len() || after.len() != samples.len()
    {
        return Err(format!(
            "token figures: {} samples but {} kinds, {} and {} loss rows",
            samples.len(),
            kinds.len(),
            before.len(),
            after.len()
        ));
    }
    let mut acc: BTreeMap<TokenKind, (usize, f64, f64, f64)> = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        let map = s.map.values();
        if kinds[i].len() != map.len()
            || before[i].len() != map.len()
            || after[i].len() != map.len()
        {
            return Err(format!(
                "token figures: sample {i} has {} map values but {} kinds, {} and {} losses",
                map.len(),
                kinds[i].len(),
                before[i].len(),
                after[i].len()
            ));
        }
        for t in 0..map.len() {
            let e = acc.entry(kinds[i][t]).or_default();
            e.0 += 1;
            e.1 += map[t] as f64;
            e.2 += before[i][t] as f64;
            e.3 += after[i][t] as f64;
        }
    }
    Ok(acc
        .into_iter()
        .map(|(k, (n, m, b, a))| {
            let d = n.max(1) as f64;
            let f = TokenFigures {
                tokens: n,
                map_mean: (m / d) as f32,
                loss_before: (b / d) as f32,
                loss_after: (a / d) as f32,
            };
            (k, f)
        })
        .collect())
}

/// [`token_figures`] as a markdown table.
pub fn token_table(figures: &BTreeMap<TokenKind, TokenFigures>) -> String {
    let mut t = String::from(
        "| token | tokens | map mean | loss before | loss after | change |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for (k, f) in figures {
        t.push_str(&format!(
            "| {} | {} | {:.3} | {:.4} | {:.4} | {:+.1}% |\n",
            k.name(),
            f.tokens,
            f.map_mean,
            f.loss_before,
            f.loss_after,
            100.0 * (f.loss_after / f.loss_before - 1.0),
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use srum::judge::JudgeOutput;
    use srum::model::Generator;
    use srum::reward::{Judgement, RewardComposerConfig, RewardMap};
    use srum::{image::PixelImage, model::LatentGrid};
    use srum_world::world::Category;

    fn sample(prompt: &str, global: Option<f32>, map: f32) -> Sample {
        let spec = PromptSpec::parse(prompt).unwrap();
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
        Sample {
            prompt: prompt.into(),
            image: spec.sample_scene(&mut rng, 32).render(32),
            judged: JudgeOutput {
                judgement: Judgement {
                    global,
                    regions: vec![],
                },
                ..Default::default()
            },
            map: RewardMap::filled(LatentGrid::new(8, 8), map),
        }
    }

    /// Means, spreads and the drift follow from the inputs by hand; agreement is the rank
    /// correlation with the oracle (renders score 100, a blank canvas 0).
    #[test]
    fn figures_by_hand() {
        let mut blank = sample("a red circle", Some(-0.5), 0.0);
        blank.image = PixelImage::filled(32, 32, [1.0, 1.0, 1.0]);
        let samples = vec![
            sample("a red circle", Some(0.5), 1.0),
            blank,
            sample("a red circle and a blue square", None, 0.5),
        ];
        let after = [0.25, -0.5, 0.0];
        let composer = RewardComposer::new(RewardComposerConfig::default());
        let f = rollout_figures(&samples, Some(&after), &composer, &Oracle::default()).unwrap();
        let overall = &f["overall"];
        assert_eq!(overall.n, 3);
        assert!((overall.global_mean - 0.0).abs() < 1e-6);
        assert!((overall.map_mean - 0.5).abs() < 1e-6);
        let drift = overall.global_drift.unwrap();
        assert!((drift - 0.25 / 3.0).abs() < 1e-6, "{drift}");
        // Two images of one category: the render (100) above the blank (0), and the judge agrees.
        let cat = Category::Single.name();
        assert_eq!(f[cat].n, 2);
        assert!((f[cat].agreement - 1.0).abs() < 1e-6);
        assert!((f[cat].global_std - 0.5).abs() < 1e-6);
        assert!(figures_table(&f).contains("| overall | 3 |"));
        assert!(
            rollout_figures(&samples, Some(&after[..2]), &composer, &Oracle::default()).is_err()
        );
        let mut bad = samples;
        bad[0].prompt = "a purple circle".into();
        let e = rollout_figures(&bad, None, &composer, &Oracle::default()).unwrap_err();
        assert!(e.contains("rollout sample 0"), "{e}");
    }

    /// On a render of an asked red circle and an unasked blue square, the circle's tokens are
    /// asked, the square's other, the rest background.
    #[test]
    fn token_kinds_of_a_render() {
        use srum_world::world::{Color, Object, Scene, Shape};
        let object = |color, shape, c| Object {
            color,
            shape,
            cx: c,
            cy: c,
            radius: 5.0,
        };
        let scene = Scene {
            objects: vec![
                object(Color::Red, Shape::Circle, 8.0),
                object(Color::Blue, Shape::Square, 24.0),
            ],
        };
        let spec = PromptSpec::parse("a red circle").unwrap();
        let kinds = token_kinds(
            &scene.render(32),
            &spec,
            LatentGrid::new(8, 8),
            &Oracle::strict(),
        );
        assert_eq!(kinds[2 * 8 + 2], TokenKind::Asked);
        assert_eq!(kinds[6 * 8 + 6], TokenKind::Other);
        assert_eq!(kinds[7], TokenKind::Background);
        let count = |k| kinds.iter().filter(|&&x| x == k).count();
        // Each object spans 3 x 3 or 4 x 4 tokens of 4 pixels.
        assert!((9..=16).contains(&count(TokenKind::Asked)), "{kinds:?}");
        assert!((9..=16).contains(&count(TokenKind::Other)), "{kinds:?}");
        // Asked for both, both are asked.
        let both = PromptSpec::parse("a red circle and a blue square").unwrap();
        let kinds = token_kinds(
            &scene.render(32),
            &both,
            LatentGrid::new(8, 8),
            &Oracle::strict(),
        );
        assert!(!kinds.contains(&TokenKind::Other));
    }

    /// Counts and means follow from the inputs by hand; mismatched rows are errors.
    #[test]
    fn token_figures_by_hand() {
        let (a, o, g) = (TokenKind::Asked, TokenKind::Other, TokenKind::Background);
        let mut s0 = sample("a red circle", Some(0.5), 1.0);
        s0.map = RewardMap::filled(LatentGrid::new(1, 2), 1.0);
        let mut s1 = sample("a red circle", Some(0.5), 0.0);
        s1.map = RewardMap::filled(LatentGrid::new(1, 2), 0.25);
        let samples = vec![s0, s1];
        let kinds = vec![vec![a, g], vec![a, o]];
        let before = vec![vec![1.0, 2.0], vec![3.0, 4.0]];
        let after = vec![vec![0.5, 2.0], vec![1.5, 8.0]];
        let f = token_figures(&samples, &kinds, &before, &after).unwrap();
        assert_eq!(f[&a].tokens, 2);
        assert!((f[&a].map_mean - 0.625).abs() < 1e-6);
        assert!((f[&a].loss_before - 2.0).abs() < 1e-6);
        assert!((f[&a].loss_after - 1.0).abs() < 1e-6);
        assert!((f[&o].loss_after - 8.0).abs() < 1e-6);
        assert!((f[&g].map_mean - 1.0).abs() < 1e-6);
        assert!(
            token_table(&f).contains("| asked object | 2 | 0.625 | 2.0000 | 1.0000 | -50.0% |")
        );
        assert!(token_figures(&samples, &kinds[..1], &before, &after).is_err());
        let short = vec![vec![1.0], vec![3.0, 4.0]];
        let e = token_figures(&samples, &kinds, &short, &after).unwrap_err();
        assert!(e.contains("sample 0"), "{e}");
    }

    /// The error of a token is the squared velocity error by hand, and the noise depends on the
    /// image and the time, not on how the images are batched.
    #[test]
    fn token_losses_by_hand_and_batch_free() {
        type B = burn::backend::Flex;
        let device = Default::default();
        let (model, _) = srum_world::tiny::TinyUmm::<B>::shipped(&device).unwrap();
        let samples: Vec<Sample> = ["a red circle", "a blue square", "a green triangle"]
            .into_iter()
            .map(|p| sample(p, None, 0.5))
            .collect();
        let one = token_losses(&model, &samples, &[0.3, 0.7], 5, 1, &device).unwrap();
        let all = token_losses(&model, &samples, &[0.3, 0.7], 5, 3, &device).unwrap();
        assert_eq!(one.len(), 3);
        for (x, y) in one.iter().flatten().zip(all.iter().flatten()) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{x} vs {y}");
        }
        // Another seed, other noise.
        let other = token_losses(&model, &samples, &[0.3, 0.7], 6, 3, &device).unwrap();
        assert_ne!(other, all);
        // By hand for the first image at t = 0.5 (same seed, time index 0).
        let at = token_losses(&model, &samples[..1], &[0.5], 9, 1, &device).unwrap();
        let x0 = model
            .encode_images(
                PixelImage::to_tensor::<B>(&[samples[0].image.clone()], &device).unwrap(),
            )
            .unwrap();
        let [_, n, ch] = x0.dims();
        let eps = extend_normals(Vec::new(), &mut image_rng(9, 0), n * ch);
        let x0v: Vec<f32> = x0.clone().into_data().to_vec().unwrap();
        let x_t: Vec<f32> = x0v
            .iter()
            .zip(&eps)
            .map(|(a, e)| 0.5 * a + 0.5 * e)
            .collect();
        let cond = model.condition(&[samples[0].prompt.clone()]).unwrap();
        let v = model.velocity(
            Tensor::from_data(TensorData::new(x_t, [1, n, ch]), &device),
            Tensor::full([1], 0.5, &device),
            &cond,
        );
        let v: Vec<f32> = v.into_data().to_vec().unwrap();
        for t in [0, n / 2, n - 1] {
            let e: f32 = (0..ch)
                .map(|c| {
                    let i = t * ch + c;
                    (v[i] - (eps[i] - x0v[i])).powi(2)
                })
                .sum::<f32>()
                / ch as f32;
            assert!(
                (e - at[0][t]).abs() <= 1e-4 * e.max(1e-3),
                "token {t}: {e} vs {}",
                at[0][t]
            );
        }
    }
}
