//! Arbitrary bytes as the JSON configs users hand us (trainer config, judge templates, model
//! cards): loading must reject or accept, never panic, and what validates must be usable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use srum::judge::JudgeTemplates;
use srum::model::ModelCard;
use srum::train::TrainerConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = serde_json::from_slice::<TrainerConfig>(data)
        && c.validate().is_ok()
    {
        assert!(c.lr > 0.0 && c.lr.is_finite());
        assert!(c.lambda >= 0.0 && c.lambda.is_finite());
        assert!(c.grad_accum_steps >= 1);
    }
    // The CLI's reader: partial JSON merged onto the defaults, validated inside.
    if let Ok(c) = TrainerConfig::from_json_partial(data) {
        assert!(c.lr > 0.0 && c.lr.is_finite());
        assert!(c.lambda >= 0.0 && c.lambda.is_finite());
    }
    if let Ok(t) = serde_json::from_slice::<JudgeTemplates>(data)
        && t.validate().is_ok()
    {
        let _ = JudgeTemplates::render(&t.regions, "a red circle", &[], 8, 8);
    }
    let _ = serde_json::from_slice::<ModelCard>(data);
    let _ = serde_json::from_slice::<srum_world::tiny::TinyUmmConfig>(data);
});
