//! Arbitrary bytes as record lines: the readers and the conversion must report, never panic,
//! and the composer must turn whatever parses into a finite map in [0, 1].
#![no_main]

use libfuzzer_sys::fuzz_target;
use srum::data::{JsonRecord, ReadStats, ScorerRecord, TrainingRecord, convert_line};
use srum::model::{ImageSize, LatentGrid};
use srum::reward::RewardComposer;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut stats = ReadStats::default();
    if let Ok(r) = TrainingRecord::parse_line(&text, &mut stats) {
        let (w, h) = r.image_size.map(|[w, h]| (w.min(64), h.min(64))).unwrap_or((16, 16));
        let (map, _) = RewardComposer::default().compose_latent(
            &r.judgement,
            ImageSize::new(w, h),
            LatentGrid::new(4, 4),
        );
        assert!(map.values().iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)));
    }
    let _ = ScorerRecord::parse_line(&text, &mut stats);
    let _ = convert_line(&text, &mut stats);
});
