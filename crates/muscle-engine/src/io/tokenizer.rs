//! Tokenization with the `tokenizers` crate from a Hugging Face `tokenizer.json`
//! (BERT WordPiece, RoBERTa byte-level BPE, Llama SentencePiece-BPE alike).

use crate::error::{EngineError, Result};
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationParams};

pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
}

/// Token ids of several texts, ragged: text `i` is `ids[offsets[i]..offsets[i + 1]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<i32>,
    pub offsets: Vec<usize>,
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json` (or the file itself) and sets truncation to `max_len` tokens
    /// including special tokens. Padding is the batcher's business, so it is switched off here
    /// whatever the file says.
    pub fn open(path: &Path, max_len: usize) -> Result<Self> {
        let file = if path.is_dir() { path.join("tokenizer.json") } else { path.to_path_buf() };
        if !file.is_file() {
            return Err(EngineError::Missing { path: file, what: "tokenizer.json (a Hugging Face fast tokenizer)" });
        }
        if max_len < 2 {
            return Err(EngineError::Setup(format!("max length {max_len} leaves no room for a token besides the special ones")));
        }
        let mut inner = Tokenizer::from_file(&file).map_err(|e| EngineError::Tokenizer { path: file.clone(), reason: e.to_string() })?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| EngineError::Tokenizer { path: file.clone(), reason: e.to_string() })?;
        Ok(TextTokenizer { inner, path: file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encodes texts in parallel (the crate's rayon pool), with special tokens.
    pub fn encode(&self, texts: &[String]) -> Result<Encoded> {
        let encs = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EngineError::Tokenizer { path: self.path.clone(), reason: e.to_string() })?;
        let mut ids = Vec::new();
        let mut offsets = vec![0];
        for e in &encs {
            ids.extend(e.get_ids().iter().map(|&i| i as i32));
            offsets.push(ids.len());
        }
        Ok(Encoded { ids, offsets })
    }
}
