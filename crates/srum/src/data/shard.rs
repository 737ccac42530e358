//! Splitting a stage across machines (`--shard k/n`) and joining the parts (`srum merge`).
//!
//! A rollout or judge run over N items is cut into n contiguous blocks; machine k does block
//! k. Merging checks that the parts fit together exactly: every item once, none missing, none
//! twice, and says which file and line break that.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;

use crate::error::{Result, SrumError};

/// Part `index` of `count` equal parts of a job; `k/n` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Which part, in `0..count`.
    pub index: usize,
    /// How many parts.
    pub count: usize,
}

impl Shard {
    /// The whole job as one part.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Part `index` of `count`; fails unless `index < count`.
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(SrumError::config(
                "shard",
                format!("shard {index}/{count}: need 0 <= k < n"),
            ));
        }
        Ok(Self { index, count })
    }

    /// This part's items out of `len`: contiguous blocks whose sizes differ by at most one,
    /// covering `0..len` exactly once over all parts.
    pub fn range(&self, len: usize) -> Range<usize> {
        self.index * len / self.count..(self.index + 1) * len / self.count
    }
}

impl FromStr for Shard {
    type Err = SrumError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            SrumError::config(
                "shard",
                format!("`{s}` is not `k/n` (for example 0/4: the first of four parts)"),
            )
        };
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let k = k.trim().parse().map_err(|_| bad())?;
        let n = n.trim().parse().map_err(|_| bad())?;
        Shard::new(k, n)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// One JSON line of an input file, with where it came from.
#[derive(Debug, Clone)]
pub struct SourcedLine {
    /// The file it was read from.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// The parsed object.
    pub value: Value,
}

/// Reads every non-blank line of a JSON-lines file; a malformed line is an error naming it.
pub fn read_json_lines(path: &Path) -> Result<Vec<SourcedLine>> {
    let text = std::fs::read_to_string(path).map_err(|e| SrumError::io(path, e))?;
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(l).map_err(|e| SrumError::Record {
            path: path.to_path_buf(),
            line: i + 1,
            message: format!("not JSON: {e}"),
        })?;
        out.push(SourcedLine {
            path: path.to_path_buf(),
            line: i + 1,
            value,
        });
    }
    Ok(out)
}

fn first(items: &[impl std::fmt::Display], n: usize) -> String {
    let shown: Vec<String> = items.iter().take(n).map(|x| x.to_string()).collect();
    let more = if items.len() > n {
        format!(" and {} more", items.len() - n)
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}

/// Joins rollout manifests (lines with a numeric `index` and a `file`). The indices of all
/// parts together must be exactly `0..N`, each once, where N is the `total` that sharded
/// manifests carry on every line (else the largest index plus one, which cannot see a missing
/// last part). Returns the lines sorted by index.
pub fn merge_manifests(parts: Vec<Vec<SourcedLine>>) -> Result<Vec<SourcedLine>> {
    let mut by_index: BTreeMap<u64, SourcedLine> = BTreeMap::new();
    let mut total: Option<(u64, PathBuf, usize)> = None;
    let mut files: HashMap<String, (PathBuf, usize)> = HashMap::new();
    for line in parts.into_iter().flatten() {
        let at = |message: String| SrumError::Record {
            path: line.path.clone(),
            line: line.line,
            message,
        };
        let index = line
            .value
            .get("index")
            .and_then(Value::as_u64)
            .ok_or_else(|| at("field `index`: missing or not a non-negative integer".into()))?;
        let file = line
            .value
            .get("file")
            .and_then(Value::as_str)
            .ok_or_else(|| at("field `file`: missing or not a string".into()))?
            .to_string();
        if let Some(prev) = by_index.get(&index) {
            return Err(at(format!(
                "index {index} is also at {}:{} (overlapping shards?)",
                prev.path.display(),
                prev.line
            )));
        }
        if let Some((p, l)) = files.get(&file) {
            return Err(at(format!(
                "file `{file}` is also named at {}:{}",
                p.display(),
                l
            )));
        }
        if let Some(t) = line.value.get("total") {
            let t = t
                .as_u64()
                .ok_or_else(|| at("field `total`: not a non-negative integer".into()))?;
            match &total {
                Some((t0, p, l)) if *t0 != t => {
                    return Err(at(format!(
                        "total {t} disagrees with total {t0} at {}:{l} (parts of different runs?)",
                        p.display()
                    )));
                }
                Some(_) => {}
                None => total = Some((t, line.path.clone(), line.line)),
            }
            if index >= t {
                return Err(at(format!("index {index} is not below the total {t}")));
            }
        }
        files.insert(file, (line.path.clone(), line.line));
        by_index.insert(index, line);
    }
    let n = by_index.len() as u64;
    let end = match &total {
        Some((t, _, _)) => *t,
        None => by_index.keys().next_back().map_or(0, |m| m + 1),
    };
    let missing: Vec<u64> = (0..end).filter(|i| !by_index.contains_key(i)).collect();
    if !missing.is_empty() {
        return Err(SrumError::Data(format!(
            "merged manifest has {n} images but indices {} are missing (a shard not merged?)",
            first(&missing, 10)
        )));
    }
    Ok(by_index.into_values().collect())
}

/// The image a judged record is about: `image_file` (scorer format) or `bad_image_file`
/// (training format).
fn record_image(v: &Value) -> Option<&str> {
    v.get("image_file")
        .or_else(|| v.get("bad_image_file"))
        .and_then(Value::as_str)
}

/// Joins judge outputs (scorer or training format), checking that no image is judged twice and,
/// when `expected` (the images of the merged rollout manifest) is given, that every expected
/// image is judged and no other. Keeps the parts' order.
pub fn merge_records(
    parts: Vec<Vec<SourcedLine>>,
    expected: Option<&[String]>,
) -> Result<Vec<SourcedLine>> {
    let mut seen: HashMap<String, (PathBuf, usize)> = HashMap::new();
    let mut out = Vec::new();
    let wanted: Option<HashSet<&str>> = expected.map(|e| e.iter().map(String::as_str).collect());
    for line in parts.into_iter().flatten() {
        let at = |message: String| SrumError::Record {
            path: line.path.clone(),
            line: line.line,
            message,
        };
        let image = record_image(&line.value)
            .ok_or_else(|| at("field `image_file` (or `bad_image_file`): missing".into()))?
            .to_string();
        if let Some((p, l)) = seen.get(&image) {
            return Err(at(format!(
                "image `{image}` is also judged at {}:{} (overlapping shards?)",
                p.display(),
                l
            )));
        }
        if let Some(w) = &wanted
            && !w.contains(image.as_str())
        {
            return Err(at(format!("image `{image}` is not in the manifest")));
        }
        seen.insert(image, (line.path.clone(), line.line));
        out.push(line);
    }
    if let Some(expected) = expected {
        let missing: Vec<&String> = expected.iter().filter(|e| !seen.contains_key(*e)).collect();
        if !missing.is_empty() {
            return Err(SrumError::Data(format!(
                "{} of {} images were not judged: {} (a shard not merged?)",
                missing.len(),
                expected.len(),
                first(&missing, 10)
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &str, values: &[Value]) -> Vec<SourcedLine> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| SourcedLine {
                path: path.into(),
                line: i + 1,
                value: v.clone(),
            })
            .collect()
    }

    fn manifest(path: &str, idx: Range<u64>) -> Vec<SourcedLine> {
        let v: Vec<Value> = idx
            .map(|i| serde_json::json!({"index": i, "file": format!("{i:05}.png")}))
            .collect();
        lines(path, &v)
    }

    #[test]
    fn shards_cover_everything_once() {
        for len in [0, 1, 7, 64, 101] {
            for n in 1..=9 {
                let mut covered = vec![0; len];
                for k in 0..n {
                    for i in Shard::new(k, n).unwrap().range(len) {
                        covered[i] += 1;
                    }
                }
                assert!(covered.iter().all(|&c| c == 1), "len {len} n {n}");
            }
        }
    }

    #[test]
    fn shard_parsing() {
        assert_eq!(
            "2/5".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 5 }
        );
        for bad in ["5/5", "1/0", "x/2", "3", "-1/2", ""] {
            let e = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(e.contains("shard"), "{bad}: {e}");
        }
    }

    #[test]
    fn manifests_merge_in_order_and_gaps_are_named() {
        let m = merge_manifests(vec![manifest("b", 3..6), manifest("a", 0..3)]).unwrap();
        let idx: Vec<u64> = m
            .iter()
            .map(|l| l.value["index"].as_u64().unwrap())
            .collect();
        assert_eq!(idx, vec![0, 1, 2, 3, 4, 5]);

        let e = merge_manifests(vec![manifest("a", 0..3), manifest("c", 5..6)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("indices 3, 4 are missing"), "{e}");

        let e = merge_manifests(vec![manifest("a", 0..3), manifest("b", 2..4)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("b:1: index 2 is also at a:3"), "{e}");

        // With `total`, a missing last part is seen too.
        let with_total = |p: &str, r: Range<u64>| {
            let mut m = manifest(p, r);
            m.iter_mut().for_each(|l| l.value["total"] = 6.into());
            m
        };
        let e = merge_manifests(vec![with_total("a", 0..3)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("indices 3, 4, 5 are missing"), "{e}");
        assert!(merge_manifests(vec![with_total("a", 0..3), with_total("b", 3..6)]).is_ok());
    }

    #[test]
    fn records_merge_checks_duplicates_and_completeness() {
        let r = |f: &str| serde_json::json!({"image_file": f, "prompt": "p"});
        let a = lines("a.jsonl", &[r("00000.png"), r("00001.png")]);
        let b = lines("b.jsonl", &[r("00002.png")]);
        let expected: Vec<String> = (0..3).map(|i| format!("{i:05}.png")).collect();
        let m = merge_records(vec![a.clone(), b.clone()], Some(&expected)).unwrap();
        assert_eq!(m.len(), 3);

        let e = merge_records(vec![a.clone()], Some(&expected))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 of 3 images were not judged: 00002.png"),
            "{e}"
        );

        let e = merge_records(vec![a.clone(), a.clone()], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.jsonl:1: image `00000.png` is also judged at a.jsonl:1"),
            "{e}"
        );

        let stray = lines("c.jsonl", &[r("00009.png")]);
        let e = merge_records(vec![a, b, stray], Some(&expected))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.jsonl:1: image `00009.png` is not in the manifest"),
            "{e}"
        );
    }
}
