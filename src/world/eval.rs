//! Measurements on the synthetic world: generation by the oracle, understanding accuracy, and
//! how well the model's own judgement agrees with the oracle (SRUM's signal).

use burn::tensor::backend::Backend;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Category, Oracle, OracleReport, PromptSpec};
use crate::error::Result;
use crate::flow::{EulerSampler, generate};
use crate::image::PixelImage;
use crate::judge::{GridProposer, SelfEvaluator, SelfEvaluatorConfig};
use crate::model::UnifiedModel;

/// What [`evaluate_generation`] returns.
#[derive(Debug, Clone)]
pub struct GenerationEval {
    /// Per-category means.
    pub report: OracleReport,
    /// Every image's `(category, oracle score)`, in generation order.
    pub scores: Vec<(Category, f32)>,
    /// The generated images, in the same order.
    pub images: Vec<PixelImage>,
}

/// Generates every prompt `samples` times (seeds `seed`, `seed + 1`, ...) and scores the images
/// with the oracle.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_generation<B: Backend, M: UnifiedModel<B>>(
    model: &M,
    prompts: &[PromptSpec],
    size: usize,
    sampler: &EulerSampler,
    samples: usize,
    seed: u64,
    device: &B::Device,
    mut progress: impl FnMut(usize),
) -> Result<GenerationEval> {
    let oracle = Oracle::default();
    let texts: Vec<String> = prompts.iter().map(|p| p.text()).collect();
    let mut scores = Vec::new();
    let mut images = Vec::new();
    for s in 0..samples {
        let mut rng = ChaCha8Rng::seed_from_u64(seed + s as u64);
        for (chunk_p, chunk_t) in prompts.chunks(64).zip(texts.chunks(64)) {
            let imgs = generate(model, chunk_t, (size, size), sampler, 64, &mut rng, device)?;
            for (p, img) in chunk_p.iter().zip(&imgs) {
                scores.push((p.category(), oracle.score(img, p)));
            }
            progress(imgs.len());
            images.extend(imgs);
        }
    }
    Ok(GenerationEval {
        report: OracleReport::from_scores(&scores),
        scores,
        images,
    })
}

/// Understanding accuracy on `n` image/prompt pairs from `prompts`: half renders of the prompt
/// (answer should be yes, global self-score > 0), half renders of a hard negative (no).
pub fn understanding_accuracy<B: Backend, M: UnifiedModel<B>>(
    model: &M,
    prompts: &[PromptSpec],
    size: usize,
    n: usize,
    seed: u64,
    device: &B::Device,
) -> Result<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let evaluator = SelfEvaluator::new(
        SelfEvaluatorConfig {
            local: false,
            max_retries: 0,
            ..Default::default()
        },
        GridProposer { rows: 1, cols: 1 },
    )?;
    let mut correct = 0usize;
    let mut done = 0usize;
    while done < n {
        let m = (n - done).min(64);
        let (mut imgs, mut texts, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..m {
            let p = &prompts[(done + k) % prompts.len()];
            let yes = (done + k).is_multiple_of(2);
            let shown = if yes { p.clone() } else { p.corrupt(&mut rng) };
            imgs.push(shown.sample_scene(&mut rng, size).render(size));
            texts.push(p.text());
            labels.push(yes);
        }
        let out = evaluator.judge(model, PixelImage::to_tensor::<B>(&imgs, device)?, &texts)?;
        for (o, yes) in out.iter().zip(labels) {
            let said_yes = o.judgement.global.unwrap_or(0.0) > 0.0;
            if said_yes == yes && !o.global_defaulted {
                correct += 1;
            }
        }
        done += m;
    }
    Ok(correct as f32 / n.max(1) as f32)
}

/// Spearman rank correlation (average ranks for ties).
pub fn spearman(a: &[f32], b: &[f32]) -> f32 {
    fn ranks(v: &[f32]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
                j += 1;
            }
            let avg = (i + j) as f64 / 2.0 + 1.0;
            for k in i..=j {
                r[idx[k]] = avg;
            }
            i = j + 1;
        }
        r
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        return 0.0;
    }
    (cov / (va.sqrt() * vb.sqrt())) as f32
}

/// Agreement of the model's global self-score with the oracle on its own generations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Spearman correlation of self-score and oracle score.
    pub spearman: f32,
    /// Images compared.
    pub n: usize,
}

/// The model judges `images` (its own generations of `prompts`) and the result is compared
/// with the oracle's `oracle_scores`.
pub fn self_oracle_agreement<B: Backend, M: UnifiedModel<B>>(
    model: &M,
    images: &[PixelImage],
    prompts: &[String],
    oracle_scores: &[f32],
    device: &B::Device,
) -> Result<Agreement> {
    let evaluator = SelfEvaluator::new(
        SelfEvaluatorConfig {
            local: false,
            ..Default::default()
        },
        GridProposer { rows: 1, cols: 1 },
    )?;
    let mut selfs = Vec::with_capacity(images.len());
    for (imgs, ps) in images.chunks(64).zip(prompts.chunks(64)) {
        let out = evaluator.judge(model, PixelImage::to_tensor::<B>(imgs, device)?, ps)?;
        selfs.extend(out.iter().map(|o| o.judgement.global.unwrap_or(0.0)));
    }
    Ok(Agreement {
        spearman: spearman(&selfs, oracle_scores),
        n: selfs.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::spearman;

    #[test]
    fn spearman_closed_forms() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-6);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-6);
        // Ties: x = [1, 2, 2, 3] ranks [1, 2.5, 2.5, 4]; y ranks [1, 2, 3, 4]: rho = 0.9486833
        assert!(
            (spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]) - 0.948_683_3).abs() < 1e-5
        );
    }
}
