//! Every raw answer in `tests/data/judge_outputs.json` parses as the fixture says.

use std::path::PathBuf;

use serde_json::Value;
use srum::judge::{AnswerKind, parse_to_json};

#[test]
fn every_fixture_case_parses_as_stated() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/judge_outputs.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 19);
    for case in cases {
        let kind = match case["kind"].as_str().unwrap() {
            "global" => AnswerKind::Global,
            _ => AnswerKind::Regions,
        };
        let n = case["num_regions"].as_u64().map(|n| n as usize);
        let got = parse_to_json(kind, case["text"].as_str().unwrap(), n);
        assert_eq!(got, case["expect"], "case `{}`", case["name"]);
    }
}
