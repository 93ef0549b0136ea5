//! Finite-difference gradient checks for the layers' backward passes.
//!
//! The scalar under test is `L = sum(y * gy)` for a fixed random `gy`, so `dL/dy = gy` is what
//! each backward receives. Central differences in f32 with a step of 1e-2 give about three
//! significant digits; the check compares whole gradients by relative L2 error.

use crate::rng::Rng;

pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.uniform() * 2.0 - 1.0).collect()
}

pub fn check(what: &str, x: &[f32], analytic: &[f32], gy: &[f32], f: impl Fn(&[f32]) -> Vec<f32>) {
    check_with(what, x, analytic, gy, 1e-2, 2e-2, f)
}

pub fn check_with(what: &str, x: &[f32], analytic: &[f32], gy: &[f32], step: f32, tol: f64,
                  f: impl Fn(&[f32]) -> Vec<f32>) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let loss = |v: &[f32]| -> f64 { f(v).iter().zip(gy).map(|(&a, &b)| a as f64 * b as f64).sum() };
    let mut numeric = vec![0.0f64; x.len()];
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        let orig = xp[i];
        xp[i] = orig + step;
        let lp = loss(&xp);
        xp[i] = orig - step;
        let lm = loss(&xp);
        xp[i] = orig;
        numeric[i] = (lp - lm) / (2.0 * step as f64);
    }
    let diff: f64 = numeric.iter().zip(analytic).map(|(n, &a)| (n - a as f64).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = numeric.iter().map(|n| n * n).sum::<f64>().sqrt().max(1e-6);
    assert!(norm > 1e-4, "{what}: gradient is (numerically) zero; the check would prove nothing");
    let rel = diff / norm;
    eprintln!("gradcheck {what}: relative error {rel:.2e} over {} elements", x.len());
    assert!(rel < tol, "{what}: relative error {rel:.3e} >= {tol:.0e}\nnumeric {numeric:?}\nanalytic {analytic:?}");
}
