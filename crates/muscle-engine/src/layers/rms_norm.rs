//! RMSNorm over the hidden dimension (decoders); the forward saves rstd per row.

use crate::backend::Backend;

#[allow(clippy::too_many_arguments)]
pub fn rms_norm_forward<B: Backend>(be: &B, out: &mut B::Buf, rstd: &mut B::Buf, inp: &B::Buf, w: &B::Buf,
                                    rows: usize, h: usize, eps: f32) {
    be.rms_norm_forward(out, rstd, inp, w, rows, h, eps);
}

/// Writes `dinp` (not accumulated) and, where it trains, `dw`.
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_backward<B: Backend>(be: &B, dinp: &mut B::Buf, dw: Option<&mut B::Buf>, dout: &B::Buf, inp: &B::Buf,
                                     w: &B::Buf, rstd: &B::Buf, rows: usize, h: usize) {
    be.rms_norm_backward(dinp, dw, dout, inp, w, rstd, rows, h);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::layers::gradcheck::{check, rand_vec};

    #[test]
    fn gradcheck_rms_norm() {
        let (rows, h) = (37, 13);
        let be = Cpu::new();
        let x: Vec<f32> = rand_vec(rows * h, 1).iter().map(|v| v * 3.0).collect();
        let w = rand_vec(h, 2);
        let gy = rand_vec(rows * h, 3);
        let f = |x: &[f32], w: &[f32]| {
            let (mut y, mut r) = (vec![0.0; rows * h], vec![0.0; rows]);
            rms_norm_forward(&be, &mut y, &mut r, &x.to_vec(), &w.to_vec(), rows, h, 1e-6);
            y
        };
        let (mut y, mut r) = (vec![0.0; rows * h], vec![0.0; rows]);
        rms_norm_forward(&be, &mut y, &mut r, &x, &w, rows, h, 1e-6);
        // the closed form of one row
        let ms: f64 = x[..h].iter().map(|&v| v as f64 * v as f64).sum::<f64>() / h as f64;
        let want = x[0] as f64 / (ms + 1e-6).sqrt() * w[0] as f64;
        assert!((y[0] as f64 - want).abs() < 1e-6, "rms_norm row 0: {} vs {want}", y[0]);
        let (mut dx, mut dw) = (vec![0.0; rows * h], vec![0.0; h]);
        rms_norm_backward(&be, &mut dx, Some(&mut dw), &gy, &x, &w, &r, rows, h);
        check("rms_norm dx", &x, &dx, &gy, |v| f(v, &w));
        check("rms_norm dw", &w, &dw, &gy, |v| f(&x, v));
    }
}
