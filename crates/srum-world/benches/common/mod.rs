//! Inputs shared by the benchmarks, so `benches/peer.rs` (against PyTorch) and
//! `benches/srum.rs` (criterion) time the same work.

use srum::reward::{BBox, Judgement, ScoredRegion};

/// The judgement every reward-map benchmark composes, on both sides of the PyTorch comparison
/// (`benches/reference/peer.py` builds the same one): global 0.3 and five overlapping boxes
/// scaled to a `side x side` image.
pub fn five_box_judgement(side: usize) -> Judgement {
    let f = side as f64;
    Judgement {
        global: Some(0.3),
        regions: (0..5)
            .map(|k| ScoredRegion {
                bbox: BBox::new(
                    0.1 * f * k as f64,
                    0.05 * f * k as f64,
                    0.1 * f * k as f64 + 0.4 * f,
                    0.05 * f * k as f64 + 0.5 * f,
                ),
                object: format!("object {k}"),
                score: 0.4 * k as f32 - 0.8,
            })
            .collect(),
    }
}
