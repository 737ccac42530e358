//! Packed sequences: text and latent images laid end to end, split into attention blocks,
//! several samples per sequence (BAGEL's "NaViT" packing).

use crate::error::{BagelError, Result};
use crate::routing::Expert;

/// How the tokens of one split attend. Every split also sees all earlier splits of its
/// sample, except noisy ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitKind {
    /// Text: causal inside the split.
    Causal,
    /// A clean image (ViT or VAE tokens): full attention inside the split.
    Full,
    /// A noisy latent image being denoised: full attention inside, and hidden from every
    /// other split of the sample.
    Noise,
}

/// One token of a packed sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A text token (embedded by `embed_tokens`).
    Text(u32),
    /// Row `row` of the latent tensor fed alongside the sequence.
    Latent {
        /// Row in the latent tensor.
        row: usize,
        /// Index in the latent position table.
        position: usize,
    },
}

/// A packed sequence: token layout, RoPE positions, splits and sample boundaries. It holds no
/// tensors; latent values come with the forward call, in the order their tokens were pushed.
#[derive(Debug, Clone, Default)]
pub struct PackedSequence {
    pub(crate) slots: Vec<Slot>,
    pub(crate) positions: Vec<i64>,
    pub(crate) splits: Vec<(usize, SplitKind)>,
    pub(crate) sample_lens: Vec<usize>,
    latents: usize,
    rope: i64,
    open: usize,
}

impl PackedSequence {
    /// An empty sequence.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a text split of `ids` exactly as given (BAGEL wraps text in
    /// `[bos] ids [eos]`; see [`crate::Bagel::wrap_text`]): causal, one RoPE position per token.
    pub fn push_text(&mut self, ids: &[u32]) -> &mut Self {
        for (i, &id) in ids.iter().enumerate() {
            self.slots.push(Slot::Text(id));
            self.positions.push(self.rope + i as i64);
        }
        self.rope += ids.len() as i64;
        self.close_split(ids.len(), SplitKind::Causal);
        self
    }

    /// Appends a noisy latent image of `h x w` patches between `start` and `end` marker tokens,
    /// all on one RoPE position, as the training data does for an image with a loss: the
    /// position does not advance afterwards. `max_latent_size` is the side of the latent
    /// position table.
    pub fn push_noisy_latents(
        &mut self,
        (h, w): (usize, usize),
        start: u32,
        end: u32,
        max_latent_size: usize,
    ) -> Result<&mut Self> {
        if h == 0 || w == 0 || h > max_latent_size || w > max_latent_size {
            return Err(BagelError::Input(format!(
                "latent grid {h}x{w} must be non-empty and at most {max_latent_size} a side"
            )));
        }
        let p = self.rope;
        self.slots.push(Slot::Text(start));
        for r in 0..h {
            for c in 0..w {
                self.slots.push(Slot::Latent {
                    row: self.latents,
                    position: r * max_latent_size + c,
                });
                self.latents += 1;
            }
        }
        self.slots.push(Slot::Text(end));
        let n = h * w + 2;
        self.positions.extend(std::iter::repeat_n(p, n));
        self.close_split(n, SplitKind::Noise);
        Ok(self)
    }

    /// Ends the current sample; what follows starts a new one at RoPE position 0.
    pub fn end_sample(&mut self) -> &mut Self {
        if self.open > 0 {
            self.sample_lens.push(self.open);
        }
        self.open = 0;
        self.rope = 0;
        self
    }

    /// Tokens in the sequence.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no token was pushed.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Latent tokens, i.e. rows the latent tensor must have.
    pub fn latent_tokens(&self) -> usize {
        self.latents
    }

    /// The RoPE position of every token.
    pub fn positions(&self) -> &[i64] {
        &self.positions
    }

    fn close_split(&mut self, n: usize, kind: SplitKind) {
        if n > 0 {
            self.splits.push((n, kind));
            self.open += n;
        }
    }

    /// Sample lengths, counting a sample still open.
    pub(crate) fn samples(&self) -> Vec<usize> {
        let mut s = self.sample_lens.clone();
        if self.open > 0 {
            s.push(self.open);
        }
        s
    }

    /// The expert each token goes through: noisy latents the generation expert, everything
    /// else the understanding expert.
    pub fn experts(&self) -> Vec<Expert> {
        self.slots
            .iter()
            .map(|s| match s {
                Slot::Text(_) => Expert::Understanding,
                Slot::Latent { .. } => Expert::Generation,
            })
            .collect()
    }

    /// Row-major `allowed[q * len + k]` for each sample, as `prepare_attention_mask_per_sample`.
    pub(crate) fn sample_masks(&self) -> Vec<Vec<bool>> {
        let mut masks = Vec::new();
        let mut splits = self.splits.iter().copied();
        for len in self.samples() {
            let mut mine = Vec::new();
            let mut covered = 0;
            while covered < len {
                let Some(s) = splits.next() else { break };
                covered += s.0;
                mine.push(s);
            }
            masks.push(split_mask(&mine));
        }
        masks
    }
}

/// The attention mask of one sample made of `splits`.
pub(crate) fn split_mask(splits: &[(usize, SplitKind)]) -> Vec<bool> {
    let n: usize = splits.iter().map(|s| s.0).sum();
    let mut m = vec![false; n * n];
    let mut start = 0;
    for &(len, kind) in splits {
        for q in start..start + len {
            for k in 0..start {
                m[q * n + k] = true;
            }
            for k in start..start + len {
                m[q * n + k] = kind != SplitKind::Causal || k <= q;
            }
        }
        start += len;
    }
    start = 0;
    for &(len, kind) in splits {
        if kind == SplitKind::Noise {
            for q in 0..n {
                let inside = (start..start + len).contains(&q);
                for k in start..start + len {
                    m[q * n + k] = inside;
                }
            }
        }
        start += len;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_split_is_hidden_from_later_text() {
        // text(2) noise(2) text(1)
        let m = split_mask(&[
            (2, SplitKind::Causal),
            (2, SplitKind::Noise),
            (1, SplitKind::Causal),
        ]);
        let row = |q: usize| m[q * 5..q * 5 + 5].to_vec();
        assert_eq!(row(0), [true, false, false, false, false]);
        assert_eq!(row(2), [true, true, true, true, false]);
        assert_eq!(row(4), [true, true, false, false, true]);
    }
}
