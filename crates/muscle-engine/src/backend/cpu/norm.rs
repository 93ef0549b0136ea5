//! Layer norm over the last dimension, forward saving (mean, rstd) for the backward.

use super::elementwise::add_in_order;
use super::vmath::{multiversion, sum_lanes, LANES};
use rayon::prelude::*;

const ROWS_PER_TASK: usize = 16;
/// Rows per partial sum of the layer norm's parameter gradients.
const PARAM_ROWS: usize = 64;

pub fn layer_norm_forward(out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], inp: &[f32], w: &[f32],
                          b: &[f32], eps: f32) {
    let h = w.len();
    out.par_chunks_mut(h * ROWS_PER_TASK)
        .zip(inp.par_chunks(h * ROWS_PER_TASK))
        .zip(mean.par_chunks_mut(ROWS_PER_TASK).zip(rstd.par_chunks_mut(ROWS_PER_TASK)))
        .for_each(|((o, x), (mu, rs))| forward_rows(o, x, mu, rs, w, b, eps));
}

multiversion! {
    /// Rows of the forward. Mean and variance accumulate in f64 (as the reference's two-pass
    /// statistics, exact enough for 1e-5 parity at any width) over `LANES` interleaved partials,
    /// which vectorise where a running `.sum()` stays a serial chain.
    fn forward_rows(o: &mut [f32], x: &[f32], mu: &mut [f32], rs: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        let h = w.len();
        for (r, (orow, xrow)) in o.chunks_mut(h).zip(x.chunks(h)).enumerate() {
            let m = sum_f64(xrow, |v| v as f64) / h as f64;
            let var = sum_f64(xrow, |v| (v as f64 - m) * (v as f64 - m)) / h as f64;
            let s = 1.0 / (var + eps as f64).sqrt();
            let (m, s) = (m as f32, s as f32);
            for j in 0..h {
                orow[j] = (xrow[j] - m) * s * w[j] + b[j];
            }
            mu[r] = m;
            rs[r] = s;
        }
    }
}

/// `sum f(x[i])` in f64 over `LANES` interleaved partial sums.
#[inline(always)]
fn sum_f64(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let full = x.len() / LANES * LANES;
    let mut acc = [0.0f64; LANES];
    for c in x[..full].chunks_exact(LANES) {
        for l in 0..LANES {
            acc[l] += f(c[l]);
        }
    }
    let tail: f64 = x[full..].iter().map(|&v| f(v)).sum();
    acc.iter().sum::<f64>() + tail
}

#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(dinp: &mut [f32], dw: Option<&mut [f32]>, db: Option<&mut [f32]>, dout: &[f32],
                           inp: &[f32], w: &[f32], mean: &[f32], rstd: &[f32]) {
    let h = w.len();
    dinp.par_chunks_mut(h * ROWS_PER_TASK)
        .zip(dout.par_chunks(h * ROWS_PER_TASK).zip(inp.par_chunks(h * ROWS_PER_TASK)))
        .zip(mean.par_chunks(ROWS_PER_TASK).zip(rstd.par_chunks(ROWS_PER_TASK)))
        .for_each(|((di, (go, x)), (mu, rs))| backward_rows(di, go, x, w, mu, rs));
    if dw.is_none() && db.is_none() {
        return;
    }
    // Parameter gradients: partial sums over fixed blocks of rows, added in block order (a rayon
    // fold/reduce would split and combine as its threads happen to run, and the gradients would
    // differ in their last bits between identical runs).
    let rows = mean.len();
    let (parts_w, parts_b): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (0..rows.div_ceil(PARAM_ROWS))
        .into_par_iter()
        .map(|blk| {
            let (mut gw, mut gb) = (vec![0.0f32; h], vec![0.0f32; h]);
            for r in blk * PARAM_ROWS..((blk + 1) * PARAM_ROWS).min(rows) {
                for j in 0..h {
                    let g = dout[r * h + j];
                    gw[j] += g * (inp[r * h + j] - mean[r]) * rstd[r];
                    gb[j] += g;
                }
            }
            (gw, gb)
        })
        .unzip();
    let (gw, gb) = (add_in_order(parts_w, h), add_in_order(parts_b, h));
    if let Some(dw) = dw {
        dw.copy_from_slice(&gw);
    }
    if let Some(db) = db {
        db.copy_from_slice(&gb);
    }
}

multiversion! {
    /// Rows of the input gradient: `dx = (g w - mean(g w) - n mean(g w n)) rstd`, the two means
    /// over `LANES` interleaved partial sums.
    fn backward_rows(di: &mut [f32], go: &[f32], x: &[f32], w: &[f32], mu: &[f32], rs: &[f32]) {
        let h = w.len();
        let full = h / LANES * LANES;
        for r in 0..mu.len() {
            let (g, xr, d) = (&go[r * h..][..h], &x[r * h..][..h], &mut di[r * h..][..h]);
            let (m, s) = (mu[r], rs[r]);
            let (mut acc_dn, mut acc_dnn) = ([0.0f32; LANES], [0.0f32; LANES]);
            for ((gc, xc), wc) in g[..full].chunks_exact(LANES).zip(xr[..full].chunks_exact(LANES))
                .zip(w[..full].chunks_exact(LANES)) {
                for l in 0..LANES {
                    let dn = gc[l] * wc[l];
                    acc_dn[l] += dn;
                    acc_dnn[l] += dn * ((xc[l] - m) * s);
                }
            }
            let (mut sum_dn, mut sum_dn_n) = (sum_lanes(acc_dn), sum_lanes(acc_dnn));
            for j in full..h {
                let dn = g[j] * w[j];
                sum_dn += dn;
                sum_dn_n += dn * ((xr[j] - m) * s);
            }
            let (mdn, mdnn) = (sum_dn / h as f32, sum_dn_n / h as f32);
            for j in 0..h {
                let n = (xr[j] - m) * s;
                d[j] = (g[j] * w[j] - mdn - n * mdnn) * s;
            }
        }
    }
}
