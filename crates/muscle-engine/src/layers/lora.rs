//! LoRA: `y += (alpha / r) * B (A x)` with `A: [r, in]`, `B: [out, r]` (peft's layout).
//! The branch is two small GEMMs beside the frozen weight, never merged during training.
//! Input dropout, where configured, is applied by the caller to `x` before it reaches here.

use crate::backend::{Backend, GemmItem, Mat};

/// One adapter of [`lora_forward_many`]: the projection output it adds to, where its
/// `xa = x A^T: [rows, r]` is kept for the backward, its input and its `A`, `B`.
pub struct LoraFwd<'a, B: Backend> {
    pub out: &'a mut B::Buf,
    pub xa: &'a mut B::Buf,
    pub inp: &'a B::Buf,
    pub a: &'a B::Buf,
    pub b: &'a B::Buf,
}

/// Adds the LoRA update to `out` (which already holds `W x + b`) and saves `xa = x A^T: [rows, r]`.
#[allow(clippy::too_many_arguments)]
pub fn lora_forward<B: Backend>(be: &B, out: &mut B::Buf, xa: &mut B::Buf, inp: &B::Buf, a: &B::Buf, b: &B::Buf,
                                rows: usize, in_f: usize, out_f: usize, r: usize, scale: f32) {
    lora_forward_many(be, &mut [LoraFwd { out, xa, inp, a, b }], rows, in_f, out_f, r, scale);
}

/// [`lora_forward`] for several adapters of one shape (a layer's q and v): each of its two GEMMs
/// runs for all of them in one [`Backend::matmuls`] call.
pub fn lora_forward_many<B: Backend>(be: &B, items: &mut [LoraFwd<'_, B>], rows: usize, in_f: usize, out_f: usize,
                                     r: usize, scale: f32) {
    let mut xa: Vec<GemmItem<'_, B>> = items.iter_mut().map(|it| GemmItem {
        c: &mut *it.xa, c_off: 0, a: Mat { buf: it.inp, offset: 0, ld: in_f, trans: false },
        b: Mat { buf: it.a, offset: 0, ld: in_f, trans: true },
    }).collect();
    be.matmuls(&mut xa, r, rows, r, in_f, 1.0, false);
    drop(xa);
    let mut up: Vec<GemmItem<'_, B>> = items.iter_mut().map(|it| GemmItem {
        c: &mut *it.out, c_off: 0, a: Mat { buf: &*it.xa, offset: 0, ld: r, trans: false },
        b: Mat { buf: it.b, offset: 0, ld: r, trans: true },
    }).collect();
    be.matmuls(&mut up, out_f, rows, out_f, r, scale, true);
}

/// One adapter of [`lora_backward_many`]: where its gradients go (`None` skips one), its scratch
/// `dxa` (`rows * r`), the gradient reaching its output, and what its forward read and kept.
pub struct LoraBwd<'a, B: Backend> {
    pub da: Option<&'a mut B::Buf>,
    pub db: Option<&'a mut B::Buf>,
    pub dxa: &'a mut B::Buf,
    pub dout: &'a B::Buf,
    pub xa: &'a B::Buf,
    pub inp: &'a B::Buf,
    pub a: &'a B::Buf,
    pub b: &'a B::Buf,
}

/// `dB = s dout^T xa`, `dxa = s dout B`, `dA = dxa^T x`, `dinp += dxa A`.
/// `dxa` is scratch of `rows * r`.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward<B: Backend>(be: &B, dinp: Option<&mut B::Buf>, da: Option<&mut B::Buf>, db: Option<&mut B::Buf>,
                                 dxa: &mut B::Buf, dout: &B::Buf, xa: &B::Buf, inp: &B::Buf, a: &B::Buf,
                                 b: &B::Buf, rows: usize, in_f: usize, out_f: usize, r: usize, scale: f32) {
    lora_backward_many(be, dinp, &mut [LoraBwd { da, db, dxa, dout, xa, inp, a, b }], rows, in_f, out_f, r, scale);
}

/// [`lora_backward`] for several adapters of one shape whose inputs' gradients all go to `dinp`:
/// the GEMMs of `dB`, `dxa` and `dA` each run for all of them in one [`Backend::matmuls`] call.
/// The input-gradient GEMMs stay one per adapter, since they all add into `dinp`.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward_many<B: Backend>(be: &B, dinp: Option<&mut B::Buf>, items: &mut [LoraBwd<'_, B>], rows: usize,
                                      in_f: usize, out_f: usize, r: usize, scale: f32) {
    let mut db: Vec<GemmItem<'_, B>> = items.iter_mut().filter_map(|it| {
        let (dout, xa) = (it.dout, it.xa);
        it.db.as_deref_mut().map(|c| GemmItem {
            c, c_off: 0, a: Mat { buf: dout, offset: 0, ld: out_f, trans: true }, b: Mat { buf: xa, offset: 0, ld: r, trans: false },
        })
    }).collect();
    be.matmuls(&mut db, r, out_f, r, rows, scale, false);
    drop(db);
    let mut dxa: Vec<GemmItem<'_, B>> = items.iter_mut().map(|it| GemmItem {
        c: &mut *it.dxa, c_off: 0, a: Mat { buf: it.dout, offset: 0, ld: out_f, trans: false },
        b: Mat { buf: it.b, offset: 0, ld: r, trans: false },
    }).collect();
    be.matmuls(&mut dxa, r, rows, r, out_f, scale, false);
    drop(dxa);
    let mut da: Vec<GemmItem<'_, B>> = items.iter_mut().filter_map(|it| {
        let (dxa, inp) = (&*it.dxa, it.inp);
        it.da.as_deref_mut().map(|c| GemmItem {
            c, c_off: 0, a: Mat { buf: dxa, offset: 0, ld: r, trans: true }, b: Mat { buf: inp, offset: 0, ld: in_f, trans: false },
        })
    }).collect();
    be.matmuls(&mut da, in_f, r, in_f, rows, 1.0, false);
    drop(da);
    if let Some(dinp) = dinp {
        for it in items.iter() {
            be.matmul(dinp, 0, in_f, Mat { buf: &*it.dxa, offset: 0, ld: r, trans: false },
                      Mat { buf: it.a, offset: 0, ld: in_f, trans: false }, rows, in_f, r, 1.0, true);
        }
    }
}

/// The input gradient of a LoRA branch whose input went through dropout, joined to the gradient
/// `d_base` that reaches the same input by other paths: `out = (dxa A) * mask + d_base`, one GEMM
/// with the rest in its store (`dxa` from [`lora_backward`], which is then given no `dinp`).
/// `out` must not be `d_base`; callers swap the two after.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward_input_dropped<B: Backend>(be: &B, out: &mut B::Buf, dxa: &B::Buf, a: &B::Buf, mask: &B::Buf,
                                               d_base: &B::Buf, rows: usize, in_f: usize, r: usize) {
    be.matmul_bias_dropout_residual(out, Mat { buf: dxa, offset: 0, ld: r, trans: false },
                                    Mat { buf: a, offset: 0, ld: in_f, trans: false }, rows, in_f, r, None, Some(mask),
                                    d_base);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::layers::gradcheck::{check, rand_vec};

    #[test]
    fn gradcheck_lora() {
        let be = Cpu::new();
        let (rows, i, o, r, s) = (6, 8, 5, 3, 16.0 / 3.0);
        let x = rand_vec(rows * i, 1);
        let a = rand_vec(r * i, 2);
        let b = rand_vec(o * r, 3);
        let base = rand_vec(rows * o, 4);
        let gy = rand_vec(rows * o, 5);
        let f = |x: &[f32], a: &[f32], b: &[f32]| {
            let mut y = base.clone();
            let mut xa = vec![0.0; rows * r];
            lora_forward(&be, &mut y, &mut xa, &x.to_vec(), &a.to_vec(), &b.to_vec(), rows, i, o, r, s);
            y
        };
        let mut xa = vec![0.0; rows * r];
        let mut y = base.clone();
        lora_forward(&be, &mut y, &mut xa, &x, &a, &b, rows, i, o, r, s);
        let (mut dx, mut da, mut db, mut dxa) = (vec![0.0; rows * i], vec![0.0; r * i], vec![0.0; o * r], vec![0.0; rows * r]);
        lora_backward(&be, Some(&mut dx), Some(&mut da), Some(&mut db), &mut dxa, &gy, &xa, &x, &a, &b, rows, i, o, r, s);
        check("lora dx", &x, &dx, &gy, |v| f(v, &a, &b));
        check("lora dA", &a, &da, &gy, |v| f(&x, v, &b));
        check("lora dB", &b, &db, &gy, |v| f(&x, &a, v));
    }

    /// The branch on a dropped-out input, `y = W-free base + s B A (x * mask)`: the fused input
    /// gradient minus the gradient it joins must be the branch's own.
    #[test]
    fn gradcheck_lora_input_through_dropout() {
        let be = Cpu::new();
        // rows x in large enough for the fused store's full tiles and an edge
        let (rows, i, o, r, s) = (13, 40, 9, 3, 2.0);
        let x = rand_vec(rows * i, 11);
        let a = rand_vec(r * i, 12);
        let b = rand_vec(o * r, 13);
        let gy = rand_vec(rows * o, 14);
        let mask: Vec<f32> = rand_vec(rows * i, 15).iter().map(|&u| if u < -0.5 { 0.0 } else { 4.0 / 3.0 }).collect();
        let d_base = rand_vec(rows * i, 16);
        let f = |x: &[f32]| {
            let xd: Vec<f32> = x.iter().zip(&mask).map(|(v, m)| v * m).collect();
            let (mut y, mut xa) = (vec![0.0; rows * o], vec![0.0; rows * r]);
            lora_forward(&be, &mut y, &mut xa, &xd, &a, &b, rows, i, o, r, s);
            y
        };
        let xd: Vec<f32> = x.iter().zip(&mask).map(|(v, m)| v * m).collect();
        let (mut y, mut xa) = (vec![0.0; rows * o], vec![0.0; rows * r]);
        lora_forward(&be, &mut y, &mut xa, &xd, &a, &b, rows, i, o, r, s);
        let mut dxa = vec![0.0; rows * r];
        lora_backward(&be, None, None, None, &mut dxa, &gy, &xa, &xd, &a, &b, rows, i, o, r, s);
        let mut out = vec![0.0; rows * i];
        lora_backward_input_dropped(&be, &mut out, &dxa, &a, &mask, &d_base, rows, i, r);
        let own: Vec<f32> = out.iter().zip(&d_base).map(|(g, d)| g - d).collect();
        check("lora dx through dropout", &x, &own, &gy, f);
    }
}
