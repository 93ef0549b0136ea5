//! The decoder (Llama) blocks' element-wise and row kernels: RMSNorm, SiLU gating and rotary
//! position embeddings, as Hugging Face's `LlamaRMSNorm`, `LlamaMLP` (`silu(gate) * up`) and
//! `apply_rotary_pos_emb` compute them.

use rayon::prelude::*;

const ROWS_PER_TASK: usize = 16;
const CHUNK: usize = 1 << 14;

/// `out = x rstd w` per row, `rstd = 1 / sqrt(mean(x^2) + eps)` (the mean of squares in f64).
pub fn rms_norm_forward(out: &mut [f32], rstd: &mut [f32], inp: &[f32], w: &[f32], eps: f32) {
    let h = w.len();
    out.par_chunks_mut(h * ROWS_PER_TASK)
        .zip(inp.par_chunks(h * ROWS_PER_TASK))
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .for_each(|((o, x), rs)| {
            for ((orow, xrow), r) in o.chunks_mut(h).zip(x.chunks(h)).zip(rs.iter_mut()) {
                let ms = xrow.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / h as f64;
                let s = (1.0 / (ms + eps as f64).sqrt()) as f32;
                for j in 0..h {
                    orow[j] = xrow[j] * s * w[j];
                }
                *r = s;
            }
        });
}

/// `dx = rstd (g w - n mean(g w n))` with `n = x rstd`; `dw = sum over rows of g n` (overwritten).
pub fn rms_norm_backward(dinp: &mut [f32], dw: Option<&mut [f32]>, dout: &[f32], inp: &[f32], w: &[f32], rstd: &[f32]) {
    let h = w.len();
    dinp.par_chunks_mut(h * ROWS_PER_TASK)
        .zip(dout.par_chunks(h * ROWS_PER_TASK).zip(inp.par_chunks(h * ROWS_PER_TASK)))
        .zip(rstd.par_chunks(ROWS_PER_TASK))
        .for_each(|((d, (g, x)), rs)| {
            for (r, &s) in rs.iter().enumerate() {
                let (g, x, d) = (&g[r * h..][..h], &x[r * h..][..h], &mut d[r * h..][..h]);
                let m = (0..h).map(|j| g[j] * w[j] * x[j] * s).sum::<f32>() / h as f32;
                for j in 0..h {
                    d[j] = s * (g[j] * w[j] - x[j] * s * m);
                }
            }
        });
    if let Some(dw) = dw {
        // partial sums over fixed blocks of rows, added in block order: identical runs, identical bits
        let rows = rstd.len();
        let parts: Vec<Vec<f32>> = (0..rows.div_ceil(64))
            .into_par_iter()
            .map(|blk| {
                let mut acc = vec![0.0f32; h];
                for r in blk * 64..((blk + 1) * 64).min(rows) {
                    for j in 0..h {
                        acc[j] += dout[r * h + j] * inp[r * h + j] * rstd[r];
                    }
                }
                acc
            })
            .collect();
        dw.copy_from_slice(&super::elementwise::add_in_order(parts, h));
    }
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `out = silu(gate) up`, `silu(x) = x sigmoid(x)`.
pub fn silu_gate_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    out.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK))).for_each(|(o, (g, u))| {
        for i in 0..o.len() {
            o[i] = g[i] * sigmoid(g[i]) * u[i];
        }
    });
}

/// `dup = dout silu(gate)`, `dgate = dout up sigmoid(gate) (1 + gate (1 - sigmoid(gate)))`.
pub fn silu_gate_backward(dgate: &mut [f32], dup: &mut [f32], gate: &[f32], up: &[f32], dout: &[f32]) {
    dgate.par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK))))
        .for_each(|((dg, du), (g, (u, o)))| {
            for i in 0..dg.len() {
                let s = sigmoid(g[i]);
                du[i] = o[i] * g[i] * s;
                dg[i] = o[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
            }
        });
}

/// Rotary embeddings in place over `x: [rows, heads * d]`, row r at position `pos[r]`: within each
/// head, element j < d/2 pairs with j + d/2 and the pair turns by `pos inv_freq_j`, `inv_freq_j =
/// theta^(-2j/d)` (f32, as the reference computes it). `inverse` turns the other way: the backward.
pub fn rope(x: &mut [f32], pos: &[i32], heads: usize, d: usize, theta: f32, inverse: bool) {
    let half = d / 2;
    let inv_freq: Vec<f32> = (0..half).map(|j| 1.0 / theta.powf((2 * j) as f32 / d as f32)).collect();
    x.par_chunks_mut(heads * d).zip(pos.par_iter()).for_each(|(row, &p)| {
        for j in 0..half {
            let angle = p as f32 * inv_freq[j];
            let (sin, cos) = (if inverse { -angle.sin() } else { angle.sin() }, angle.cos());
            for hd in row.chunks_mut(d) {
                let (a, b) = (hd[j], hd[j + half]);
                hd[j] = a * cos - b * sin;
                hd[j + half] = b * cos + a * sin;
            }
        }
    });
}
