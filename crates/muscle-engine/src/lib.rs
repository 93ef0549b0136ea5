//! muscle-engine: every FLOP of MuScleLoRA training.
//!
//! Transformer encoders (BERT, RoBERTa) with their classification heads, forward and backward;
//! LoRA and the multi-scale radial low-rank branch (MSLR); gradient alignment to a clean
//! reference batch; AdamW with global-norm clipping. The CPU backend is the embedded default.

pub mod backend;
pub mod error;
pub mod grad_align;
pub mod io;
pub mod layers;
pub mod models;
pub mod optim;
pub mod params;
pub mod rng;
pub mod spec;
pub mod train;

pub use backend::{cpu::Cpu, Backend, DeviceChoice, DEVICE_WORDS};
#[cfg(feature = "cuda")]
pub use backend::cuda::{Cuda, DeviceInfo};
pub use error::{EngineError, Result};
pub use grad_align::{GaBranch, GaRule};
pub use models::bert::{activation_memory_check, auto_flash, AttentionImpl, BatchRef, BertClassifier};
pub use optim::AdamWConfig;
pub use spec::{LoraSpec, MslrSpec, TrainMode, TrainSpec};
pub use train::{Classifier, StepReport, StepSettings};
