//! Gradient alignment (ALGORITHM.md section 3): per trainable tensor, project the training
//! gradient `g` on the reference gradient `r`: `a = |g·r| / |r|^2 * r` (always along `r`), then
//! use `a` alone, or `(1 - rho) a + rho g`, or `g` unchanged, as the rule decides.

use crate::backend::Backend;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GaRule {
    /// The reference implementation's rule, decided afresh each step: projection alone when
    /// `n_ref > min_ref_grad_norm` and `ref_loss > min_ref_loss`; else, when the schedule gives
    /// a mixing weight (`Some(rho)`: `maxRawGradRatio > 0` and `epoch >= GAEpoch`), the mix
    /// `(1 - rho) a + rho g` (rho = 0 at `GAEpoch` itself means the projection); else (`None`)
    /// `g` unchanged.
    Gated { min_ref_loss: f32, min_ref_grad_norm: f32, rho: Option<f32> },
    /// The paper's Eq. 7-8: always `(1 - rho) a + rho g`.
    Paper { rho: f32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaBranch {
    /// no reference batch this step
    None,
    /// projection alone
    Projection,
    /// `(1 - rho) a + rho g`
    Mixed,
    /// `g` unchanged (the gate closed and the schedule gives no mixing weight)
    Raw,
}

impl GaBranch {
    pub fn as_str(self) -> &'static str {
        match self {
            GaBranch::None => "none",
            GaBranch::Projection => "projection",
            GaBranch::Mixed => "mixed",
            GaBranch::Raw => "raw",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GaOutcome {
    pub branch: GaBranch,
    /// global L2 norm of the training gradient `g`
    pub grad_norm: f64,
    /// global L2 norm of the aligned gradient, from the same dot products (no second pass over
    /// the gradients, no second wait): `|a g + b r|^2 = a^2 g.g + 2ab g.r + b^2 r.r` per tensor
    pub aligned_norm: f64,
    /// the `extra` dot products asked of [`align`], in order
    pub extra: Vec<f64>,
    /// mean over tensors with a non-zero reference gradient of `|r|` per tensor
    pub n_ref: f64,
    /// global L2 norm of the reference gradient
    pub ref_grad_norm: f64,
    /// tensors that received the projection (|g| > 0 and |r| > 0, and the branch projects)
    pub projected: usize,
}

/// The rule's decision and its mixing weight of the raw gradient: `Some(rho)` means
/// `(1 - rho) a + rho g` (rho = 0: projection alone), `None` means keep `g`.
pub fn decide(rule: GaRule, ref_loss: f32, n_ref: f64) -> (GaBranch, Option<f32>) {
    match rule {
        GaRule::Paper { rho } => (GaBranch::Mixed, Some(rho)),
        GaRule::Gated { min_ref_loss, min_ref_grad_norm, rho } => {
            if n_ref > min_ref_grad_norm as f64 && ref_loss > min_ref_loss {
                (GaBranch::Projection, Some(0.0))
            } else if let Some(rho) = rho {
                (GaBranch::Mixed, Some(rho))
            } else {
                (GaBranch::Raw, None)
            }
        }
    }
}

/// Combines per tensor: on entry `grads[i]` holds the reference gradient `r` and `g[i]` the
/// training gradient; on exit `grads[i]` holds the aligned gradient. Only `Some` entries (the
/// trainable tensors) take part. `extra` dot products go in the same batch (one read-back: the
/// step's losses), and `ref_loss` gives the reference loss from their values.
pub fn align<B: Backend>(be: &B, grads: &mut [Option<B::Buf>], g: &[Option<B::Buf>], numel: &[usize], rule: GaRule,
                         extra: &[(&B::Buf, &B::Buf, usize)], ref_loss: impl FnOnce(&[f64]) -> f32) -> GaOutcome {
    // dot products first, all in one batch: the decision needs n_ref over all tensors
    let mut pairs = extra.to_vec();
    for i in 0..grads.len() {
        if let (Some(r), Some(gi)) = (grads[i].as_ref(), g[i].as_ref()) {
            let n = numel[i];
            pairs.extend([(gi, r, n), (gi, gi, n), (r, r, n)]);
        }
    }
    let mut dots = be.dots(&pairs).into_iter();
    let extra: Vec<f64> = dots.by_ref().take(extra.len()).collect();
    let ref_loss = ref_loss(&extra);
    let mut stats = Vec::with_capacity(grads.len());
    let (mut sum_norm, mut nonzero, mut rr_total, mut gg_total) = (0.0f64, 0usize, 0.0f64, 0.0f64);
    for i in 0..grads.len() {
        if grads[i].is_some() && g[i].is_some() {
            let (gr, gg, rr) = (dots.next().unwrap_or(0.0), dots.next().unwrap_or(0.0), dots.next().unwrap_or(0.0));
            if rr > 0.0 {
                sum_norm += rr.sqrt();
                nonzero += 1;
            }
            rr_total += rr;
            gg_total += gg;
            stats.push(Some((gr, gg, rr)));
        } else {
            stats.push(None);
        }
    }
    let n_ref = if nonzero > 0 { sum_norm / nonzero as f64 } else { 0.0 };
    let (branch, mix) = decide(rule, ref_loss, n_ref);
    let mut projected = 0;
    let mut aligned = 0.0f64;
    let mut items = Vec::new();
    for (((stat, r), gi), &n) in stats.iter().zip(grads.iter_mut()).zip(g).zip(numel) {
        let (Some((gr, gg, rr)), Some(r), Some(gi)) = (*stat, r.as_mut(), gi.as_ref()) else { continue };
        match mix {
            Some(rho) if gg > 0.0 && rr > 0.0 => {
                let coef = (gr.abs() / rr) as f32;
                // r <- (1 - rho) * coef * r + rho * g
                let (a, b) = (rho, (1.0 - rho) * coef);
                items.push((r, a, gi, b, n));
                let (a, b) = (a as f64, b as f64);
                aligned += a * a * gg + 2.0 * a * b * gr + b * b * rr;
                projected += 1;
            }
            // r <- g
            _ => {
                items.push((r, 1.0, gi, 0.0, n));
                aligned += gg;
            }
        }
    }
    be.axpby_many(&mut items);
    // rounding can leave a cancelled sum (a projection that removes nearly all of g) just below 0
    GaOutcome { branch, grad_norm: gg_total.sqrt(), aligned_norm: aligned.max(0.0).sqrt(), extra, n_ref,
                ref_grad_norm: rr_total.sqrt(), projected }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    #[test]
    fn gated_decisions() {
        let gated = GaRule::Gated { min_ref_loss: 0.4, min_ref_grad_norm: 5e-7, rho: None };
        assert_eq!(decide(gated, 0.5, 1e-3), (GaBranch::Projection, Some(0.0)));
        assert_eq!(decide(gated, 0.3, 1e-3), (GaBranch::Raw, None));
        assert_eq!(decide(gated, 0.5, 1e-7), (GaBranch::Raw, None));
        let mixed = GaRule::Gated { min_ref_loss: 0.4, min_ref_grad_norm: 5e-7, rho: Some(0.05) };
        assert_eq!(decide(mixed, 0.3, 1e-3), (GaBranch::Mixed, Some(0.05)));
        // at GAEpoch itself rho is 0: the mixing branch is the pure projection, not the raw gradient
        let at_ga_epoch = GaRule::Gated { min_ref_loss: 0.4, min_ref_grad_norm: 5e-7, rho: Some(0.0) };
        assert_eq!(decide(at_ga_epoch, 0.3, 1e-3), (GaBranch::Mixed, Some(0.0)));
        assert_eq!(decide(GaRule::Paper { rho: 0.1 }, 0.0, 0.0), (GaBranch::Mixed, Some(0.1)));
    }

    #[test]
    fn projection_points_along_r_with_the_magnitude_of_g_on_r() {
        let be = Cpu::new();
        // g = (1, 2), r = (-2, 0): g·r = -2, |r|^2 = 4 -> a = 0.5 * r = (-1, 0); mixed with rho 0.25
        let g = vec![Some(vec![1.0f32, 2.0]), None, Some(vec![0.0, 0.0])];
        let mut grads = vec![Some(vec![-2.0f32, 0.0]), None, Some(vec![3.0, 1.0])];
        let out = align(&be, &mut grads, &g, &[2, 0, 2], GaRule::Paper { rho: 0.25 }, &[], |_| 1.0);
        let want = [0.75 * -1.0 + 0.25 * 1.0, 0.25 * 2.0];
        assert!((grads[0].as_ref().unwrap()[0] - want[0]).abs() < 1e-6);
        assert!((grads[0].as_ref().unwrap()[1] - want[1]).abs() < 1e-6);
        // |g| = 0 keeps g
        assert_eq!(grads[2].as_ref().unwrap(), &vec![0.0, 0.0]);
        assert_eq!(out.projected, 1);
        assert!((out.n_ref - (2.0 + 10f64.sqrt()) / 2.0).abs() < 1e-9);
    }

    /// Property: the projection is parallel to r, |a| = |g·r| / |r|, and a·r >= 0, whatever g and r;
    /// the norms the outcome reports from the dot products are those of g and of the result.
    #[test]
    fn projection_properties_on_random_vectors() {
        let be = Cpu::new();
        let mut rng = crate::rng::Rng::new(5);
        for case in 0..200 {
            let n = 1 + case % 37;
            let g: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            let r: Vec<f32> = (0..n).map(|_| rng.normal() * 1e-3).collect();
            let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(&p, &q)| p as f64 * q as f64).sum::<f64>();
            // the mixed rule too: the cross term of the aligned norm
            let rho = [0.3f32, 0.7, 1.0][case % 3];
            let mut mixed = vec![Some(r.clone())];
            let out = align(&be, &mut mixed, &[Some(g.clone())], &[n], GaRule::Paper { rho }, &[], |_| 1.0);
            let m = mixed[0].as_ref().unwrap();
            assert!((out.aligned_norm - dot(m, m).sqrt()).abs() <= 1e-5 * out.aligned_norm + 1e-12, "aligned norm, case {case}");
            assert!((out.grad_norm - dot(&g, &g).sqrt()).abs() <= 1e-9 * out.grad_norm, "g's norm, case {case}");
            let mut grads = vec![Some(r.clone())];
            let out = align(&be, &mut grads, &[Some(g.clone())], &[n], GaRule::Paper { rho: 0.0 }, &[], |_| 1.0);
            let a = grads[0].as_ref().unwrap();
            assert!((out.aligned_norm - dot(a, a).sqrt()).abs() <= 1e-5 * out.aligned_norm + 1e-12, "projection norm, case {case}");
            let (ar, rr, gr, aa) = (dot(a, &r), dot(&r, &r), dot(&g, &r), dot(a, a));
            assert!(ar >= 0.0);
            assert!((aa.sqrt() - gr.abs() / rr.sqrt()).abs() <= 1e-4 * aa.sqrt().max(1e-6), "case {case}");
            assert!((ar * ar - aa * rr).abs() <= 1e-3 * aa * rr + 1e-20, "not parallel, case {case}");
        }
    }
}
