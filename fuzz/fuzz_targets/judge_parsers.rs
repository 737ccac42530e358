//! Arbitrary bytes into every judge parser: nothing may panic, and every parsed score is a
//! finite number in [-1, 1].
#![no_main]

use libfuzzer_sys::fuzz_target;
use srum::judge::{AnswerKind, answer_text, parse_global, parse_regions, parse_to_json};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let n = data.first().map(|&b| (b % 8) as usize);
    let _ = answer_text(&text);
    if let Some(s) = parse_global(&text) {
        assert!(s.score.is_finite() && (-1.0..=1.0).contains(&s.score));
    }
    for (id, r) in parse_regions(&text, n) {
        assert!(id >= 1);
        assert!(n.is_none_or(|n| id <= n));
        assert!(r.score.score.is_finite() && (-1.0..=1.0).contains(&r.score.score));
    }
    let _ = parse_regions(&text, None);
    let _ = parse_to_json(AnswerKind::Global, &text, n).to_string();
    let _ = parse_to_json(AnswerKind::Regions, &text, n).to_string();
});
