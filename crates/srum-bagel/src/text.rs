//! The text path: prefill, logits, greedy decoding with the cache, yes/no probabilities.

use burn::tensor::activation::softmax;
use burn::tensor::{ElementConversion, Tensor, backend::Backend};

use crate::backbone::Hidden;
use crate::bagel::Bagel;
use crate::cache::KvCache;
use crate::error::{BagelError, Result};

impl<B: Backend> Bagel<B> {
    /// Appends the text `ids` (taken as given; see [`Bagel::wrap_text`]) to the context in
    /// `cache`, causally, with increasing RoPE positions (`forward_cache_update_text`).
    /// Returns the hidden states of the new tokens, with every layer's when `keep_layers`.
    pub fn prefill_text(
        &self,
        cache: &mut KvCache<B>,
        ids: &[u32],
        keep_layers: bool,
    ) -> Result<Hidden<B>> {
        self.check_ids(ids)?;
        Ok(self.extend_text(cache, ids, keep_layers))
    }

    /// `lm_head` on hidden states.
    ///
    /// Shapes: `hidden`: `[n, hidden]` to `[n, vocab]`.
    pub fn logits(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        self.language_model.lm_head.forward(hidden)
    }

    /// Greedy decoding as `generate_text`: feeds `start` (BAGEL starts answers with `bos`) at
    /// the cache's next position, takes the arg-max token, feeds that, and so on; every fed
    /// token is appended to the cache. Returns the `steps` new tokens (not `start`); there is
    /// no stop token. The last token returned has not been fed.
    pub fn greedy(&self, cache: &mut KvCache<B>, start: u32, steps: usize) -> Result<Vec<u32>> {
        Ok(self.greedy_with_logits(cache, start, steps)?.0)
    }

    /// Greedy decoding that stops at `stop` (BAGEL's `eos`, not returned) or after `max`
    /// tokens, as `generate_text` with an end token. Every token but the last is in `cache`.
    pub fn greedy_until(
        &self,
        cache: &mut KvCache<B>,
        start: u32,
        max: usize,
        stop: u32,
    ) -> Result<Vec<u32>> {
        self.check_ids(&[start])?;
        let mut tokens = Vec::new();
        let mut current = start;
        while tokens.len() < max {
            let hidden = self.extend_text(cache, &[current], false);
            let next = self
                .logits(hidden.last)
                .argmax(1)
                .into_scalar()
                .elem::<i64>();
            current = u32::try_from(next)
                .map_err(|_| BagelError::Input(format!("arg-max token {next} out of range")))?;
            if current == stop {
                break;
            }
            tokens.push(current);
        }
        Ok(tokens)
    }

    /// [`Bagel::greedy`], also returning the logits each token was picked from: `[steps, vocab]`.
    pub(crate) fn greedy_with_logits(
        &self,
        cache: &mut KvCache<B>,
        start: u32,
        steps: usize,
    ) -> Result<(Vec<u32>, Vec<Tensor<B, 2>>)> {
        self.check_ids(&[start])?;
        let mut tokens = Vec::with_capacity(steps);
        let mut all_logits = Vec::with_capacity(steps);
        let mut current = start;
        for _ in 0..steps {
            let hidden = self.extend_text(cache, &[current], false);
            let logits = self.logits(hidden.last);
            let next = logits.clone().argmax(1).into_scalar().elem::<i64>();
            current = u32::try_from(next)
                .map_err(|_| BagelError::Input(format!("arg-max token {next} out of range")))?;
            tokens.push(current);
            all_logits.push(logits);
        }
        Ok((tokens, all_logits))
    }

    /// `P(yes)` of the answer's first token, renormalised over the two answer tokens: the
    /// probability a judge reads from "Answer yes or no". The answer is predicted after
    /// feeding `start` (BAGEL's `bos`) at the cache's next position; `cache` is not changed.
    pub fn yes_probability(
        &self,
        cache: &KvCache<B>,
        start: u32,
        yes: u32,
        no: u32,
    ) -> Result<f32> {
        self.check_ids(&[start, yes, no])?;
        let mut scratch = cache.clone();
        let hidden = self.extend_text(&mut scratch, &[start], false);
        let logits = self.logits(hidden.last).reshape([-1]);
        let device = logits.device();
        let pair = logits.select(
            0,
            Tensor::from_data(
                burn::tensor::TensorData::new(vec![yes as i64, no as i64], [2]),
                &device,
            ),
        );
        Ok(softmax(pair, 0).narrow(0, 0, 1).into_scalar().elem::<f32>())
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.config.vocab_size;
        if ids.is_empty() {
            return Err(BagelError::Input("no token ids".into()));
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(BagelError::Input(format!(
                "token id {bad} outside the vocabulary of {vocab}"
            )));
        }
        Ok(())
    }
}
