//! Scaled dot-product self-attention with a key padding mask, over heads interleaved in the
//! hidden dimension (the Q/K/V projections and LoRA around it live in the model).
//! The forward saves the softmax probabilities `[b, heads, t, t]`; the backward never recomputes them.

use crate::backend::Backend;

#[allow(clippy::too_many_arguments)]
pub fn attention_forward<B: Backend>(be: &B, out: &mut B::Buf, probs: &mut B::Buf, q: &B::Buf, k: &B::Buf,
                                     v: &B::Buf, key_mask: &[i32], drop: Option<&B::Buf>, b: usize, t: usize,
                                     heads: usize, d: usize) {
    be.attention_forward(out, probs, q, k, v, key_mask, drop, b, t, heads, d);
}

/// Writes `dq`, `dk`, `dv` (not accumulated).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<B: Backend>(be: &B, dq: &mut B::Buf, dk: &mut B::Buf, dv: &mut B::Buf, dout: &B::Buf,
                                      probs: &B::Buf, q: &B::Buf, k: &B::Buf, v: &B::Buf, drop: Option<&B::Buf>,
                                      b: usize, t: usize, heads: usize, d: usize) {
    be.attention_backward(dq, dk, dv, dout, probs, q, k, v, drop, b, t, heads, d);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::layers::gradcheck::{check, rand_vec};

    fn run(drop: Option<&Vec<f32>>) {
        let be = Cpu::new();
        let (b, t, heads, d) = (2, 5, 3, 4);
        let n = b * t * heads * d;
        let mask = [1, 1, 1, 0, 0, 1, 1, 1, 1, 1];
        let (q, k, v) = (rand_vec(n, 1), rand_vec(n, 2), rand_vec(n, 3));
        let gy = rand_vec(n, 4);
        let f = |q: &[f32], k: &[f32], v: &[f32]| {
            let mut y = vec![0.0; n];
            let mut p = vec![0.0; b * heads * t * t];
            attention_forward(&be, &mut y, &mut p, &q.to_vec(), &k.to_vec(), &v.to_vec(), &mask, drop, b, t, heads, d);
            y
        };
        let mut y = vec![0.0; n];
        let mut p = vec![0.0; b * heads * t * t];
        attention_forward(&be, &mut y, &mut p, &q, &k, &v, &mask, drop, b, t, heads, d);
        // padded keys get exactly zero probability
        assert!(p[..t * t].chunks(t).all(|row| row[3] == 0.0 && row[4] == 0.0));
        let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        attention_backward(&be, &mut dq, &mut dk, &mut dv, &gy, &p, &q, &k, &v, drop, b, t, heads, d);
        let tag = if drop.is_some() { " (dropout)" } else { "" };
        check(&format!("attention dq{tag}"), &q, &dq, &gy, |x| f(x, &k, &v));
        check(&format!("attention dk{tag}"), &k, &dk, &gy, |x| f(&q, x, &v));
        check(&format!("attention dv{tag}"), &v, &dv, &gy, |x| f(&q, &k, x));
    }

    #[test]
    fn gradcheck_attention() {
        run(None);
    }

    #[test]
    fn gradcheck_attention_with_dropout() {
        let be = Cpu::new();
        let mut m = vec![0.0; 2 * 3 * 5 * 5];
        let len = m.len();
        be.dropout_mask(&mut m, len, 0.3, 9, &[1]);
        run(Some(&m));
    }
}
