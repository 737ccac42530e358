//! The reference implementation's training-format records, read as a stream.
//!
//! ```json
//! {"bad_image_file": "00017.png", "good_image_file": "00017.png", "prompt": "...",
//!  "vlm_rewards": [{"object": "global_layout_reward", "bbox": [0, 0, 512, 512], "score": -0.2},
//!                  {"object": "a red book", "bbox": [12, 40, 210, 300], "score": 0.8}]}
//! ```

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{LineError, Result, SrumError};
use crate::reward::{BBox, Judgement, ScoredRegion};

/// Largest image (in pixels) whose reward map is built at full resolution: 64 Mpx, a 256 MB
/// map. Sizes come from untrusted files, so they are checked before anything is allocated.
pub const MAX_IMAGE_PIXELS: usize = 1 << 26;

/// Longest record line read (16 MiB); a longer one is skipped, and named, without being held
/// in memory.
pub const MAX_LINE_BYTES: usize = 1 << 24;

/// The `object` name that marks the global layout entry in `vlm_rewards`.
pub const GLOBAL_OBJECT: &str = "global_layout_reward";

/// One training-format record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    /// The generated image whose velocity is reward-weighted (`x_gen`).
    pub bad_image_file: String,
    /// The anchor image of the constraint term; the same file in the published recipe.
    pub good_image_file: String,
    /// The prompt the image was generated from.
    pub prompt: String,
    /// `[W, H]` when the record carries it; otherwise read from the image file.
    pub image_size: Option<[usize; 2]>,
    /// Global and region scores.
    pub judgement: Judgement,
}

/// Repairs and skips made while reading records, so nothing is dropped silently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadStats {
    /// Records read successfully.
    pub records: usize,
    /// Lines rejected (bad JSON, missing or mistyped required fields).
    pub bad_lines: usize,
    /// Blank lines skipped.
    pub blank_lines: usize,
    /// Region entries dropped for a missing or non-numeric `score`.
    pub regions_without_score: usize,
    /// Region entries dropped for a `bbox` that is not four numbers.
    pub regions_bad_bbox: usize,
    /// Extra `global_layout_reward` entries ignored (the first one wins).
    pub duplicate_globals: usize,
    /// Region entries dropped for a missing `identified_object` (scorer format).
    pub regions_without_object: usize,
}

pub(crate) fn as_score(v: Option<&Value>) -> Option<f32> {
    v.and_then(Value::as_f64).map(|s| s as f32)
}

pub(crate) fn as_bbox(v: Option<&Value>) -> Option<BBox> {
    let arr = v?.as_array()?;
    if arr.len() != 4 {
        return None;
    }
    let c: Vec<f64> = arr.iter().map(Value::as_f64).collect::<Option<_>>()?;
    Some(BBox::new(c[0], c[1], c[2], c[3]))
}

/// Parses one JSON line. `Err` carries a message naming the offending field.
pub fn parse_training_record(
    line: &str,
    stats: &mut ReadStats,
) -> std::result::Result<TrainingRecord, LineError> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = v.as_object().ok_or("expected a JSON object")?;
    let string = |key: &str| -> std::result::Result<String, String> {
        match obj.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("field `{key}` must be a string")),
            None => Err(format!("missing field `{key}`")),
        }
    };
    let bad_image_file = string("bad_image_file")?;
    let good_image_file = match obj.get("good_image_file") {
        None => bad_image_file.clone(),
        Some(_) => string("good_image_file")?,
    };
    let prompt = string("prompt")?;
    let image_size = match obj.get("image_size") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a))
            if a.len() == 2 && a.iter().all(|x| x.as_u64().is_some_and(|n| n > 0)) =>
        {
            let n = |i: usize| a[i].as_u64().unwrap_or(0) as usize;
            Some([n(0), n(1)])
        }
        Some(_) => return Err("field `image_size` must be [W, H] with positive integers".into()),
    };
    if let Some([w, h]) = image_size
        && w.saturating_mul(h) > MAX_IMAGE_PIXELS
    {
        return Err(format!(
            "field `image_size` [{w}, {h}] exceeds the {MAX_IMAGE_PIXELS}-pixel limit"
        )
        .into());
    }
    let rewards = match obj.get("vlm_rewards") {
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err("field `vlm_rewards` must be an array".into()),
        None => return Err("missing field `vlm_rewards`".into()),
    };

    let mut judgement = Judgement::default();
    for (i, entry) in rewards.iter().enumerate() {
        let Some(e) = entry.as_object() else {
            return Err(format!("vlm_rewards[{i}] must be an object").into());
        };
        let object = e.get("object").and_then(Value::as_str).unwrap_or_default();
        if object == GLOBAL_OBJECT {
            match (judgement.global, as_score(e.get("score"))) {
                (Some(_), _) => stats.duplicate_globals += 1,
                (None, Some(s)) => judgement.global = Some(s),
                (None, None) => stats.regions_without_score += 1,
            }
            continue;
        }
        let Some(score) = as_score(e.get("score")) else {
            stats.regions_without_score += 1;
            tracing::warn!("vlm_rewards[{i}].score missing or not a number: region dropped");
            continue;
        };
        let Some(bbox) = as_bbox(e.get("bbox")) else {
            stats.regions_bad_bbox += 1;
            tracing::debug!("vlm_rewards[{i}].bbox is not four numbers: region dropped");
            continue;
        };
        judgement.regions.push(ScoredRegion {
            bbox,
            object: object.to_string(),
            score,
        });
    }
    Ok(TrainingRecord {
        bad_image_file,
        good_image_file,
        prompt,
        image_size,
        judgement,
    })
}

/// A record type that can be parsed from one JSON line.
pub trait JsonRecord: Sized {
    /// Parses one line; `Err` names the offending field.
    fn parse_line(line: &str, stats: &mut ReadStats) -> std::result::Result<Self, LineError>;
}

impl JsonRecord for TrainingRecord {
    fn parse_line(line: &str, stats: &mut ReadStats) -> std::result::Result<Self, LineError> {
        parse_training_record(line, stats)
    }
}

/// Streams records from a JSON-lines source, one line in memory at a time.
///
/// Yields `(line_number, record)` (1-based) or an error naming the line; the caller decides
/// whether a bad line is fatal. [`RecordReader::stats`] counts everything skipped.
pub struct RecordReader<R, T = TrainingRecord> {
    source: R,
    path: PathBuf,
    line_no: usize,
    buf: String,
    stats: ReadStats,
    /// Set after an I/O error other than bad UTF-8: reading further would repeat it forever.
    failed: bool,
    _record: std::marker::PhantomData<T>,
}

impl<T: JsonRecord> RecordReader<std::io::BufReader<std::fs::File>, T> {
    /// Opens a records file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| SrumError::io(path, e))?;
        Ok(Self::new(std::io::BufReader::new(file), path))
    }
}

impl<R: BufRead, T: JsonRecord> RecordReader<R, T> {
    /// Reads from any buffered source; `path` names it in errors.
    pub fn new(source: R, path: impl Into<PathBuf>) -> Self {
        Self {
            source,
            path: path.into(),
            line_no: 0,
            buf: String::new(),
            stats: ReadStats::default(),
            failed: false,
            _record: std::marker::PhantomData,
        }
    }

    /// What has been read, repaired and skipped so far.
    pub fn stats(&self) -> ReadStats {
        self.stats
    }
}

/// Consumes input up to and including the next newline (or the end).
fn skip_line<R: BufRead>(source: &mut R) -> std::io::Result<()> {
    loop {
        let chunk = source.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => {
                source.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = chunk.len();
                source.consume(n);
            }
        }
    }
}

impl<R: BufRead, T: JsonRecord> Iterator for RecordReader<R, T> {
    type Item = Result<(usize, T)>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::io::Read;
        if self.failed {
            return None;
        }
        loop {
            self.buf.clear();
            self.line_no += 1;
            let limit = MAX_LINE_BYTES as u64 + 1;
            match (&mut self.source).take(limit).read_line(&mut self.buf) {
                Ok(0) => return None,
                Ok(n) if n as u64 == limit && !self.buf.ends_with('\n') => {
                    // Skip the rest of the over-long line in chunks.
                    let skipped = skip_line(&mut self.source);
                    self.stats.bad_lines += 1;
                    if skipped.is_err() {
                        self.failed = true;
                    }
                    return Some(Err(SrumError::Record {
                        path: self.path.clone(),
                        line: self.line_no,
                        message: format!("line longer than {MAX_LINE_BYTES} bytes (skipped)"),
                    }));
                }
                Ok(_) => {}
                Err(e) => {
                    self.stats.bad_lines += 1;
                    if e.kind() != std::io::ErrorKind::InvalidData {
                        self.failed = true;
                    }
                    return Some(Err(SrumError::Record {
                        path: self.path.clone(),
                        line: self.line_no,
                        message: format!("unreadable line: {e}"),
                    }));
                }
            }
            if self.buf.trim().is_empty() {
                self.stats.blank_lines += 1;
                continue;
            }
            return Some(match T::parse_line(&self.buf, &mut self.stats) {
                Ok(r) => {
                    self.stats.records += 1;
                    Ok((self.line_no, r))
                }
                Err(LineError(message)) => {
                    self.stats.bad_lines += 1;
                    Err(SrumError::Record {
                        path: self.path.clone(),
                        line: self.line_no,
                        message,
                    })
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"bad_image_file": "a.png", "good_image_file": "a.png", "prompt": "p", "vlm_rewards": []}"#;

    #[test]
    fn an_over_long_line_is_skipped_and_reading_goes_on() {
        let text = format!("{}\n{GOOD}\n", "x".repeat(MAX_LINE_BYTES + 10));
        let mut r = RecordReader::<_, TrainingRecord>::new(text.as_bytes(), Path::new("big.jsonl"));
        let first = r.next().expect("an item");
        assert!(
            first
                .as_ref()
                .is_err_and(|e| e.to_string().contains("big.jsonl:1: line longer than")),
            "{first:?}"
        );
        assert!(matches!(r.next(), Some(Ok((2, _)))));
        assert!(r.next().is_none());
        assert_eq!(r.stats().bad_lines, 1);
    }

    #[test]
    fn a_read_error_ends_the_stream_instead_of_repeating() {
        let dir = std::env::temp_dir();
        let r = RecordReader::<_, TrainingRecord>::open(&dir).expect("a directory opens");
        let items: Vec<_> = r.take(5).collect();
        assert_eq!(items.len(), 1, "one error, then the end");
        assert!(items[0].is_err());
    }
}
