//! The key/value cache of inference (`NaiveCache`): one sample's context, per layer.

use burn::tensor::{Tensor, backend::Backend};

use crate::attention::LayerKv;

/// Keys and values of every layer for a context already run through the model, and the RoPE
/// position the next split starts at. One sample: batch size 1, as the official generator.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerKv<B>>,
    len: usize,
    next_position: i64,
}

impl<B: Backend> Default for KvCache<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backend> KvCache<B> {
    /// An empty context.
    pub fn new() -> Self {
        Self {
            layers: Vec::new(),
            len: 0,
            next_position: 0,
        }
    }

    /// Cached tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The RoPE position of the next split.
    pub fn next_position(&self) -> i64 {
        self.next_position
    }

    /// Layer `layer`'s keys and values, none while empty.
    pub(crate) fn layer(&self, layer: usize) -> Option<&LayerKv<B>> {
        self.layers.get(layer)
    }

    /// Appends the keys and values of `tokens` new tokens and moves the next RoPE position
    /// by `advance`.
    pub(crate) fn append(&mut self, new: Vec<LayerKv<B>>, tokens: usize, advance: i64) {
        if self.layers.is_empty() {
            self.layers = new;
        } else {
            for (old, add) in self.layers.iter_mut().zip(new) {
                old.k = Tensor::cat(vec![old.k.clone(), add.k], 0);
                old.v = Tensor::cat(vec![old.v.clone(), add.v], 0);
            }
        }
        self.len += tokens;
        self.next_position += advance;
    }
}
