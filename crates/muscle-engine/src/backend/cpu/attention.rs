//! Multi-head attention on the CPU, one (batch, head) pair per task.
//!
//! Q, K, V and the output are `[b*t, heads*d]` row-major (heads interleaved in the row, as the
//! projections produce them), so each head is a strided `[t, d]` view and no transpose copies are
//! made. The per-head products are small and run single-threaded inside the task.

use super::sgemm;
use super::vmath::{self, multiversion};
use rayon::prelude::*;
use std::cell::RefCell;

thread_local! {
    /// Per-thread scratch for the [t, t] temporaries, kept across steps (no steady-state allocation).
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
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

#[allow(clippy::too_many_arguments)]
pub fn forward(out: &mut [f32], probs: &mut [f32], q: &[f32], k: &[f32], v: &[f32], key_mask: &[i32],
               drop: Option<&[f32]>, b: usize, t: usize, heads: usize, d: usize) {
    let hd = heads * d;
    let scale = 1.0 / (d as f32).sqrt();
    let out_ptr = SharedMut(out.as_mut_ptr(), out.len());
    probs[..b * heads * t * t].par_chunks_mut(t * t).enumerate().for_each(|(bh, p)| {
        let (bi, h) = (bh / heads, bh % heads);
        let base = bi * t * hd + h * d;
        // scores = scale * Q K^T
        sgemm(t, t, d, p, t, &q[base..], hd, false, &k[base..], hd, true, scale, false, false);
        let mask = &key_mask[bi * t..][..t];
        softmax_rows(p, mask);
        // SAFETY: this task writes only rows bi*t..bi*t+t, columns h*d..h*d+d of `out`.
        let o = unsafe { out_ptr.slice() };
        match drop {
            None => sgemm(t, d, t, &mut o[base..], hd, p, t, false, &v[base..], hd, false, 1.0, false, false),
            Some(dm) => SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                let pd = &mut s.0;
                pd.resize(t * t, 0.0);
                let m = &dm[bh * t * t..][..t * t];
                for i in 0..t * t {
                    pd[i] = p[i] * m[i];
                }
                sgemm(t, d, t, &mut o[base..], hd, pd, t, false, &v[base..], hd, false, 1.0, false, false);
            }),
        }
    });
}

#[allow(clippy::too_many_arguments)]
pub fn backward(dq: &mut [f32], dk: &mut [f32], dv: &mut [f32], dout: &[f32], probs: &[f32], q: &[f32],
                k: &[f32], v: &[f32], drop: Option<&[f32]>, b: usize, t: usize, heads: usize, d: usize) {
    let hd = heads * d;
    let scale = 1.0 / (d as f32).sqrt();
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
            let mut s = s.borrow_mut();
            let (dp, pd) = &mut *s;
            dp.resize(t * t, 0.0);
            // SAFETY: each task writes only its own (batch, head) block of dq, dk, dv.
            let (dq, dk, dv) = unsafe { (dq_p.slice(), dk_p.slice(), dv_p.slice()) };
            // dP' = dOut V^T
            sgemm(t, t, d, dp, t, &dout[base..], hd, false, &v[base..], hd, true, 1.0, false, false);
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
            sgemm(t, d, t, &mut dv[base..], hd, p_used, t, true, &dout[base..], hd, false, 1.0, false, false);
            // dS = P * (dP - rowsum(P * dP)), reusing dp in place
            for (prow, dprow) in p.chunks(t).zip(dp.chunks_mut(t)) {
                let s: f32 = prow.iter().zip(dprow.iter()).map(|(a, b)| a * b).sum();
                for j in 0..t {
                    dprow[j] = prow[j] * (dprow[j] - s);
                }
            }
            // dQ = scale * dS K ; dK = scale * dS^T Q
            sgemm(t, d, t, &mut dq[base..], hd, dp, t, false, &k[base..], hd, false, scale, false, false);
            sgemm(t, d, t, &mut dk[base..], hd, dp, t, true, &q[base..], hd, false, scale, false, false);
        });
    });
}

multiversion! {
    /// Row-wise softmax of `p` (rows of `mask.len()`) over the unmasked keys; masked keys get 0,
    /// and a fully masked row is all 0.
    fn softmax_rows(p: &mut [f32], mask: &[i32]) {
        let t = mask.len();
        for row in p.chunks_mut(t) {
            let mut max = f32::NEG_INFINITY;
            for j in 0..t {
                if mask[j] != 0 && row[j] > max {
                    max = row[j];
                }
            }
            let mut sum = 0.0f32;
            for j in 0..t {
                let e = if mask[j] != 0 { vmath::exp(row[j] - max) } else { 0.0 };
                row[j] = e;
                sum += e;
            }
            let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
            row.iter_mut().for_each(|x| *x *= inv);
        }
    }
}
