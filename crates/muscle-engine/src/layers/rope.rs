//! Rotary position embeddings (decoders' q and k, before attention), in place; the backward is
//! the opposite rotation of the output gradient.

use crate::backend::Backend;

pub fn rope_forward<B: Backend>(be: &B, x: &mut B::Buf, positions: &[i32], heads: usize, d: usize, theta: f32) {
    be.rope(x, positions, heads, d, theta, false);
}

/// Turns the output gradient `dx` (in place) into the input gradient.
pub fn rope_backward<B: Backend>(be: &B, dx: &mut B::Buf, positions: &[i32], heads: usize, d: usize, theta: f32) {
    be.rope(dx, positions, heads, d, theta, true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::layers::gradcheck::{check, rand_vec};

    #[test]
    fn gradcheck_rope_and_the_reference_formula() {
        let (heads, d) = (3, 8);
        let positions = [0, 5, 17, 1000, 3];
        let rows = positions.len();
        let be = Cpu::new();
        let x = rand_vec(rows * heads * d, 1);
        let gy = rand_vec(rows * heads * d, 2);
        let f = |v: &[f32]| {
            let mut y = v.to_vec();
            rope_forward(&be, &mut y, &positions, heads, d, 10000.0);
            y
        };
        let y = f(&x);
        // q cos + rotate_half(q) sin, rotate_half(q) = (-q2, q1), angles pos / theta^(2j/d) repeated
        for r in 0..rows {
            for h in 0..heads {
                for c in 0..d {
                    let j = c % (d / 2);
                    let angle = positions[r] as f64 / 10000f64.powf((2 * j) as f64 / d as f64);
                    let q = |i: usize| x[r * heads * d + h * d + i] as f64;
                    let rot = if c < d / 2 { -q(c + d / 2) } else { q(c - d / 2) };
                    let want = q(c) * angle.cos() + rot * angle.sin();
                    let got = y[r * heads * d + h * d + c] as f64;
                    // f32 angles at position 1000 carry about 1e-4 of rounding
                    assert!((got - want).abs() < 2e-4, "rope row {r} head {h} [{c}]: {got} vs {want}");
                }
            }
        }
        let mut dx = gy.clone();
        rope_backward(&be, &mut dx, &positions, heads, d, 10000.0);
        check("rope dx", &x, &dx, &gy, f);
        // a rotation: the inverse undoes it
        let mut back = y.clone();
        rope_backward(&be, &mut back, &positions, heads, d, 10000.0);
        for (a, b) in back.iter().zip(&x) {
            assert!((a - b).abs() < 1e-5, "inverse rope: {a} vs {b}");
        }
    }
}
