//! Shared helpers for the integration tests: tiny random checkpoints written to temp dirs, and
//! the repository's committed fixtures.

#![allow(dead_code)]

use muscle_engine::rng::Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub fn repo_root() -> PathBuf {
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

/// Writes a random BERT or RoBERTa classifier (2 layers, hidden 8, 2 heads) to a temp dir.
pub fn tiny_checkpoint(tag: &str, roberta: bool, with_head: bool) -> PathBuf {
    let d = tmpdir(tag);
    let (v, h, i, layers, maxp, labels) = (23usize, 8usize, 12usize, 2usize, 20usize, 3usize);
    let root = if roberta { "roberta" } else { "bert" };
    let config = serde_json::json!({
        "model_type": root, "vocab_size": v, "hidden_size": h, "num_hidden_layers": layers,
        "num_attention_heads": 2, "intermediate_size": i, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": maxp, "type_vocab_size": if roberta { 1 } else { 2 },
        "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": if roberta { 1 } else { 0 },
    });
    std::fs::write(d.join("config.json"), config.to_string()).unwrap();
    let mut rng = Rng::new(if roberta { 11 } else { 7 });
    let mut t: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    let mut put = |name: String, shape: Vec<usize>, std: f32, mean: f32| {
        let n = shape.iter().product();
        let data = (0..n).map(|_| mean + rng.normal() * std).collect();
        t.insert(name, (shape, data));
    };
    put(format!("{root}.embeddings.word_embeddings.weight"), vec![v, h], 0.5, 0.0);
    put(format!("{root}.embeddings.position_embeddings.weight"), vec![maxp, h], 0.5, 0.0);
    put(format!("{root}.embeddings.token_type_embeddings.weight"), vec![if roberta { 1 } else { 2 }, h], 0.5, 0.0);
    put(format!("{root}.embeddings.LayerNorm.weight"), vec![h], 0.1, 1.0);
    put(format!("{root}.embeddings.LayerNorm.bias"), vec![h], 0.1, 0.0);
    for l in 0..layers {
        let p = format!("{root}.encoder.layer.{l}.");
        for (name, o, inp) in [("attention.self.query", h, h), ("attention.self.key", h, h), ("attention.self.value", h, h),
                               ("attention.output.dense", h, h), ("intermediate.dense", i, h), ("output.dense", h, i)] {
            put(format!("{p}{name}.weight"), vec![o, inp], 0.4, 0.0);
            put(format!("{p}{name}.bias"), vec![o], 0.1, 0.0);
        }
        for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
            put(format!("{p}{name}.weight"), vec![h], 0.1, 1.0);
            put(format!("{p}{name}.bias"), vec![h], 0.1, 0.0);
        }
    }
    if with_head {
        if roberta {
            put("classifier.dense.weight".into(), vec![h, h], 0.4, 0.0);
            put("classifier.dense.bias".into(), vec![h], 0.1, 0.0);
            put("classifier.out_proj.weight".into(), vec![labels, h], 0.4, 0.0);
            put("classifier.out_proj.bias".into(), vec![labels], 0.1, 0.0);
        } else {
            put(format!("{root}.pooler.dense.weight"), vec![h, h], 0.4, 0.0);
            put(format!("{root}.pooler.dense.bias"), vec![h], 0.1, 0.0);
            put("classifier.weight".into(), vec![labels, h], 0.4, 0.0);
            put("classifier.bias".into(), vec![labels], 0.1, 0.0);
        }
    }
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
