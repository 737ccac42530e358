//! A reward-weighted training set in memory: prompt, generated image and reward map per item,
//! built from training-format records and the images they name.

use std::path::{Component, Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::records::{RecordReader, TrainingRecord};
use crate::error::{Result, SrumError};
use crate::image::PixelImage;
use crate::reward::{ComposeStats, RewardComposer, RewardMap};

/// One training item.
#[derive(Debug, Clone)]
pub struct RewardItem {
    /// The prompt.
    pub prompt: String,
    /// The generated image (`bad_image_file`).
    pub image: PixelImage,
    /// The anchor image (`good_image_file`), when it is a different file.
    pub anchor: Option<PixelImage>,
    /// The reward map at latent resolution.
    pub reward: RewardMap,
}

/// Resolves `file` inside `base`, refusing absolute paths, `..` and symlinks that leave it.
pub fn contained_path(base: &Path, file: &str) -> std::result::Result<PathBuf, String> {
    let rel = Path::new(file);
    if file.is_empty()
        || rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "path `{file}` leaves its folder `{}`",
            base.display()
        ));
    }
    let joined = base.join(rel);
    if let (Ok(real), Ok(real_base)) = (joined.canonicalize(), base.canonicalize())
        && !real.starts_with(&real_base)
    {
        return Err(format!(
            "path `{file}` is a link leaving its folder `{}`",
            base.display()
        ));
    }
    Ok(joined)
}

/// What loading skipped or repaired.
#[derive(Debug, Clone, Default)]
pub struct DatasetStats {
    /// Items loaded.
    pub items: usize,
    /// Problems, each naming file and line; those records were skipped.
    pub skipped: Vec<String>,
    /// Composer repairs over all items.
    pub compose: ComposeStats,
}

/// The items, in file order.
#[derive(Debug, Clone, Default)]
pub struct RewardDataset {
    /// Items.
    pub items: Vec<RewardItem>,
}

fn load_image(path: &Path, size: (usize, usize)) -> std::result::Result<PixelImage, String> {
    let img = image::open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .to_rgb8();
    if (img.width() as usize, img.height() as usize) != size {
        return Err(format!(
            "{}: {}x{} image, expected {}x{}",
            path.display(),
            img.width(),
            img.height(),
            size.0,
            size.1
        ));
    }
    PixelImage::from_rgb8(size.0, size.1, img.as_raw()).map_err(|e| e.to_string())
}

impl RewardDataset {
    /// Reads training-format `records`, loads each image from `images` (which must be
    /// `image_size` = `(W, H)`), and composes its reward map at latent grid `grid`. Bad records
    /// are skipped and named in the stats; an error only when nothing loads.
    pub fn load(
        records: &Path,
        images: &Path,
        image_size: (usize, usize),
        grid: (usize, usize),
        composer: &RewardComposer,
    ) -> Result<(Self, DatasetStats)> {
        let mut stats = DatasetStats::default();
        let mut items = Vec::new();
        for item in RecordReader::<_, TrainingRecord>::open(records)? {
            let (line, rec) = match item {
                Ok(r) => r,
                Err(e) => {
                    stats.skipped.push(e.to_string());
                    continue;
                }
            };
            let at = |m: String| format!("{}:{line}: {m}", records.display());
            let image = match contained_path(images, &rec.bad_image_file)
                .and_then(|p| load_image(&p, image_size))
            {
                Ok(i) => i,
                Err(e) => {
                    stats.skipped.push(at(e));
                    continue;
                }
            };
            let anchor = if rec.good_image_file != rec.bad_image_file {
                match contained_path(images, &rec.good_image_file)
                    .and_then(|p| load_image(&p, image_size))
                {
                    Ok(i) => Some(i),
                    Err(e) => {
                        stats.skipped.push(at(e));
                        continue;
                    }
                }
            } else {
                None
            };
            let (map, s) = composer.compose_latent(&rec.judgement, image_size, grid);
            stats.compose.add(&s);
            items.push(RewardItem {
                prompt: rec.prompt,
                image,
                anchor,
                reward: map,
            });
        }
        stats.items = items.len();
        if items.is_empty() {
            return Err(SrumError::Record {
                path: records.to_path_buf(),
                line: 0,
                message: format!("no usable record ({} skipped)", stats.skipped.len()),
            });
        }
        Ok((Self { items }, stats))
    }

    /// Item indices of optimizer step `step`: epochs are seeded permutations, so the order is a
    /// pure function of `(seed, step)` and a resumed run sees the same batches.
    pub fn batch_indices(&self, seed: u64, step: u64, batch: usize) -> Vec<usize> {
        let n = self.items.len();
        (0..batch)
            .map(|k| {
                let pos = step as usize * batch + k;
                let (epoch, i) = (pos / n, pos % n);
                let mut perm: Vec<usize> = (0..n).collect();
                perm.shuffle(&mut ChaCha8Rng::seed_from_u64(
                    seed ^ (epoch as u64).wrapping_mul(0x9E3779B97F4A7C15),
                ));
                perm[i]
            })
            .collect()
    }
}
