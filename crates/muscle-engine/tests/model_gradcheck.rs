//! Whole-model gradients against finite differences, for BERT and RoBERTa, in full fine-tuning
//! and in PEFT mode (LoRA on q/v + MSLR on the head's dense layer), with dropout off and on.

mod common;

use common::*;
use muscle_engine::*;

fn peft_spec(dropout: f32) -> TrainSpec {
    TrainSpec {
        mode: TrainMode::Peft,
        lora: Some(LoraSpec { r: 2, alpha: 4.0, dropout, targets: vec!["query".into(), "value".into()] }),
        mslr: Some(MslrSpec { band: vec![1.0, 4.0], rank: 2, alpha: 6.0, dropout }),
        train_head: false,
    }
}

/// Loss of the model at its current parameters for a fixed dropout pass.
fn loss_at(m: &mut BertClassifier<Cpu>, be: &Cpu, batch: &BatchRef, train: bool, pass: u64) -> f64 {
    m.set_pass(pass);
    m.forward(be, batch, train).unwrap();
    m.loss(be, batch.labels.unwrap()).unwrap() as f64
}

fn check_model(roberta: bool, spec: TrainSpec, train: bool, tag: &str) {
    check_model_with(roberta, spec, train, tag, AttentionImpl::Auto);
}

fn check_model_with(roberta: bool, spec: TrainSpec, train: bool, tag: &str, attention: AttentionImpl) {
    let be = Cpu::new();
    let dir = tiny_checkpoint(tag, roberta, true);
    let mut m = BertClassifier::load(&be, &dir, TINY_LABELS, &spec, 3).unwrap();
    m.set_attention(attention);
    // LoRA B starts at zero, which would make A's gradient vanish: give it values.
    for i in 0..m.params.meta.len() {
        if m.params.meta[i].name.contains("lora_B") {
            let n = m.params.meta[i].numel();
            let vals: Vec<f32> = (0..n).map(|j| ((j * 7 % 11) as f32 - 5.0) * 0.05).collect();
            let name = m.params.meta[i].name.clone();
            m.set_param(&be, &name, &vals).unwrap();
        }
    }
    let (ids, mask, labels) = tiny_batch(roberta);
    let batch = BatchRef { ids: &ids, mask: &mask, labels: Some(&labels), b: 3, t: 5 };
    let pass = 41;
    loss_at(&mut m, &be, &batch, train, pass);
    m.backward(&be, &batch).unwrap();
    let trainable: Vec<usize> = m.params.trainable().collect();
    assert!(!trainable.is_empty());
    let mut worst = 0.0f64;
    let mut checked = 0;
    for &i in &trainable {
        let name = m.params.meta[i].name.clone();
        let grad = m.get_grad(&be, &name).unwrap();
        let orig = m.get_param(&be, &name).unwrap();
        // a few elements per tensor: the largest-gradient one and two fixed ones
        let big = (0..grad.len()).max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs())).unwrap();
        for &j in &[big, 0, grad.len() / 2] {
            let eps = 1e-2f32;
            let mut p = orig.clone();
            p[j] = orig[j] + eps;
            m.set_param(&be, &name, &p).unwrap();
            let lp = loss_at(&mut m, &be, &batch, train, pass);
            p[j] = orig[j] - eps;
            m.set_param(&be, &name, &p).unwrap();
            let lm = loss_at(&mut m, &be, &batch, train, pass);
            m.set_param(&be, &name, &orig).unwrap();
            let numeric = (lp - lm) / (2.0 * eps as f64);
            let err = (numeric - grad[j] as f64).abs();
            let tol = 3e-4 + 3e-2 * numeric.abs();
            worst = worst.max(err / (numeric.abs() + 1e-3));
            assert!(err <= tol, "{tag}: {name}[{j}] analytic {} numeric {numeric}", grad[j]);
            checked += 1;
        }
    }
    eprintln!("model gradcheck {tag}: {checked} elements of {} tensors, worst relative error {worst:.2e}", trainable.len());
}

#[test]
fn bert_full_finetuning() {
    check_model(false, TrainSpec::full(), false, "bert-full");
}

#[test]
fn bert_full_finetuning_with_dropout() {
    check_model(false, TrainSpec::full(), true, "bert-full-drop");
}

#[test]
fn roberta_full_finetuning() {
    check_model(true, TrainSpec::full(), false, "roberta-full");
}

#[test]
fn bert_lora_mslr() {
    check_model(false, peft_spec(0.0), false, "bert-peft");
}

#[test]
fn roberta_lora_mslr_with_dropout() {
    check_model(true, peft_spec(0.2), true, "roberta-peft-drop");
}

/// Flash attention in the model (forced: `Auto` would not choose it for tiny batches):
/// its backward, dropout on the probabilities included, against finite differences.
#[test]
fn bert_full_finetuning_with_dropout_flash_attention() {
    check_model_with(false, TrainSpec::full(), true, "bert-full-drop-flash", AttentionImpl::Flash);
}

#[test]
fn roberta_lora_mslr_with_dropout_flash_attention() {
    check_model_with(true, peft_spec(0.2), true, "roberta-peft-drop-flash", AttentionImpl::Flash);
}

/// Flash and standard attention draw the same dropout masks, so a training forward and backward
/// give the same loss and gradients up to rounding.
#[test]
fn flash_and_standard_attention_agree() {
    let be = Cpu::new();
    let dir = tiny_checkpoint("flash-vs-standard", false, true);
    let (ids, mask, labels) = tiny_batch(false);
    let batch = BatchRef { ids: &ids, mask: &mask, labels: Some(&labels), b: 3, t: 5 };
    let run = |attention: AttentionImpl| {
        let mut m = BertClassifier::load(&be, &dir, TINY_LABELS, &TrainSpec::full(), 3).unwrap();
        m.set_attention(attention);
        assert_eq!(m.flash_for(3, 5), attention == AttentionImpl::Flash);
        let loss = loss_at(&mut m, &be, &batch, true, 7);
        m.backward(&be, &batch).unwrap();
        let grads: Vec<Vec<f32>> = m.params.trainable().map(|i| {
            let name = m.params.meta[i].name.clone();
            m.get_grad(&be, &name).unwrap()
        }).collect();
        (loss, grads)
    };
    let (ls, gs) = run(AttentionImpl::Standard);
    let (lf, gf) = run(AttentionImpl::Flash);
    assert!((ls - lf).abs() <= 1e-6 * ls.abs().max(1.0), "loss {ls} vs {lf}");
    for (i, (s, f)) in gs.iter().zip(&gf).enumerate() {
        assert_close(&format!("gradient of trainable tensor {i}"), f, s);
    }
}

/// `Auto` keeps standard attention until its probabilities would pass 4 GiB: BERT-base (12
/// layers, 12 heads) at 32 x 256 keeps 1.2 GiB, at 32 x 512 4.5 GiB.
#[test]
fn auto_attention_turns_to_flash_for_large_batches() {
    assert!(!auto_flash(12, 12, 32, 256));
    assert!(auto_flash(12, 12, 32, 512));
    assert!(!auto_flash(12, 12, 8, 512));
    assert!(auto_flash(12, 12, usize::MAX, usize::MAX), "no overflow");
}

#[test]
fn roberta_head_only() {
    let spec = TrainSpec { mode: TrainMode::Peft, lora: None, mslr: None, train_head: true };
    check_model(true, spec, false, "roberta-head");
}

#[test]
fn frozen_tensors_get_no_gradient_buffers() {
    let be = Cpu::new();
    let dir = tiny_checkpoint("frozen", false, true);
    let m = BertClassifier::load(&be, &dir, TINY_LABELS, &peft_spec(0.0), 3).unwrap();
    for (meta, g) in m.params.meta.iter().zip(&m.params.grads) {
        let adapter = meta.name.contains("lora_") || meta.name.contains("mslr_");
        assert_eq!(meta.trainable, adapter, "{}", meta.name);
        assert_eq!(g.is_some(), adapter, "{}", meta.name);
    }
    // 2 layers x (q, v) x (A, B) + (L, R)
    assert_eq!(m.params.trainable().count(), 10);
}
