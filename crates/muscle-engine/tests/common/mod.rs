//! Shared helpers for the integration tests: tiny random checkpoints written to temp dirs, and
//! the repository's committed fixtures.

#![allow(dead_code)]

use muscle_engine::models::bert::random_tensors;
use muscle_engine::models::config::EncoderConfig;
use std::path::{Path, PathBuf};

/// The repository root: where this crate was built, or `MUSCLE_REPO_ROOT` when a prebuilt test
/// binary runs in another checkout (scripts/gpu_check.sh on a machine without cargo).
pub fn repo_root() -> PathBuf {
    if let Some(root) = std::env::var_os("MUSCLE_REPO_ROOT") {
        return PathBuf::from(root);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("muscle-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes a random BERT or RoBERTa classifier (2 layers, hidden 8, 2 heads, 3 labels) to a temp dir.
pub fn tiny_checkpoint(tag: &str, roberta: bool, with_head: bool) -> PathBuf {
    tiny_checkpoint_with_layers(tag, roberta, with_head, 2)
}

/// [`tiny_checkpoint`] with `layers` encoder layers.
#[allow(dead_code)] // not every test file uses it
pub fn tiny_checkpoint_with_layers(tag: &str, roberta: bool, with_head: bool, layers: usize) -> PathBuf {
    let d = tmpdir(tag);
    let root = if roberta { "roberta" } else { "bert" };
    let config = serde_json::json!({
        "model_type": root, "vocab_size": 23, "hidden_size": 8, "num_hidden_layers": layers,
        "num_attention_heads": 2, "intermediate_size": 12, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 20, "type_vocab_size": if roberta { 1 } else { 2 },
        "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": if roberta { 1 } else { 0 },
    });
    let path = d.join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let (cfg, family) = EncoderConfig::load(&path).unwrap();
    // std 0.4: large enough that every path carries gradient signal worth checking
    let t = random_tensors(&cfg, family, TINY_LABELS, 0.4, if roberta { 11 } else { 7 }, with_head);
    muscle_engine::io::safetensors::save(&d.join("model.safetensors"), &t, None).unwrap();
    d
}

pub const TINY_LABELS: usize = 3;

/// A 3 x 5 batch with padding (RoBERTa pads with 1, BERT with 0).
pub fn tiny_batch(roberta: bool) -> (Vec<i32>, Vec<i32>, Vec<i32>) {
    let pad = if roberta { 1 } else { 0 };
    let ids = vec![2, 5, 9, 3, 4, 2, 7, 3, pad, pad, 2, 11, 17, 21, 3];
    let mask = ids.iter().enumerate().map(|(i, &x)| if x == pad && i % 5 >= 3 { 0 } else { 1 }).collect();
    (ids, mask, vec![0, 2, 1])
}

/// Reference values recorded by `scripts/make_fixtures.py` (transformers + peft).
pub struct Reference {
    bytes: Vec<u8>,
    pub meta: serde_json::Value,
}

impl Reference {
    pub fn load(name: &str) -> Self {
        let dir = fixtures().join("reference");
        let bytes = std::fs::read(dir.join(format!("{name}.safetensors"))).expect("fixture tensors");
        let meta = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap()).unwrap();
        Reference { bytes, meta }
    }

    fn view(&self, key: &str) -> safetensors::tensor::TensorView<'_> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        st.tensor(key).unwrap_or_else(|_| panic!("fixture has no tensor `{key}`"))
    }

    pub fn has(&self, key: &str) -> bool {
        safetensors::SafeTensors::deserialize(&self.bytes).unwrap().tensor(key).is_ok()
    }

    pub fn f32(&self, key: &str) -> Vec<f32> {
        let v = self.view(key);
        assert_eq!(v.dtype(), safetensors::Dtype::F32, "{key}");
        v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    pub fn i32(&self, key: &str) -> Vec<i32> {
        let v = self.view(key);
        assert_eq!(v.dtype(), safetensors::Dtype::I64, "{key}");
        v.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as i32).collect()
    }

    pub fn shape(&self, key: &str) -> Vec<usize> {
        self.view(key).shape().to_vec()
    }
}

/// Asserts `|got - want| <= 1e-5` or relative error `<= 1e-4` elementwise (the tolerance),
/// and returns the largest absolute difference seen.
pub fn assert_close(what: &str, got: &[f32], want: &[f32]) -> f64 {
    assert_close_within(what, got, want, 1e-5, 1e-4)
}

/// [`assert_close`] with another absolute and relative tolerance.
#[allow(dead_code)] // not every test file uses it
pub fn assert_close_within(what: &str, got: &[f32], want: &[f32], abs_tol: f64, rel_tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0.0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let abs = (g as f64 - w as f64).abs();
        let rel = abs / (w as f64).abs().max(1e-30);
        assert!(abs <= abs_tol || rel <= rel_tol, "{what}[{i}]: got {g}, want {w} (abs {abs:.2e}, rel {rel:.2e})");
        worst = worst.max(abs);
    }
    worst
}
