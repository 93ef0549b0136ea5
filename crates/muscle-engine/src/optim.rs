//! AdamW with decoupled weight decay (none on biases and norm weights) and global-norm clipping,
//! as `torch.optim.AdamW` and `torch.nn.utils.clip_grad_norm_` compute them.

use crate::backend::{AdamwItem, Backend};
use crate::params::ParamStore;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

pub struct AdamW<B: Backend> {
    pub cfg: AdamWConfig,
    pub step: u64,
    /// first and second moments, for trainable tensors only
    pub moments: Vec<Option<(B::Buf, B::Buf)>>,
}

impl<B: Backend> AdamW<B> {
    pub fn new(be: &B, params: &ParamStore<B>, cfg: AdamWConfig) -> Self {
        let moments = params
            .meta
            .iter()
            .map(|m| m.trainable.then(|| (be.zeros(m.numel()), be.zeros(m.numel()))))
            .collect();
        AdamW { cfg, step: 0, moments }
    }

    pub fn update(&mut self, be: &B, params: &mut ParamStore<B>, lr: f32) {
        self.step += 1;
        let mut items = Vec::new();
        for (((param, grad), meta), moments) in
            params.values.iter_mut().zip(&params.grads).zip(&params.meta).zip(self.moments.iter_mut())
        {
            let (Some(grad), Some((m, v))) = (grad.as_ref(), moments.as_mut()) else { continue };
            let weight_decay = if meta.decay { self.cfg.weight_decay } else { 0.0 };
            items.push(AdamwItem { param, grad, m, v, n: meta.numel(), weight_decay });
        }
        be.adamw_many(&mut items, lr, self.cfg.beta1, self.cfg.beta2, self.cfg.eps, self.step);
    }
}

/// The dot products whose sum is the squared global norm of the trainable gradients: `(g, g, n)`
/// per trainable tensor.
pub fn grad_norm_pairs<B: Backend>(params: &ParamStore<B>) -> Vec<(&B::Buf, &B::Buf, usize)> {
    params.grads.iter().enumerate()
        .filter_map(|(i, g)| g.as_ref().map(|g| (g, g, params.meta[i].numel())))
        .collect()
}

/// Global L2 norm of the trainable gradients.
pub fn grad_norm<B: Backend>(be: &B, params: &ParamStore<B>) -> f64 {
    be.dots(&grad_norm_pairs(params)).iter().sum::<f64>().sqrt()
}

/// Scales the gradients so their global norm is at most `max_norm` (torch's `clip_grad_norm_`:
/// coefficient `max_norm / (norm + 1e-6)`, applied only when below 1). Returns the norm before.
pub fn clip_grad_norm<B: Backend>(be: &B, params: &mut ParamStore<B>, max_norm: f32) -> f64 {
    let norm = grad_norm(be, params);
    clip_to(be, params, max_norm, norm);
    norm
}

/// [`clip_grad_norm`] for a caller that already holds the global norm `norm` of the gradients.
pub fn clip_to<B: Backend>(be: &B, params: &mut ParamStore<B>, max_norm: f32, norm: f64) {
    let coef = max_norm as f64 / (norm + 1e-6);
    if max_norm > 0.0 && coef < 1.0 {
        let mut items: Vec<_> = params.grads.iter_mut().zip(&params.meta)
            .filter_map(|(g, meta)| g.as_mut().map(|g| (g, meta.numel())))
            .collect();
        be.scale_many(&mut items, coef as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;

    /// One AdamW step against the closed form: m = (1-b1) g, v = (1-b2) g^2, so the first update
    /// is lr * g / (|g| + eps') with the bias corrections; decay shrinks the weight first.
    #[test]
    fn first_step_closed_form_and_decay_exclusions() {
        let be = Cpu::new();
        let mut ps: ParamStore<Cpu> = ParamStore::new();
        let w = ps.push(&be, "layer.weight", vec![2], &[1.0, -2.0]);
        let b = ps.push(&be, "layer.bias", vec![2], &[1.0, -2.0]);
        ps.set_trainable(&be, w, true);
        ps.set_trainable(&be, b, true);
        ps.grads[w] = Some(vec![0.5, -0.25]);
        ps.grads[b] = Some(vec![0.5, -0.25]);
        let mut opt = AdamW::new(&be, &ps, AdamWConfig { weight_decay: 0.1, ..Default::default() });
        opt.update(&be, &mut ps, 0.01);
        let lr = 0.01f32;
        for (i, decay) in [(w, 0.1f32), (b, 0.0)] {
            for j in 0..2 {
                let p0 = [1.0f32, -2.0][j];
                let g = [0.5f32, -0.25][j];
                let want = p0 * (1.0 - lr * decay) - lr * g.signum() * g.abs() / (g.abs() + 1e-8);
                assert!((ps.values[i][j] - want).abs() < 1e-6, "{} vs {want}", ps.values[i][j]);
            }
        }
    }

    #[test]
    fn clipping_matches_torch() {
        let be = Cpu::new();
        let mut ps: ParamStore<Cpu> = ParamStore::new();
        let a = ps.push(&be, "a.weight", vec![2], &[0.0, 0.0]);
        ps.set_trainable(&be, a, true);
        ps.grads[a] = Some(vec![3.0, 4.0]);
        let n = clip_grad_norm(&be, &mut ps, 1.0);
        assert!((n - 5.0).abs() < 1e-9);
        let g = ps.grads[a].as_ref().unwrap();
        let coef = 1.0 / (5.0 + 1e-6);
        assert!((g[0] - 3.0 * coef as f32).abs() < 1e-7 && (g[1] - 4.0 * coef as f32).abs() < 1e-7);
        // below the threshold nothing changes
        ps.grads[a] = Some(vec![0.3, 0.4]);
        clip_grad_norm(&be, &mut ps, 1.0);
        assert_eq!(ps.grads[a].as_ref().unwrap(), &vec![0.3, 0.4]);
    }
}
