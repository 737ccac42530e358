//! `srum judge`, `srum convert`, `srum parse-judge`.

use std::collections::HashSet;
use std::io::{BufRead, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::backend::Back;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use srum::data::ScorerRecord;
use srum::image::PixelImage;
use srum::judge::{
    AnswerKind, ConnectedComponents, GridProposer, JudgeMode, JudgeTemplates, RegionProposer,
    SelfEvaluator, SelfEvaluatorConfig, parse_to_json,
};
use srum::model::ImageSize;
use srum_world::toy::ToyUmm;

use crate::model::{ModelArgs, ModelKind};

#[derive(clap::Args)]
pub struct JudgeArgs {
    /// Model directory (`model.json` + `model.safetensors`), or with --model bagel an official
    /// BAGEL folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The model's kind and, for BAGEL, the size of the images (every image must be it).
    #[command(flatten)]
    model: ModelArgs,
    /// With --model bagel: BAGEL's prompts and limits as JSON (`BagelTemplates` fields: the
    /// judge's system prompt, whether it thinks, the longest answer). `--templates` is the
    /// judge's questions.
    #[arg(long)]
    bagel_templates: Option<PathBuf>,
    /// Folder of the generated images.
    #[arg(long)]
    images: PathBuf,
    /// Manifest, one JSON object per line with `prompt` and `file` (as `srum generate` writes).
    #[arg(long)]
    prompts: PathBuf,
    /// Scorer-format output (JSON lines); appended to when it exists.
    #[arg(long)]
    out: PathBuf,
    /// Images per model call.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Region proposals: `components` (connected components) or `grid:RxC`.
    #[arg(long, default_value = "components")]
    proposer: String,
    /// Regions per image, largest first.
    #[arg(long, default_value_t = 5)]
    max_regions: usize,
    /// Extra attempts for an answer that does not parse.
    #[arg(long, default_value_t = 3)]
    max_retries: usize,
    /// Skip the global layout question.
    #[arg(long)]
    no_global: bool,
    /// Skip the region questions.
    #[arg(long)]
    no_local: bool,
    /// One whole-image score instead of regions.
    #[arg(long)]
    sample_level_only: bool,
    /// Scores become +1 / -1.
    #[arg(long)]
    binarize: bool,
    /// Let the model drop proposals it finds irrelevant to the prompt.
    #[arg(long)]
    filter_relevance: bool,
    /// `text` (parse free answers) or `yes-no` (P(yes) - P(no) of decomposed questions).
    #[arg(long, default_value = "text")]
    mode: String,
    /// JSON file with your own question templates (`global`, `regions`, `sample`, `relevance`).
    #[arg(long)]
    templates: Option<PathBuf>,
    /// Judge only part k of n of the manifest's images (`k/n`, contiguous blocks); join the
    /// parts' outputs with `srum merge`.
    #[arg(long, default_value = "0/1")]
    shard: srum::data::Shard,
}

#[derive(Deserialize)]
struct ManifestLine {
    prompt: String,
    file: String,
}

enum Proposer {
    Components(ConnectedComponents),
    Grid(GridProposer),
}

impl RegionProposer for Proposer {
    fn propose(&self, image: &PixelImage) -> Vec<srum::reward::BBox> {
        match self {
            Proposer::Components(p) => p.propose(image),
            Proposer::Grid(p) => p.propose(image),
        }
    }
}

fn parse_proposer(s: &str) -> Result<Proposer, String> {
    if s == "components" {
        return Ok(Proposer::Components(ConnectedComponents::default()));
    }
    let spec = s
        .strip_prefix("grid:")
        .ok_or_else(|| format!("--proposer `{s}`: use `components` or `grid:RxC`"))?;
    let (r, c) = spec
        .split_once('x')
        .ok_or_else(|| format!("--proposer `{s}`: grid needs RxC"))?;
    let n = |v: &str| {
        v.parse::<usize>()
            .ok()
            .filter(|&n| (1..=64).contains(&n))
            .ok_or_else(|| format!("--proposer `{s}`: `{v}` is not in 1..=64"))
    };
    Ok(Proposer::Grid(GridProposer {
        rows: n(r)?,
        cols: n(c)?,
    }))
}

/// Image files already scored in `out`. A last line without its newline, or one that does not
/// parse, is what an interrupted write leaves: it is reported and cut off so it is redone.
fn already_scored(out: &Path) -> Result<HashSet<String>, String> {
    let mut done = HashSet::new();
    let Ok(mut f) = std::fs::OpenOptions::new().read(true).write(true).open(out) else {
        return Ok(done);
    };
    let mut text = String::new();
    f.read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    let mut good_len = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let complete = line.ends_with('\n');
        match serde_json::from_str::<ScorerRecord>(line.trim_end()) {
            Ok(r) if complete => {
                done.insert(r.image_file);
                good_len += line.len();
            }
            _ if line.trim().is_empty() && complete => good_len += line.len(),
            _ => {
                eprintln!(
                    "warning: {}:{}: torn or unreadable line from an interrupted run: cut off, its image is judged again",
                    out.display(),
                    i + 1
                );
                break;
            }
        }
    }
    if good_len < text.len() {
        f.set_len(good_len as u64)
            .map_err(|e| format!("{}: {e}", out.display()))?;
        f.seek(std::io::SeekFrom::End(0))
            .map_err(|e| e.to_string())?;
    }
    Ok(done)
}

/// The `kind` in a model directory's `model.json`.
pub fn model_kind(dir: &Path) -> Result<String, String> {
    srum::model::ModelCard::read(dir)
        .map(|c| c.kind)
        .map_err(|e| e.to_string())
}

pub fn run_judge(a: JudgeArgs) -> Result<ExitCode, String> {
    let device = Default::default();
    a.model
        .check(a.bagel_templates.as_deref(), "--bagel-templates")?;
    if a.model.model == ModelKind::Bagel {
        // The judge needs no generation size: the ViT takes any image.
        let model = crate::model::load_bagel::<Back>(
            &a.checkpoint,
            a.bagel_templates.as_deref(),
            None,
            &device,
        )?;
        let size = a.model.bagel_size();
        return judge_with(a, &model, size);
    }
    match model_kind(&a.checkpoint)?.as_str() {
        srum_world::toy::TOY_KIND => {
            let (model, config) =
                ToyUmm::<Back>::load_dir(&a.checkpoint, &device).map_err(|e| e.to_string())?;
            judge_with(a, &model, ImageSize::square(config.image_size))
        }
        srum_world::tiny::TINY_KIND => {
            let (model, config) =
                srum_world::tiny::TinyUmm::<Back>::load_dir(&a.checkpoint, &device)
                    .map_err(|e| e.to_string())?;
            judge_with(a, &model, ImageSize::square(config.image_size))
        }
        k => Err(format!(
            "{}: unknown model kind `{k}`",
            a.checkpoint.join("model.json").display()
        )),
    }
}

fn judge_with<M: srum::model::Understanding<Back>>(
    a: JudgeArgs,
    model: &M,
    size: ImageSize,
) -> Result<ExitCode, String> {
    let device = Default::default();
    if a.batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    let templates = match &a.templates {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            serde_json::from_slice::<JudgeTemplates>(&bytes)
                .map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => JudgeTemplates::default(),
    };
    let mode = match a.mode.as_str() {
        "text" => JudgeMode::Text,
        "yes-no" => JudgeMode::YesNo,
        m => return Err(format!("--mode `{m}`: use `text` or `yes-no`")),
    };
    let config = SelfEvaluatorConfig {
        global: !a.no_global,
        local: !a.no_local,
        sample_level_only: a.sample_level_only,
        max_regions: a.max_regions,
        max_retries: a.max_retries,
        binarize: a.binarize,
        filter_relevance: a.filter_relevance,
        mode,
        templates,
        ..Default::default()
    };
    let evaluator =
        SelfEvaluator::new(config, parse_proposer(&a.proposer)?).map_err(|e| e.to_string())?;

    let manifest =
        std::fs::File::open(&a.prompts).map_err(|e| format!("{}: {e}", a.prompts.display()))?;
    let mut todo = Vec::new();
    let mut bad = 0usize;
    for (i, line) in std::io::BufReader::new(manifest).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", a.prompts.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<ManifestLine>(&line) {
            Ok(m) => todo.push((i + 1, m)),
            Err(e) => {
                eprintln!("warning: {}:{}: {e} (skipped)", a.prompts.display(), i + 1);
                bad += 1;
            }
        }
    }
    let range = a.shard.range(todo.len());
    if a.shard.count > 1 {
        eprintln!(
            "shard {}: images {}..{} of {}",
            a.shard,
            range.start,
            range.end,
            todo.len()
        );
    }
    let mut todo: Vec<_> = todo.drain(range).collect();
    let done = already_scored(&a.out)?;
    let total = todo.len();
    todo.retain(|(_, m)| !done.contains(&m.file));
    if total - todo.len() > 0 {
        eprintln!(
            "{} of {total} images already scored in {}: skipped",
            total - todo.len(),
            a.out.display()
        );
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.out)
        .map_err(|e| format!("{}: {e}", a.out.display()))?;
    let bar = ProgressBar::new(todo.len() as u64).with_style(
        ProgressStyle::with_template("judging {bar:40} {pos}/{len} [{elapsed} < {eta}]")
            .map_err(|e| e.to_string())?,
    );
    let mut scored = 0usize;
    // Answers that never parsed, after the retries: the parse defaults stand in for them.
    let (mut global_unparsed, mut regions_unparsed, mut retries) = (0usize, 0usize, 0usize);
    for chunk in todo.chunks(a.batch_size) {
        let mut images = Vec::new();
        let mut items = Vec::new();
        for (line, m) in chunk {
            let img = crate::contained_path(&a.images, &m.file)
                .and_then(|p| srum::data::load_rgb_image(&p, size).map_err(|e| e.to_string()));
            match img {
                Ok(img) => {
                    images.push(img);
                    items.push(m);
                }
                Err(e) => {
                    eprintln!("warning: {}:{line}: {e} (skipped)", a.prompts.display());
                    bad += 1;
                }
            }
            bar.inc(if images.len() == items.len() { 0 } else { 1 });
        }
        if images.is_empty() {
            continue;
        }
        let batch = PixelImage::to_tensor::<Back>(&images, &device).map_err(|e| e.to_string())?;
        let prompts: Vec<String> = items.iter().map(|m| m.prompt.clone()).collect();
        let judged = evaluator
            .judge(model, batch, &prompts)
            .map_err(|e| e.to_string())?;
        for (m, j) in items.iter().zip(judged) {
            global_unparsed += usize::from(j.global_defaulted);
            regions_unparsed += usize::from(
                !a.sample_level_only && !j.proposals.is_empty() && j.judgement.regions.is_empty(),
            );
            retries += j.retries;
            let raw = [j.raw_global, j.raw_regions]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("\n===\n");
            let rec = ScorerRecord::from_judgement(
                &m.file,
                &m.prompt,
                &j.judgement,
                size.width,
                size.height,
                Some(raw),
            );
            let mut line = serde_json::to_vec(&rec).map_err(|e| e.to_string())?;
            line.push(b'\n');
            // One write per record, flushed: a crash leaves at most one torn line.
            out.write_all(&line)
                .map_err(|e| format!("{}: {e}", a.out.display()))?;
            scored += 1;
            bar.inc(1);
        }
        out.flush().map_err(|e| e.to_string())?;
    }
    out.sync_all().map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    eprintln!(
        "{scored} images judged into {}; {bad} skipped",
        a.out.display()
    );
    if global_unparsed + regions_unparsed + retries > 0 {
        eprintln!(
            "unparsed answers: {global_unparsed} global (score set to the default 0), \
             {regions_unparsed} region (no region scored); {retries} questions asked again"
        );
    }
    Ok(if scored + done.len() == 0 && total > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// Scorer-format input (JSON lines).
    #[arg(long = "in")]
    input: PathBuf,
    /// Training-format output (JSON lines), written atomically.
    #[arg(long)]
    out: PathBuf,
}

pub fn run_convert(a: ConvertArgs) -> Result<ExitCode, String> {
    let stats = srum::data::convert_file(&a.input, &a.out, |e| {
        eprintln!("warning: {e} (line skipped)")
    })
    .map_err(|e| e.to_string())?;
    eprintln!(
        "{} records written to {}; {} dropped (global score exactly 0, the scorer's parse-failure default); \
         {} bad lines; regions dropped: {} without identified_object, {} without score, {} without bbox",
        stats.written,
        a.out.display(),
        stats.dropped_zero_global,
        stats.read.bad_lines,
        stats.read.regions_without_object,
        stats.read.regions_without_score,
        stats.read.regions_bad_bbox
    );
    Ok(if stats.read.records == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(clap::Args)]
pub struct ParseJudgeArgs {
    /// `global` (one score) or `regions` (one block per region).
    #[arg(long, value_parser = ["global", "regions"])]
    kind: String,
    /// How many regions were asked about; other ids are ignored.
    #[arg(long)]
    num_regions: Option<usize>,
}

pub fn run_parse(a: ParseJudgeArgs) -> Result<ExitCode, String> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(|e| format!("stdin: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    let kind = if a.kind == "global" {
        AnswerKind::Global
    } else {
        AnswerKind::Regions
    };
    println!("{}", parse_to_json(kind, &text, a.num_regions));
    Ok(ExitCode::SUCCESS)
}
