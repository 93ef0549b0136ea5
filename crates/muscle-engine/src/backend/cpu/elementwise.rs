//! Element-wise kernels, split across threads when the array is large enough to pay for it.

use super::vmath::{self, multiversion};
use rayon::prelude::*;

/// Elements per parallel chunk: large enough that rayon's per-task cost is negligible.
const CHUNK: usize = 1 << 14;

pub fn par_fill(x: &mut [f32], value: f32) {
    x.par_chunks_mut(CHUNK).for_each(|c| c.fill(value));
}

pub fn add_bias(out: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    let rows_per = (CHUNK / n).max(1);
    out.par_chunks_mut(rows_per * n).for_each(|c| {
        for row in c.chunks_mut(n) {
            for (o, &b) in row.iter_mut().zip(bias) {
                *o += b;
            }
        }
    });
}

/// The sum of partial sums of `n` each, added in their order: rayon's `reduce`/`fold` would add
/// them in whatever tree its work splitting made, and identical runs would differ in their last bits.
pub fn add_in_order(parts: impl IntoIterator<Item = Vec<f32>>, n: usize) -> Vec<f32> {
    let mut total = vec![0.0f32; n];
    for p in parts {
        for (x, y) in total.iter_mut().zip(&p) {
            *x += y;
        }
    }
    total
}

/// `dst (+)= sum over rows of m`, rows of width `dst.len()`.
pub fn column_sums(dst: &mut [f32], m: &[f32], accumulate: bool) {
    let n = dst.len();
    let rows = m.len() / n;
    let rows_per = (CHUNK / n).max(16);
    let total = m[..rows * n]
        .par_chunks(rows_per * n)
        .map(|c| {
            let mut acc = vec![0.0f32; n];
            for row in c.chunks(n) {
                for (a, &x) in acc.iter_mut().zip(row) {
                    *a += x;
                }
            }
            acc
        })
        .collect::<Vec<_>>();
    for (d, s) in dst.iter_mut().zip(add_in_order(total, n)) {
        *d = if accumulate { *d + s } else { s };
    }
}

pub fn axpby(y: &mut [f32], a: f32, x: &[f32], b: f32) {
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
        for (yi, &xi) in y.iter_mut().zip(x) {
            *yi = a * xi + b * *yi;
        }
    });
}

pub fn scale(x: &mut [f32], a: f32) {
    x.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v *= a));
}

pub fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))).for_each(|(o, (a, b))| {
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *o = a + b;
        }
    });
}

pub fn copy(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| d.copy_from_slice(s));
}

pub fn mul_into(out: &mut [f32], x: &[f32], m: &[f32]) {
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(m.par_chunks(CHUNK))).for_each(|(o, (x, m))| {
        for ((o, &x), &m) in o.iter_mut().zip(x).zip(m) {
            *o = x * m;
        }
    });
}

pub fn mul(x: &mut [f32], m: &[f32]) {
    x.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK)).for_each(|(x, m)| {
        for (x, &m) in x.iter_mut().zip(m) {
            *x *= m;
        }
    });
}

/// Dot product accumulated in f64 per chunk: gradient alignment compares tiny norms (5e-7 gates).
/// The chunks' sums are added in chunk order, so identical runs give identical bits.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.par_chunks(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .map(|(a, b)| a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>())
        .collect::<Vec<f64>>()
        .into_iter()
        .sum()
}

const SQRT_1_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// GELU in its exact erf form, as BERT's `hidden_act = "gelu"`.
pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
    out.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)).for_each(|(o, x)| gelu_forward_chunk(o, x));
}

pub fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    dinp.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK)))
        .for_each(|(d, (x, g))| gelu_backward_chunk(d, x, g));
}

/// `gelu(x) = x Phi(x)`, shared by the element-wise pass and the GEMM epilogue so both round alike.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + vmath::erf_fast(x * SQRT_1_2))
}

/// `gelu'(x) = Phi(x) + x phi(x)`.
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    gelu_and_grad(x).1
}

/// `(gelu(x), gelu'(x))` from one `erf` and one `exp`: erf's own `e^{-(x/sqrt 2)^2}` is phi's
/// `e^{-x^2/2}`.
#[inline(always)]
pub fn gelu_and_grad(x: f32) -> (f32, f32) {
    let (erf, gauss) = vmath::erf_and_gauss(x * SQRT_1_2);
    let cdf = 0.5 * (1.0 + erf);
    (x * cdf, cdf + x * (INV_SQRT_2PI * gauss))
}

/// One row of a GEMM epilogue, on slices of the row's width (bias: its columns). Both the fused
/// store (`sgemm::epilogue_block`) and the pass standing in for it without our kernel
/// (`Fused::apply`) call this, so the two compute alike.
pub(crate) enum RowEpilogue<'a> {
    /// `row += bias`.
    Bias(&'a [f32]),
    /// With `z = row + bias`: `act = gelu(z)`, `row = gelu'(z)`.
    BiasGelu(&'a [f32], &'a mut [f32]),
    /// `row *= s`.
    Mul(&'a [f32]),
    /// `row = (row + bias) * mask + res` (no bias: none added; no mask: dropout off).
    BiasDropRes(Option<&'a [f32]>, Option<&'a [f32]>, &'a [f32]),
}

#[inline(always)]
pub(crate) fn epilogue_row(row: &mut [f32], epi: RowEpilogue) {
    match epi {
        RowEpilogue::Bias(bias) => row.iter_mut().zip(bias).for_each(|(v, &b)| *v += b),
        RowEpilogue::BiasGelu(bias, act) => {
            for ((v, &b), o) in row.iter_mut().zip(bias).zip(act) {
                (*o, *v) = gelu_and_grad(*v + b);
            }
        }
        RowEpilogue::Mul(f) => row.iter_mut().zip(f).for_each(|(v, &x)| *v *= x),
        RowEpilogue::BiasDropRes(Some(bias), None, res) => {
            row.iter_mut().zip(bias).zip(res).for_each(|((v, &b), &r)| *v = (*v + b) + r)
        }
        RowEpilogue::BiasDropRes(Some(bias), Some(mask), res) => {
            for (((v, &b), &m), &r) in row.iter_mut().zip(bias).zip(mask).zip(res) {
                *v = (*v + b) * m + r;
            }
        }
        RowEpilogue::BiasDropRes(None, None, res) => row.iter_mut().zip(res).for_each(|(v, &r)| *v += r),
        RowEpilogue::BiasDropRes(None, Some(mask), res) => {
            row.iter_mut().zip(mask).zip(res).for_each(|((v, &m), &r)| *v = *v * m + r)
        }
    }
}

multiversion! {
    fn gelu_forward_chunk(out: &mut [f32], inp: &[f32]) {
        for (o, &x) in out.iter_mut().zip(inp) {
            *o = gelu(x);
        }
    }
}

multiversion! {
    fn gelu_backward_chunk(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
        for ((d, &x), &g) in dinp.iter_mut().zip(inp).zip(dout) {
            *d = g * gelu_grad(x);
        }
    }
}

/// Inverted dropout mask from the counter-based stream of (seed, stream ids): element i depends on i
/// alone, so the mask is the same whatever the thread count, and the CUDA backend draws the same.
pub fn dropout_mask(mask: &mut [f32], p: f32, seed: u64, stream: &[u64]) {
    if p <= 0.0 {
        par_fill(mask, 1.0);
        return;
    }
    let keep = 1.0 / (1.0 - p);
    let key = crate::rng::stream_key(seed, stream);
    mask.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, c)| dropout_chunk(c, key, (ci * CHUNK) as u64, p, keep));
}

multiversion! {
    fn dropout_chunk(mask: &mut [f32], key: u64, base: u64, p: f32, keep: f32) {
        for (i, m) in mask.iter_mut().enumerate() {
            *m = if crate::rng::counter_uniform(key, base + i as u64) < p { 0.0 } else { keep };
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn adamw(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], lr: f32, beta1: f32, beta2: f32,
             eps: f32, weight_decay: f32, step: u64) {
    let bc1 = 1.0 - (beta1 as f64).powi(step as i32);
    let bc2 = 1.0 - (beta2 as f64).powi(step as i32);
    let step_size = (lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let decay = 1.0 - lr * weight_decay;
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for i in 0..p.len() {
                let gi = g[i];
                p[i] *= decay;
                m[i] = beta1 * m[i] + (1.0 - beta1) * gi;
                v[i] = beta2 * v[i] + (1.0 - beta2) * gi * gi;
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] -= step_size * m[i] / denom;
            }
        });
}
