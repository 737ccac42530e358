//! The scorer-output format (what self-evaluation writes) and its conversion to the training
//! format, following the reference conversion's rules.
//!
//! ```json
//! {"image_file": "00017.png", "prompt": "a red book and a blue cup",
//!  "vlm_rewards": [{"identified_object": "a red book", "score": 0.8, "bbox": [12, 40, 210, 300], "area": 51234}],
//!  "global_layout_reward": {"global_layout_score": -0.2, "bbox": [0, 0, 512, 512], "area": 262144, "reason": "..."},
//!  "vlm_raw_output": "..."}
//! ```

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::records::{GLOBAL_OBJECT, JsonRecord, ReadStats, RecordReader};
use crate::error::{LineError, Result, SrumError};
use crate::reward::{BBox, Judgement};

/// One scored region in the scorer format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScorerRegion {
    /// What the judge saw there.
    pub identified_object: String,
    /// Score in `[-1, 1]`.
    pub score: f64,
    /// `[x_min, y_min, x_max, y_max]` in pixels.
    pub bbox: [f64; 4],
    /// Box area in pixels.
    pub area: f64,
    /// `+1` / `-1` when the judge binarized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binarized_score: Option<f64>,
}

/// The global layout entry in the scorer format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScorerGlobal {
    /// Score in `[-1, 1]`; exactly 0 is the "could not parse" default.
    pub global_layout_score: f64,
    /// The whole image.
    pub bbox: [f64; 4],
    /// Image area in pixels.
    pub area: f64,
    /// The judge's stated reason, if any.
    #[serde(default)]
    pub reason: String,
}

/// One line of the scorer output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScorerRecord {
    /// Image file, relative to the images folder.
    pub image_file: String,
    /// The generation prompt.
    pub prompt: String,
    /// Scored regions.
    #[serde(default)]
    pub vlm_rewards: Vec<ScorerRegion>,
    /// The global layout score, when the judge asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_layout_reward: Option<ScorerGlobal>,
    /// The judge's raw answers, for debugging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlm_raw_output: Option<String>,
    /// `[W, H]` (our extension; the reference reads it from the image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<[usize; 2]>,
}

impl ScorerRecord {
    /// A record from a judgement of a `width x height` image.
    pub fn from_judgement(
        image_file: &str,
        prompt: &str,
        j: &Judgement,
        width: usize,
        height: usize,
        raw: Option<String>,
    ) -> Self {
        let (w, h) = (width as f64, height as f64);
        Self {
            image_file: image_file.to_string(),
            prompt: prompt.to_string(),
            vlm_rewards: j
                .regions
                .iter()
                .map(|r| ScorerRegion {
                    identified_object: r.object.clone(),
                    score: r.score as f64,
                    bbox: r.bbox.to_array(),
                    area: ((r.bbox.x_max - r.bbox.x_min) * (r.bbox.y_max - r.bbox.y_min)).max(0.0),
                    binarized_score: None,
                })
                .collect(),
            global_layout_reward: j.global.map(|g| ScorerGlobal {
                global_layout_score: g as f64,
                bbox: [0.0, 0.0, w, h],
                area: w * h,
                reason: String::new(),
            }),
            vlm_raw_output: raw,
            image_size: Some([width, height]),
        }
    }

    /// The judgement this record carries.
    pub fn judgement(&self) -> Judgement {
        Judgement {
            global: self
                .global_layout_reward
                .as_ref()
                .map(|g| g.global_layout_score as f32),
            regions: self
                .vlm_rewards
                .iter()
                .map(|r| crate::reward::ScoredRegion {
                    bbox: BBox::new(r.bbox[0], r.bbox[1], r.bbox[2], r.bbox[3]),
                    object: r.identified_object.clone(),
                    score: r.score as f32,
                })
                .collect(),
        }
    }
}

impl JsonRecord for ScorerRecord {
    fn parse_line(line: &str, stats: &mut ReadStats) -> std::result::Result<Self, LineError> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
        let (image_file, prompt, regions, global) = scorer_fields(&v, stats)?;
        Ok(ScorerRecord {
            image_file,
            prompt,
            vlm_rewards: regions
                .into_iter()
                .filter_map(|e| {
                    let b = super::records::as_bbox(e.get("bbox"))?;
                    Some(ScorerRegion {
                        identified_object: e.get("identified_object")?.as_str()?.to_string(),
                        score: e.get("score")?.as_f64()?,
                        bbox: b.to_array(),
                        area: e.get("area").and_then(Value::as_f64).unwrap_or(0.0),
                        binarized_score: e.get("binarized_score").and_then(Value::as_f64),
                    })
                })
                .collect(),
            global_layout_reward: global.map(|(score, g)| ScorerGlobal {
                global_layout_score: score,
                bbox: super::records::as_bbox(g.get("bbox"))
                    .map(BBox::to_array)
                    .unwrap_or([0.0; 4]),
                area: g.get("area").and_then(Value::as_f64).unwrap_or(0.0),
                reason: g
                    .get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            }),
            vlm_raw_output: v
                .get("vlm_raw_output")
                .and_then(Value::as_str)
                .map(str::to_string),
            image_size: v
                .get("image_size")
                .and_then(|s| serde_json::from_value(s.clone()).ok()),
        })
    }
}

type Fields<'a> = (
    String,
    String,
    Vec<&'a Map<String, Value>>,
    Option<(f64, &'a Map<String, Value>)>,
);

/// The fields the conversion needs, with regions lacking `identified_object`, `bbox` or `score`
/// already dropped (and counted).
fn scorer_fields<'a>(
    v: &'a Value,
    stats: &mut ReadStats,
) -> std::result::Result<Fields<'a>, String> {
    let obj = v.as_object().ok_or("expected a JSON object")?;
    let string = |key: &str| match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("field `{key}` must be a string")),
        None => Err(format!("missing field `{key}`")),
    };
    let image_file = string("image_file")?;
    let prompt = string("prompt")?;
    let mut regions = Vec::new();
    match obj.get("vlm_rewards") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for (i, e) in a.iter().enumerate() {
                let Some(e) = e.as_object() else {
                    return Err(format!("vlm_rewards[{i}] must be an object"));
                };
                if !e.get("identified_object").is_some_and(Value::is_string) {
                    stats.regions_without_object += 1;
                } else if !e.get("score").is_some_and(Value::is_number) {
                    stats.regions_without_score += 1;
                } else if !e.get("bbox").is_some_and(Value::is_array) {
                    stats.regions_bad_bbox += 1;
                } else {
                    regions.push(e);
                }
            }
        }
        Some(_) => return Err("field `vlm_rewards` must be an array".into()),
    }
    let global = match obj.get("global_layout_reward") {
        None | Some(Value::Null) => None,
        Some(Value::Object(g)) => match g.get("global_layout_score").map(|s| s.as_f64()) {
            Some(Some(s)) => Some((s, g)),
            Some(None) => {
                return Err(
                    "field `global_layout_reward.global_layout_score` must be a number".into(),
                );
            }
            None => return Err("missing field `global_layout_reward.global_layout_score`".into()),
        },
        Some(_) => return Err("field `global_layout_reward` must be an object".into()),
    };
    Ok((image_file, prompt, regions, global))
}

/// Counts of a conversion run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvertStats {
    /// Training records written.
    pub written: usize,
    /// Records dropped because their global score is exactly 0 (the scorer's parse-failure default).
    pub dropped_zero_global: usize,
    /// Read statistics (bad lines, dropped regions).
    pub read: ReadStats,
}

/// Converts one scorer line into a training-format JSON object. `Ok(None)` means the
/// reference conversion drops the record (global score exactly 0).
///
/// Differences from the reference, on purpose: a record without any `global_layout_reward`
/// (global scoring switched off) is kept with no global entry, where the reference would crash;
/// `image_size` is carried over when present.
pub fn convert_line(
    line: &str,
    stats: &mut ReadStats,
) -> std::result::Result<Option<Value>, LineError> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let (image_file, prompt, regions, global) = scorer_fields(&v, stats)?;
    let mut rewards = Vec::new();
    if let Some((score, g)) = global {
        if score == 0.0 {
            return Ok(None);
        }
        let mut entry = json!({"object": GLOBAL_OBJECT, "bbox": g.get("bbox").cloned().unwrap_or(Value::Null), "score": score});
        if let Some(r) = g.get("reason") {
            entry["reason"] = r.clone();
        }
        rewards.push(entry);
    }
    for e in regions {
        let mut entry =
            json!({"object": e["identified_object"], "bbox": e["bbox"], "score": e["score"]});
        if let Some(b) = e.get("binarized_score") {
            entry["binarized_score"] = b.clone();
        }
        rewards.push(entry);
    }
    let mut out = json!({
        "bad_image_file": image_file,
        "good_image_file": image_file,
        "prompt": prompt,
        "vlm_rewards": rewards,
    });
    if let Some(size) = v.get("image_size") {
        out["image_size"] = size.clone();
    }
    Ok(Some(out))
}

/// Converts a scorer-output file into a training-format file, streaming, and writes it
/// atomically. Bad lines are reported (with their number) through `on_error` and skipped.
pub fn convert_file(
    input: &Path,
    output: &Path,
    mut on_error: impl FnMut(SrumError),
) -> Result<ConvertStats> {
    let file = std::fs::File::open(input).map_err(|e| SrumError::io(input, e))?;
    let reader = std::io::BufReader::new(file);
    let tmp = output.with_file_name(format!(
        ".{}.tmp-{}",
        output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let out = std::fs::File::create(&tmp).map_err(|e| SrumError::io(&tmp, e))?;
    let mut w = BufWriter::new(out);
    let mut stats = ConvertStats::default();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| SrumError::io(input, e))?;
        if line.trim().is_empty() {
            stats.read.blank_lines += 1;
            continue;
        }
        match convert_line(&line, &mut stats.read) {
            Ok(Some(v)) => {
                serde_json::to_writer(&mut w, &v).map_err(|e| SrumError::io(&tmp, e.into()))?;
                w.write_all(b"\n").map_err(|e| SrumError::io(&tmp, e))?;
                stats.read.records += 1;
                stats.written += 1;
            }
            Ok(None) => {
                stats.read.records += 1;
                stats.dropped_zero_global += 1;
            }
            Err(message) => {
                stats.read.bad_lines += 1;
                on_error(SrumError::Record {
                    path: input.to_path_buf(),
                    line: i + 1,
                    message: message.0,
                });
            }
        }
    }
    let f = w
        .into_inner()
        .map_err(|e| SrumError::io(&tmp, e.into_error()))?;
    f.sync_all().map_err(|e| SrumError::io(&tmp, e))?;
    std::fs::rename(&tmp, output).map_err(|e| SrumError::io(output, e))?;
    Ok(stats)
}

/// Reads scorer records as a stream.
pub type ScorerReader<R> = RecordReader<R, ScorerRecord>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_conversion_rules() {
        let mut s = ReadStats::default();
        let line = r#"{"image_file": "a.png", "prompt": "p", "vlm_rewards": [{"identified_object": "x", "score": 0.8, "bbox": [1, 2, 3, 4], "area": 4}, {"score": 0.1, "bbox": [1, 2, 3, 4]}, {"identified_object": "y", "bbox": [1, 2, 3, 4]}], "global_layout_reward": {"global_layout_score": -0.2, "bbox": [0, 0, 8, 8], "area": 64, "reason": "r"}}"#;
        let v = convert_line(line, &mut s).unwrap().unwrap();
        assert_eq!(v["bad_image_file"], "a.png");
        assert_eq!(v["good_image_file"], "a.png");
        assert_eq!(
            v["vlm_rewards"][0],
            json!({"object": GLOBAL_OBJECT, "bbox": [0, 0, 8, 8], "score": -0.2, "reason": "r"})
        );
        assert_eq!(
            v["vlm_rewards"][1],
            json!({"object": "x", "bbox": [1, 2, 3, 4], "score": 0.8})
        );
        assert_eq!(v["vlm_rewards"].as_array().unwrap().len(), 2);
        assert_eq!((s.regions_without_object, s.regions_without_score), (1, 1));
        let zero = r#"{"image_file": "a.png", "prompt": "p", "vlm_rewards": [], "global_layout_reward": {"global_layout_score": 0.0}}"#;
        assert_eq!(convert_line(zero, &mut s).unwrap(), None);
        assert!(
            convert_line(r#"{"prompt": "p"}"#, &mut s)
                .unwrap_err()
                .0
                .contains("image_file")
        );
    }

    #[test]
    fn converted_line_reads_back_as_training_record() {
        let j = Judgement {
            global: Some(0.5),
            regions: vec![crate::reward::ScoredRegion {
                bbox: BBox::new(1.0, 1.0, 4.0, 5.0),
                object: "o".into(),
                score: -0.25,
            }],
        };
        let rec = ScorerRecord::from_judgement("i.png", "p", &j, 8, 8, None);
        let line = serde_json::to_string(&rec).unwrap();
        let mut s = ReadStats::default();
        let v = convert_line(&line, &mut s).unwrap().unwrap();
        let t = super::super::records::parse_training_record(&v.to_string(), &mut s).unwrap();
        assert_eq!(t.judgement, j);
        assert_eq!(t.image_size, Some([8, 8]));
        let back = ScorerRecord::parse_line(&line, &mut s).unwrap();
        assert_eq!(back, rec);
    }
}
