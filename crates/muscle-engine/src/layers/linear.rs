//! `y = x W^T + b` with `W: [out, in]` in Hugging Face layout, `x: [rows, in]`.

use crate::backend::{Backend, Mat, NormOut};

#[allow(clippy::too_many_arguments)]
pub fn linear_forward<B: Backend>(be: &B, out: &mut B::Buf, inp: &B::Buf, w: &B::Buf, bias: Option<&B::Buf>,
                                  rows: usize, in_f: usize, out_f: usize) {
    let (x, wt) = (Mat { buf: inp, offset: 0, ld: in_f, trans: false }, Mat { buf: w, offset: 0, ld: in_f, trans: true });
    match bias {
        Some(b) => be.matmul_bias(out, x, wt, rows, out_f, in_f, b),
        None => be.matmul(out, 0, out_f, x, wt, rows, out_f, in_f, 1.0, false),
    }
}

/// [`linear_forward`] with a bias for several layers of one input (`(out, w, bias)` each, all
/// `out_f` wide): attention's q, k and v, which a backend may compute sharing work on `inp`.
pub fn linears_forward<B: Backend>(be: &B, items: &mut [(&mut B::Buf, &B::Buf, &B::Buf)], inp: &B::Buf, rows: usize,
                                   in_f: usize, out_f: usize) {
    let x = Mat { buf: inp, offset: 0, ld: in_f, trans: false };
    let mut gemms: Vec<_> = items.iter_mut()
        .map(|(out, w, bias)| (&mut **out, Mat { buf: *w, offset: 0, ld: in_f, trans: true }, *bias))
        .collect();
    be.matmuls_bias(x, &mut gemms, rows, out_f, in_f);
}

/// `out = (x W^T + b) * mask + residual`: a layer's output through dropout (`mask` from
/// `Backend::dropout_mask`, `None` when dropout is off) into the residual sum, in one pass where
/// the backend fuses them. The backward is the usual one: the residual's gradient passes as is,
/// the layer's through the mask.
#[allow(clippy::too_many_arguments)]
pub fn linear_dropout_residual_forward<B: Backend>(be: &B, out: &mut B::Buf, inp: &B::Buf, w: &B::Buf, bias: &B::Buf,
                                                   mask: Option<&B::Buf>, residual: &B::Buf, rows: usize, in_f: usize,
                                                   out_f: usize) {
    be.matmul_bias_dropout_residual(out, Mat { buf: inp, offset: 0, ld: in_f, trans: false },
                                    Mat { buf: w, offset: 0, ld: in_f, trans: true }, rows, out_f, in_f, Some(bias), mask,
                                    residual);
}

/// [`linear_dropout_residual_forward`] into `out`, then the layer norm of `out` into `norm`
/// (see [`Backend::matmul_bias_dropout_residual_norm`]).
#[allow(clippy::too_many_arguments)]
pub fn linear_dropout_residual_norm_forward<B: Backend>(be: &B, out: &mut B::Buf, inp: &B::Buf, w: &B::Buf,
                                                        bias: &B::Buf, mask: Option<&B::Buf>, residual: &B::Buf,
                                                        rows: usize, in_f: usize, out_f: usize, norm: NormOut<'_, B>) {
    be.matmul_bias_dropout_residual_norm(out, Mat { buf: inp, offset: 0, ld: in_f, trans: false },
                                         Mat { buf: w, offset: 0, ld: in_f, trans: true }, rows, out_f, in_f, Some(bias),
                                         mask, residual, norm);
}

/// `act = gelu(x W^T + b)`: a linear layer followed by GELU (BERT's intermediate dense), in one
/// pass where the backend fuses them. `saved` keeps what the backward needs of the pre-activation
/// (see [`Backend::matmul_bias_gelu`]).
#[allow(clippy::too_many_arguments)]
pub fn linear_gelu_forward<B: Backend>(be: &B, saved: &mut B::Buf, act: &mut B::Buf, inp: &B::Buf, w: &B::Buf,
                                       bias: &B::Buf, rows: usize, in_f: usize, out_f: usize) {
    be.matmul_bias_gelu(saved, act, Mat { buf: inp, offset: 0, ld: in_f, trans: false },
                        Mat { buf: w, offset: 0, ld: in_f, trans: true }, rows, out_f, in_f, bias);
}

/// The input gradient of a linear layer whose input is `gelu(pre)`, taken through the GELU:
/// `d_pre = (dout W) * gelu'(pre)`, `saved` from [`linear_gelu_forward`]. `d_act` may receive
/// `dout W` on the way (backends that do not fuse the two); the layer's own weight and bias
/// gradients come from [`linear_backward`].
#[allow(clippy::too_many_arguments)]
pub fn linear_gelu_backward_input<B: Backend>(be: &B, d_pre: &mut B::Buf, d_act: &mut B::Buf, dout: &B::Buf,
                                              w: &B::Buf, saved: &B::Buf, rows: usize, in_f: usize, out_f: usize) {
    be.matmul_gelu_backward(d_pre, d_act, Mat { buf: dout, offset: 0, ld: out_f, trans: false },
                            Mat { buf: w, offset: 0, ld: in_f, trans: false }, rows, in_f, out_f, saved);
}

/// `dinp (+)= dout W`, `dw = dout^T x`, `db = colsum(dout)`. Frozen weights pass `None` for `dw`
/// and `db`, which skips their GEMMs entirely.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<B: Backend>(be: &B, dinp: Option<(&mut B::Buf, bool)>, dw: Option<&mut B::Buf>,
                                   db: Option<&mut B::Buf>, dout: &B::Buf, inp: &B::Buf, w: &B::Buf,
                                   rows: usize, in_f: usize, out_f: usize) {
    if let Some((dinp, accumulate)) = dinp {
        be.matmul(dinp, 0, in_f, Mat { buf: dout, offset: 0, ld: out_f, trans: false },
                  Mat { buf: w, offset: 0, ld: in_f, trans: false }, rows, in_f, out_f, 1.0, accumulate);
    }
    if let Some(dw) = dw {
        be.matmul(dw, 0, in_f, Mat { buf: dout, offset: 0, ld: out_f, trans: true },
                  Mat { buf: inp, offset: 0, ld: in_f, trans: false }, out_f, in_f, rows, 1.0, false);
    }
    if let Some(db) = db {
        be.bias_grad(db, dout, rows, out_f, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::layers::gradcheck::{check, rand_vec};

    #[test]
    fn gradcheck_linear() {
        let be = Cpu::new();
        let (rows, i, o) = (5, 7, 4);
        let x = rand_vec(rows * i, 1);
        let w = rand_vec(o * i, 2);
        let b = rand_vec(o, 3);
        let gy = rand_vec(rows * o, 4);
        let f = |x: &[f32], w: &[f32], b: &[f32]| {
            let mut y = vec![0.0; rows * o];
            linear_forward(&be, &mut y, &x.to_vec(), &w.to_vec(), Some(&b.to_vec()), rows, i, o);
            y
        };
        let (mut dx, mut dw, mut db) = (vec![0.0; rows * i], vec![0.0; o * i], vec![0.0; o]);
        linear_backward(&be, Some((&mut dx, false)), Some(&mut dw), Some(&mut db), &gy, &x, &w, rows, i, o);
        check("linear dx", &x, &dx, &gy, |v| f(v, &w, &b));
        check("linear dw", &w, &dw, &gy, |v| f(&x, v, &b));
        check("linear db", &b, &db, &gy, |v| f(&x, &w, v));
    }

    /// `y = gelu(x W1^T + b1) W2^T` through the fused pair against finite differences.
    #[test]
    fn gradcheck_linear_gelu() {
        let be = Cpu::new();
        let (rows, i, hid, o) = (5, 7, 9, 4);
        let x: Vec<f32> = rand_vec(rows * i, 1).iter().map(|v| v * 2.0).collect();
        let (w1, b1, w2) = (rand_vec(hid * i, 2), rand_vec(hid, 3), rand_vec(o * hid, 4));
        let gy = rand_vec(rows * o, 5);
        let f = |x: &[f32], w1: &[f32], b1: &[f32]| {
            let (mut saved, mut act, mut y) = (vec![0.0; rows * hid], vec![0.0; rows * hid], vec![0.0; rows * o]);
            linear_gelu_forward(&be, &mut saved, &mut act, &x.to_vec(), &w1.to_vec(), &b1.to_vec(), rows, i, hid);
            linear_forward(&be, &mut y, &act, &w2, None, rows, hid, o);
            y
        };
        let (mut saved, mut act) = (vec![0.0; rows * hid], vec![0.0; rows * hid]);
        linear_gelu_forward(&be, &mut saved, &mut act, &x, &w1, &b1, rows, i, hid);
        let (mut d_pre, mut d_act) = (vec![0.0; rows * hid], vec![0.0; rows * hid]);
        linear_gelu_backward_input(&be, &mut d_pre, &mut d_act, &gy, &w2, &saved, rows, hid, o);
        let (mut dx, mut dw1, mut db1) = (vec![0.0; rows * i], vec![0.0; hid * i], vec![0.0; hid]);
        linear_backward(&be, Some((&mut dx, false)), Some(&mut dw1), Some(&mut db1), &d_pre, &x, &w1, rows, i, hid);
        check("linear+gelu dx", &x, &dx, &gy, |v| f(v, &w1, &b1));
        check("linear+gelu dw", &w1, &dw1, &gy, |v| f(&x, v, &b1));
        check("linear+gelu db", &b1, &db1, &gy, |v| f(&x, &w1, v));
    }

    /// At BERT-like sizes (several k blocks, edge tiles, both threads) the fused GEMM epilogues
    /// equal the unfused passes they replace.
    #[test]
    fn fused_epilogues_equal_the_separate_passes() {
        let be = Cpu::new();
        for &(rows, i, o) in &[(70, 300, 45), (8, 600, 33), (131, 40, 260)] {
            let (x, w, b) = (rand_vec(rows * i, 1), rand_vec(o * i, 2), rand_vec(o, 3));
            let (xt, wt) = (Mat { buf: &x, offset: 0, ld: i, trans: false }, Mat { buf: &w, offset: 0, ld: i, trans: true });
            let mut want = vec![0.0; rows * o];
            be.matmul(&mut want, 0, o, xt, wt, rows, o, i, 1.0, false);
            be.add_bias(&mut want, &b, rows, o);
            let mut want_act = vec![0.0; rows * o];
            be.gelu_forward(&mut want_act, &want, rows * o);
            let mut got = vec![0.0; rows * o];
            linear_forward(&be, &mut got, &x, &w, Some(&b), rows, i, o);
            let close = |a: &[f32], b: &[f32], what: &str| {
                for (j, (p, q)) in a.iter().zip(b).enumerate() {
                    assert!((p - q).abs() <= 1e-6 * (1.0 + q.abs()), "{what} {rows}x{i}x{o} [{j}]: {p} vs {q}");
                }
            };
            close(&got, &want, "bias");
            // through dropout into a residual, with and without a mask
            let (res, mask) = (rand_vec(rows * o, 6), rand_vec(rows * o, 7));
            for m in [Some(&mask), None] {
                let mut want_r = want.clone();
                if let Some(m) = m {
                    be.mul(&mut want_r, m, rows * o);
                }
                for (v, &r) in want_r.iter_mut().zip(&res) {
                    *v += r;
                }
                let mut got_r = vec![0.0; rows * o];
                linear_dropout_residual_forward(&be, &mut got_r, &x, &w, &b, m, &res, rows, i, o);
                close(&got_r, &want_r, "bias+dropout+residual");
            }
            let (mut saved, mut act) = (vec![0.0; rows * o], vec![0.0; rows * o]);
            linear_gelu_forward(&be, &mut saved, &mut act, &x, &w, &b, rows, i, o);
            close(&act, &want_act, "bias+gelu act");
            // backward: dout [rows, i] -> d_pre [rows, o] through W [i, o] (a layer from o to i)
            let (g, w2) = (rand_vec(rows * i, 4), rand_vec(i * o, 5));
            let mut d_act = vec![0.0; rows * o];
            be.matmul(&mut d_act, 0, o, Mat { buf: &g, offset: 0, ld: i, trans: false },
                      Mat { buf: &w2, offset: 0, ld: o, trans: false }, rows, o, i, 1.0, false);
            let mut want_d = vec![0.0; rows * o];
            be.gelu_backward(&mut want_d, &want, &d_act, rows * o);
            let (mut d_pre, mut scratch) = (vec![0.0; rows * o], vec![0.0; rows * o]);
            linear_gelu_backward_input(&be, &mut d_pre, &mut scratch, &g, &w2, &saved, rows, o, i);
            close(&d_pre, &want_d, "gelu grad");
        }
    }
}
