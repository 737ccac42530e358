//! The reward composer against maps computed by PyTorch (`F.interpolate`, bilinear,
//! `align_corners=False`) for the 40 fixture records, malformed boxes included.

use std::path::PathBuf;

use serde_json::Value;
use srum::data::RecordReader;
use srum::model::{ImageSize, LatentGrid};
use srum::reward::RewardComposer;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

#[test]
fn composer_reproduces_every_pytorch_map() {
    let records: Vec<_> = RecordReader::<_, srum::data::TrainingRecord>::open(
        fixtures().join("reward_records.jsonl"),
    )
    .expect("fixture records")
    .map(|r| r.expect("every fixture line parses"))
    .collect();
    assert_eq!(records.len(), 40);

    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reward_maps_golden.json")).unwrap(),
    )
    .unwrap();
    let maps = golden["maps"].as_array().unwrap();
    assert!(maps.len() >= 40);

    let composer = RewardComposer::default();
    let mut worst = 0f64;
    for m in maps {
        let idx = m["record"].as_u64().unwrap() as usize;
        let (line, record) = &records[idx];
        assert_eq!(*line, idx + 1, "fixture has no blank lines");
        let size: Vec<usize> = serde_json::from_value(m["image_size"].clone()).unwrap();
        assert_eq!(record.image_size, Some([size[0], size[1]]));
        let grid: Vec<usize> = serde_json::from_value(m["latent_grid"].clone()).unwrap();
        let expected: Vec<f64> = serde_json::from_value(m["map"].clone()).unwrap();
        // The fixture gives image sizes as [W, H] and grids as [h, w].
        let grid = LatentGrid::new(grid[0], grid[1]);
        let (map, _) =
            composer.compose_latent(&record.judgement, ImageSize::new(size[0], size[1]), grid);
        assert_eq!(map.grid(), grid);
        assert_eq!(map.values().len(), expected.len());
        for (i, (got, want)) in map.values().iter().zip(&expected).enumerate() {
            let err = (*got as f64 - want).abs();
            worst = worst.max(err);
            assert!(
                err <= 1e-6,
                "record {idx} grid {grid:?} index {i}: got {got}, PyTorch {want}"
            );
        }
    }
    eprintln!("worst abs error vs PyTorch: {worst:e}");
}
