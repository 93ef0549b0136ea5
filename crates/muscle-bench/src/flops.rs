//! Analytic FLOP counts of the GEMMs the engine runs for one step (2 FLOPs per multiply-add).
//! Element-wise work (layer norm, GELU, softmax, dropout, AdamW) is not counted: it is the
//! overhead the ratio to the GEMM peak exposes.
//!
//! Per encoder layer with N = batch * seq tokens, hidden H, intermediate I, T = seq:
//! - forward: Q, K, V, attention-output projections 4 * 2NH^2; feed-forward 2 * 2NHI;
//!   attention scores and context 2 * 2 * batch * T^2 * H; LoRA on each targeted projection
//!   2 * 2NHr.
//! - backward, input gradients (every layer above the lowest trainable one, and that one except
//!   for its Q/K/V input gradient when the embeddings are frozen): the same GEMMs as the forward,
//!   attention 4 * 2 * batch * T^2 * H; LoRA 4 * 2NHr (dB, dxa, dA, dx).
//! - backward, weight gradients (full fine-tuning only): 4 * 2NH^2 + 2 * 2NHI.
//! - head: dense H x H plus classifier on the batch rows, and MSLR 2 * 2 * batch * H * nk.

pub struct Shape {
    pub layers: usize,
    pub hidden: usize,
    pub inter: usize,
    pub batch: usize,
    pub seq: usize,
    pub labels: usize,
}

#[derive(Clone, Copy)]
pub enum Kind {
    Eval,
    Full,
    /// LoRA of rank r on q and v (2 projections), optional MSLR with nk components
    Peft { r: usize, nk: usize },
}

pub fn forward(s: &Shape, kind: Kind) -> f64 {
    let (n, h, i, b, t) = (s.batch * s.seq, s.hidden, s.inter, s.batch, s.seq);
    let (n, h, i, b, t) = (n as f64, h as f64, i as f64, b as f64, t as f64);
    let mut layer = 4.0 * 2.0 * n * h * h + 2.0 * 2.0 * n * h * i + 2.0 * 2.0 * b * t * t * h;
    let mut head = 2.0 * b * h * h + 2.0 * b * h * s.labels as f64;
    if let Kind::Peft { r, nk } = kind {
        layer += 2.0 * 2.0 * 2.0 * n * h * r as f64;
        head += 2.0 * 2.0 * b * h * nk as f64;
    }
    s.layers as f64 * layer + head
}

pub fn backward(s: &Shape, kind: Kind) -> f64 {
    let (n, h, i, b, t) = (s.batch * s.seq, s.hidden, s.inter, s.batch, s.seq);
    let (n, h, i, b, t) = (n as f64, h as f64, i as f64, b as f64, t as f64);
    let layers = s.layers as f64;
    let dx_layer = 4.0 * 2.0 * n * h * h + 2.0 * 2.0 * n * h * i + 4.0 * 2.0 * b * t * t * h;
    let head = 2.0 * (2.0 * b * h * h + 2.0 * b * h * s.labels as f64);
    match kind {
        Kind::Eval => 0.0,
        // every input gradient, every weight gradient (embeddings' scatter not counted)
        Kind::Full => layers * dx_layer + layers * (4.0 * 2.0 * n * h * h + 2.0 * 2.0 * n * h * i) + head,
        Kind::Peft { r, nk } => {
            // layer 0 skips the Q/K/V input gradients (frozen embeddings need none)
            let skipped = 3.0 * 2.0 * n * h * h + 2.0 * 2.0 * n * h * r as f64;
            layers * (dx_layer + 2.0 * 4.0 * 2.0 * n * h * r as f64) - skipped + head / 2.0
                + 4.0 * 2.0 * b * h * nk as f64
        }
    }
}

/// One training step: forward and backward of the training batch, and again of the reference
/// batch when gradient alignment runs.
pub fn step(s: &Shape, kind: Kind, with_reference: bool) -> f64 {
    let one = forward(s, kind) + backward(s, kind);
    if with_reference { 2.0 * one } else { one }
}
