//! MSLR, the multi-scale radial low-rank branch (ALGORITHM.md section 2):
//! `y += (alpha_m / k) * R (s ⊙ (L x))`, `L: [n*k, in]`, `R: [out, n*k]`, and `s` the frequency
//! band with each entry repeated `k` times. Scaling a low-rank component of the input by `s_i`
//! is a radial scaling in frequency space: it moves high-frequency content to where networks
//! learn fast.

use crate::backend::{Backend, Mat};

/// The scaling vector: each band entry repeated `rank` times (`[s1 x k, s2 x k, ...]`).
pub fn scales(band: &[f32], rank: usize) -> Vec<f32> {
    band.iter().flat_map(|&s| std::iter::repeat_n(s, rank)).collect()
}

/// Adds the branch to `out` and saves `us = s ⊙ (x L^T): [rows, nk]`.
#[allow(clippy::too_many_arguments)]
pub fn mslr_forward<B: Backend>(be: &B, out: &mut B::Buf, us: &mut B::Buf, inp: &B::Buf, l: &B::Buf, r: &B::Buf,
                                s: &[f32], rows: usize, in_f: usize, out_f: usize, scale: f32) {
    let nk = s.len();
    be.matmul(us, 0, nk, Mat { buf: inp, offset: 0, ld: in_f, trans: false },
              Mat { buf: l, offset: 0, ld: in_f, trans: true }, rows, nk, in_f, 1.0, false);
    be.scale_cols(us, s, rows, nk);
    be.matmul(out, 0, out_f, Mat { buf: us, offset: 0, ld: nk, trans: false },
              Mat { buf: r, offset: 0, ld: nk, trans: true }, rows, out_f, nk, scale, true);
}

/// `dR = c dout^T us`, `du = s ⊙ (c dout R)`, `dL = du^T x`, `dinp += du L`; `du` is scratch
/// of `rows * nk`.
#[allow(clippy::too_many_arguments)]
pub fn mslr_backward<B: Backend>(be: &B, dinp: Option<&mut B::Buf>, dl: Option<&mut B::Buf>, dr: Option<&mut B::Buf>,
                                 du: &mut B::Buf, dout: &B::Buf, us: &B::Buf, inp: &B::Buf, l: &B::Buf,
                                 r: &B::Buf, s: &[f32], rows: usize, in_f: usize, out_f: usize, scale: f32) {
    let nk = s.len();
    if let Some(dr) = dr {
        be.matmul(dr, 0, nk, Mat { buf: dout, offset: 0, ld: out_f, trans: true },
                  Mat { buf: us, offset: 0, ld: nk, trans: false }, out_f, nk, rows, scale, false);
    }
    be.matmul(du, 0, nk, Mat { buf: dout, offset: 0, ld: out_f, trans: false },
              Mat { buf: r, offset: 0, ld: nk, trans: false }, rows, nk, out_f, scale, false);
    be.scale_cols(du, s, rows, nk);
    if let Some(dl) = dl {
        be.matmul(dl, 0, in_f, Mat { buf: du, offset: 0, ld: nk, trans: true },
                  Mat { buf: inp, offset: 0, ld: in_f, trans: false }, nk, in_f, rows, 1.0, false);
    }
    if let Some(dinp) = dinp {
        be.matmul(dinp, 0, in_f, Mat { buf: du, offset: 0, ld: nk, trans: false },
                  Mat { buf: l, offset: 0, ld: in_f, trans: false }, rows, in_f, nk, 1.0, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::layers::gradcheck::{check_with, rand_vec};

    #[test]
    fn scales_repeat_each_band_entry() {
        assert_eq!(scales(&[1.0, 4.0, 8.0], 2), vec![1.0, 1.0, 4.0, 4.0, 8.0, 8.0]);
    }

    #[test]
    fn gradcheck_mslr() {
        let be = Cpu::new();
        let (rows, i, o) = (4, 6, 5);
        let s = scales(&[1.0, 4.0, 8.0], 2);
        let nk = s.len();
        let scale = 6.0 / 2.0;
        let x: Vec<f32> = rand_vec(rows * i, 1).iter().map(|v| v * 0.1).collect();
        let l: Vec<f32> = rand_vec(nk * i, 2).iter().map(|v| v * 0.1).collect();
        let r: Vec<f32> = rand_vec(o * nk, 3).iter().map(|v| v * 0.1).collect();
        let gy = rand_vec(rows * o, 5);
        let f = |x: &[f32], l: &[f32], r: &[f32]| {
            let mut y = vec![0.0; rows * o];
            let mut us = vec![0.0; rows * nk];
            mslr_forward(&be, &mut y, &mut us, &x.to_vec(), &l.to_vec(), &r.to_vec(), &s, rows, i, o, scale);
            y
        };
        let mut us = vec![0.0; rows * nk];
        let mut y = vec![0.0; rows * o];
        mslr_forward(&be, &mut y, &mut us, &x, &l, &r, &s, rows, i, o, scale);
        let (mut dx, mut dl, mut dr, mut du) = (vec![0.0; rows * i], vec![0.0; nk * i], vec![0.0; o * nk], vec![0.0; rows * nk]);
        mslr_backward(&be, Some(&mut dx), Some(&mut dl), Some(&mut dr), &mut du, &gy, &us, &x, &l, &r, &s, rows, i, o, scale);
        // The branch is linear in each argument, so a small step is exact up to rounding.
        check_with("mslr dx", &x, &dx, &gy, 1e-3, 1e-2, |v| f(v, &l, &r));
        check_with("mslr dL", &l, &dl, &gy, 1e-3, 1e-2, |v| f(&x, v, &r));
        check_with("mslr dR", &r, &dr, &gy, 1e-3, 1e-2, |v| f(&x, &l, v));
    }
}
