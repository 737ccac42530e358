//! A synthetic world in which SRUM can be measured end to end on a laptop.
//!
//! - [`world`]: scenes, the prompt grammar, the renderer and the oracle scorer (evaluation only:
//!   the self-evaluation never calls it).
//! - [`tiny`]: [`TinyUmm`](tiny::TinyUmm), the reference unified model, its tokenizer, its
//!   pretraining and the checkpoint it ships with ([`TinyUmm::shipped`](tiny::TinyUmm::shipped)).
//! - [`toy`]: a minimal flow-matching unified model for tests and examples.
//! - [`toy_ar`]: a minimal autoregressive generator of discrete image tokens.
pub mod tiny;
pub mod toy;
pub mod toy_ar;
pub mod world;
