//! What trains in a run: full fine-tuning, or adapters (LoRA, MSLR) with an optional head.

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f32,
    pub dropout: f32,
    /// Attention projections to adapt: any of `query`, `key`, `value`.
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MslrSpec {
    /// The frequency band `[s_1 .. s_n]`.
    pub band: Vec<f32>,
    /// Inner rank `k`: each scale gets `k` low-rank components.
    pub rank: usize,
    /// `alpha_m`; the branch is scaled by `alpha_m / k`.
    pub alpha: f32,
    pub dropout: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainMode {
    /// Every weight trains (vanilla, GA).
    Full,
    /// Only the adapters train (and the head, with `train_head`).
    Peft,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainSpec {
    pub mode: TrainMode,
    pub lora: Option<LoraSpec>,
    pub mslr: Option<MslrSpec>,
    pub train_head: bool,
}

pub const LORA_TARGETS: [&str; 3] = ["query", "key", "value"];

impl TrainSpec {
    pub fn full() -> Self {
        TrainSpec { mode: TrainMode::Full, lora: None, mslr: None, train_head: true }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::Setup(m));
        if let Some(l) = &self.lora {
            if l.r == 0 {
                return bad("lora.r must be at least 1".into());
            }
            if !(0.0..1.0).contains(&l.dropout) {
                return bad(format!("lora.dropout {} is not a probability in [0, 1)", l.dropout));
            }
            if l.targets.is_empty() {
                return bad("lora.targets is empty; use e.g. [query, value]".into());
            }
            for t in &l.targets {
                if !LORA_TARGETS.contains(&t.as_str()) {
                    return bad(format!("lora target `{t}` is not supported; choose from query, key, value"));
                }
            }
        }
        if let Some(m) = &self.mslr {
            if m.band.is_empty() || m.rank == 0 {
                return bad("mslr needs a non-empty band and rank >= 1".into());
            }
            if !(0.0..1.0).contains(&m.dropout) {
                return bad(format!("mslr.dropout {} is not a probability in [0, 1)", m.dropout));
            }
        }
        if self.mode == TrainMode::Full && (self.lora.is_some() || self.mslr.is_some()) {
            return bad("full fine-tuning trains every weight; adapters (lora, mslr) need mode peft".into());
        }
        if self.mode == TrainMode::Peft && self.lora.is_none() && self.mslr.is_none() && !self.train_head {
            return bad("peft mode with no lora, no mslr and a frozen head trains nothing".into());
        }
        Ok(())
    }
}
