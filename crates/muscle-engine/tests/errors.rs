//! Bad input becomes a typed error with a message that names the file, the field and the fix.

mod common;

use common::*;
use muscle_engine::io::tokenizer::TextTokenizer;
use muscle_engine::*;

fn load_err(dir: &std::path::Path, spec: &TrainSpec) -> String {
    match BertClassifier::<Cpu>::load(&Cpu::new(), dir, TINY_LABELS, spec, 0) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_architecture() {
    let d = tiny_checkpoint("arch", false, true);
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap().replace("\"bert\"", "\"t5\"");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let e = load_err(&d, &TrainSpec::full());
    assert!(e.contains("config.json: unknown architecture `t5` in field `model_type`; supported: bert, roberta"), "{e}");
}

#[test]
fn config_field_errors() {
    let d = tiny_checkpoint("cfgfield", false, true);
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap().replace("\"num_attention_heads\":2", "\"num_attention_heads\":3");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let e = load_err(&d, &TrainSpec::full());
    assert!(e.contains("field `num_attention_heads`: hidden_size 8 must be a positive multiple of num_attention_heads 3"), "{e}");
    std::fs::write(d.join("config.json"), "{\"model_type\": \"bert\"}").unwrap();
    let e = load_err(&d, &TrainSpec::full());
    assert!(e.contains("field `vocab_size`") && e.contains("missing field"), "{e}");
    std::fs::remove_file(d.join("config.json")).unwrap();
    let e = load_err(&d, &TrainSpec::full());
    assert!(e.contains("config.json: file not found"), "{e}");
}

#[test]
fn missing_and_misshapen_tensors() {
    let d = tiny_checkpoint("shape", false, true);
    let (cfg, family) = muscle_engine::models::config::EncoderConfig::load(&d).unwrap();
    let mut t = muscle_engine::models::bert::random_tensors(&cfg, family, TINY_LABELS, 0.1, 1, true);
    t.get_mut("bert.encoder.layer.1.intermediate.dense.weight").unwrap().0 = vec![6, 16];
    muscle_engine::io::safetensors::save(&d.join("model.safetensors"), &t, None).unwrap();
    let e = load_err(&d, &TrainSpec::full());
    assert!(e.contains("tensor `bert.encoder.layer.1.intermediate.dense.weight` has shape [6, 16], expected [12, 8]"), "{e}");
    t.remove("bert.encoder.layer.1.intermediate.dense.weight");
    muscle_engine::io::safetensors::save(&d.join("model.safetensors"), &t, None).unwrap();
    let e = load_err(&d, &TrainSpec::full());
    assert!(e.contains("tensor `bert.encoder.layer.1.intermediate.dense.weight` is missing"), "{e}");
}

#[test]
fn pickle_checkpoint_is_refused_with_the_conversion() {
    let d = tiny_checkpoint("pickle", false, true);
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("pytorch_model.bin"), b"PK\x03\x04").unwrap();
    let e = load_err(&d, &TrainSpec::full());
    assert!(e.contains("pytorch_model.bin: pickle checkpoints (.bin/.pt) are refused"), "{e}");
    assert!(e.contains("save_file"), "{e}");
}

#[test]
fn bare_encoder_gets_a_transformers_style_head() {
    let be = Cpu::new();
    let m = BertClassifier::load(&be, &fixtures().join("tiny-bert-bare"), 2, &TrainSpec::full(), 5).unwrap();
    assert_eq!(m.initialized, vec!["classifier.weight".to_string(), "classifier.bias".to_string()]);
    let w = m.get_param(&be, "classifier.weight").unwrap();
    let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
    // Normal(0, initializer_range) with initializer_range from the config
    let range = m.cfg.initializer_range;
    assert!((std - range).abs() < 0.35 * range, "std {std} vs {range}");
    assert!(m.get_param(&be, "classifier.bias").unwrap().iter().all(|&x| x == 0.0));
}

#[test]
fn bad_batches() {
    let be = Cpu::new();
    let d = tiny_checkpoint("batch", false, true);
    let mut m = BertClassifier::load(&be, &d, TINY_LABELS, &TrainSpec::full(), 0).unwrap();
    let err = |m: &mut BertClassifier<Cpu>, ids: &[i32], mask: &[i32], labels: Option<&[i32]>, b, t| {
        m.forward(&be, &BatchRef { ids, mask, labels, b, t }, false).unwrap_err().to_string()
    };
    assert!(err(&mut m, &[], &[], None, 0, 4).contains("batch of size 0 x 4"));
    assert!(err(&mut m, &[], &[], None, 2, 0).contains("batch of size 2 x 0"));
    assert!(err(&mut m, &[2, 3], &[1, 1], None, 1, 3).contains("must both hold batch x seq = 3 values"));
    assert!(err(&mut m, &[2, 99], &[1, 1], None, 1, 2).contains("token id 99 is outside the vocabulary of 23"));
    assert!(err(&mut m, &[2; 21], &[1; 21], None, 1, 21).contains("sequence length 21 exceeds the model's 20 positions"));
    assert!(err(&mut m, &[2, 3], &[1, 1], Some(&[3]), 1, 2).contains("label 3 is outside [0, 3)"));
    assert!(err(&mut m, &[0, 3], &[0, 1], None, 1, 2).contains("row 0 starts with padding"));
}

#[test]
fn training_setup_errors() {
    let d = tiny_checkpoint("setup", false, true);
    let mut spec = TrainSpec { mode: TrainMode::Peft, lora: None, mslr: None, train_head: false };
    assert!(load_err(&d, &spec).contains("trains nothing"));
    spec.lora = Some(LoraSpec { r: 4, alpha: 8.0, dropout: 0.0, targets: vec!["dense".into()] });
    assert!(load_err(&d, &spec).contains("lora target `dense` is not supported; choose from query, key, value"));
    spec.lora = Some(LoraSpec { r: 4, alpha: 8.0, dropout: 0.0, targets: vec!["query".into()] });
    spec.mode = TrainMode::Full;
    assert!(load_err(&d, &spec).contains("adapters (lora, mslr) need mode peft"));
}

#[test]
fn tokenizer_errors() {
    let d = tmpdir("tok");
    let e = TextTokenizer::open(&d, 16).err().unwrap().to_string();
    assert!(e.contains("tokenizer.json: file not found (tokenizer.json (a Hugging Face fast tokenizer))"), "{e}");
    std::fs::write(d.join("tokenizer.json"), "{\"not\": \"a tokenizer\"}").unwrap();
    let e = TextTokenizer::open(&d, 16).err().unwrap().to_string();
    assert!(e.contains("tokenizer.json: cannot load tokenizer"), "{e}");
}

/// A batch whose activations would not fit is refused before anything is allocated, with its
/// size, what is available and what to change; the model stays usable for a smaller batch.
#[test]
fn a_batch_too_large_for_memory() {
    let d = tiny_checkpoint("memory", false, true);
    let be = Cpu::new().with_memory_limit(64 << 10);
    let mut m = BertClassifier::load(&be, &d, TINY_LABELS, &TrainSpec::full(), 0).unwrap();
    let (ids, mask, labels) = tiny_batch(false);
    let small = BatchRef { ids: &ids, mask: &mask, labels: Some(&labels), b: 3, t: 5 };
    m.forward(&be, &small, true).unwrap();
    let (b, t) = (64, 16);
    let big_ids: Vec<i32> = (0..b * t).map(|i| 2 + (i % 13) as i32).collect();
    let big_mask = vec![1; b * t];
    let big = BatchRef { ids: &big_ids, mask: &big_mask, labels: None, b, t };
    let e = m.forward(&be, &big, true).unwrap_err().to_string();
    assert!(e.starts_with("invalid batch: the activations of a 64 x 16 batch need ") && e.contains(" GiB more and this machine has ")
            && e.contains("lower the batch size or the maximum length, or use flash attention (attention: flash)")
            && !e.contains('\n'), "{e}");
    m.forward(&be, &small, true).unwrap();
}

#[test]
fn activation_memory_messages() {
    assert!(activation_memory_check(1 << 30, 1 << 30, 32, 512, "the GPU", false).is_ok());
    let e = activation_memory_check(3 << 30, 1 << 30, 32, 512, "the GPU", true).unwrap_err().to_string();
    assert_eq!(e, "invalid batch: the activations of a 32 x 512 batch need 3.00 GiB more and the GPU has 1.00 GiB available: \
                   lower the batch size or the maximum length");
}
