//! What the demo's self-rewards look like against the oracle, per prompt category: how spread
//! the rewards are, and how well the judge's global score ranks its own rollout images as the
//! oracle does, before training and after it (the same images re-judged by the trained model).
//! The oracle only measures here: nothing it says reaches training.

use std::collections::BTreeMap;

use serde::Serialize;
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

#[cfg(test)]
mod tests {
    use super::*;
    use srum::judge::JudgeOutput;
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
}
