//! Attention without the `[t, t]` matrices (flash-style, for long sequences): the forward keeps one
//! log-sum-exp per query row, the backward recomputes the probabilities from it. Same layouts and
//! semantics as `attention.rs` (key padding mask, probability dropout, an all-zero output for a row
//! whose keys are all masked), plus the causal mask of decoders. Dropout draws element
//! `((bi heads + h) t + i) t + j` of the counter stream `key`, which is where `dropout_mask` over a
//! `[b*heads, t, t]` buffer puts the same (row, key) pair: the two paths drop the same entries.
//!
//! This is the reference for the CUDA kernels: one (sequence, head) per task, plain loops.

use crate::rng::counter_uniform;
use rayon::prelude::*;

/// Which keys a query sees and how dropout treats them.
#[derive(Clone, Copy)]
pub struct Masking<'a> {
    pub key_mask: &'a [i32],
    pub causal: bool,
    /// (probability, counter-stream key)
    pub dropout: Option<(f32, u64)>,
}

struct Dims {
    t: usize,
    heads: usize,
    d: usize,
}

impl Dims {
    /// Offset of head `h`'s vector in row `i` of sequence `bi` of a `[b*t, heads*d]` tensor.
    fn at(&self, bi: usize, i: usize, h: usize) -> usize {
        ((bi * self.t + i) * self.heads + h) * self.d
    }
    /// Index of the (row, head) pair in the `[b*t, heads]` log-sum-exp.
    fn row(&self, bi: usize, i: usize, h: usize) -> usize {
        (bi * self.t + i) * self.heads + h
    }
}

impl Masking<'_> {
    fn visible(&self, bi: usize, t: usize, i: usize, j: usize) -> bool {
        self.key_mask[bi * t + j] != 0 && (!self.causal || j <= i)
    }
    /// The inverted-dropout factor of (row i, key j) of pair `bh`.
    fn keep(&self, bh: usize, t: usize, i: usize, j: usize) -> f32 {
        match self.dropout {
            Some((p, key)) if p > 0.0 => {
                if counter_uniform(key, ((bh * t + i) * t + j) as u64) < p { 0.0 } else { 1.0 / (1.0 - p) }
            }
            _ => 1.0,
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `out` as attention's forward; `lse[row]` = log sum exp of the row's scaled scores (+inf where
/// no key is visible).
#[allow(clippy::too_many_arguments)]
pub fn forward(out: &mut [f32], lse: &mut [f32], q: &[f32], k: &[f32], v: &[f32], mk: Masking<'_>, b: usize, t: usize,
               heads: usize, d: usize) {
    let dims = Dims { t, heads, d };
    let scale = 1.0 / (d as f32).sqrt();
    let per_pair: Vec<(Vec<f32>, Vec<f32>)> = (0..b * heads).into_par_iter().map(|bh| {
        let (bi, h) = (bh / heads, bh % heads);
        let (mut o, mut l) = (vec![0.0f32; t * d], vec![f32::INFINITY; t]);
        let mut s = vec![0.0f32; t];
        for i in 0..t {
            let qi = &q[dims.at(bi, i, h)..][..d];
            let mut m = f32::NEG_INFINITY;
            for j in 0..t {
                s[j] = if mk.visible(bi, t, i, j) { scale * dot(qi, &k[dims.at(bi, j, h)..][..d]) } else { f32::NEG_INFINITY };
                m = m.max(s[j]);
            }
            if m == f32::NEG_INFINITY {
                continue; // no visible key: zero output
            }
            let sum: f32 = s.iter().map(|&x| (x - m).exp()).sum();
            let oi = &mut o[i * d..][..d];
            for j in 0..t {
                let p = (s[j] - m).exp() / sum * mk.keep(bh, t, i, j);
                if p != 0.0 {
                    for (oc, vc) in oi.iter_mut().zip(&v[dims.at(bi, j, h)..][..d]) {
                        *oc += p * vc;
                    }
                }
            }
            l[i] = m + sum.ln();
        }
        (o, l)
    }).collect();
    for (bh, (o, l)) in per_pair.into_iter().enumerate() {
        let (bi, h) = (bh / heads, bh % heads);
        for i in 0..t {
            out[dims.at(bi, i, h)..][..d].copy_from_slice(&o[i * d..][..d]);
            lse[dims.row(bi, i, h)] = l[i];
        }
    }
}

/// The gradients of q, k and v (overwritten) from `dout`, the forward's `out` and `lse`.
#[allow(clippy::too_many_arguments)]
pub fn backward(dq: &mut [f32], dk: &mut [f32], dv: &mut [f32], dout: &[f32], out: &[f32], lse: &[f32], q: &[f32],
                k: &[f32], v: &[f32], mk: Masking<'_>, b: usize, t: usize, heads: usize, d: usize) {
    let dims = Dims { t, heads, d };
    let scale = 1.0 / (d as f32).sqrt();
    let per_pair: Vec<[Vec<f32>; 3]> = (0..b * heads).into_par_iter().map(|bh| {
        let (bi, h) = (bh / heads, bh % heads);
        let (mut gq, mut gk, mut gv) = (vec![0.0f32; t * d], vec![0.0f32; t * d], vec![0.0f32; t * d]);
        for i in 0..t {
            let l = lse[dims.row(bi, i, h)];
            if l == f32::INFINITY {
                continue;
            }
            let (qi, gi) = (&q[dims.at(bi, i, h)..][..d], &dout[dims.at(bi, i, h)..][..d]);
            // D = rowsum(P' * dP') = dOut . Out
            let big_d = dot(gi, &out[dims.at(bi, i, h)..][..d]);
            for j in 0..t {
                if !mk.visible(bi, t, i, j) {
                    continue;
                }
                let (kj, vj) = (&k[dims.at(bi, j, h)..][..d], &v[dims.at(bi, j, h)..][..d]);
                let p = (scale * dot(qi, kj) - l).exp();
                let z = mk.keep(bh, t, i, j);
                let ds = p * (z * dot(gi, vj) - big_d);
                for c in 0..d {
                    gv[j * d + c] += p * z * gi[c];
                    gq[i * d + c] += scale * ds * kj[c];
                    gk[j * d + c] += scale * ds * qi[c];
                }
            }
        }
        [gq, gk, gv]
    }).collect();
    for (bh, [gq, gk, gv]) in per_pair.into_iter().enumerate() {
        let (bi, h) = (bh / heads, bh % heads);
        for i in 0..t {
            let at = dims.at(bi, i, h);
            dq[at..][..d].copy_from_slice(&gq[i * d..][..d]);
            dk[at..][..d].copy_from_slice(&gk[i * d..][..d]);
            dv[at..][..d].copy_from_slice(&gv[i * d..][..d]);
        }
    }
}
