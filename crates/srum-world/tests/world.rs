//! The synthetic world: grammar, renderer, split and the oracle's own correctness.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use srum::image::PixelImage;
use srum_world::world::{Category, Oracle, PromptSpec, Split, all_prompts, split_prompts};

#[test]
fn every_prompt_round_trips_through_text() {
    let all = all_prompts();
    assert!(all.len() > 1000);
    for p in &all {
        assert_eq!(&PromptSpec::parse(&p.text()).unwrap(), p, "{}", p.text());
    }
    assert!(PromptSpec::parse("a purple circle").is_err());
    assert!(PromptSpec::parse("").is_err());
    assert!(PromptSpec::parse("five red circles").is_err());
}

#[test]
fn splits_are_disjoint_and_held_out_combinations_are_unseen() {
    let train = split_prompts(Split::Train, 0);
    let held = split_prompts(Split::Heldout, 40);
    for cat in Category::BENCHMARK {
        let n = held.iter().filter(|p| p.category() == cat).count();
        assert!(n >= 6, "{cat:?}: {n} held-out prompts");
    }
    let train_sets: std::collections::HashSet<Vec<String>> = train
        .iter()
        .filter(|p| p.category() != Category::Single)
        .map(|p| {
            let mut v: Vec<String> = p.nps().iter().map(|n| n.text()).collect();
            v.sort();
            if let PromptSpec::Count(n, _) = p {
                v.push(n.to_string());
            }
            v
        })
        .collect();
    for p in &held {
        assert!(!train.contains(p));
        if matches!(
            p,
            PromptSpec::Objects(_) | PromptSpec::Relation(..) | PromptSpec::Count(..)
        ) {
            let mut v: Vec<String> = p.nps().iter().map(|n| n.text()).collect();
            v.sort();
            if let PromptSpec::Count(n, _) = p {
                v.push(n.to_string());
            }
            assert!(
                !train_sets.contains(&v),
                "held-out {} shares its objects with a training prompt",
                p.text()
            );
        }
    }
}

#[test]
fn oracle_scores_faithful_renders_high_and_contradictions_low() {
    let oracle = Oracle::default();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let prompts = split_prompts(Split::Heldout, 40);
    let (mut good, mut bad, mut n) = (0.0, 0.0, 0.0);
    for p in &prompts {
        for _ in 0..3 {
            let scene = p.sample_scene(&mut rng, 32);
            assert!(!scene.objects.is_empty(), "no scene for {}", p.text());
            let img = scene.render(32);
            let s = oracle.score(&img, p);
            assert!(
                s >= 99.0,
                "render of `{}` scored {s}: {:?}",
                p.text(),
                oracle.detect(&img)
            );
            good += s;
            // A scene of the corrupted prompt, judged against the original.
            let neg = p.corrupt(&mut rng);
            assert_ne!(&neg, p);
            bad += oracle.score(&neg.sample_scene(&mut rng, 32).render(32), p);
            n += 1.0;
        }
    }
    let (good, bad) = (good / n, bad / n);
    eprintln!("faithful renders {good:.1}, contradicting renders {bad:.1}");
    assert!(good >= 99.0);
    assert!(bad < 45.0, "contradicting scenes score {bad}");
}

#[test]
fn specific_contradictions_score_zero_and_noise_scores_near_zero() {
    let oracle = Oracle::default();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let p = PromptSpec::parse("a red circle left of a blue square").unwrap();
    let flipped = PromptSpec::parse("a red circle right of a blue square").unwrap();
    let swapped = PromptSpec::parse("a blue circle left of a red square").unwrap();
    for neg in [&flipped, &swapped] {
        let img = neg.sample_scene(&mut rng, 32).render(32);
        assert_eq!(oracle.score(&img, &p), 0.0, "{}", neg.text());
    }
    let three = PromptSpec::parse("three blue squares").unwrap();
    for n in ["two blue squares", "four blue squares"] {
        let img = PromptSpec::parse(n)
            .unwrap()
            .sample_scene(&mut rng, 32)
            .render(32);
        assert_eq!(oracle.score(&img, &three), 0.0, "{n}");
    }
    let mut total = 0.0;
    let prompts = split_prompts(Split::Heldout, 10);
    for p in &prompts {
        let noise = PixelImage {
            width: 32,
            height: 32,
            data: (0..32 * 32 * 3).map(|_| rng.random::<f32>()).collect(),
        };
        total += oracle.score(&noise, p);
    }
    let mean = total / prompts.len() as f32;
    assert!(mean < 5.0, "noise scores {mean}");
    let blank = PixelImage::filled(32, 32, [1.0; 3]);
    assert_eq!(oracle.score(&blank, &p), 0.0);
}
