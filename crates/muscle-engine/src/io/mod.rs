//! Loading and saving: safetensors weights (memory-mapped), Hugging Face tokenizers.

pub mod safetensors;
pub mod tokenizer;
