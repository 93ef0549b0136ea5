//! Layer norm over the last dimension, forward saving (mean, rstd) for the backward.

use rayon::prelude::*;

const ROWS_PER_TASK: usize = 16;

pub fn layer_norm_forward(out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], inp: &[f32], w: &[f32],
                          b: &[f32], eps: f32) {
    let h = w.len();
    out.par_chunks_mut(h * ROWS_PER_TASK)
        .zip(inp.par_chunks(h * ROWS_PER_TASK))
        .zip(mean.par_chunks_mut(ROWS_PER_TASK).zip(rstd.par_chunks_mut(ROWS_PER_TASK)))
        .for_each(|((o, x), (mu, rs))| {
            for (r, (orow, xrow)) in o.chunks_mut(h).zip(x.chunks(h)).enumerate() {
                let m = xrow.iter().map(|&v| v as f64).sum::<f64>() / h as f64;
                let var = xrow.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / h as f64;
                let s = 1.0 / (var + eps as f64).sqrt();
                let (m, s) = (m as f32, s as f32);
                for j in 0..h {
                    orow[j] = (xrow[j] - m) * s * w[j] + b[j];
                }
                mu[r] = m;
                rs[r] = s;
            }
        });
}

#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(dinp: &mut [f32], dw: Option<&mut [f32]>, db: Option<&mut [f32]>, dout: &[f32],
                           inp: &[f32], w: &[f32], mean: &[f32], rstd: &[f32]) {
    let h = w.len();
    dinp.par_chunks_mut(h * ROWS_PER_TASK)
        .zip(dout.par_chunks(h * ROWS_PER_TASK).zip(inp.par_chunks(h * ROWS_PER_TASK)))
        .zip(mean.par_chunks(ROWS_PER_TASK).zip(rstd.par_chunks(ROWS_PER_TASK)))
        .for_each(|((di, (go, x)), (mu, rs))| {
            for r in 0..mu.len() {
                let (g, xr, d) = (&go[r * h..][..h], &x[r * h..][..h], &mut di[r * h..][..h]);
                let mut sum_dn = 0.0f32;
                let mut sum_dn_n = 0.0f32;
                for j in 0..h {
                    let n = (xr[j] - mu[r]) * rs[r];
                    let dn = g[j] * w[j];
                    sum_dn += dn;
                    sum_dn_n += dn * n;
                }
                let (mdn, mdnn) = (sum_dn / h as f32, sum_dn_n / h as f32);
                for j in 0..h {
                    let n = (xr[j] - mu[r]) * rs[r];
                    d[j] = (g[j] * w[j] - mdn - n * mdnn) * rs[r];
                }
            }
        });
    if dw.is_none() && db.is_none() {
        return;
    }
    // Parameter gradients: per-task partial sums over rows, then a reduction.
    let rows = mean.len();
    let (gw, gb) = (0..rows)
        .into_par_iter()
        .fold(
            || (vec![0.0f32; h], vec![0.0f32; h]),
            |(mut gw, mut gb), r| {
                for j in 0..h {
                    let g = dout[r * h + j];
                    gw[j] += g * (inp[r * h + j] - mean[r]) * rstd[r];
                    gb[j] += g;
                }
                (gw, gb)
            },
        )
        .reduce(
            || (vec![0.0f32; h], vec![0.0f32; h]),
            |(mut a, mut b), (c, d)| {
                for j in 0..h {
                    a[j] += c[j];
                    b[j] += d[j];
                }
                (a, b)
            },
        );
    if let Some(dw) = dw {
        dw.copy_from_slice(&gw);
    }
    if let Some(db) = db {
        db.copy_from_slice(&gb);
    }
}
