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

/// A mosaic: patch-sized (4 x 4) blocks of the prompt's colours scattered on white, what a
/// generator that has not learned shapes draws.
fn mosaic(p: &PromptSpec, rng: &mut ChaCha8Rng) -> PixelImage {
    let colors: Vec<[f32; 3]> = p.nps().iter().map(|n| n.color.rgb()).collect();
    let mut img = PixelImage::filled(32, 32, [1.0, 1.0, 1.0]);
    for cell in 0..64 {
        if rng.random::<f32>() < 0.3 {
            let c = colors[rng.random_range(0..colors.len())];
            let (cx, cy) = ((cell % 8) * 4, (cell / 8) * 4);
            for y in cy..cy + 4 {
                for x in cx..cx + 4 {
                    let i = (y * 32 + x) * 3;
                    img.data[i..i + 3].copy_from_slice(&c);
                }
            }
        }
    }
    img
}

#[test]
fn the_strict_oracle_gives_a_mosaic_of_the_right_colours_nothing_and_renders_full_marks() {
    let (lenient, strict) = (Oracle::default(), Oracle::strict());
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let prompts = split_prompts(Split::Heldout, 40);
    let (mut mosaic_lenient, mut mosaic_strict, mut render_strict, mut n) = (0.0, 0.0, 0.0, 0.0);
    for p in &prompts {
        for _ in 0..3 {
            let img = mosaic(p, &mut rng);
            mosaic_lenient += lenient.score(&img, p);
            mosaic_strict += strict.score(&img, p);
            let render = p.sample_scene(&mut rng, 32).render(32);
            let s = strict.score(&render, p);
            assert!(
                s >= 99.0,
                "strict: render of `{}` scored {s}: {:?}",
                p.text(),
                strict.detect(&render)
            );
            render_strict += s;
            n += 1.0;
        }
    }
    let (ml, ms, rs) = (mosaic_lenient / n, mosaic_strict / n, render_strict / n);
    eprintln!("mosaics: lenient {ml:.1}, strict {ms:.1}; faithful renders, strict: {rs:.1}");
    // The default oracle gives a mosaic partial credit; the strict one next to none.
    assert!(
        ml > 10.0,
        "the mosaic was meant to fool the lenient oracle: {ml}"
    );
    assert!(ms < 3.0, "strict oracle on mosaics: {ms}");
}

#[test]
fn the_strict_oracle_counts_stray_blobs_of_a_prompt_colour_against_it() {
    let strict = Oracle::strict();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let p = PromptSpec::parse("a red circle").unwrap();
    let mut img = p.sample_scene(&mut rng, 32).render(32);
    assert_eq!(strict.score(&img, &p), 100.0);
    // One red 3 x 3 blob in a corner the circle never reaches: one stray, half the score.
    let red = [0.9, 0.1, 0.1];
    let (x0, y0) = if strict.detect(&img)[0].cx > 16.0 {
        (0, 0)
    } else {
        (29, 29)
    };
    for y in y0..y0 + 3 {
        for x in x0..x0 + 3 {
            let i = (y * 32 + x) * 3;
            img.data[i..i + 3].copy_from_slice(&red);
        }
    }
    assert_eq!(
        Oracle::default().score(&img, &p),
        100.0,
        "the default ignores it"
    );
    assert_eq!(strict.score(&img, &p), 50.0);
}

#[test]
fn the_drawing_count_passes_renders_and_fails_mosaics_and_extra_objects() {
    use srum_world::world::{drawing_prompts, drawing_report};
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let prompts = drawing_prompts();
    assert_eq!(prompts.len(), 24);
    let renders: Vec<_> = (0..4)
        .flat_map(|_| prompts.clone())
        .map(|p| (p.sample_scene(&mut rng, 32).render(32), p))
        .collect();
    let r = drawing_report(&renders);
    assert_eq!((r.single, r.pair, r.n), (48, 48, 96));
    assert_eq!((r.single_exact, r.pair_exact), (1.0, 1.0), "renders: {r:?}");
    assert_eq!((r.single_one_component, r.single_named), (1.0, 1.0));
    assert_eq!(r.mean_components, 1.5);

    let mosaics: Vec<_> = renders
        .iter()
        .map(|(_, p)| (mosaic(p, &mut rng), p.clone()))
        .collect();
    let m = drawing_report(&mosaics);
    assert!(
        m.single_exact < 0.05 && m.pair_exact < 0.05,
        "mosaics: {m:?}"
    );
    assert!(m.mean_components > 2.0, "mosaics: {m:?}");

    // A render of "a red circle" shown for "a red circle and a blue square" lacks one object;
    // a render of both shown for "a red circle" has one too many.
    let one = PromptSpec::parse("a red circle").unwrap();
    let two = PromptSpec::parse("a red circle and a blue square").unwrap();
    let swapped = vec![
        (one.sample_scene(&mut rng, 32).render(32), two.clone()),
        (two.sample_scene(&mut rng, 32).render(32), one.clone()),
    ];
    let s = drawing_report(&swapped);
    assert_eq!((s.single_exact, s.pair_exact), (0.0, 0.0));
    assert_eq!((s.single_one_component, s.single_named), (0.0, 0.0));
    // The breakdown tells the count from the object: a red square shown for "a red circle"
    // is one component, not the named one.
    let square = PromptSpec::parse("a red square").unwrap();
    let wrong = vec![(square.sample_scene(&mut rng, 32).render(32), one.clone())];
    let w = drawing_report(&wrong);
    assert_eq!(
        (w.single_exact, w.single_one_component, w.single_named),
        (0.0, 1.0, 0.0)
    );
}
