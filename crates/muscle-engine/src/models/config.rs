//! `config.json` of BERT and RoBERTa checkpoints, read with serde as transformers writes it.

use crate::error::{EngineError, Result};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    Roberta,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EncoderConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f32,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f32,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_init_range")]
    pub initializer_range: f32,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f32,
    #[serde(default)]
    pub pad_token_id: Option<i32>,
    #[serde(default)]
    pub classifier_dropout: Option<f32>,
    #[serde(default)]
    pub num_labels: Option<usize>,
    #[serde(default)]
    pub id2label: Option<serde_json::Map<String, serde_json::Value>>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f32 {
    0.1
}
fn default_type_vocab() -> usize {
    2
}
fn default_init_range() -> f32 {
    0.02
}
fn default_ln_eps() -> f32 {
    1e-12
}

pub const SUPPORTED: &str = "bert, roberta (llama and gpt2 are planned)";

impl EncoderConfig {
    pub fn load(dir: &Path) -> Result<(Self, Family)> {
        let path = if dir.is_dir() { dir.join("config.json") } else { dir.to_path_buf() };
        let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?;
        let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| EngineError::Config {
            path: path.clone(),
            field: "(file)".into(),
            reason: format!("not valid JSON: {e}"),
        })?;
        let model_type = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or("").to_string();
        let family = match model_type.as_str() {
            "bert" => Family::Bert,
            "roberta" => Family::Roberta,
            other => {
                return Err(EngineError::UnknownArchitecture { path, found: other.to_string(), supported: SUPPORTED })
            }
        };
        let cfg: EncoderConfig = serde_json::from_value(raw).map_err(|e| {
            let msg = e.to_string();
            // serde names the field in "missing field `x`" / "invalid type ... for key `x`" messages.
            let field = msg.split('`').nth(1).unwrap_or("(unknown)").to_string();
            EngineError::Config { path: path.clone(), field, reason: msg }
        })?;
        let bad = |field: &str, reason: String| EngineError::Config { path: path.clone(), field: field.into(), reason };
        if cfg.hidden_size == 0 || cfg.num_attention_heads == 0 || cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(bad("num_attention_heads", format!(
                "hidden_size {} must be a positive multiple of num_attention_heads {}", cfg.hidden_size, cfg.num_attention_heads)));
        }
        if cfg.hidden_act != "gelu" {
            return Err(bad("hidden_act", format!("`{}` is not supported; only the exact erf `gelu` is", cfg.hidden_act)));
        }
        for (f, p) in [("hidden_dropout_prob", cfg.hidden_dropout_prob), ("attention_probs_dropout_prob", cfg.attention_probs_dropout_prob)] {
            if !(0.0..1.0).contains(&p) {
                return Err(bad(f, format!("{p} is not a probability in [0, 1)")));
            }
        }
        let mut cfg = cfg;
        // transformers' defaults when the file has none: BertConfig 0, RobertaConfig 1
        cfg.pad_token_id.get_or_insert(if family == Family::Roberta { 1 } else { 0 });
        Ok((cfg, family))
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Dropout of the classification head: `classifier_dropout`, else the hidden dropout.
    pub fn head_dropout(&self) -> f32 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }
}
