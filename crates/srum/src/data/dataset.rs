//! A reward-weighted training set in memory: prompt, generated image and reward map per item,
//! built from training-format records and the images they name.

use std::path::{Component, Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::records::ReadStats;
#[cfg(feature = "png")]
use super::records::{RecordReader, TrainingRecord};
use crate::error::{Result, SrumError};
use crate::image::PixelImage;
#[cfg(feature = "png")]
use crate::model::{ImageSize, LatentGrid};
#[cfg(feature = "png")]
use crate::reward::RewardComposer;
use crate::reward::{ComposeStats, RewardMap};

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
pub fn contained_path(base: &Path, file: &str) -> Result<PathBuf> {
    let rel = Path::new(file);
    if file.is_empty()
        || rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(SrumError::Data(format!(
            "path `{file}` leaves its folder `{}`",
            base.display()
        )));
    }
    let joined = base.join(rel);
    if let (Ok(real), Ok(real_base)) = (joined.canonicalize(), base.canonicalize())
        && !real.starts_with(&real_base)
    {
        return Err(SrumError::Data(format!(
            "path `{file}` is a link leaving its folder `{}`",
            base.display()
        )));
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
    /// What the record reader repaired or dropped (bad lines, regions without score or box).
    pub records: ReadStats,
}

/// The items, in file order.
#[derive(Debug, Clone, Default)]
pub struct RewardDataset {
    /// Items.
    pub items: Vec<RewardItem>,
}

/// Loads an 8-bit RGB image that must be of `size`: the size is checked from the header
/// before anything is decoded, and any other channel layout is refused rather than converted,
/// since it means the file is not what the pipeline wrote.
#[cfg(feature = "png")]
pub fn load_rgb_image(path: &Path, size: ImageSize) -> Result<PixelImage> {
    let at = |e: &dyn std::fmt::Display| SrumError::Data(format!("{}: {e}", path.display()));
    let reader = image::ImageReader::open(path)
        .map_err(|e| at(&e))?
        .with_guessed_format()
        .map_err(|e| at(&e))?;
    let (w, h) = reader.into_dimensions().map_err(|e| at(&e))?;
    if ImageSize::new(w as usize, h as usize) != size {
        return Err(at(&format!("{w}x{h} image, expected {size}")));
    }
    let img = image::ImageReader::open(path)
        .map_err(|e| at(&e))?
        .with_guessed_format()
        .map_err(|e| at(&e))?
        .decode()
        .map_err(|e| at(&e))?;
    let image::DynamicImage::ImageRgb8(rgb) = img else {
        return Err(at(&format!(
            "{:?} image with {} channel(s); expected 8-bit RGB (3 channels)",
            img.color(),
            img.color().channel_count()
        )));
    };
    PixelImage::from_rgb8(size.width, size.height, rgb.as_raw()).map_err(|e| at(&e))
}

impl RewardDataset {
    /// Reads training-format `records`, loads each image from `images` (which must be
    /// of `image_size`), and composes its reward map at latent grid `grid`. Bad records
    /// are skipped and named in the stats; an error only when nothing loads.
    #[cfg(feature = "png")]
    pub fn load(
        records: &Path,
        images: &Path,
        image_size: ImageSize,
        grid: LatentGrid,
        composer: &RewardComposer,
    ) -> Result<(Self, DatasetStats)> {
        let mut stats = DatasetStats::default();
        let mut items = Vec::new();
        let mut reader = RecordReader::<_, TrainingRecord>::open(records)?;
        for item in reader.by_ref() {
            let (line, rec) = match item {
                Ok(r) => r,
                Err(e) => {
                    stats.skipped.push(e.to_string());
                    continue;
                }
            };
            let at = |e: SrumError| format!("{}:{line}: {e}", records.display());
            let image = match contained_path(images, &rec.bad_image_file)
                .and_then(|p| load_rgb_image(&p, image_size))
            {
                Ok(i) => i,
                Err(e) => {
                    stats.skipped.push(at(e));
                    continue;
                }
            };
            let anchor = if rec.good_image_file != rec.bad_image_file {
                match contained_path(images, &rec.good_image_file)
                    .and_then(|p| load_rgb_image(&p, image_size))
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
        stats.records = reader.stats();
        if items.is_empty() {
            let mut why: Vec<String> = stats.skipped.iter().take(5).cloned().collect();
            if stats.skipped.len() > 5 {
                why.push(format!("and {} more", stats.skipped.len() - 5));
            }
            return Err(SrumError::Data(format!(
                "{}: no usable record ({} skipped){}{}",
                records.display(),
                stats.skipped.len(),
                if why.is_empty() { "" } else { ":\n  " },
                why.join("\n  ")
            )));
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
