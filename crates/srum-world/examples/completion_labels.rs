//! How much of a render survives the generator's own completion of it: the measurement behind
//! the labels of pretraining's `samples` rows (`UnderstandingMix::samples`): the rendered
//! scene's truth for completions from an early start time, false for those from a late one. Renders of training prompts are noised to a start time `t0` and
//! completed with `complete_renders`; the oracle then scores the completions against the
//! prompt each scene was drawn from. The oracle only measures here: pretraining never calls it.
//!
//! `cargo run --release --example completion_labels -- [CHECKPOINT_DIR] [IMAGES] [SHEET.png]`
//! (defaults: `assets/tiny-umm-strong-judge`, 300, no sheet). The sheet shows the first 8
//! renders (left) and their unconditional completions from each start time, 4x enlarged.

use burn::backend::Flex;
use rand::SeedableRng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use srum_world::tiny::{SAMPLE_CLEAR, SAMPLE_REDRAWN, TinyUmm, complete_renders};
use srum_world::world::{Oracle, OracleReport, PromptSpec, Split, split_prompts};

type B = Flex;

fn main() -> srum::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .map_or("assets/tiny-umm-strong-judge", String::as_str);
    let n: usize = match args.get(2) {
        Some(s) => s
            .parse()
            .map_err(|e| srum::SrumError::config("IMAGES", format!("{s:?} is not a count: {e}")))?,
        None => 300,
    };
    let device = Default::default();
    let (model, _) = TinyUmm::<B>::load_dir(dir, &device)?;
    let size = model.image_size();
    let train = split_prompts(Split::Train, 0);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let specs: Vec<&PromptSpec> = (0..n).filter_map(|_| train.choose(&mut rng)).collect();
    let renders: Vec<_> = specs
        .iter()
        .map(|p| p.sample_scene(&mut rng, size).render(size))
        .collect();
    let oracle = Oracle::default();
    let report = |images: &[srum::image::PixelImage]| {
        let scores: Vec<_> = images
            .iter()
            .zip(&specs)
            .map(|(img, p)| (p.category(), oracle.score(img, p)))
            .collect();
        OracleReport::from_scores(&scores)
    };
    println!(
        "checkpoint {dir}, {n} training prompts; pretraining labels completions from t0 in \
         {SAMPLE_CLEAR:?} by the scene and those from t0 in {SAMPLE_REDRAWN:?} false\n"
    );
    print!("{}", report(&renders).markdown("renders"));
    let texts: Vec<String> = specs.iter().map(|p| p.text()).collect();
    let mut sheet: Vec<Vec<srum::image::PixelImage>> =
        vec![renders.iter().take(8).cloned().collect()];
    for (conditional, t0) in [false, true]
        .into_iter()
        .flat_map(|c| [0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0].map(|t| (c, t)))
    {
        let mut done = Vec::with_capacity(n);
        for (chunk, prompts) in renders.chunks(64).zip(texts.chunks(64)) {
            let prompts = conditional.then_some(prompts);
            done.extend(complete_renders(
                &model, chunk, prompts, t0, &mut rng, &device,
            )?);
        }
        if !conditional {
            sheet.push(done.iter().take(8).cloned().collect());
        }
        let how = if conditional {
            "on its prompt"
        } else {
            "unconditional"
        };
        let table = report(&done).markdown(&format!("completed from t0 = {t0}, {how}"));
        // The header was printed with the renders' row.
        print!("{}", table.lines().nth(2).unwrap_or_default());
        println!();
    }
    if let Some(path) = args.get(3) {
        write_sheet(&sheet, path)?;
        println!("\nsheet: {path}");
    }
    Ok(())
}

/// Columns of images side by side, each enlarged 4x (nearest pixel), 2 white pixels between
/// cells.
fn write_sheet(columns: &[Vec<srum::image::PixelImage>], path: &str) -> srum::Result<()> {
    use image::imageops::{FilterType, replace, resize};
    const ZOOM: u32 = 4;
    let mut cells = Vec::new();
    for (c, column) in columns.iter().enumerate() {
        for (r, img) in column.iter().enumerate() {
            let (w, h) = (img.width as u32, img.height as u32);
            let small = image::RgbImage::from_raw(w, h, img.to_rgb8()).ok_or_else(|| {
                srum::SrumError::config("SHEET", format!("image {r} of column {c}: bad size"))
            })?;
            cells.push((
                c as u32,
                r as u32,
                resize(&small, w * ZOOM, h * ZOOM, FilterType::Nearest),
            ));
        }
    }
    let (cw, ch) = cells
        .first()
        .map_or((1, 1), |(_, _, i)| (i.width() + 2, i.height() + 2));
    let cols = columns.len() as u32;
    let rows = columns.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let mut out = image::RgbImage::from_pixel(cw * cols, ch * rows, image::Rgb([255; 3]));
    for (c, r, cell) in &cells {
        replace(&mut out, cell, i64::from(c * cw), i64::from(r * ch));
    }
    out.save(path)
        .map_err(|e| srum::SrumError::config("SHEET", format!("{path}: {e}")))
}
