//! `y = x W^T + b` with `W: [out, in]` in Hugging Face layout, `x: [rows, in]`.

use crate::backend::{Backend, Mat};

#[allow(clippy::too_many_arguments)]
pub fn linear_forward<B: Backend>(be: &B, out: &mut B::Buf, inp: &B::Buf, w: &B::Buf, bias: Option<&B::Buf>,
                                  rows: usize, in_f: usize, out_f: usize) {
    be.matmul(out, 0, out_f, Mat { buf: inp, offset: 0, ld: in_f, trans: false },
              Mat { buf: w, offset: 0, ld: in_f, trans: true }, rows, out_f, in_f, 1.0, false);
    if let Some(b) = bias {
        be.add_bias(out, b, rows, out_f);
    }
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
}
