//! The world's tokenizer: a Hugging Face `tokenizers` word-level model over the grammar's
//! vocabulary, saved as `tokenizer.json`. Unknown words are an error, never a silent `[UNK]`.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::Tokenizer;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::normalizers::Lowercase;
use tokenizers::pre_tokenizers::whitespace::Whitespace;

use srum::error::{Result, SrumError};

/// Padding (masked out of attention).
pub const PAD: &str = "[PAD]";
/// Unknown word (rejected).
pub const UNK: &str = "[UNK]";

/// Every word of the grammar.
pub const WORDS: [&str; 22] = [
    "a",
    "and",
    "left",
    "right",
    "of",
    "above",
    "below",
    "two",
    "three",
    "four",
    "red",
    "green",
    "blue",
    "yellow",
    "circle",
    "square",
    "triangle",
    "circles",
    "squares",
    "triangles",
    "one",
    "zero",
];

/// Builds the word-level tokenizer: `[PAD]` = 0, `[UNK]` = 1, then [`WORDS`].
pub fn build_tokenizer() -> Result<Tokenizer> {
    let mut vocab: HashMap<String, u32> = HashMap::new();
    vocab.insert(PAD.into(), 0);
    vocab.insert(UNK.into(), 1);
    for (i, w) in WORDS.iter().enumerate() {
        vocab.insert(w.to_string(), i as u32 + 2);
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token(UNK.into())
        .build()
        .map_err(|e| SrumError::Model(format!("tokenizer: {e}")))?;
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(Lowercase));
    tok.with_pre_tokenizer(Some(Whitespace {}));
    Ok(tok)
}

/// Loads `tokenizer.json`.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| SrumError::Checkpoint {
        path: path.to_path_buf(),
        message: format!("not a tokenizer: {e}"),
    })
}

/// Parses the bytes of a `tokenizer.json`; `path` names them in errors.
pub fn parse_tokenizer(bytes: &[u8], path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_bytes(bytes).map_err(|e| SrumError::Checkpoint {
        path: path.to_path_buf(),
        message: format!("not a tokenizer: {e}"),
    })
}

/// Token ids of a prompt, at most `max_len`. A word outside the vocabulary, or a prompt longer
/// than `max_len` tokens, is an error naming it.
pub fn encode(tok: &Tokenizer, prompt: &str, max_len: usize) -> Result<Vec<u32>> {
    let enc = tok
        .encode(prompt, false)
        .map_err(|e| SrumError::Model(format!("prompt `{prompt}`: {e}")))?;
    let unk = tok.token_to_id(UNK);
    if let Some(i) = enc.get_ids().iter().position(|id| Some(*id) == unk) {
        let word = enc
            .get_offsets()
            .get(i)
            .and_then(|&(a, b)| prompt.get(a..b))
            .unwrap_or("?");
        return Err(SrumError::Model(format!(
            "prompt `{prompt}`: word `{word}` is not in the vocabulary"
        )));
    }
    if enc.get_ids().len() > max_len {
        return Err(SrumError::Model(format!(
            "prompt `{}...`: {} tokens, the model reads at most {max_len}",
            prompt.chars().take(60).collect::<String>(),
            enc.get_ids().len()
        )));
    }
    Ok(enc.get_ids().to_vec())
}
