//! A classifier being trained: model + optimiser + gradient alignment, with the handful of verbs
//! the trainer calls once per step (`train_step`, `predict`, `snapshot`, `restore`).

use crate::backend::Backend;
use crate::error::{EngineError, Result};
use crate::grad_align::{self, GaBranch, GaRule};
use crate::models::bert::{BatchRef, BertClassifier};
use crate::optim::{self, AdamW, AdamWConfig};
use crate::spec::TrainSpec;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSettings {
    pub lr: f32,
    /// global-norm clipping threshold (0 disables)
    pub max_grad_norm: f32,
    /// gradient alignment, used when a reference batch is given
    pub ga: Option<GaRule>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    pub loss: f32,
    pub ref_loss: Option<f32>,
    /// global norm of the training batch's gradient `g`
    pub grad_norm: f64,
    pub ref_grad_norm: Option<f64>,
    pub n_ref: Option<f64>,
    pub projected: usize,
    pub branch: GaBranch,
    /// global norm of the gradient actually used, before clipping
    pub clipped_norm: f64,
}

pub struct Classifier<B: Backend> {
    pub be: B,
    pub model: BertClassifier<B>,
    pub opt: AdamW<B>,
    /// the training gradient while the reference gradient is computed (trainable tensors only)
    saved: Vec<Option<B::Buf>>,
    snapshot: Option<Vec<Option<Vec<f32>>>>,
    /// each row's loss of the training and the reference batch, left on the device until the
    /// step's one read-back (the dot products), and ones to sum them with
    losses: [B::Buf; 2],
    ones: B::Buf,
}

impl<B: Backend> Classifier<B> {
    pub fn open(be: B, dir: &Path, num_labels: usize, spec: &TrainSpec, seed: u64, adamw: AdamWConfig) -> Result<Self> {
        let model = BertClassifier::load(&be, dir, num_labels, spec, seed)?;
        be.check()?;
        Ok(Self::new(be, model, adamw))
    }

    pub fn new(be: B, model: BertClassifier<B>, adamw: AdamWConfig) -> Self {
        let opt = AdamW::new(&be, &model.params, adamw);
        let saved = model.params.grads.iter().map(|_| None).collect();
        let (losses, ones) = ([be.zeros(0), be.zeros(0)], be.zeros(0));
        Classifier { be, model, opt, saved, snapshot: None, losses, ones }
    }

    /// Forward + backward of one batch in training mode; leaves the gradient in the model and each
    /// row's loss in `losses[slot]`, read back later with the step's other scalars. Returns the rows.
    fn gradient(&mut self, batch: &BatchRef, slot: usize) -> Result<usize> {
        let labels = batch.labels.ok_or_else(|| EngineError::Batch("training batches need labels".into()))?;
        self.model.forward_on_device(&self.be, batch, true)?;
        self.model.loss_on_device(&self.be, labels, &mut self.losses[slot])?;
        self.model.backward(&self.be, batch)?;
        if self.be.len(&self.ones) < batch.b {
            self.be.ensure(&mut self.ones, batch.b);
            let n = self.be.len(&self.ones);
            self.be.fill(&mut self.ones, n, 1.0);
        }
        Ok(batch.b)
    }

    /// One optimisation step: gradient of `batch`; with `reference` and a GA rule, the reference
    /// gradient and the per-tensor alignment; then clipping and AdamW. The device is waited on once:
    /// the losses, the gradient norms and the alignment's dot products come back together, and the
    /// norm of the aligned gradient follows from those dots (no second pass over the gradients).
    pub fn train_step(&mut self, batch: &BatchRef, reference: Option<&BatchRef>, s: &StepSettings) -> Result<StepReport> {
        if !(s.lr.is_finite() && s.lr >= 0.0) {
            return Err(EngineError::Setup(format!("learning rate {} must be a finite number >= 0", s.lr)));
        }
        let rows = self.gradient(batch, 0)? as f64;
        let report = match (reference, s.ga) {
            (Some(reference), Some(rule)) => {
                // keep g aside (swapping buffers, no copy), compute r into the model's gradients
                for (slot, g) in self.saved.iter_mut().zip(&self.model.params.grads) {
                    if let (None, Some(g)) = (&slot, g) {
                        *slot = Some(self.be.zeros(self.be.len(g)));
                    }
                }
                self.swap_saved();
                let ref_rows = self.gradient(reference, 1)? as f64;
                let numel: Vec<usize> = self.model.params.meta.iter().map(|m| m.numel()).collect();
                let [l0, l1] = &self.losses;
                let extra = [(l0, &self.ones, rows as usize), (l1, &self.ones, ref_rows as usize)];
                let out = grad_align::align(&self.be, &mut self.model.params.grads, &self.saved, &numel, rule, &extra,
                                            |sums| (sums[1] / ref_rows) as f32);
                StepReport {
                    loss: (out.extra[0] / rows) as f32, ref_loss: Some((out.extra[1] / ref_rows) as f32),
                    grad_norm: out.grad_norm, ref_grad_norm: Some(out.ref_grad_norm), n_ref: Some(out.n_ref),
                    projected: out.projected, branch: out.branch, clipped_norm: out.aligned_norm,
                }
            }
            _ => {
                // g's squared norm per tensor and the loss, in one read-back
                let mut pairs = optim::grad_norm_pairs(&self.model.params);
                pairs.push((&self.losses[0], &self.ones, rows as usize));
                let mut dots = self.be.dots(&pairs);
                let loss = dots.pop().unwrap_or(f64::NAN) / rows;
                let grad_norm = dots.iter().sum::<f64>().sqrt();
                StepReport {
                    loss: loss as f32, ref_loss: None, grad_norm, ref_grad_norm: None, n_ref: None, projected: 0,
                    branch: GaBranch::None, clipped_norm: grad_norm,
                }
            }
        };
        optim::clip_to(&self.be, &mut self.model.params, s.max_grad_norm, report.clipped_norm);
        self.be.check()?; // a device failure, not divergence, when the numbers below are NaN
        if !report.loss.is_finite() || !report.clipped_norm.is_finite() {
            return Err(EngineError::Other(format!(
                "training diverged (loss {}, gradient norm {}); lower the learning rate", report.loss, report.clipped_norm)));
        }
        self.opt.update(&self.be, &mut self.model.params, s.lr);
        if report.ref_loss.is_some() {
            // the gradient buffers back in their places (their contents are spent), so every step
            // makes the same calls on the same buffers (a CUDA graph of the step then replays)
            self.swap_saved();
        }
        self.be.check()?;
        Ok(report)
    }

    /// Swaps each trainable tensor's gradient buffer with its slot in `saved`.
    fn swap_saved(&mut self) {
        for (slot, g) in self.saved.iter_mut().zip(self.model.params.grads.iter_mut()) {
            if g.is_some() {
                std::mem::swap(slot, g);
            }
        }
    }

    /// Logits `[b, num_labels]` in evaluation mode (no dropout).
    pub fn predict(&mut self, batch: &BatchRef) -> Result<Vec<f32>> {
        let logits = self.model.forward(&self.be, batch, false)?;
        self.be.check()?;
        Ok(logits)
    }

    /// Keeps a host copy of the trainable tensors (for best-on-dev selection).
    pub fn snapshot(&mut self) {
        let p = &self.model.params;
        self.snapshot = Some(
            p.meta.iter().enumerate().map(|(i, m)| m.trainable.then(|| self.be.to_host(&p.values[i], m.numel()))).collect(),
        );
    }

    pub fn restore(&mut self) -> Result<()> {
        let snap = self.snapshot.as_ref().ok_or_else(|| EngineError::Other("restore without a snapshot".into()))?;
        for (i, v) in snap.iter().enumerate() {
            if let Some(v) = v {
                self.model.params.values[i] = self.be.from_host(v);
            }
        }
        Ok(())
    }

    /// The trainable tensors by canonical name.
    pub fn trainable_tensors(&self) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
        let p = &self.model.params;
        p.trainable()
            .map(|i| (p.meta[i].name.clone(), (p.meta[i].shape.clone(), self.be.to_host(&p.values[i], p.meta[i].numel()))))
            .collect()
    }

    /// Writes the trainable tensors to a safetensors file (atomically).
    pub fn save_trainable(&self, path: &Path) -> Result<()> {
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "musclelora-trainable".to_string());
        crate::io::safetensors::save(path, &self.trainable_tensors(), Some(meta))
    }

    /// Loads trainable tensors saved by [`Self::save_trainable`]; names and shapes must match.
    pub fn load_trainable(&mut self, path: &Path) -> Result<()> {
        let w = crate::io::safetensors::Weights::from_files(&[path.to_path_buf()])?;
        let p = &mut self.model.params;
        for i in 0..p.meta.len() {
            if p.meta[i].trainable {
                let data = w.get(&p.meta[i].name, &p.meta[i].shape)?;
                p.values[i] = self.be.from_host(&data);
            }
        }
        Ok(())
    }
}
