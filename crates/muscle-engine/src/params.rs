//! Parameters of a model on a device: values, and for the trainable ones their gradients and
//! optimiser moments. Frozen tensors get no gradient buffer at all.

use crate::backend::Backend;

#[derive(Debug, Clone)]
pub struct ParamMeta {
    /// Canonical Hugging Face name (as in the `...ForSequenceClassification` state dict; adapters
    /// as peft names them without `base_model.model.` and the adapter name).
    pub name: String,
    pub shape: Vec<usize>,
    pub trainable: bool,
    /// AdamW weight decay applies (not to biases and norm weights).
    pub decay: bool,
}

impl ParamMeta {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

pub struct ParamStore<B: Backend> {
    pub meta: Vec<ParamMeta>,
    pub values: Vec<B::Buf>,
    /// `Some` for trainable tensors only.
    pub grads: Vec<Option<B::Buf>>,
}

impl<B: Backend> ParamStore<B> {
    pub fn new() -> Self {
        ParamStore { meta: Vec::new(), values: Vec::new(), grads: Vec::new() }
    }

    /// Adds a tensor and returns its index.
    pub fn push(&mut self, be: &B, name: impl Into<String>, shape: Vec<usize>, data: &[f32]) -> usize {
        let name = name.into();
        debug_assert_eq!(shape.iter().product::<usize>(), data.len(), "{name}");
        let decay = !(name.ends_with(".bias") || name.contains("LayerNorm") || name.contains("layer_norm"));
        self.meta.push(ParamMeta { name, shape, trainable: false, decay });
        self.values.push(be.from_host(data));
        self.grads.push(None);
        self.meta.len() - 1
    }

    pub fn set_trainable(&mut self, be: &B, idx: usize, trainable: bool) {
        self.meta[idx].trainable = trainable;
        self.grads[idx] = if trainable { Some(be.zeros(self.meta[idx].numel())) } else { None };
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.meta.iter().position(|m| m.name == name)
    }

    pub fn trainable(&self) -> impl Iterator<Item = usize> + '_ {
        self.meta.iter().enumerate().filter(|(_, m)| m.trainable).map(|(i, _)| i)
    }

    pub fn num_trainable_elements(&self) -> usize {
        self.meta.iter().filter(|m| m.trainable).map(|m| m.numel()).sum()
    }

    pub fn grad(&self, idx: usize) -> Option<&B::Buf> {
        self.grads[idx].as_ref()
    }
}

impl<B: Backend> Default for ParamStore<B> {
    fn default() -> Self {
        Self::new()
    }
}
