//! Per-image record of the self/oracle agreement measure: for each of the model's own
//! generations of held-out prompts (as `srum eval --per-category 40 --samples 5` draws them),
//! the prompt, the oracle's score and detections, and the judge's `P(yes)` for each atomic
//! statement. A diagnostic for where the judge and the oracle disagree; the oracle only measures.
//!
//! `cargo run --release --example agreement_dump -- CHECKPOINT_DIR OUT.jsonl [SEED]`

use burn::backend::Flex;
use srum::flow::{EulerSampler, EulerSamplerConfig};
use srum_world::tiny::{TinyUmm, atoms};
use srum_world::world::{Oracle, Split, evaluate_generation, split_prompts};
use std::io::Write;

type B = Flex;

fn main() -> srum::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(out)) = (args.get(1), args.get(2)) else {
        return Err(srum::SrumError::config(
            "arguments",
            "usage: agreement_dump CHECKPOINT_DIR OUT.jsonl [SEED]",
        ));
    };
    let seed: u64 = match args.get(3) {
        Some(s) => s
            .parse()
            .map_err(|e| srum::SrumError::config("SEED", format!("{s:?}: {e}")))?,
        None => 0,
    };
    let device = Default::default();
    let (model, config) = TinyUmm::<B>::load_dir(dir, &device)?;
    let prompts = split_prompts(Split::Heldout, 40);
    let sampler = EulerSampler::new(EulerSamplerConfig {
        steps: 20,
        guidance_scale: 4.0,
        ..Default::default()
    });
    let samples = 5;
    let eval = evaluate_generation(
        &model,
        &prompts,
        config.image_size,
        &sampler,
        samples,
        seed,
        &Oracle::default(),
        &device,
        |_| {},
    )?;
    let specs: Vec<_> = (0..samples).flat_map(|_| prompts.iter()).collect();
    let texts: Vec<String> = specs.iter().map(|p| p.text()).collect();
    let per_atom = model.atom_probabilities(&eval.images, &texts)?;
    let oracle = Oracle::default();
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(out).map_err(|e| srum::SrumError::io(out, e))?,
    );
    for (i, img) in eval.images.iter().enumerate() {
        let dets: Vec<_> = oracle
            .detect(img)
            .iter()
            .map(|d| {
                serde_json::json!([
                    format!("{:?}", d.color),
                    format!("{:?}", d.shape),
                    d.cx,
                    d.cy,
                    d.area
                ])
            })
            .collect();
        let line = serde_json::json!({
            "i": i,
            "category": specs[i].category().name(),
            "prompt": texts[i],
            "oracle": eval.scores[i].1,
            "atoms": atoms(&texts[i]),
            "p": per_atom[i],
            "detections": dets,
            "pixels": img.data,
        });
        writeln!(f, "{line}").map_err(|e| srum::SrumError::io(out, e))?;
    }
    Ok(())
}
