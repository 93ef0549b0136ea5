//! Multi-head attention on the CPU, one (batch, head) pair per task.
//!
//! Q, K, V and the output are `[b*t, heads*d]` row-major (heads interleaved in the row, as the
//! projections produce them), so each head is a strided `[t, d]` view. The per-head products are
//! small (64 x 64 x 64 for BERT-base at 64 tokens) and run single-threaded inside the task, through
//! the unpacked AVX2 kernel where it applies: packing both operands of such a product costs about as
//! much as multiplying them. That kernel reads B by contiguous rows, so `K^T` and `V^T` are copied
//! once per head into a panel-padded scratch; the other operands are used in place.

use super::sgemm;
use super::vmath::{self, multiversion};
use rayon::prelude::*;
use std::cell::RefCell;

/// Per-thread scratch kept across steps (no steady-state allocation): two `[t, t]` temporaries and
/// a transposed head `[d, t rounded up to a whole panel]`.
#[derive(Default)]
struct Scratch {
    dp: Vec<f32>,
    pd: Vec<f32>,
    tr: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A raw pointer that tasks writing disjoint regions may share.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32, usize);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}
impl SharedMut {
    /// SAFETY: callers write only the (batch, head) region they own.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0, self.1)
    }
}

/// Columns of one micro-panel of the unpacked kernel (B is read in whole panels).
const PANEL: usize = 16;

/// Whether the per-head products take the unpacked kernel: our AVX2 GEMM is in use and a head's
/// columns fill whole panels (so reading V, dOut, K or Q by panels stays inside the head).
fn direct(d: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::gemm_kernel() == super::GemmKernel::Avx2 && d.is_multiple_of(PANEL)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = d;
        false
    }
}

/// A per-head operand: a slice and its row and column strides.
#[derive(Clone, Copy)]
struct Op<'a> {
    x: &'a [f32],
    rs: usize,
    cs: usize,
}

/// `C[m, n] = alpha A B` (overwritten) for one head: A with any strides, B row-major with leading
/// dimension `ldb` (`cs == 1`); on the unpacked path B must be readable for `n` rounded up to a
/// whole panel.
#[allow(clippy::too_many_arguments)]
fn head_gemm(m: usize, n: usize, k: usize, c: &mut [f32], ldc: usize, a: Op, b: &[f32], ldb: usize, alpha: f32, use_direct: bool) {
    #[cfg(target_arch = "x86_64")]
    if use_direct && m > 0 && n > 0 && k > 0 {
        let np = n.next_multiple_of(PANEL);
        assert!((m - 1) * a.rs + (k - 1) * a.cs < a.x.len(), "attention: A out of bounds");
        assert!((k - 1) * ldb + np - 1 < b.len(), "attention: B out of bounds");
        assert!((m - 1) * ldc + n - 1 < c.len(), "attention: C out of bounds");
        let av = sgemm::View { ptr: a.x.as_ptr(), rs: a.rs, cs: a.cs };
        // SAFETY: `direct` checked AVX2/FMA; the asserts keep every access inside the slices; `c`
        // is borrowed mutably, so it does not alias A or B.
        unsafe { sgemm::gemm_direct(m, n, k, av, b.as_ptr(), ldb, sgemm::Out { ptr: c.as_mut_ptr(), ldc }, alpha) };
        return;
    }
    let _ = use_direct;
    let (ta, lda) = if a.cs == 1 { (false, a.rs) } else { (true, a.cs) };
    super::sgemm(m, n, k, c, ldc, a.x, lda, ta, b, ldb, false, alpha, false, false);
}

/// `dst[c * tp + j] = src[j * ld + c]` for `j < t`, `c < d`, and 0 in the padding columns `t..tp`.
fn transpose_head(dst: &mut Vec<f32>, src: &[f32], ld: usize, t: usize, d: usize, tp: usize) {
    dst.clear();
    dst.resize(d * tp, 0.0);
    for j in 0..t {
        let row = &src[j * ld..j * ld + d];
        for (c, &v) in row.iter().enumerate() {
            dst[c * tp + j] = v;
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn forward(out: &mut [f32], probs: &mut [f32], q: &[f32], k: &[f32], v: &[f32], key_mask: &[i32],
               drop: Option<&[f32]>, b: usize, t: usize, heads: usize, d: usize) {
    let hd = heads * d;
    let scale = 1.0 / (d as f32).sqrt();
    let use_direct = direct(d);
    let tp = t.next_multiple_of(PANEL);
    let out_ptr = SharedMut(out.as_mut_ptr(), out.len());
    probs[..b * heads * t * t].par_chunks_mut(t * t).enumerate().for_each(|(bh, p)| {
        let (bi, h) = (bh / heads, bh % heads);
        let base = bi * t * hd + h * d;
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            // scores = scale * Q K^T
            let qa = Op { x: &q[base..], rs: hd, cs: 1 };
            if use_direct {
                transpose_head(&mut s.tr, &k[base..], hd, t, d, tp);
                head_gemm(t, t, d, p, t, qa, &s.tr, tp, scale, true);
            } else {
                super::sgemm(t, t, d, p, t, &q[base..], hd, false, &k[base..], hd, true, scale, false, false);
            }
            softmax_rows(p, &key_mask[bi * t..][..t]);
            let used: &[f32] = match drop {
                None => p,
                Some(dm) => {
                    s.pd.clear();
                    s.pd.extend(p.iter().zip(&dm[bh * t * t..][..t * t]).map(|(x, m)| x * m));
                    &s.pd
                }
            };
            // SAFETY: this task writes only rows bi*t..bi*t+t, columns h*d..h*d+d of `out`.
            let o = unsafe { out_ptr.slice() };
            head_gemm(t, d, t, &mut o[base..], hd, Op { x: used, rs: t, cs: 1 }, &v[base..], hd, 1.0, use_direct);
        });
    });
}

#[allow(clippy::too_many_arguments)]
pub fn backward(dq: &mut [f32], dk: &mut [f32], dv: &mut [f32], dout: &[f32], probs: &[f32], q: &[f32],
                k: &[f32], v: &[f32], drop: Option<&[f32]>, b: usize, t: usize, heads: usize, d: usize) {
    let hd = heads * d;
    let scale = 1.0 / (d as f32).sqrt();
    let use_direct = direct(d);
    let tp = t.next_multiple_of(PANEL);
    let (dq_p, dk_p, dv_p) = (
        SharedMut(dq.as_mut_ptr(), dq.len()),
        SharedMut(dk.as_mut_ptr(), dk.len()),
        SharedMut(dv.as_mut_ptr(), dv.len()),
    );
    (0..b * heads).into_par_iter().for_each(|bh| {
        let (bi, h) = (bh / heads, bh % heads);
        let base = bi * t * hd + h * d;
        let p = &probs[bh * t * t..][..t * t];
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            let Scratch { dp, pd, tr } = s;
            dp.resize(t * t, 0.0);
            // SAFETY: each task writes only its own (batch, head) block of dq, dk, dv.
            let (dq, dk, dv) = unsafe { (dq_p.slice(), dk_p.slice(), dv_p.slice()) };
            // dP' = dOut V^T
            let ga = Op { x: &dout[base..], rs: hd, cs: 1 };
            if use_direct {
                transpose_head(tr, &v[base..], hd, t, d, tp);
                head_gemm(t, t, d, dp, t, ga, tr, tp, 1.0, true);
            } else {
                super::sgemm(t, t, d, dp, t, &dout[base..], hd, false, &v[base..], hd, true, 1.0, false, false);
            }
            // dV = P'^T dOut, with P' the dropped-out probabilities used in the forward
            let p_used: &[f32] = match drop {
                None => p,
                Some(dm) => {
                    pd.resize(t * t, 0.0);
                    let m = &dm[bh * t * t..][..t * t];
                    for i in 0..t * t {
                        pd[i] = p[i] * m[i];
                        dp[i] *= m[i];
                    }
                    pd
                }
            };
            head_gemm(t, d, t, &mut dv[base..], hd, Op { x: p_used, rs: 1, cs: t }, &dout[base..], hd, 1.0, use_direct);
            // dS = P * (dP - rowsum(P * dP)), reusing dp in place
            softmax_backward_rows(p, dp, t);
            // dQ = scale * dS K ; dK = scale * dS^T Q
            head_gemm(t, d, t, &mut dq[base..], hd, Op { x: dp, rs: t, cs: 1 }, &k[base..], hd, scale, use_direct);
            head_gemm(t, d, t, &mut dk[base..], hd, Op { x: dp, rs: 1, cs: t }, &q[base..], hd, scale, use_direct);
        });
    });
}

multiversion! {
    /// Row-wise softmax of `p` (rows of `mask.len()`) over the unmasked keys; masked keys get 0,
    /// and a fully masked row is all 0. Written as plain loops with no branch and no running
    /// reduction around the `exp` (the loop vectoriser handles those, as in GELU), the max and the
    /// sum as `LANES` interleaved partials (a running max or sum is a serial chain LLVM may not
    /// reorder).
    fn softmax_rows(p: &mut [f32], mask: &[i32]) {
        let t = mask.len();
        for row in p.chunks_mut(t) {
            let mut max = vmath::max_lanes(row, mask);
            // a fully masked row: any finite shift (every key is multiplied by 0 below)
            if max == f32::NEG_INFINITY {
                max = 0.0;
            }
            // masked keys are computed and zeroed (`exp` clamps its argument, so never inf * 0)
            for (v, &m) in row.iter_mut().zip(mask) {
                *v = vmath::exp(*v - max) * (m != 0) as i32 as f32;
            }
            let sum = vmath::sum_slice(row);
            let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

multiversion! {
    /// Softmax backward on one head's rows, in place: `dS = P * (dP - rowsum(P * dP))`.
    fn softmax_backward_rows(p: &[f32], dp: &mut [f32], t: usize) {
        for (prow, dprow) in p.chunks(t).zip(dp.chunks_mut(t)) {
            let s = vmath::dot_lanes(prow, dprow);
            for (d, &pv) in dprow.iter_mut().zip(prow) {
                *d = pv * (*d - s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| r.uniform() * 2.0 - 1.0).collect()
    }

    /// Attention by the definition, in f64: the reference for both product paths.
    #[allow(clippy::type_complexity)]
    fn naive(q: &[f32], k: &[f32], v: &[f32], g: &[f32], mask: &[i32], drop: &[f32], b: usize, t: usize, heads: usize,
             d: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let hd = heads * d;
        let scale = 1.0 / (d as f64).sqrt();
        let (mut out, mut probs) = (vec![0.0; b * t * hd], vec![0.0; b * heads * t * t]);
        let (mut dq, mut dk, mut dv) = (vec![0.0; b * t * hd], vec![0.0; b * t * hd], vec![0.0; b * t * hd]);
        let at = |x: &[f32], bi: usize, i: usize, h: usize, c: usize| x[(bi * t + i) * hd + h * d + c] as f64;
        for bi in 0..b {
            for h in 0..heads {
                let pb = (bi * heads + h) * t * t;
                for i in 0..t {
                    let s: Vec<f64> = (0..t).map(|j| (0..d).map(|c| at(q, bi, i, h, c) * at(k, bi, j, h, c)).sum::<f64>() * scale).collect();
                    let mx = (0..t).filter(|&j| mask[bi * t + j] != 0).map(|j| s[j]).fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = (0..t).map(|j| if mask[bi * t + j] != 0 { (s[j] - mx).exp() } else { 0.0 }).collect();
                    let z: f64 = e.iter().sum();
                    for j in 0..t {
                        probs[pb + i * t + j] = if z > 0.0 { e[j] / z } else { 0.0 };
                    }
                }
                for i in 0..t {
                    for c in 0..d {
                        let mut o = 0.0;
                        let mut gq = 0.0;
                        let row: Vec<f64> = (0..t).map(|j| (0..d).map(|cc| at(g, bi, i, h, cc) * at(v, bi, j, h, cc)).sum::<f64>() * drop[pb + i * t + j] as f64).collect();
                        let rs: f64 = (0..t).map(|j| probs[pb + i * t + j] * row[j]).sum();
                        for j in 0..t {
                            let p = probs[pb + i * t + j];
                            o += p * drop[pb + i * t + j] as f64 * at(v, bi, j, h, c);
                            gq += p * (row[j] - rs) * at(k, bi, j, h, c) * scale;
                            // dK_j and dV_j gather from every query i
                            dk[(bi * t + j) * hd + h * d + c] += p * (row[j] - rs) * at(q, bi, i, h, c) * scale;
                            dv[(bi * t + j) * hd + h * d + c] += p * drop[pb + i * t + j] as f64 * at(g, bi, i, h, c);
                        }
                        out[(bi * t + i) * hd + h * d + c] = o;
                        dq[(bi * t + i) * hd + h * d + c] = gq;
                    }
                }
            }
        }
        (out, probs, dq, dk, dv)
    }

    /// Both product paths (unpacked at d = 32 and 64 where AVX2 runs, packed at d = 8) against the
    /// definition: padding, a fully masked sequence, dropout, and t that fills no whole panel.
    #[test]
    fn forward_and_backward_match_the_definition() {
        for &(t, d) in &[(37, 32), (16, 64), (5, 8)] {
            let (b, heads) = (3, 2);
            let hd = heads * d;
            let (q, k, v, g) = (rand(b * t * hd, 1), rand(b * t * hd, 2), rand(b * t * hd, 3), rand(b * t * hd, 4));
            let mut mask = vec![1i32; b * t];
            mask[t + t - 1] = 0;
            mask[2 * t..].fill(0);
            let pn = b * heads * t * t;
            let drop: Vec<f32> = rand(pn, 5).iter().map(|&u| if u < -0.6 { 0.0 } else { 1.25 }).collect();
            let (want_o, want_p, want_dq, want_dk, want_dv) = naive(&q, &k, &v, &g, &mask, &drop, b, t, heads, d);
            let (mut out, mut probs) = (vec![0.0; b * t * hd], vec![0.0; pn]);
            forward(&mut out, &mut probs, &q, &k, &v, &mask, Some(&drop), b, t, heads, d);
            let (mut dq, mut dk, mut dv) = (vec![0.0; b * t * hd], vec![0.0; b * t * hd], vec![0.0; b * t * hd]);
            backward(&mut dq, &mut dk, &mut dv, &g, &probs, &q, &k, &v, Some(&drop), b, t, heads, d);
            for (name, got, want) in [("out", &out, &want_o), ("probs", &probs, &want_p), ("dq", &dq, &want_dq),
                                      ("dk", &dk, &want_dk), ("dv", &dv, &want_dv)] {
                for (i, (&x, &y)) in got.iter().zip(want.iter()).enumerate() {
                    assert!((x as f64 - y).abs() <= 2e-5 * (1.0 + y.abs()), "t {t} d {d} {name}[{i}]: {x} vs {y}");
                }
            }
        }
    }
}
