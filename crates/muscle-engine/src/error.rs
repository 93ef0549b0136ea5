//! Typed errors: every failure the engine can meet is a value, never a panic.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: file not found ({what})")]
    Missing { path: PathBuf, what: &'static str },

    #[error("{path}: {source}")]
    Io { path: PathBuf, #[source] source: std::io::Error },

    #[error("{path}: not a valid safetensors file ({reason}); re-save it with `safetensors.torch.save_file` or `save_pretrained(safe_serialization=True)`")]
    CorruptSafetensors { path: PathBuf, reason: String },

    #[error("{path}: pickle checkpoints (.bin/.pt) are refused because loading them can run arbitrary code; convert once with: python -c \"import torch; from safetensors.torch import save_file; save_file({{k: v.contiguous() for k, v in torch.load('{file}', map_location='cpu').items()}}, 'model.safetensors')\"")]
    PickleCheckpoint { path: PathBuf, file: String },

    #[error("{path}: tensor `{name}` is missing (expected shape {expected:?}); the checkpoint does not match config.json")]
    MissingTensor { path: PathBuf, name: String, expected: Vec<usize> },

    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?} from config.json")]
    ShapeMismatch { path: PathBuf, name: String, found: Vec<usize>, expected: Vec<usize> },

    #[error("{path}: tensor `{name}` has dtype {dtype}, only F32, F16 and BF16 are supported")]
    UnsupportedDtype { path: PathBuf, name: String, dtype: String },

    #[error("{path}: field `{field}`: {reason}")]
    Config { path: PathBuf, field: String, reason: String },

    #[error("{path}: unknown architecture `{found}` in field `model_type`; supported: {supported}")]
    UnknownArchitecture { path: PathBuf, found: String, supported: &'static str },

    #[error("{path}: cannot load tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },

    #[error("invalid batch: {0}")]
    Batch(String),

    #[error("invalid training setup: {0}")]
    Setup(String),

    #[error("{0}")]
    Device(String),

    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;

impl EngineError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            EngineError::Missing { path, what: "no such file" }
        } else {
            EngineError::Io { path, source }
        }
    }
}
