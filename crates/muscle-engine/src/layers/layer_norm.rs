//! Layer norm over the hidden dimension; the forward saves (mean, rstd) per row.

use crate::backend::Backend;

#[allow(clippy::too_many_arguments)]
pub fn layer_norm_forward<B: Backend>(be: &B, out: &mut B::Buf, mean: &mut B::Buf, rstd: &mut B::Buf,
                                      inp: &B::Buf, w: &B::Buf, b: &B::Buf, rows: usize, h: usize, eps: f32) {
    be.layer_norm_forward(out, mean, rstd, inp, w, b, rows, h, eps);
}

/// Writes `dinp` (not accumulated) and, where they train, `dw`, `db`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward<B: Backend>(be: &B, dinp: &mut B::Buf, dw: Option<&mut B::Buf>, db: Option<&mut B::Buf>,
                                       dout: &B::Buf, inp: &B::Buf, w: &B::Buf, mean: &B::Buf, rstd: &B::Buf,
                                       rows: usize, h: usize) {
    be.layer_norm_backward(dinp, dw, db, dout, inp, w, mean, rstd, rows, h);
}

/// [`layer_norm_backward`], and with `dropped = (buf, mask)`, `buf = dinp * mask` too (see
/// [`Backend::layer_norm_backward_dropout`]).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward_dropout<B: Backend>(be: &B, dinp: &mut B::Buf, dw: Option<&mut B::Buf>,
                                               db: Option<&mut B::Buf>, dout: &B::Buf, inp: &B::Buf, w: &B::Buf,
                                               mean: &B::Buf, rstd: &B::Buf, rows: usize, h: usize,
                                               dropped: Option<(&mut B::Buf, &B::Buf)>) {
    be.layer_norm_backward_dropout(dinp, dw, db, dout, inp, w, mean, rstd, rows, h, dropped);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::layers::gradcheck::{check, rand_vec};

    #[test]
    fn gradcheck_layer_norm() {
        // more rows than one parallel task holds; widths below one vector and with whole vectors
        // plus a tail (the CPU kernels reduce in 8-wide partials)
        for h in [6, 21] {
            gradcheck_width(40, h);
        }
    }

    fn gradcheck_width(rows: usize, h: usize) {
        let be = Cpu::new();
        let x: Vec<f32> = rand_vec(rows * h, 1).iter().map(|v| v * 3.0).collect();
        let w = rand_vec(h, 2);
        let b = rand_vec(h, 3);
        let gy = rand_vec(rows * h, 4);
        let f = |x: &[f32], w: &[f32], b: &[f32]| {
            let (mut y, mut m, mut r) = (vec![0.0; rows * h], vec![0.0; rows], vec![0.0; rows]);
            layer_norm_forward(&be, &mut y, &mut m, &mut r, &x.to_vec(), &w.to_vec(), &b.to_vec(), rows, h, 1e-12);
            y
        };
        let (mut y, mut m, mut r) = (vec![0.0; rows * h], vec![0.0; rows], vec![0.0; rows]);
        layer_norm_forward(&be, &mut y, &mut m, &mut r, &x, &w, &b, rows, h, 1e-12);
        let (mut dx, mut dw, mut db) = (vec![0.0; rows * h], vec![0.0; h], vec![0.0; h]);
        layer_norm_backward(&be, &mut dx, Some(&mut dw), Some(&mut db), &gy, &x, &w, &m, &r, rows, h);
        check("layer_norm dx", &x, &dx, &gy, |v| f(v, &w, &b));
        check("layer_norm dw", &w, &dw, &gy, |v| f(&x, v, &b));
        check("layer_norm db", &b, &db, &gy, |v| f(&x, &w, v));
    }
}
