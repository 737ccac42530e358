//! Every raw answer in `shared/fixtures/judge_outputs.json` parses as the fixture says.

use std::path::PathBuf;

use serde_json::{Value, json};
use srum::judge::{parse_global, parse_regions};

/// The parse as the fixture (and `srum parse-judge`) writes it.
pub fn parse_as_json(kind: &str, text: &str, num_regions: Option<usize>) -> Value {
    match kind {
        "global" => match parse_global(text) {
            Some(s) if s.clamped => json!({"score": s.score, "clamped": true}),
            Some(s) => json!({"score": s.score}),
            None => json!({"score": null}),
        },
        _ => {
            let mut regions = serde_json::Map::new();
            for (id, r) in parse_regions(text, num_regions) {
                let mut o = json!({"score": r.score.score});
                if r.score.clamped {
                    o["clamped"] = json!(true);
                }
                if let Some(obj) = r.object {
                    o["object"] = json!(obj);
                }
                regions.insert(id.to_string(), o);
            }
            json!({"regions": regions})
        }
    }
}

#[test]
fn every_fixture_case_parses_as_stated() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/judge_outputs.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 19);
    for case in cases {
        let kind = case["kind"].as_str().unwrap();
        let n = case["num_regions"].as_u64().map(|n| n as usize);
        let got = parse_as_json(kind, case["text"].as_str().unwrap(), n);
        assert_eq!(got, case["expect"], "case `{}`", case["name"]);
    }
}
