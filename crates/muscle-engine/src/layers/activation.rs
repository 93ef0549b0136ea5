//! GELU (exact erf form, BERT's `gelu`) and tanh (the pooler's and RoBERTa head's activation).

use crate::backend::Backend;

pub fn gelu_forward<B: Backend>(be: &B, out: &mut B::Buf, inp: &B::Buf, n: usize) {
    be.gelu_forward(out, inp, n);
}

pub fn gelu_backward<B: Backend>(be: &B, dinp: &mut B::Buf, inp: &B::Buf, dout: &B::Buf, n: usize) {
    be.gelu_backward(dinp, inp, dout, n);
}

pub fn tanh_forward<B: Backend>(be: &B, out: &mut B::Buf, inp: &B::Buf, n: usize) {
    be.tanh_forward(out, inp, n);
}

/// Uses the saved output: `tanh' = 1 - y^2`.
pub fn tanh_backward<B: Backend>(be: &B, dinp: &mut B::Buf, out: &B::Buf, dout: &B::Buf, n: usize) {
    be.tanh_backward(dinp, out, dout, n);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::layers::gradcheck::{check_with, rand_vec};

    #[test]
    fn gelu_matches_reference_values() {
        let be = Cpu::new();
        let x = vec![-3.0, -1.0, 0.0, 0.5, 2.0];
        let mut y = vec![0.0; 5];
        gelu_forward(&be, &mut y, &x, 5);
        // torch.nn.functional.gelu (erf form)
        let want = [-0.004_049_7, -0.158_655_3, 0.0, 0.345_731_3, 1.954_5];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn gradcheck_gelu_and_tanh() {
        let be = Cpu::new();
        let n = 50;
        let x: Vec<f32> = rand_vec(n, 1).iter().map(|v| v * 3.0).collect();
        let gy = rand_vec(n, 2);
        let mut dx = vec![0.0; n];
        gelu_backward(&be, &mut dx, &x, &gy, n);
        check_with("gelu dx", &x, &dx, &gy, 1e-3, 1e-2, |v| {
            let mut y = vec![0.0; n];
            gelu_forward(&be, &mut y, &v.to_vec(), n);
            y
        });
        let mut y = vec![0.0; n];
        tanh_forward(&be, &mut y, &x, n);
        tanh_backward(&be, &mut dx, &y, &gy, n);
        check_with("tanh dx", &x, &dx, &gy, 1e-3, 1e-2, |v| {
            let mut y = vec![0.0; n];
            tanh_forward(&be, &mut y, &v.to_vec(), n);
            y
        });
    }
}
