//! Parsing the understanding model's free-text answers into scores.
//!
//! Rules (the fixtures in `shared/fixtures/judge_outputs.json` pin them down):
//! - only the text after the last `</think>` is read; an unclosed `<think>` is no answer;
//! - markdown emphasis (`*`, `` ` ``) is ignored, keys are case-insensitive;
//! - a number is `[+-]?(d+[.d*] | .d+)`; one followed by `%` is not a score; NaN/inf are rejected;
//! - scores are clamped into `[-1, 1]` and the clamp is reported;
//! - global: the first `Score:` followed by a number wins;
//! - regions: a block starts at a line `Region ID: k`; inside it, the first line-leading
//!   `Score:` with a number and the `Identified Object:` line are read. Blocks without a score
//!   are dropped, ids outside `1..=num_regions` (or 0) are ignored, and for a repeated id the
//!   first scored block wins. An object text that itself contains `Region ID:` or `Score:` is
//!   not trusted and left out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A parsed score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ParsedScore {
    /// The score, clamped into `[-1, 1]`.
    pub score: f64,
    /// Whether the model's number was outside `[-1, 1]`.
    pub clamped: bool,
}

/// One parsed region answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParsedRegion {
    /// The region's score.
    pub score: ParsedScore,
    /// What the model identified there, when it said so (and the text looks like an object).
    pub object: Option<String>,
}

/// The answer part of a model's output: after the last `</think>`, or `None` when a `<think>`
/// is left open (the model never got to answer).
pub fn answer_text(raw: &str) -> Option<&str> {
    let lower = raw.to_ascii_lowercase();
    if let Some(pos) = lower.rfind("</think>") {
        return Some(&raw[pos + "</think>".len()..]);
    }
    if lower.contains("<think>") {
        return None;
    }
    Some(raw)
}

fn clean(text: &str) -> String {
    text.chars().filter(|c| !matches!(c, '*' | '`')).collect()
}

/// Parses a number at the start of `s` (after optional whitespace). Returns the value.
fn leading_number(s: &str) -> Option<f64> {
    let s = s.trim_start();
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        let dot = i;
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
            frac_digits += 1;
        }
        if int_digits == 0 && frac_digits == 0 {
            i = dot;
        }
    }
    if int_digits == 0 && frac_digits == 0 {
        return None;
    }
    if b.get(i) == Some(&b'%') {
        return None;
    }
    let v: f64 = s[..i].trim_start_matches('+').parse().ok()?;
    v.is_finite().then_some(v)
}

fn to_score(v: f64) -> ParsedScore {
    let c = v.clamp(-1.0, 1.0);
    ParsedScore {
        score: c,
        clamped: c != v,
    }
}

/// Byte offsets just after each case-insensitive occurrence of `key` (ASCII) in `hay`.
fn after_key<'a>(hay: &'a str, key: &'a str) -> impl Iterator<Item = usize> + 'a {
    let lower = hay.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(p) = lower[from..].find(key) {
        out.push(from + p + key.len());
        from += p + key.len();
    }
    out.into_iter()
}

/// `key` then optional spaces then `:`; returns the rest after the colon.
fn keyed<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let t = line.trim_start_matches(|c: char| c.is_whitespace() || matches!(c, '#' | '-' | '>'));
    let lower = t.to_ascii_lowercase();
    if !lower.starts_with(key) {
        return None;
    }
    let rest = t[key.len()..].trim_start();
    rest.strip_prefix(':')
}

/// The global layout score of an answer: the first `Score:` followed by a number.
pub fn parse_global(raw: &str) -> Option<ParsedScore> {
    let text = clean(answer_text(raw)?);
    for end in after_key(&text, "score") {
        let rest = text[end..].trim_start();
        if let Some(rest) = rest.strip_prefix(':')
            && let Some(v) = leading_number(rest)
        {
            return Some(to_score(v));
        }
    }
    None
}

/// The per-region answers, keyed by region id. `num_regions`, when given, is how many boxes
/// were asked about; other ids are ignored.
pub fn parse_regions(raw: &str, num_regions: Option<usize>) -> BTreeMap<usize, ParsedRegion> {
    let mut out = BTreeMap::new();
    let Some(answer) = answer_text(raw) else {
        return out;
    };
    let text = clean(answer);
    // (id, score, object) of the block being read.
    let mut block: Option<(usize, Option<ParsedScore>, Option<String>)> = None;
    let flush = |b: Option<(usize, Option<ParsedScore>, Option<String>)>,
                 out: &mut BTreeMap<usize, ParsedRegion>| {
        if let Some((id, Some(score), object)) = b {
            let in_range = id >= 1 && num_regions.is_none_or(|n| id <= n);
            if in_range {
                out.entry(id).or_insert(ParsedRegion { score, object });
            }
        }
    };
    for line in text.lines() {
        if let Some(rest) = keyed(line, "region id") {
            flush(block.take(), &mut out);
            let digits: String = rest
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            block = digits.parse::<usize>().ok().map(|id| (id, None, None));
            continue;
        }
        let Some((_, score, object)) = block.as_mut() else {
            continue;
        };
        if let Some(rest) = keyed(line, "identified object") {
            let o = rest.trim();
            let lower = o.to_ascii_lowercase();
            if object.is_none()
                && !o.is_empty()
                && !lower.contains("region id")
                && !lower.contains("score")
            {
                *object = Some(o.to_string());
            }
        } else if let Some(rest) = keyed(line, "score")
            && score.is_none()
        {
            *score = leading_number(rest).map(to_score);
        }
    }
    flush(block.take(), &mut out);
    out
}

/// Which parser [`parse_to_json`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// A global (or sample-level) answer: one score.
    Global,
    /// A region answer: one block per region.
    Regions,
}

/// The parse in the fixtures' JSON form: `{"score": x}` (plus `"clamped": true` when the number
/// was out of range) or `{"score": null}`; `{"regions": {"1": {"score": x, "object": "..."}}}`.
pub fn parse_to_json(
    kind: AnswerKind,
    text: &str,
    num_regions: Option<usize>,
) -> serde_json::Value {
    use serde_json::json;
    let score = |s: ParsedScore| {
        if s.clamped {
            json!({"score": s.score, "clamped": true})
        } else {
            json!({"score": s.score})
        }
    };
    match kind {
        AnswerKind::Global => parse_global(text)
            .map(score)
            .unwrap_or_else(|| json!({"score": null})),
        AnswerKind::Regions => {
            let regions: serde_json::Map<String, serde_json::Value> =
                parse_regions(text, num_regions)
                    .into_iter()
                    .map(|(id, r)| {
                        let mut o = score(r.score);
                        if let Some(obj) = r.object {
                            o["object"] = json!(obj);
                        }
                        (id.to_string(), o)
                    })
                    .collect();
            json!({ "regions": regions })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(leading_number(" +.5 x"), Some(0.5));
        assert_eq!(leading_number("-0.25 reason"), Some(-0.25));
        assert_eq!(leading_number("1."), Some(1.0));
        assert_eq!(leading_number("."), None);
        assert_eq!(leading_number("80%"), None);
        assert_eq!(leading_number("NaN"), None);
        assert_eq!(leading_number("-"), None);
    }

    #[test]
    fn think_handling() {
        assert_eq!(answer_text("<think>a</think>b"), Some("b"));
        assert_eq!(answer_text("<think>a"), None);
        assert_eq!(answer_text("<THINK>a</Think> b</think>c"), Some("c"));
    }

    #[test]
    fn score_then_later_valid_score() {
        assert_eq!(
            parse_global("Score: n/a\nScore: 0.5").map(|s| s.score),
            Some(0.5)
        );
        assert_eq!(
            parse_global("SCORE : -1.5").map(|s| (s.score, s.clamped)),
            Some((-1.0, true))
        );
    }

    #[test]
    fn region_blocks() {
        let r = parse_regions(
            "Region ID: 2\nScore: 0.1\nRegion ID: 3\nIdentified Object: x\nScore: 9",
            Some(3),
        );
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[&3].score,
            ParsedScore {
                score: 1.0,
                clamped: true
            }
        );
        assert_eq!(r[&3].object.as_deref(), Some("x"));
        assert!(parse_regions("Region ID: 0\nScore: 0.5", None).is_empty());
    }
}
