//! The gated MLP's middle of decoders (Llama's `down(silu(gate(x)) * up(x))`): `silu(gate) * up`.

use crate::backend::Backend;

pub fn silu_gate_forward<B: Backend>(be: &B, out: &mut B::Buf, gate: &B::Buf, up: &B::Buf, n: usize) {
    be.silu_gate_forward(out, gate, up, n);
}

pub fn silu_gate_backward<B: Backend>(be: &B, dgate: &mut B::Buf, dup: &mut B::Buf, gate: &B::Buf, up: &B::Buf,
                                      dout: &B::Buf, n: usize) {
    be.silu_gate_backward(dgate, dup, gate, up, dout, n);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::layers::gradcheck::{check, rand_vec};

    #[test]
    fn gradcheck_silu_gate() {
        let n = 301;
        let be = Cpu::new();
        let gate: Vec<f32> = rand_vec(n, 1).iter().map(|v| v * 4.0).collect();
        let up = rand_vec(n, 2);
        let gy = rand_vec(n, 3);
        let f = |g: &[f32], u: &[f32]| {
            let mut y = vec![0.0; n];
            silu_gate_forward(&be, &mut y, &g.to_vec(), &u.to_vec(), n);
            y
        };
        let y = f(&gate, &up);
        let want = gate[0] as f64 / (1.0 + (-gate[0] as f64).exp()) * up[0] as f64;
        assert!((y[0] as f64 - want).abs() < 1e-6, "silu(gate) up: {} vs {want}", y[0]);
        let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
        silu_gate_backward(&be, &mut dg, &mut du, &gate, &up, &gy, n);
        check("silu_gate dgate", &gate, &dg, &gy, |v| f(v, &up));
        check("silu_gate dup", &up, &du, &gy, |v| f(&gate, v));
    }
}
