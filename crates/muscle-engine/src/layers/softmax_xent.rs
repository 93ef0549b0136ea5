//! Softmax + mean cross-entropy over the classes, fused: the forward saves probabilities and the
//! backward is `(p - onehot) / rows`.

use crate::backend::Backend;

pub fn softmax_xent_forward<B: Backend>(be: &B, probs: &mut B::Buf, logits: &B::Buf, labels: &[i32], rows: usize, n: usize) -> f32 {
    be.softmax_xent_forward(probs, logits, labels, rows, n)
}

pub fn softmax_xent_backward<B: Backend>(be: &B, dlogits: &mut B::Buf, probs: &B::Buf, labels: &[i32], rows: usize, n: usize) {
    be.softmax_xent_backward(dlogits, probs, labels, rows, n);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::layers::gradcheck::{check_with, rand_vec};

    #[test]
    fn loss_value_and_gradcheck() {
        let be = Cpu::new();
        let (rows, n) = (3, 4);
        let z: Vec<f32> = rand_vec(rows * n, 1).iter().map(|v| v * 4.0).collect();
        let labels = [2, 0, 3];
        let mut p = vec![0.0; rows * n];
        let loss = softmax_xent_forward(&be, &mut p, &z, &labels, rows, n);
        let mut want = 0.0f64;
        for r in 0..rows {
            let zr = &z[r * n..][..n];
            let lse = zr.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
            want += lse - zr[labels[r] as usize] as f64;
        }
        assert!((loss as f64 - want / rows as f64).abs() < 1e-6);
        let mut dz = vec![0.0; rows * n];
        softmax_xent_backward(&be, &mut dz, &p, &labels, rows, n);
        // scalar output: gy = [1]
        check_with("softmax_xent dlogits", &z, &dz, &[1.0], 1e-2, 1e-2, |v| {
            let mut p = vec![0.0; rows * n];
            vec![softmax_xent_forward(&be, &mut p, &v.to_vec(), &labels, rows, n)]
        });
    }
}
