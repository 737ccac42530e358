//! Record files: what the self-evaluation writes (scorer format) and what the trainer reads
//! (training format), both streamed line by line.

mod dataset;
mod records;
mod scorer;
mod shard;

#[cfg(feature = "png")]
pub use dataset::load_rgb_image;
pub use dataset::{DatasetStats, RewardDataset, RewardItem, contained_path};
pub use records::{
    GLOBAL_OBJECT, JsonRecord, MAX_IMAGE_PIXELS, ReadStats, RecordReader, TrainingRecord,
    parse_training_record,
};
pub use scorer::{
    ConvertStats, ScorerGlobal, ScorerReader, ScorerRecord, ScorerRegion, convert_file,
    convert_line,
};
pub use shard::{Shard, SourcedLine, merge_manifests, merge_records, read_json_lines};
