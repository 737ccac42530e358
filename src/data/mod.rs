//! Record files: what the self-evaluation writes and the trainer reads.

mod records;

pub use records::{GLOBAL_OBJECT, ReadStats, RecordReader, TrainingRecord, parse_training_record};
