//! A synthetic world in which SRUM can be measured end to end on a laptop.
//!
//! - [`world`]: scenes, the prompt grammar, the renderer and the oracle scorer (evaluation only:
//!   the self-evaluation never calls it).
//! - [`tiny`]: [`TinyUmm`](tiny::TinyUmm), the reference unified model, its tokenizer, its
//!   pretraining and the checkpoint it ships with ([`tiny::shipped`]).
//! - [`toy`]: a minimal unified model for tests and examples.
pub mod tiny;
pub mod toy;
pub mod world;
