//! Attention for long sequences without the `[t, t]` matrices (see `Backend::flash_attention_forward`).

use crate::backend::Backend;

/// Which keys each query sees, and dropout on the probabilities.
#[derive(Clone, Copy)]
pub struct FlashMasking<'a> {
    /// `[b*t]`, 1 = token, 0 = padding (a key nobody attends to)
    pub key_mask: &'a [i32],
    /// decoders: query i sees keys j <= i
    pub causal: bool,
    /// (probability, `rng::stream_key(seed, stream)`)
    pub dropout: Option<(f32, u64)>,
}

#[allow(clippy::too_many_arguments)]
pub fn flash_attention_forward<B: Backend>(be: &B, out: &mut B::Buf, lse: &mut B::Buf, q: &B::Buf, k: &B::Buf,
                                           v: &B::Buf, m: FlashMasking<'_>, b: usize, t: usize, heads: usize, d: usize) {
    be.flash_attention_forward(out, lse, q, k, v, m.key_mask, m.causal, m.dropout, b, t, heads, d);
}

#[allow(clippy::too_many_arguments)]
pub fn flash_attention_backward<B: Backend>(be: &B, dq: &mut B::Buf, dk: &mut B::Buf, dv: &mut B::Buf, dout: &B::Buf,
                                            out: &B::Buf, lse: &B::Buf, q: &B::Buf, k: &B::Buf, v: &B::Buf,
                                            m: FlashMasking<'_>, b: usize, t: usize, heads: usize, d: usize) {
    be.flash_attention_backward(dq, dk, dv, dout, out, lse, q, k, v, m.key_mask, m.causal, m.dropout, b, t, heads, d);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::layers::attention::{attention_backward, attention_forward};
    use crate::layers::gradcheck::{check, rand_vec};
    use crate::rng::stream_key;

    fn close(what: &str, got: &[f32], want: &[f32]) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-5 + 1e-4 * w.abs(), "{what}[{i}]: {g} vs {w}");
        }
    }

    /// With padding and dropout, the flash path gives what the path with the [t, t] matrices gives.
    #[test]
    fn equals_attention_with_probabilities() {
        let be = Cpu::new();
        let (b, t, heads, d) = (3, 7, 2, 5);
        let n = b * t * heads * d;
        let (q, k, v, g) = (rand_vec(n, 1), rand_vec(n, 2), rand_vec(n, 3), rand_vec(n, 4));
        let mut mask = vec![1i32; b * t];
        mask[t + 5..2 * t].iter_mut().for_each(|x| *x = 0); // second sequence padded
        mask[2 * t..].iter_mut().for_each(|x| *x = 0); // third all padding: zero output and gradients
        let (seed, stream) = (11u64, [4u64, 2]);
        for p in [0.0f32, 0.3] {
            let mut drop = vec![0.0; b * heads * t * t];
            be.dropout_mask(&mut drop, b * heads * t * t, p, seed, &stream);
            let (mut out, mut probs) = (vec![0.0; n], vec![0.0; b * heads * t * t]);
            attention_forward(&be, &mut out, &mut probs, &q, &k, &v, &mask, (p > 0.0).then_some(&drop), b, t, heads, d);
            let m = FlashMasking { key_mask: &mask, causal: false, dropout: Some((p, stream_key(seed, &stream))) };
            let (mut fout, mut lse) = (vec![0.0; n], vec![0.0; b * t * heads]);
            flash_attention_forward(&be, &mut fout, &mut lse, &q, &k, &v, m, b, t, heads, d);
            close(&format!("out p={p}"), &fout, &out);
            let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            attention_backward(&be, &mut dq, &mut dk, &mut dv, &g, &probs, &q, &k, &v, (p > 0.0).then_some(&drop), b, t,
                               heads, d);
            let (mut fq, mut fk, mut fv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            flash_attention_backward(&be, &mut fq, &mut fk, &mut fv, &g, &fout, &lse, &q, &k, &v, m, b, t, heads, d);
            close(&format!("dq p={p}"), &fq, &dq);
            close(&format!("dk p={p}"), &fk, &dk);
            close(&format!("dv p={p}"), &fv, &dv);
            assert!(fout[2 * t * heads * d..].iter().all(|&x| x == 0.0), "an all-padding sequence gives zeros");
        }
    }

    /// Causal (decoders): the forward against the definition, the backward by finite differences.
    #[test]
    fn causal_forward_and_gradcheck() {
        let be = Cpu::new();
        let (b, t, heads, d) = (2, 6, 2, 4);
        let n = b * t * heads * d;
        let (q, k, v, g) = (rand_vec(n, 5), rand_vec(n, 6), rand_vec(n, 7), rand_vec(n, 8));
        let mut mask = vec![1i32; b * t];
        mask[t + 4..].iter_mut().for_each(|x| *x = 0);
        let m = FlashMasking { key_mask: &mask, causal: true, dropout: Some((0.2, 99)) };
        let f = |q: &[f32], k: &[f32], v: &[f32]| {
            let (mut out, mut lse) = (vec![0.0; n], vec![0.0; b * t * heads]);
            flash_attention_forward(&be, &mut out, &mut lse, &q.to_vec(), &k.to_vec(), &v.to_vec(), m, b, t, heads, d);
            out
        };
        // row 3 of sequence 0, head 1, no dropout: softmax over keys 0..=3
        let m0 = FlashMasking { dropout: None, ..m };
        let (mut out, mut lse) = (vec![0.0; n], vec![0.0; b * t * heads]);
        flash_attention_forward(&be, &mut out, &mut lse, &q, &k, &v, m0, b, t, heads, d);
        let at = |i: usize| (i * heads + 1) * d;
        let s: Vec<f64> = (0..=3).map(|j| (0..d).map(|c| q[at(3) + c] as f64 * k[at(j) + c] as f64).sum::<f64>() / (d as f64).sqrt()).collect();
        let z: f64 = s.iter().map(|x| x.exp()).sum();
        for c in 0..d {
            let want: f64 = (0..=3).map(|j| s[j].exp() / z * v[at(j) + c] as f64).sum();
            assert!((out[at(3) + c] as f64 - want).abs() < 1e-5, "causal row 3 [{c}]: {} vs {want}", out[at(3) + c]);
        }
        let out = f(&q, &k, &v);
        let (mut lse, mut o2) = (vec![0.0; b * t * heads], vec![0.0; n]);
        flash_attention_forward(&be, &mut o2, &mut lse, &q, &k, &v, m, b, t, heads, d);
        let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        flash_attention_backward(&be, &mut dq, &mut dk, &mut dv, &g, &out, &lse, &q, &k, &v, m, b, t, heads, d);
        check("flash attention causal dq", &q, &dq, &g, |x| f(x, &k, &v));
        check("flash attention causal dk", &k, &dk, &g, |x| f(&q, x, &v));
        check("flash attention causal dv", &v, &dv, &g, |x| f(&q, &k, x));
    }
}
