//! Whether a generator draws objects at all: per sample, the connected components on the white
//! background against what the prompt asks for. The oracle's scores give partial credit to a
//! mosaic of the right colours; these counts do not. **Evaluation only.**

use serde::{Deserialize, Serialize};

use super::{Detection, Np, Oracle, PromptSpec};
use srum::image::PixelImage;

/// What [`drawing_report`] counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrawingReport {
    /// Samples of one-object prompts ("a red circle").
    pub single: usize,
    /// Share of them with exactly one component, of the named colour and shape, of a drawn
    /// shape's size ([`Oracle::strict`]'s range).
    pub single_exact: f32,
    /// Share of one-object samples with exactly one component of any kind: where the others
    /// fail on the count, not on the object.
    #[serde(default)]
    pub single_one_component: f32,
    /// Share of one-object samples with exactly one component, of the named colour and shape
    /// (any size): [`DrawingReport::single_exact`] without the size check.
    #[serde(default)]
    pub single_named: f32,
    /// Samples of two-object prompts ("a red circle and a blue square", "a red circle and a
    /// red square").
    pub pair: usize,
    /// Share of them with exactly two components, each of a drawn shape's size, one per
    /// noun phrase.
    pub pair_exact: f32,
    /// Mean number of components (any palette colour, at least [`Oracle::min_area`] pixels)
    /// per sample, over every sample.
    pub mean_components: f32,
    /// Samples counted.
    pub n: usize,
}

fn is(d: &Detection, np: Np) -> bool {
    d.color == np.color && d.shape == np.shape
}

/// Whether `image` shows exactly the objects of a one- or two-object prompt `nps`, and nothing
/// else.
fn exact(dets: &[Detection], nps: &[Np], image: &PixelImage) -> bool {
    let strict = Oracle::strict();
    if dets.len() != nps.len() || !dets.iter().all(|d| strict.is_object(d, image)) {
        return false;
    }
    match (dets, nps) {
        ([d], [a]) => is(d, *a),
        ([d, e], [a, b]) => (is(d, *a) && is(e, *b)) || (is(d, *b) && is(e, *a)),
        _ => false,
    }
}

/// Counts, over `samples` (image and the prompt it was generated for), how often one- and
/// two-object prompts got exactly their objects, and how many components samples have.
pub fn drawing_report(samples: &[(PixelImage, PromptSpec)]) -> DrawingReport {
    let oracle = Oracle::default();
    let (mut single, mut single_ok, mut pair, mut pair_ok, mut components) = (0, 0, 0, 0, 0);
    let (mut single_one, mut single_named) = (0, 0);
    for (image, prompt) in samples {
        let dets = oracle.detect(image);
        components += dets.len();
        if let PromptSpec::Objects(nps) = prompt {
            let ok = exact(&dets, nps, image);
            match nps.len() {
                1 => {
                    (single, single_ok) = (single + 1, single_ok + usize::from(ok));
                    single_one += usize::from(dets.len() == 1);
                    single_named += usize::from(matches!(&dets[..], [d] if is(d, nps[0])));
                }
                2 => (pair, pair_ok) = (pair + 1, pair_ok + usize::from(ok)),
                _ => {}
            }
        }
    }
    let share = |k: usize, n: usize| if n == 0 { 0.0 } else { k as f32 / n as f32 };
    DrawingReport {
        single,
        single_exact: share(single_ok, single),
        single_one_component: share(single_one, single),
        single_named: share(single_named, single),
        pair,
        pair_exact: share(pair_ok, pair),
        mean_components: share(components, samples.len()),
        n: samples.len(),
    }
}

/// The prompts [`drawing_report`] is measured on: every one-object prompt (12) and every fifth
/// two-object prompt of [`all_prompts`](super::all_prompts) (12: colour and shape binding).
pub fn drawing_prompts() -> Vec<PromptSpec> {
    let all = super::all_prompts();
    let single = all
        .iter()
        .filter(|p| matches!(p, PromptSpec::Objects(n) if n.len() == 1));
    let pairs = all
        .iter()
        .filter(|p| matches!(p, PromptSpec::Objects(n) if n.len() == 2))
        .step_by(5);
    single.chain(pairs).cloned().collect()
}
