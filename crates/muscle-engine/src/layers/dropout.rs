//! Inverted dropout with seeded masks: the mask is drawn from (seed, stream ids) and applied by
//! multiplication in both directions. Being a pure function of its stream, a mask need not be
//! kept for the backward: the encoder draws its layers' masks again there.

use crate::backend::Backend;

/// Draws the mask and applies it to `x` in place. With `p = 0` the mask is all ones.
pub fn dropout_forward<B: Backend>(be: &B, x: &mut B::Buf, mask: &mut B::Buf, n: usize, p: f32, seed: u64, stream: &[u64]) {
    be.dropout_mask(mask, n, p, seed, stream);
    be.mul(x, mask, n);
}

pub fn dropout_backward<B: Backend>(be: &B, dx: &mut B::Buf, mask: &B::Buf, n: usize) {
    be.mul(dx, mask, n);
}

/// [`dropout_forward`] out of place: `out = x * mask`, `x` kept (the branch it feeds is one of
/// several that read `x`).
#[allow(clippy::too_many_arguments)]
pub fn dropout_forward_into<B: Backend>(be: &B, out: &mut B::Buf, x: &B::Buf, mask: &mut B::Buf, n: usize, p: f32, seed: u64,
                                        stream: &[u64]) {
    be.dropout_mask(mask, n, p, seed, stream);
    be.mul_into(out, x, mask, n);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::layers::gradcheck::{check, rand_vec};

    #[test]
    fn mask_is_seeded_and_has_the_right_rate() {
        let be = Cpu::new();
        let n = 100_000;
        let (mut a, mut b, mut c) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        be.dropout_mask(&mut a, n, 0.1, 3, &[4, 5]);
        be.dropout_mask(&mut b, n, 0.1, 3, &[4, 5]);
        be.dropout_mask(&mut c, n, 0.1, 3, &[4, 6]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let dropped = a.iter().filter(|&&x| x == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.1).abs() < 0.005, "{dropped}");
        assert!(a.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.9).abs() < 1e-6));
    }

    #[test]
    fn gradcheck_dropout() {
        let be = Cpu::new();
        let n = 64;
        let x = rand_vec(n, 1);
        let gy = rand_vec(n, 2);
        let mut mask = vec![0.0; n];
        let mut y = x.clone();
        dropout_forward(&be, &mut y, &mut mask, n, 0.25, 11, &[0]);
        let mut dx = gy.clone();
        dropout_backward(&be, &mut dx, &mask, n);
        check("dropout dx", &x, &dx, &gy, |v| {
            let mut y = v.to_vec();
            let mut m = vec![0.0; n];
            dropout_forward(&be, &mut y, &mut m, n, 0.25, 11, &[0]);
            y
        });
    }
}
