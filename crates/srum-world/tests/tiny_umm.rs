//! The reference model: tokenizer, shapes, answers the evaluator can parse, a few pretraining
//! steps, and its checkpoint directory.

// One set of helpers for every crate's tests.
#[path = "../../srum/tests/common/mod.rs"]
mod common;

use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use common::*;
use srum::image::PixelImage;
use srum::judge::{GridProposer, SelfEvaluator, SelfEvaluatorConfig, parse_global};
use srum::model::{FlowGenerator, Generator, ImageCodec, ImageSize, LatentGrid, Understanding};
use srum_world::tiny::{
    PretrainConfig, PromptScore, TinyUmm, TinyUmmConfig, UnderstandingMix, atoms, build_tokenizer,
    encode, load_tokenizer, pretrain, prompt_score,
};

fn tiny_config() -> TinyUmmConfig {
    TinyUmmConfig::new()
        .with_d_model(16)
        .with_n_heads(2)
        .with_n_layers(1)
        .with_d_ff(32)
}

#[test]
fn tokenizer_round_trips_through_json_and_rejects_unknown_words() {
    let tok = build_tokenizer().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path, false).unwrap();
    let loaded = load_tokenizer(&path).unwrap();
    let ids = encode(&loaded, "a Red circle left of two blue squares", 16).unwrap();
    assert_eq!(
        ids,
        encode(&tok, "a red circle left of two blue squares", 16).unwrap()
    );
    assert_eq!(ids.len(), 8);
    let err = encode(&loaded, "a red dragon", 16).unwrap_err().to_string();
    assert!(err.contains("`dragon`"), "{err}");
    let err = encode(&loaded, &"a ".repeat(20), 16)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 16"), "{err}");
    assert!(load_tokenizer(&dir.path().join("missing.json")).is_err());
}

#[test]
fn shapes_and_latent_round_trip() {
    let dev = device();
    let model = tiny_config().init::<Cpu>(build_tokenizer().unwrap(), &dev);
    let img = srum_world::world::PromptSpec::parse("a red circle")
        .unwrap()
        .sample_scene(&mut rand::rng(), 32)
        .render(32);
    let images = PixelImage::to_tensor::<Cpu>(&[img.clone(), img], &dev).unwrap();
    let lat = model.encode_images(images.clone()).unwrap();
    assert_eq!(lat.dims(), [2, 64, 48]);
    assert_eq!(
        model.latent_grid(ImageSize::square(32)),
        LatentGrid::new(8, 8)
    );
    let back = model
        .decode_latents(lat.clone(), ImageSize::square(32))
        .unwrap();
    let diff: f32 = (back - images).abs().max().into_scalar();
    assert!(diff < 1e-6);
    let cond = model
        .condition(&["a red circle".into(), "three blue squares".into()])
        .unwrap();
    let v = model.velocity(lat, Tensor::from_floats([0.2, 0.9], &dev), &cond);
    assert_eq!(v.dims(), [2, 64, 48]);
    assert!(model.condition(&["a red dragon".into()]).is_err());
    assert!(
        model
            .encode_images(Tensor::zeros([1, 3, 16, 16], &dev))
            .is_err()
    );
}

/// A fresh model's generation head outputs zeros, so its velocity has a closed form: zero when
/// it predicts the velocity, `x_t / max(t, 0.05)` when it predicts the clean latents.
#[test]
fn clean_prediction_turns_the_head_output_into_a_velocity() {
    use srum_world::tiny::Prediction;
    let dev = device();
    let x_t = Tensor::<Cpu, 3>::random(
        [2, 64, 48],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &dev,
    );
    let t = Tensor::<Cpu, 1>::from_floats([0.5, 0.01], &dev);
    let velocity = |p: Option<Prediction>| {
        let m = tiny_config()
            .with_prediction(p)
            .init::<Cpu>(build_tokenizer().unwrap(), &dev);
        let cond = m
            .condition(&["a red circle".into(), String::new()])
            .unwrap();
        m.velocity(x_t.clone(), t.clone(), &cond)
    };
    for p in [None, Some(Prediction::Velocity)] {
        let v: f32 = velocity(p).abs().max().into_scalar();
        assert_eq!(v, 0.0, "{p:?}");
    }
    let v = velocity(Some(Prediction::Clean));
    let want = Tensor::cat(
        vec![
            x_t.clone().narrow(0, 0, 1).div_scalar(0.5),
            x_t.narrow(0, 1, 1).div_scalar(0.05),
        ],
        0,
    );
    let err: f32 = (v - want).abs().max().into_scalar();
    assert!(err < 1e-4, "{err}");
}

/// With task experts the image tokens being judged go through their own expert: it is an
/// understanding parameter (SRUM never trains it), and the generation expert is a generation one.
#[test]
fn task_experts_split_the_image_expert_by_ability() {
    use burn::module::list_param_ids;
    use srum::model::ParamRole;
    let dev = device();
    let count = |experts: Option<bool>| {
        let m = tiny_config()
            .with_task_experts(experts)
            .init::<Cpu>(build_tokenizer().unwrap(), &dev);
        let roles = m.param_roles();
        let ids = list_param_ids(&m);
        let n = |r| ids.iter().filter(|id| roles.role(**id) == r).count();
        (
            ids.len(),
            n(ParamRole::Understanding),
            n(ParamRole::Generation),
        )
    };
    // tiny_config has one block; an expert is a layer norm and two linears, 6 tensors.
    let (all, und, generation) = count(None);
    assert_eq!(
        (und, generation),
        (4, 4),
        "answer and patch heads; time and velocity"
    );
    assert_eq!(count(Some(false)), (all, und, generation));
    assert_eq!(count(Some(true)), (all + 6, und + 6, generation + 6));
}

/// The graded rule's closed forms: a prompt's parts are its noun phrases (objects prompts), its
/// relation with both objects (one part), its count (one), or a complex prompt's relation and
/// extra object (two); the yes/no rule is the least atom throughout.
#[test]
fn prompt_scores_follow_the_prompts_parts() {
    let cases: [(&str, &[f32], f32, f32); 6] = [
        ("a red circle and a blue square", &[0.9, 0.1], 0.1, 0.5),
        (
            "a red circle left of a blue square",
            &[0.9, 0.8, 0.2],
            0.2,
            0.2,
        ),
        (
            "a red circle left of a blue square",
            &[0.3, 0.8, 0.9],
            0.3,
            0.3,
        ),
        (
            "a red circle left of a blue square and a green triangle",
            &[0.9, 0.8, 0.7, 0.1],
            0.1,
            0.4,
        ),
        ("three blue squares", &[0.25], 0.25, 0.25),
        // Outside the grammar: one statement, a conjunction either way.
        ("a purple cow", &[0.6], 0.6, 0.6),
    ];
    for (prompt, p, all, parts) in cases {
        assert_eq!(atoms(prompt).len(), p.len(), "{prompt}");
        let got = (
            prompt_score(prompt, p, PromptScore::All),
            prompt_score(prompt, p, PromptScore::Parts),
        );
        assert!(
            (got.0 - all).abs() < 1e-6 && (got.1 - parts).abs() < 1e-6,
            "{prompt}: {got:?}"
        );
    }
    // Probabilities that do not match the prompt's atoms are one conjunction.
    let odd = prompt_score(
        "a red circle and a blue square",
        &[0.9, 0.5, 0.7],
        PromptScore::Parts,
    );
    assert!((odd - 0.5).abs() < 1e-6);
}

/// The graded judge (the sharp judge's weights, the parts rule) writes `2 * parts - 1` as its
/// global score and the sharp judge `2 * least - 1`, from the same network probabilities; both
/// keep the conjunction as their yes/no answer. The image shows the complex prompt's relation
/// but not its third object, where the two rules differ most.
#[test]
fn the_graded_answer_follows_the_models_rule() {
    let dev = device();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let prompt = "a red circle left of a blue square and a green triangle".to_string();
    let shown = srum_world::world::PromptSpec::parse("a red circle left of a blue square").unwrap();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
    let image = shown.sample_scene(&mut rng, 32).render(32);
    let question = srum::judge::JudgeTemplates::render(
        &srum::judge::JudgeTemplates::default().global,
        &prompt,
        &[],
        32,
        32,
    );
    let mut scores = Vec::new();
    for (dir, rule) in [
        ("../../assets/tiny-umm-sharp-judge", PromptScore::All),
        ("../../assets/tiny-umm-graded-judge", PromptScore::Parts),
    ] {
        let (model, _) = TinyUmm::<Cpu>::load_dir(root.join(dir), &dev).unwrap();
        let p = model
            .atom_probabilities(std::slice::from_ref(&image), std::slice::from_ref(&prompt))
            .unwrap()
            .remove(0);
        let images = PixelImage::to_tensor::<Cpu>(std::slice::from_ref(&image), &dev).unwrap();
        let text = model
            .answer(images.clone(), std::slice::from_ref(&question))
            .unwrap();
        let score = parse_global(&text[0]).unwrap().score;
        let want = 2.0 * f64::from(prompt_score(&prompt, &p, rule)) - 1.0;
        // The answer is written to three decimals.
        assert!((score - want).abs() <= 1e-3, "{dir}: {} vs {want}", text[0]);
        let yes = model
            .yes_no_probabilities(images, std::slice::from_ref(&question))
            .unwrap()
            .unwrap()[0]
            .0;
        let least = p.iter().copied().fold(1f32, f32::min);
        assert!((yes - least).abs() < 1e-6, "{dir}: {yes} vs {least}");
        scores.push(score);
    }
    // The relation part holds and the third object does not: about 0 against about -1.
    assert!(scores[1] - scores[0] > 0.5, "{scores:?}");
}

#[test]
fn answers_are_what_the_evaluator_parses() {
    let dev = device();
    let model = tiny_config().init::<Cpu>(build_tokenizer().unwrap(), &dev);
    let prompts: Vec<String> = [
        "a red circle left of a blue square",
        "three green triangles",
    ]
    .map(String::from)
    .to_vec();
    let imgs: Vec<PixelImage> = prompts
        .iter()
        .map(|p| {
            srum_world::world::PromptSpec::parse(p)
                .unwrap()
                .sample_scene(&mut rand::rng(), 32)
                .render(32)
        })
        .collect();
    let images = PixelImage::to_tensor::<Cpu>(&imgs, &dev).unwrap();
    let ev = SelfEvaluator::new(
        SelfEvaluatorConfig {
            max_retries: 0,
            ..Default::default()
        },
        GridProposer { rows: 2, cols: 2 },
    )
    .unwrap();
    let out = ev.judge(&model, images.clone(), &prompts).unwrap();
    for o in &out {
        assert!(!o.global_defaulted, "{:?}", o.raw_global);
        assert_eq!(o.judgement.regions.len(), 4, "{:?}", o.raw_regions);
        assert!(
            o.judgement
                .regions
                .iter()
                .all(|r| r.object.starts_with("a "))
        );
    }
    let a = model
        .answer(
            images.clone(),
            &[
                "Is there a red circle in the image?".into(),
                "gibberish".into(),
            ],
        )
        .unwrap();
    assert!(parse_global(&a[0]).is_some(), "{}", a[0]);
    assert!(
        parse_global(&a[1]).is_none(),
        "an unreadable question gets no score: {}",
        a[1]
    );
    let p = model.yes_no_probabilities(
        images,
        &[
            "Is the red circle left of the blue square?".into(),
            "Does the region [0, 0, 16, 16] show a red circle?".into(),
        ],
    );
    let p = p.unwrap().unwrap();
    assert!(p.iter().all(|(y, n)| (y + n - 1.0).abs() < 1e-5));
}

#[test]
fn a_few_pretraining_steps_and_the_checkpoint_directory() {
    let dev = device();
    let config = tiny_config()
        .with_prediction(Some(srum_world::tiny::Prediction::Clean))
        .with_sincos_positions(Some(true))
        .with_centre_head(Some(true))
        .with_locate_head(Some(true))
        .with_ground_head(Some(true));
    let model = config.init::<CpuAd>(build_tokenizer().unwrap(), &dev);
    let mut reports = Vec::new();
    let pc = PretrainConfig {
        steps: 3,
        batch: 4,
        understanding_batch: Some(6),
        lr: 1e-3,
        seed: 1,
        time_budget_s: None,
        understanding_only: false,
        generation_only: false,
        timestep_shift: 1.0,
        ema: None,
        clean_space_loss: false,
        low_noise_boost: None,
        object_weight: None,
        mix: UnderstandingMix::parse("3,3,3,1,1,1").unwrap(),
        locate_objects: true,
        shards: 1,
    };
    let model = pretrain(model, &pc, &dev, |r, _| reports.push(*r)).unwrap();
    assert_eq!(reports.len(), 3);
    assert!(
        reports
            .iter()
            .all(|r| r.generation_loss.is_finite() && r.understanding_loss.is_finite())
    );
    // A quarter of the pairs are relations: the locate head is trained on them.
    assert!(
        reports
            .iter()
            .any(|r| r.locate_loss.is_some_and(f32::is_finite) && r.relation_accuracy.is_some()),
        "{reports:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let inner = model.valid();
    inner.save_dir(&config, dir.path()).unwrap();
    let (loaded, loaded_config) = TinyUmm::<Cpu>::load_dir(dir.path(), &dev).unwrap();
    assert_eq!(loaded_config, config);
    assert_eq!(weights(&inner), weights(&loaded));
    // The centre head adds a tenth per-patch logit; it and the locate head belong to the judge.
    let img = Tensor::<Cpu, 4>::zeros([2, 3, 32, 32], &dev);
    let text = loaded
        .text_batch(&["a red circle".into(), "".into()])
        .unwrap();
    let (_, patches) = loaded.understand_with_patches(img, &text).unwrap();
    assert_eq!(patches.dims(), [2, 64, srum_world::tiny::PATCH_CLASSES + 1]);
    let roles = loaded.param_roles();
    let understanding = burn::module::list_param_ids(&loaded)
        .into_iter()
        .filter(|id| roles.role(*id) == srum::model::ParamRole::Understanding)
        .count();
    let without = tiny_config()
        .with_prediction(Some(srum_world::tiny::Prediction::Clean))
        .init::<Cpu>(build_tokenizer().unwrap(), &dev);
    let roles0 = without.param_roles();
    let understanding0 = burn::module::list_param_ids(&without)
        .into_iter()
        .filter(|id| roles0.role(*id) == srum::model::ParamRole::Understanding)
        .count();
    assert_eq!(
        understanding,
        understanding0 + 6,
        "centre, locate and ground heads' weights and biases"
    );
    // The statement breakdown asks every atom of every prompt, labelled by its truth.
    let prompts: Vec<srum_world::world::PromptSpec> = [
        "a red circle left of a blue square",
        "two green triangles",
        "a yellow square",
    ]
    .iter()
    .map(|p| srum_world::world::PromptSpec::parse(p).unwrap())
    .collect();
    let report = srum_world::tiny::statement_report(&loaded, &prompts, 6, 0).unwrap();
    let asked = |k: &str| report.get(k).map_or(0, |t| t.yes + t.no);
    // Each prompt twice, once on its own render and once on a hard negative's: the relation
    // prompt asks two objects and a relation, the count one count, the single object itself.
    assert_eq!(
        (asked("object"), asked("relation"), asked("count")),
        (6, 2, 2)
    );
    for t in report.values() {
        assert!(t.yes_correct <= t.yes && t.no_correct <= t.no);
    }
    // On the prompt's own render (even draws) every statement is true.
    assert!(
        report["count"].yes >= 1 && report["relation"].yes >= 1,
        "{report:?}"
    );
    assert!(report["object"].yes >= 3);
    assert!(srum_world::tiny::statement_report(&loaded, &[], 6, 0).is_err());
    // A checkpoint of another shape names the tensor that does not fit.
    let other = TinyUmmConfig::new()
        .with_d_model(8)
        .with_n_heads(2)
        .with_n_layers(1)
        .with_d_ff(32);
    std::fs::write(
        dir.path().join("model.json"),
        serde_json::to_vec(&serde_json::json!({"kind": "tiny-umm", "config": other})).unwrap(),
    )
    .unwrap();
    let err = TinyUmm::<Cpu>::load_dir(dir.path(), &dev)
        .unwrap_err()
        .to_string();
    assert!(err.contains("checkpoint shape"), "{err}");
}

/// Understanding-only continuation moves the judge's own parameters and nothing generation uses.
#[test]
fn understanding_only_pretraining_leaves_the_generator_bit_for_bit() {
    use srum::model::ParamRole;
    let dev = device();
    let config = tiny_config()
        .with_prediction(Some(srum_world::tiny::Prediction::Clean))
        .with_task_experts(Some(true));
    let model = config.init::<CpuAd>(build_tokenizer().unwrap(), &dev);
    let roles = model.param_roles();
    let ids = burn::module::list_param_ids(&model);
    let before = weights(&model);
    let pc = PretrainConfig {
        steps: 2,
        batch: 4,
        understanding_batch: Some(8),
        lr: 1e-2,
        seed: 2,
        time_budget_s: None,
        understanding_only: true,
        generation_only: false,
        timestep_shift: 1.0,
        ema: None,
        clean_space_loss: false,
        low_noise_boost: None,
        object_weight: None,
        // Sample rows too: the sampler's completions use the frozen generator.
        mix: UnderstandingMix::parse("7,3,4,2,2,2,8").unwrap(),
        locate_objects: false,
        shards: 1,
    };
    let model = pretrain(model, &pc, &dev, |_, _| {}).unwrap();
    let after = weights(&model);
    // `weights` lists parameters in module order, as `list_param_ids` does.
    assert_eq!(ids.len(), before.len());
    let (mut moved, mut kept) = (0, 0);
    for ((id, (path, x)), (_, y)) in ids.iter().zip(&before).zip(&after) {
        if roles.role(*id) == ParamRole::Understanding {
            moved += usize::from(x != y);
        } else {
            assert_eq!(x, y, "`{path}` ({:?}) changed", roles.role(*id));
            kept += 1;
        }
    }
    assert!(moved >= 4, "only {moved} understanding parameters moved");
    assert!(kept > 0);
    // Completions alone (every pair a sample row) train the judge the same way.
    let only_samples = PretrainConfig {
        steps: 1,
        mix: UnderstandingMix::parse("0,0,0,0,0,0,1").unwrap(),
        ..pc
    };
    let mut reports = Vec::new();
    let model = pretrain(model, &only_samples, &dev, |r, _| reports.push(*r)).unwrap();
    assert!(reports[0].understanding_loss.is_finite(), "{reports:?}");
    let again = weights(&model);
    let mut moved = 0;
    for ((id, (path, x)), (_, y)) in ids.iter().zip(&after).zip(&again) {
        if roles.role(*id) == ParamRole::Understanding {
            moved += usize::from(x != y);
        } else {
            assert_eq!(x, y, "`{path}` changed on completions");
        }
    }
    assert!(
        moved >= 4,
        "only {moved} understanding parameters moved on completions"
    );
}

/// Generation-only pretraining with every generator option on (adaptive norm, a full 5 x 5
/// neighbour convolution, prompt conditioning, shifted times, the boosted clean-space loss,
/// the object weight, EMA): the
/// understanding-only parameters stay bit for bit, the new generation modules (zero at the
/// start, or the prompt condition's) move, the EMA is what is returned (between the start and
/// the last step), and the checkpoint directory reads back the same generator.
#[test]
fn generation_only_pretraining_trains_the_generator_alone() {
    use srum::model::ParamRole;
    let dev = device();
    let config = tiny_config()
        .with_prediction(Some(srum_world::tiny::Prediction::Clean))
        .with_task_experts(Some(true))
        .with_adaptive_norm(Some(true))
        .with_neighbour_mixing(Some(true))
        .with_neighbour_dense(Some(true))
        .with_neighbour_kernel(Some(5))
        .with_prompt_condition(Some(true));
    let model = config.init::<CpuAd>(build_tokenizer().unwrap(), &dev);
    let roles = model.param_roles();
    let pooled = |path: &str| path.contains("prompt_condition");
    let ids = burn::module::list_param_ids(&model);
    let before = weights(&model);
    assert_eq!(
        before.iter().filter(|(p, _)| pooled(p)).count(),
        3,
        "the prompt condition's table, weight and bias"
    );
    let new_modules = |path: &str| path.contains("modulation") || path.contains("neighbours");
    let d = config.d_model;
    for (path, x) in before
        .iter()
        .filter(|(p, _)| p.contains("neighbours.weight"))
    {
        assert_eq!(x.len(), d * d * 25, "`{path}`: a full 5 x 5 convolution");
    }
    assert!(
        before.iter().filter(|(p, _)| new_modules(p)).count() >= 3,
        "{:?}",
        before.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for ((id, (path, x)), _) in ids.iter().zip(&before).zip(0..) {
        if new_modules(path) {
            assert_eq!(roles.role(*id), ParamRole::Generation, "`{path}`");
            if path.ends_with("weight") {
                assert!(x.iter().all(|v| *v == 0.0), "`{path}` starts at zero");
            }
        }
    }
    let pc = PretrainConfig {
        steps: 4,
        batch: 4,
        lr: 1e-2,
        seed: 3,
        generation_only: true,
        timestep_shift: 3.0,
        clean_space_loss: true,
        low_noise_boost: Some(0.5),
        object_weight: Some(2.0),
        ..PretrainConfig::default()
    };
    let mut reports = Vec::new();
    let last = pretrain(model.clone(), &pc, &dev, |r, _| reports.push(*r)).unwrap();
    assert!(
        reports.iter().all(|r| r.generation_loss.is_finite()),
        "{reports:?}"
    );
    let averaged = pretrain(
        model,
        &PretrainConfig {
            ema: Some(0.5),
            ..pc.clone()
        },
        &dev,
        |_, _| {},
    )
    .unwrap();
    let (after, ema) = (weights(&last), weights(&averaged));
    let mut moved_new = 0;
    for (((id, (path, x)), (_, y)), (_, e)) in ids.iter().zip(&before).zip(&after).zip(&ema) {
        if pooled(path) {
            assert_eq!(roles.role(*id), ParamRole::Generation, "`{path}`");
            assert_ne!(x, y, "`{path}` did not move");
        }
        match roles.role(*id) {
            ParamRole::Understanding => assert_eq!(x, y, "`{path}` changed"),
            _ => {
                moved_new += usize::from(new_modules(path) && x != y);
                if x != y {
                    assert_ne!(e, y, "`{path}`: the EMA is the last step's weights");
                }
            }
        }
    }
    assert!(
        moved_new >= 3,
        "only {moved_new} new generation tensors moved"
    );
    let bad = PretrainConfig {
        understanding_only: true,
        ..pc.clone()
    };
    assert!(pretrain(last.clone(), &bad, &dev, |_, _| {}).is_err());
    let bad = PretrainConfig {
        timestep_shift: 0.0,
        ..pc.clone()
    };
    assert!(pretrain(last.clone(), &bad, &dev, |_, _| {}).is_err());
    for (clean_space_loss, boost) in [(false, 0.5), (true, 0.0), (true, f32::NAN)] {
        let bad = PretrainConfig {
            clean_space_loss,
            low_noise_boost: Some(boost),
            ..pc.clone()
        };
        let e = pretrain(last.clone(), &bad, &dev, |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("low_noise_boost"), "{e}");
    }

    let dir = tempfile::tempdir().unwrap();
    let inner = last.valid();
    inner.save_dir(&config, dir.path()).unwrap();
    let (loaded, read) = TinyUmm::<Cpu>::load_dir(dir.path(), &dev).unwrap();
    assert_eq!(read.resolved(), config.clone().resolved());
    let lat = Tensor::<Cpu, 3>::ones([2, 64, 48], &dev);
    let cond = inner
        .condition(&["a red circle".into(), "a blue square".into()])
        .unwrap();
    let t = Tensor::from_floats([0.3, 0.8], &dev);
    let (a, b) = (
        inner.velocity(lat.clone(), t.clone(), &cond),
        loaded.velocity(lat, t, &cond),
    );
    let diff: f32 = (a - b).abs().max().into_scalar();
    assert_eq!(diff, 0.0);

    // An even convolution side cannot keep the patch grid: loading names the card.
    let card = dir.path().join("model.json");
    let text = std::fs::read_to_string(&card).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let slot = json
        .pointer_mut("/config/neighbour_kernel")
        .unwrap_or_else(|| panic!("no neighbour_kernel in {text}"));
    *slot = serde_json::json!(4);
    std::fs::write(&card, json.to_string()).unwrap();
    let e = TinyUmm::<Cpu>::load_dir(dir.path(), &dev).unwrap_err();
    assert!(e.to_string().contains("model.json"), "{e}");
}

/// Every shipped checkpoint loads, generates and judges: the demo's model and the four judges. The
/// graded judge is the sharp judge's network answering with [`PromptScore::Parts`]; the
/// others predate the choice and read as [`PromptScore::All`].
#[test]
fn shipped_checkpoints_load_generate_and_judge() {
    let dev = device();
    for (dir, rule) in [
        ("assets/tiny-umm", PromptScore::All),
        ("../../assets/tiny-umm-strong-judge", PromptScore::All),
        ("../../assets/tiny-umm-sharp-judge", PromptScore::All),
        ("../../assets/tiny-umm-agreeing-judge", PromptScore::All),
        ("../../assets/tiny-umm-graded-judge", PromptScore::Parts),
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let (model, config) = TinyUmm::<Cpu>::load_dir(&path, &dev).unwrap();
        assert_eq!(model.prompt_score_rule(), rule, "{dir}");
        let spec =
            srum_world::world::PromptSpec::parse("a red circle left of a blue square").unwrap();
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        let image = spec
            .sample_scene(&mut rng, config.image_size)
            .render(config.image_size);
        let sampler = srum::flow::EulerSampler::new(srum::flow::EulerSamplerConfig {
            steps: 2,
            ..Default::default()
        });
        let made = srum::flow::generate(
            &model,
            &[spec.text()],
            ImageSize::square(32),
            &sampler,
            1,
            &mut rng,
            &dev,
        )
        .unwrap();
        assert!(made[0].data.iter().all(|v| v.is_finite()), "{dir}");
        let p = model.match_probability(&[image], &[spec.text()]).unwrap();
        assert!(
            p[0].is_finite() && (0.0..=1.0).contains(&p[0]),
            "{dir}: {p:?}"
        );
    }
}

/// The checkpoint built into the crate is `assets/tiny-umm`, weight for weight, so the demo of an
/// installed binary starts from the model the repository's tables were measured on.
#[test]
fn the_built_in_checkpoint_is_the_shipped_directory() {
    let dev = device();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-umm");
    let (from_dir, dir_config) = TinyUmm::<Cpu>::load_dir(&dir, &dev).unwrap();
    let (built_in, built_in_config) = TinyUmm::<Cpu>::shipped(&dev).unwrap();
    assert_eq!(
        serde_json::to_string(&dir_config).unwrap(),
        serde_json::to_string(&built_in_config).unwrap()
    );
    let (a, b) = (weights(&from_dir), weights(&built_in));
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

/// Sharded steps train: the shards' gradients reach the optimizer (AdamW moves a parameter
/// only when it has a gradient; a copy that dropped `require_grad` gave none).
#[test]
fn sharded_pretraining_moves_every_weight() {
    let dev = device();
    let config = tiny_config().with_locate_head(Some(true));
    let model = config.init::<CpuAd>(build_tokenizer().unwrap(), &dev);
    let before = weights(&model.valid());
    let mut reports = Vec::new();
    let pc = PretrainConfig {
        steps: 2,
        batch: 5,
        understanding_batch: Some(9),
        seed: 4,
        shards: 2,
        ..PretrainConfig::default()
    };
    let model = pretrain(model, &pc, &dev, |r, _| reports.push(*r)).unwrap();
    assert_eq!(reports.len(), 2);
    assert!(reports.iter().all(|r| r.generation_loss.is_finite()));
    // More shards than images in a step is an error that names both.
    let too_many = PretrainConfig { shards: 6, ..pc };
    let err = pretrain(model.clone(), &too_many, &dev, |_, _| {})
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("6 shards") && err.contains("batch 5"), "{err}");
    let after = weights(&model.valid());
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert_eq!(
        moved,
        before.len(),
        "{moved} of {} tensors moved",
        before.len()
    );
}

/// [`TinyUmm`]'s understanding with its yes/no probabilities hidden, so the evaluator reads its
/// text answers.
struct TextOnly<B: burn::tensor::backend::Backend> {
    inner: TinyUmm<B>,
}

impl<B: burn::tensor::backend::Backend> Understanding<B> for TextOnly<B> {
    fn answer(&self, images: Tensor<B, 4>, questions: &[String]) -> srum::Result<Vec<String>> {
        self.inner.answer(images, questions)
    }
}

/// Understanding accuracy reads the yes/no answer where the model has one: the graded judge
/// (the sharp judge's network answering with partial credit) answers every pair as the sharp
/// judge does. A model without yes/no probabilities is read through its global score, which
/// for the least-atom rule gives the same answers up to the text's three decimals.
#[test]
fn understanding_reads_the_yes_no_answer() {
    let dev = device();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let load = |dir: &str| TinyUmm::<Cpu>::load_dir(root.join(dir), &dev).unwrap().0;
    let prompts = srum_world::world::split_prompts(srum_world::world::Split::Heldout, 4);
    let n = 96;
    let sharp = load("../../assets/tiny-umm-sharp-judge");
    let by_yes_no =
        srum_world::world::understanding_report(&sharp, &prompts, 32, n, 5, &dev).unwrap();
    let graded = load("../../assets/tiny-umm-graded-judge");
    let graded_report =
        srum_world::world::understanding_report(&graded, &prompts, 32, n, 5, &dev).unwrap();
    assert_eq!(graded_report, by_yes_no);
    let by_text = srum_world::world::understanding_report(
        &TextOnly { inner: sharp },
        &prompts,
        32,
        n,
        5,
        &dev,
    )
    .unwrap();
    assert!(
        (by_text.accuracy - by_yes_no.accuracy).abs() <= 1.0 / n as f32,
        "{by_text:?} vs {by_yes_no:?}"
    );
    assert!(by_yes_no.accuracy > 0.75, "{by_yes_no:?}");
}

/// The shipped model with the flex kernels (`Autodiff<Flex>`) against the same model on burn's
/// own ops (`Autodiff<Flex, BalancedCheckpointing>`, which the kernels leave alone): the same
/// velocity, understanding logits and input gradient through every block, within f32 rounding.
#[cfg(feature = "flex")]
#[test]
fn flex_kernels_match_burns_ops_through_the_whole_model() {
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{TensorData, backend::AutodiffBackend};
    use srum_world::world::{Split, split_prompts};

    type Ours = Autodiff<Flex>;
    type Burns = Autodiff<Flex, BalancedCheckpointing>;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/tiny-umm");
    let prompts: Vec<String> = split_prompts(Split::Train, 0)
        .iter()
        .take(6)
        .map(|p| p.text())
        .collect();

    fn run<B: AutodiffBackend>(dir: &str, prompts: &[String]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let device = Default::default();
        let (model, _) = TinyUmm::<B>::load_dir(dir, &device).unwrap();
        let grid = model.latent_grid(ImageSize::square(32));
        let (n, c) = (grid.tokens(), model.latent_channels());
        let b = prompts.len();
        let x: Vec<f32> = (0..b * n * c)
            .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 2.0)
            .collect();
        let x = Tensor::<B, 3>::from_data(TensorData::new(x, [b, n, c]), &device).require_grad();
        let t: Vec<f32> = (0..b).map(|i| 0.1 + 0.8 * i as f32 / b as f32).collect();
        let t = Tensor::<B, 1>::from_data(TensorData::new(t, [b]), &device);
        let text = model.text_batch(prompts).unwrap();
        let v = model.velocity(x.clone(), t, &text);
        let grads = (v.clone() * v.clone()).sum().backward();
        let dx = x.grad(&grads).unwrap();
        let images = PixelImage::to_tensor::<B>(
            &vec![PixelImage::filled(32, 32, [0.9, 0.2, 0.1]); b],
            &device,
        )
        .unwrap();
        let logits = model.understand(images, &text).unwrap();
        let host = |d: TensorData| d.to_vec::<f32>().unwrap();
        (
            host(v.into_data()),
            host(dx.into_data()),
            host(logits.into_data()),
        )
    }

    let ours = run::<Ours>(dir, &prompts);
    let burns = run::<Burns>(dir, &prompts);
    let worst = |a: &[f32], b: &[f32]| {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    };
    let (v, dx, logits) = (
        worst(&ours.0, &burns.0),
        worst(&ours.1, &burns.1),
        worst(&ours.2, &burns.2),
    );
    eprintln!(
        "kernels against burn's ops: velocity {v:e}, input gradient {dx:e}, logits {logits:e}"
    );
    assert!(
        v < 1e-5 && dx < 1e-5 && logits < 1e-5,
        "relative to the largest value: velocity {v:e}, input gradient {dx:e}, logits {logits:e}"
    );
    // The two backends really differ: burn's GELU rounds otherwise than the kernel's.
    assert!(v > 0.0 || dx > 0.0, "the kernels did not run");
}
