//! SRUM for burn: a unified multimodal model rewards its own image generation with its own
//! understanding.
pub mod data;
pub mod error;
pub mod reward;

pub use error::{Result, SrumError};
