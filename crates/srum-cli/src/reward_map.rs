//! `srum reward-map`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;
use srum::data::{RecordReader, TrainingRecord};
use srum::model::{ImageSize, LatentGrid};
use srum::reward::RewardComposer;

#[derive(clap::Args)]
pub struct RewardMapArgs {
    /// Training-format records (JSON lines).
    #[arg(long)]
    records: PathBuf,
    /// Latent grid `HxW` (rows x columns); repeat for several grids.
    #[arg(long = "grid", required = true, value_parser = parse_grid)]
    grids: Vec<(usize, usize)>,
    /// Where to write `{"maps": [...]}`.
    #[arg(long)]
    json: PathBuf,
    /// Also write each map as a heatmap PNG into this directory.
    #[arg(long)]
    png: Option<PathBuf>,
}

fn parse_grid(s: &str) -> Result<(usize, usize), String> {
    let (h, w) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("grid `{s}` is not HxW, e.g. 8x8"))?;
    let n = |v: &str| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| (1..=16384).contains(&n))
            .ok_or_else(|| format!("grid `{s}`: `{v}` is not a size in 1..=16384"))
    };
    Ok((n(h)?, n(w)?))
}

#[derive(Serialize)]
struct MapOut {
    record: usize,
    image_size: [usize; 2],
    latent_grid: [usize; 2],
    map: Vec<f32>,
}

pub fn run(args: RewardMapArgs) -> Result<ExitCode, String> {
    let reader =
        RecordReader::<_, TrainingRecord>::open(&args.records).map_err(|e| e.to_string())?;
    let base = args
        .records
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if let Some(dir) = &args.png {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let composer = RewardComposer::default();
    let (mut maps, mut bad, mut stats) =
        (Vec::new(), 0usize, srum::reward::ComposeStats::default());
    let mut reader = reader;
    for item in reader.by_ref() {
        let (line, record) = match item {
            Ok(r) => r,
            Err(e) => {
                eprintln!("warning: {e} (line skipped)");
                bad += 1;
                continue;
            }
        };
        let size = match record.image_size {
            Some(s) => s,
            None => {
                let dims = crate::contained_path(&base, &record.bad_image_file).and_then(|p| {
                    image::image_dimensions(&p).map_err(|e| format!("{}: {e}", p.display()))
                });
                let dims = dims.and_then(|(w, h)| {
                    if (w as usize).saturating_mul(h as usize) > srum::data::MAX_IMAGE_PIXELS {
                        Err(format!(
                            "{w}x{h} image exceeds the {}-pixel limit",
                            srum::data::MAX_IMAGE_PIXELS
                        ))
                    } else {
                        Ok((w, h))
                    }
                });
                match dims {
                    Ok((w, h)) => [w as usize, h as usize],
                    Err(e) => {
                        eprintln!(
                            "warning: {}:{line}: no `image_size` and the image is unreadable: {e} (line skipped)",
                            args.records.display()
                        );
                        bad += 1;
                        continue;
                    }
                }
            }
        };
        let (full, s) = composer.compose(&record.judgement, ImageSize::new(size[0], size[1]));
        stats.add(&s);
        for &(h, w) in &args.grids {
            let map = full.resize(LatentGrid::new(h, w));
            if let Some(dir) = &args.png {
                let scale = (256 / h.max(w)).max(1);
                let (pw, ph, rgb) = map.heatmap_rgb(scale);
                let path = dir.join(format!("record{:05}_{h}x{w}.png", line - 1));
                image::save_buffer(
                    &path,
                    &rgb,
                    pw as u32,
                    ph as u32,
                    image::ExtendedColorType::Rgb8,
                )
                .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            maps.push(MapOut {
                record: line - 1,
                image_size: size,
                latent_grid: [h, w],
                map: map.into_values(),
            });
        }
    }
    let read = reader.stats();
    if read.regions_bad_bbox
        + read.regions_without_score
        + stats.invalid_boxes
        + stats.clamped_scores
        + stats.non_finite_scores
        > 0
    {
        eprintln!(
            "note: regions dropped for a non-numeric bbox: {}, without a score: {}; invalid boxes skipped: {}; scores clamped: {}, non-finite: {}",
            read.regions_bad_bbox,
            read.regions_without_score,
            stats.invalid_boxes,
            stats.clamped_scores,
            stats.non_finite_scores
        );
    }
    let records = maps.len() / args.grids.len();
    let json =
        serde_json::to_vec(&serde_json::json!({ "maps": maps })).map_err(|e| e.to_string())?;
    srum::train::write_file_atomic(&args.json, &json).map_err(|e| e.to_string())?;
    eprintln!(
        "{records} records, {} maps written to {}; {bad} lines skipped",
        maps.len(),
        args.json.display()
    );
    Ok(if records == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
