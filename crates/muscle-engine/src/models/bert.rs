//! BERT and RoBERTa sequence classifiers (post-LN encoders), forward and backward.
//!
//! Mirrors transformers' `BertForSequenceClassification` (embeddings -> encoder -> pooler dense +
//! tanh on `[CLS]` -> dropout -> classifier) and `RobertaForSequenceClassification` (`<s>` state ->
//! dropout -> `classifier.dense` -> tanh -> dropout -> `classifier.out_proj`). Both heads share one
//! shape here: `dense (+ MSLR) -> tanh -> out`, with RoBERTa's extra dropout before `dense`.
//!
//! Activations live in per-layer buffers that are grown once and reused every step; the backward
//! walks them in reverse and stops at the lowest layer that has anything to train.

use super::config::{EncoderConfig, Family};
use crate::backend::{Backend, NormOut};
use crate::error::{EngineError, Result};
use crate::io::safetensors::Weights;
use crate::layers::flash_attention::{self, FlashMasking};
use crate::layers::{activation, attention, dropout, embedding, layer_norm, linear, lora, mslr, softmax_xent};
use crate::params::ParamStore;
use crate::rng::{self, Rng};
use crate::spec::{TrainMode, TrainSpec, LORA_TARGETS};
use std::path::Path;

/// A batch of token ids, row-major `[b, t]`, with its padding mask and (for training) labels.
#[derive(Debug, Clone, Copy)]
pub struct BatchRef<'a> {
    pub ids: &'a [i32],
    pub mask: &'a [i32],
    pub labels: Option<&'a [i32]>,
    pub b: usize,
    pub t: usize,
}

struct EmbParams {
    word: usize,
    pos: usize,
    typ: usize,
    ln_w: usize,
    ln_b: usize,
}

struct LayerParams {
    /// query, key, value projections: (weight, bias)
    qkv: [(usize, usize); 3],
    /// LoRA (A, B) on query, key, value where targeted
    lora: [Option<(usize, usize)>; 3],
    attn_out: (usize, usize),
    ln1: (usize, usize),
    inter: (usize, usize),
    out: (usize, usize),
    ln2: (usize, usize),
}

struct HeadParams {
    dense: (usize, usize),
    out: (usize, usize),
    /// MSLR (L, R) on `dense`
    mslr: Option<(usize, usize)>,
}

/// What a LoRA adapter keeps: `x A^T`. Its dropped-out input is drawn again in the backward.
struct LoraActs<Buf> {
    xa: Buf,
}

struct LayerActs<Buf> {
    qkv: [Buf; 3],
    lora: [LoraActs<Buf>; 3],
    ctx: Buf,
    /// standard attention's probabilities `[b, heads, t, t]`; flash attention's per-row
    /// log-sum-exp `[b*t, heads]` instead (`lse`)
    probs: Buf,
    lse: Buf,
    res1: Buf,
    ln1_mean: Buf,
    ln1_rstd: Buf,
    h1: Buf,
    /// what GELU's backward needs of the intermediate pre-activation (`Backend::matmul_bias_gelu`)
    inter_saved: Buf,
    inter: Buf,
    res2: Buf,
    ln2_mean: Buf,
    ln2_rstd: Buf,
    out: Buf,
}

/// See `Acts::shared`.
struct SharedActs<Buf> {
    ctx: Buf,
    h1: Buf,
    inter: Buf,
}

/// Which of a layer's dense-layer inputs the backward reads (their weight is trainable).
#[derive(Clone, Copy)]
struct Keeps {
    ctx: bool,
    h1: bool,
    inter: bool,
}

/// Buffers saved by the forward for the backward (one set per layer) plus the head's.
struct Acts<Buf> {
    emb_sum: Buf,
    emb_mean: Buf,
    emb_rstd: Buf,
    /// input to layer 0
    emb_out: Buf,
    layers: Vec<LayerActs<Buf>>,
    /// A layer's attention context, first layer norm's output and feed-forward activation are kept
    /// for the backward only as inputs of their dense layer's weight gradient; where that weight is
    /// frozen (LoRA/MSLR training) the layer writes them here instead, one buffer for all layers:
    /// 6 x tokens x hidden floats a layer not kept (BERT-base 32 x 64: 453 MB).
    shared: SharedActs<Buf>,
    cls: Buf,
    head_in: Buf,
    head_drop_a: Buf,
    mslr_in: Buf,
    mslr_drop: Buf,
    mslr_us: Buf,
    pre: Buf,
    act: Buf,
    head_out: Buf,
    head_drop_b: Buf,
    logits: Buf,
    probs: Buf,
}

/// Backward scratch shared by all layers (they are processed one at a time), and the dropout
/// buffers of the embeddings and the layers.
///
/// Those masks are not kept per layer: each site's mask is a pure function of (seed, pass, site,
/// layer), so the backward draws it again, bit for bit, into the same buffer the forward used.
/// On the GPU the redraw is folded into the kernel that applies the mask (a pending mask), so it
/// costs no launch, only the hashing; a mask read once (`Backend::dropout_mask_once`: all but
/// the attention probabilities' and LoRA's in the backward) is not even written. Kept, the masks
/// and LoRA's dropped-out inputs took about 100 MB a layer for BERT-base at 32 x 128.
struct Scratch<Buf> {
    /// one site's dropout mask: attention probabilities `[b, heads, t, t]` or hidden `[b*t, h]`
    mask: Buf,
    /// a LoRA adapter's dropped-out input `[b*t, h]`
    xd: Buf,
    d_out: Buf,
    d_x: Buf,
    d_res: Buf,
    d_h1: Buf,
    d_tmp: Buf,
    d_lx: Buf,
    d_ctx: Buf,
    d_qkv: [Buf; 3],
    d_inter: Buf,
    d_inter_pre: Buf,
    d_small: Buf,
    /// each LoRA adapter's `dxa` of a layer (q, k, v): the adapters' backward GEMMs run batched
    d_xa: [Buf; 3],
    d_logits: Buf,
    d_head_out: Buf,
    d_pre: Buf,
    d_head_in: Buf,
}

struct AdapterShape {
    lora_r: usize,
    lora_scale: f32,
    lora_dropout: f32,
    mslr_scales: Vec<f32>,
    mslr_scale: f32,
    mslr_dropout: f32,
}

/// Flash attention's masking for layer `lid`'s probabilities in pass `pass`: the key padding mask,
/// and, with dropout probability `p`, the same draws as the standard path's mask over
/// `[b*heads, t, t]` (stream `[pass, PROBS, lid]`), in the forward and again in the backward.
fn probs_masking(key_mask: &[i32], p: Option<f32>, seed: u64, pass: u64, lid: u64) -> FlashMasking<'_> {
    FlashMasking { key_mask, causal: false, dropout: p.map(|p| (p, rng::stream_key(seed, &[pass, site::PROBS, lid]))) }
}

/// Dropout sites, used as RNG stream ids so each site draws its own mask.
mod site {
    pub const EMB: u64 = 1;
    pub const PROBS: u64 = 2;
    pub const ATTN: u64 = 3;
    pub const FFN: u64 = 4;
    pub const HEAD_A: u64 = 5;
    pub const HEAD_B: u64 = 6;
    pub const LORA: u64 = 7;
    pub const MSLR: u64 = 8;
}

/// How the encoder's self-attention runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionImpl {
    /// standard, unless its kept probabilities would pass [`FLASH_ABOVE_BYTES`] (see
    /// [`auto_flash`]): flash attention saves memory but its kernels are slower (on the CPU, 4-5x
    /// for a whole LoRA step at 8 x 256 tokens on the development machine)
    Auto,
    /// probabilities `[b, heads, t, t]` computed and kept per layer for the backward (batched
    /// GEMMs on a GPU: fastest for short rows)
    Standard,
    /// no `[t, t]` matrix kept (`Backend::flash_attention_forward`): each layer keeps its output and
    /// one log-sum-exp per row and head, and the backward recomputes the probabilities. Same masks
    /// and dropout draws as the standard path, so the two differ by rounding only.
    Flash,
}

/// What standard attention may keep of probabilities, over all layers, before
/// [`AttentionImpl::Auto`] turns to flash attention: BERT-base keeps 1.2 GiB at 32 x 256 (standard)
/// and 4.5 GiB at 32 x 512 (flash).
pub const FLASH_ABOVE_BYTES: usize = 4 << 30;

/// Whether [`AttentionImpl::Auto`] runs flash attention for `layers` layers of `heads` heads on a
/// `b x t` batch: when standard attention's probabilities would take more than [`FLASH_ABOVE_BYTES`].
/// The error for a `b x t` batch whose activations would take `growth` more bytes than the
/// `available` ones of `owner` ("the GPU", "this machine"); `flash`: flash attention is already on.
pub fn activation_memory_check(growth: usize, available: usize, b: usize, t: usize, owner: &str, flash: bool)
                               -> Result<()> {
    if growth <= available {
        return Ok(());
    }
    const GIB: f64 = (1u64 << 30) as f64;
    let hint = if flash { "" } else { ", or use flash attention (attention: flash) for long rows" };
    Err(EngineError::Batch(format!("the activations of a {b} x {t} batch need {:.2} GiB more and {owner} has {:.2} GiB \
                                    available: lower the batch size or the maximum length{hint}",
                                   growth as f64 / GIB, available as f64 / GIB)))
}

pub fn auto_flash(layers: usize, heads: usize, b: usize, t: usize) -> bool {
    layers.saturating_mul(b).saturating_mul(heads).saturating_mul(t).saturating_mul(t).saturating_mul(4) > FLASH_ABOVE_BYTES
}

pub struct BertClassifier<B: Backend> {
    pub cfg: EncoderConfig,
    pub family: Family,
    pub num_labels: usize,
    pub params: ParamStore<B>,
    /// Tensors absent from the checkpoint and initialised here (e.g. a new classification head).
    pub initialized: Vec<String>,
    emb: EmbParams,
    layers: Vec<LayerParams>,
    head: HeadParams,
    adapters: AdapterShape,
    acts: Acts<B::Buf>,
    scratch: Scratch<B::Buf>,
    /// host copies of the last forward's inputs; `last` = (batch, seq, the pass whose dropout
    /// masks it drew, if it drew any: the backward draws them again; flash attention used)
    pos_ids: Vec<i32>,
    type_ids: Vec<i32>,
    cls_rows: Vec<usize>,
    last: Option<(usize, usize, Option<u64>, bool)>,
    attention: AttentionImpl,
    seed: u64,
    /// counts training forwards, so every pass draws fresh dropout masks
    passes: u64,
    /// lowest encoder layer with a trainable tensor (num_layers if none)
    lowest_trainable: usize,
    /// dropout in training-mode forwards (the config's probabilities); off = deterministic training
    dropout_on: bool,
    embeddings_train: bool,
}

fn zeros<B: Backend>(be: &B) -> B::Buf {
    be.zeros(0)
}

impl<B: Backend> BertClassifier<B> {
    /// Loads `dir/config.json` and the safetensors weights by Hugging Face names (with or without
    /// the `bert.`/`roberta.` prefix), initialises what the checkpoint lacks (head, adapters) as
    /// transformers/peft do, and marks what trains according to `spec`.
    pub fn load(be: &B, dir: &Path, num_labels: usize, spec: &TrainSpec, seed: u64) -> Result<Self> {
        spec.validate()?;
        if num_labels < 2 {
            return Err(EngineError::Setup(format!("num_labels must be at least 2, got {num_labels}")));
        }
        let (cfg, family) = EncoderConfig::load(dir)?;
        let weights = Weights::open(dir)?;
        Self::from_weights(be, cfg, family, &weights, num_labels, spec, seed)
    }

    pub fn from_weights(be: &B, cfg: EncoderConfig, family: Family, weights: &Weights, num_labels: usize,
                        spec: &TrainSpec, seed: u64) -> Result<Self> {
        let root = match family {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
        };
        // One explicit key map: canonical names carry the prefix; the file may not.
        let probe = "embeddings.word_embeddings.weight";
        let file_prefix = if weights.contains(&format!("{root}.{probe}")) {
            format!("{root}.")
        } else if weights.contains(probe) {
            String::new()
        } else {
            return Err(EngineError::MissingTensor {
                path: weights.path().to_path_buf(),
                name: format!("{root}.{probe}"),
                expected: vec![cfg.vocab_size, cfg.hidden_size],
            });
        };
        let mut rng = Rng::derive(seed, &[0x1417]);
        let mut params = ParamStore::new();
        let mut initialized = Vec::new();
        let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);

        // Backbone tensors must exist; head tensors are initialised when absent.
        let mut load = |params: &mut ParamStore<B>, name: &str, shape: Vec<usize>, in_backbone: bool,
                        init_std: Option<f32>| -> Result<usize> {
            let canonical = if in_backbone { format!("{root}.{name}") } else { name.to_string() };
            let file_name = if in_backbone { format!("{file_prefix}{name}") } else { name.to_string() };
            let data = if weights.contains(&file_name) {
                weights.get(&file_name, &shape)?
            } else if let Some(std) = init_std {
                initialized.push(canonical.clone());
                let n = shape.iter().product();
                if name.ends_with(".bias") { vec![0.0; n] } else { rng::normal(&mut rng, std, n) }
            } else {
                return Err(EngineError::MissingTensor { path: weights.path().to_path_buf(), name: file_name, expected: shape });
            };
            Ok(params.push(be, canonical, shape, &data))
        };
        let ir = Some(cfg.initializer_range);
        let word = load(&mut params, "embeddings.word_embeddings.weight", vec![cfg.vocab_size, h], true, None)?;
        let pos = load(&mut params, "embeddings.position_embeddings.weight", vec![cfg.max_position_embeddings, h], true, None)?;
        let typ = load(&mut params, "embeddings.token_type_embeddings.weight", vec![cfg.type_vocab_size, h], true, None)?;
        // A module's (weight, bias): the bias has the weight's first dimension.
        let mut pair = |params: &mut ParamStore<B>, name: &str, shape: Vec<usize>, in_backbone: bool,
                        init_std: Option<f32>| -> Result<(usize, usize)> {
            let bias_shape = vec![shape[0]];
            Ok((load(params, &format!("{name}.weight"), shape, in_backbone, init_std)?,
                load(params, &format!("{name}.bias"), bias_shape, in_backbone, init_std)?))
        };
        let (ln_w, ln_b) = pair(&mut params, "embeddings.LayerNorm", vec![h], true, None)?;
        let emb = EmbParams { word, pos, typ, ln_w, ln_b };
        let mut layers = Vec::new();
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}.");
            let mut module = |params: &mut ParamStore<B>, name: &str, shape: Vec<usize>| {
                pair(params, &format!("{p}{name}"), shape, true, None)
            };
            let qkv = [
                module(&mut params, "attention.self.query", vec![h, h])?,
                module(&mut params, "attention.self.key", vec![h, h])?,
                module(&mut params, "attention.self.value", vec![h, h])?,
            ];
            let attn_out = module(&mut params, "attention.output.dense", vec![h, h])?;
            let ln1 = module(&mut params, "attention.output.LayerNorm", vec![h])?;
            let inter_p = module(&mut params, "intermediate.dense", vec![inter, h])?;
            let out_p = module(&mut params, "output.dense", vec![h, inter])?;
            let ln2 = module(&mut params, "output.LayerNorm", vec![h])?;
            layers.push(LayerParams { qkv, lora: [None, None, None], attn_out, ln1, inter: inter_p, out: out_p, ln2 });
        }
        let head = match family {
            Family::Bert => HeadParams {
                // The pooler is part of BertModel but may be absent from a bare encoder save.
                dense: pair(&mut params, "pooler.dense", vec![h, h], true, ir)?,
                out: pair(&mut params, "classifier", vec![num_labels, h], false, ir)?,
                mslr: None,
            },
            Family::Roberta => HeadParams {
                dense: pair(&mut params, "classifier.dense", vec![h, h], false, ir)?,
                out: pair(&mut params, "classifier.out_proj", vec![num_labels, h], false, ir)?,
                mslr: None,
            },
        };
        let mut model = BertClassifier {
            num_labels,
            params,
            initialized,
            emb,
            layers,
            head,
            adapters: AdapterShape { lora_r: 0, lora_scale: 0.0, lora_dropout: 0.0, mslr_scales: vec![], mslr_scale: 0.0, mslr_dropout: 0.0 },
            acts: Acts {
                emb_sum: zeros(be), emb_mean: zeros(be), emb_rstd: zeros(be), emb_out: zeros(be),
                layers: Vec::new(),
                shared: SharedActs { ctx: zeros(be), h1: zeros(be), inter: zeros(be) },
                cls: zeros(be), head_in: zeros(be), head_drop_a: zeros(be), mslr_in: zeros(be), mslr_drop: zeros(be),
                mslr_us: zeros(be), pre: zeros(be), act: zeros(be), head_out: zeros(be), head_drop_b: zeros(be),
                logits: zeros(be), probs: zeros(be),
            },
            scratch: Scratch {
                mask: zeros(be), xd: zeros(be), d_out: zeros(be), d_x: zeros(be), d_res: zeros(be), d_h1: zeros(be), d_tmp: zeros(be), d_lx: zeros(be),
                d_ctx: zeros(be), d_qkv: [zeros(be), zeros(be), zeros(be)], d_inter: zeros(be), d_inter_pre: zeros(be),
                d_small: zeros(be), d_xa: [zeros(be), zeros(be), zeros(be)], d_logits: zeros(be), d_head_out: zeros(be), d_pre: zeros(be), d_head_in: zeros(be),
            },
            pos_ids: Vec::new(),
            type_ids: Vec::new(),
            cls_rows: Vec::new(),
            last: None,
            attention: AttentionImpl::Auto,
            seed,
            passes: 0,
            lowest_trainable: 0,
            dropout_on: true,
            embeddings_train: false,
            cfg,
            family,
        };
        for _ in 0..model.cfg.num_hidden_layers {
            model.acts.layers.push(LayerActs {
                qkv: [zeros(be), zeros(be), zeros(be)],
                lora: [LoraActs { xa: zeros(be) }, LoraActs { xa: zeros(be) }, LoraActs { xa: zeros(be) }],
                ctx: zeros(be), probs: zeros(be), lse: zeros(be), res1: zeros(be),
                ln1_mean: zeros(be), ln1_rstd: zeros(be), h1: zeros(be), inter_saved: zeros(be), inter: zeros(be),
                res2: zeros(be), ln2_mean: zeros(be), ln2_rstd: zeros(be), out: zeros(be),
            });
        }
        model.add_adapters(be, spec, &mut rng);
        model.apply_spec(be, spec);
        Ok(model)
    }

    fn head_dense_name(&self) -> &'static str {
        match self.family {
            Family::Bert => "bert.pooler.dense",
            Family::Roberta => "classifier.dense",
        }
    }

    /// Creates LoRA and MSLR tensors with peft's initialisation (A, L, R Kaiming-uniform with
    /// a = sqrt(5); B zero).
    fn add_adapters(&mut self, be: &B, spec: &TrainSpec, rng: &mut Rng) {
        let h = self.cfg.hidden_size;
        let root = match self.family {
            Family::Bert => "bert",
            Family::Roberta => "roberta",
        };
        if let Some(l) = &spec.lora {
            self.adapters.lora_r = l.r;
            self.adapters.lora_scale = l.alpha / l.r as f32;
            self.adapters.lora_dropout = l.dropout;
            for (li, layer) in self.layers.iter_mut().enumerate() {
                for (ti, target) in LORA_TARGETS.iter().enumerate() {
                    if !l.targets.iter().any(|t| t == target) {
                        continue;
                    }
                    let base = format!("{root}.encoder.layer.{li}.attention.self.{target}");
                    let a = self.params.push(be, format!("{base}.lora_A.weight"), vec![l.r, h], &rng::kaiming_uniform(rng, h, l.r * h));
                    let b = self.params.push(be, format!("{base}.lora_B.weight"), vec![h, l.r], &vec![0.0; h * l.r]);
                    layer.lora[ti] = Some((a, b));
                }
            }
        }
        if let Some(m) = &spec.mslr {
            let nk = m.band.len() * m.rank;
            self.adapters.mslr_scales = mslr::scales(&m.band, m.rank);
            self.adapters.mslr_scale = m.alpha / m.rank as f32;
            self.adapters.mslr_dropout = m.dropout;
            let base = self.head_dense_name();
            let l = self.params.push(be, format!("{base}.mslr_L.weight"), vec![nk, h], &rng::kaiming_uniform(rng, h, nk * h));
            let r = self.params.push(be, format!("{base}.mslr_R.weight"), vec![h, nk], &rng::kaiming_uniform(rng, nk, h * nk));
            self.head.mslr = Some((l, r));
        }
    }

    fn apply_spec(&mut self, be: &B, spec: &TrainSpec) {
        let head_names: Vec<usize> = match self.family {
            // peft's modules_to_save for sequence classification is the `classifier` module
            Family::Bert => vec![self.head.out.0, self.head.out.1],
            Family::Roberta => vec![self.head.dense.0, self.head.dense.1, self.head.out.0, self.head.out.1],
        };
        for i in 0..self.params.meta.len() {
            let name = &self.params.meta[i].name;
            let is_adapter = name.contains(".lora_") || name.contains(".mslr_");
            let trainable = match spec.mode {
                TrainMode::Full => true,
                TrainMode::Peft => is_adapter || (spec.train_head && head_names.contains(&i)),
            };
            self.params.set_trainable(be, i, trainable);
        }
        let p = &self.params.meta;
        self.embeddings_train = [self.emb.word, self.emb.pos, self.emb.typ, self.emb.ln_w, self.emb.ln_b]
            .iter()
            .any(|&i| p[i].trainable);
        self.lowest_trainable = self
            .layers
            .iter()
            .position(|l| {
                let mut ids = vec![l.attn_out.0, l.attn_out.1, l.ln1.0, l.ln1.1, l.inter.0, l.inter.1, l.out.0, l.out.1, l.ln2.0, l.ln2.1];
                ids.extend(l.qkv.iter().flat_map(|&(w, b)| [w, b]));
                ids.extend(l.lora.iter().flatten().flat_map(|&(a, b)| [a, b]));
                ids.iter().any(|&i| p[i].trainable)
            })
            .unwrap_or(self.layers.len());
        if self.embeddings_train {
            self.lowest_trainable = 0;
        }
        // Frozen linear weights are only ever GEMM operands: the backend may store them compactly.
        let mut linear: Vec<usize> = self.layers.iter()
            .flat_map(|l| l.qkv.iter().map(|q| q.0).chain([l.attn_out.0, l.inter.0, l.out.0]))
            .collect();
        linear.extend([self.head.dense.0, self.head.out.0]);
        for i in linear {
            if !self.params.meta[i].trainable {
                let n = self.params.meta[i].numel();
                be.freeze_weight(&mut self.params.values[i], n);
            }
        }
    }

    fn validate(&self, batch: &BatchRef) -> Result<()> {
        let (b, t) = (batch.b, batch.t);
        let bad = |m: String| Err(EngineError::Batch(m));
        if b == 0 || t == 0 {
            return bad(format!("batch of size {b} x {t}; batches need at least one sequence of at least one token"));
        }
        if batch.ids.len() != b * t || batch.mask.len() != b * t {
            return bad(format!("ids ({}) and mask ({}) must both hold batch x seq = {} values", batch.ids.len(), batch.mask.len(), b * t));
        }
        let max_t = match self.family {
            Family::Bert => self.cfg.max_position_embeddings,
            Family::Roberta => self.cfg.max_position_embeddings - self.cfg.pad_token_id.unwrap_or(1) as usize - 1,
        };
        if t > max_t {
            return bad(format!("sequence length {t} exceeds the model's {max_t} positions; lower max length"));
        }
        if let Some(&id) = batch.ids.iter().find(|&&i| i < 0 || i as usize >= self.cfg.vocab_size) {
            return bad(format!("token id {id} is outside the vocabulary of {} (tokenizer and model do not match?)", self.cfg.vocab_size));
        }
        for r in 0..b {
            if batch.mask[r * t] == 0 {
                return bad(format!("row {r} starts with padding; sequences must start with the classification token"));
            }
        }
        if let Some(labels) = batch.labels {
            if labels.len() != b {
                return bad(format!("{} labels for {b} rows", labels.len()));
            }
            if let Some(&y) = labels.iter().find(|&&y| y < 0 || y as usize >= self.num_labels) {
                return bad(format!("label {y} is outside [0, {})", self.num_labels));
            }
        }
        Ok(())
    }

    /// Which dense-layer inputs of layer `l` the backward reads: those whose weight is trainable,
    /// and with flash attention its output (the attention context), which its backward reads.
    fn keeps(&self, l: usize, flash: bool) -> Keeps {
        let (lp, p) = (&self.layers[l], &self.params.meta);
        Keeps { ctx: flash || p[lp.attn_out.0].trainable, h1: p[lp.inter.0].trainable, inter: p[lp.out.0].trainable }
    }

    /// Chooses how attention runs (default [`AttentionImpl::Auto`]).
    pub fn set_attention(&mut self, attention: AttentionImpl) {
        self.attention = attention;
    }

    /// Whether a `b x t` batch runs flash attention.
    pub fn flash_for(&self, b: usize, t: usize) -> bool {
        match self.attention {
            AttentionImpl::Auto => auto_flash(self.layers.len(), self.cfg.num_attention_heads, b, t),
            AttentionImpl::Standard => false,
            AttentionImpl::Flash => true,
        }
    }

    /// Sizes every activation and scratch buffer for a `b x t` batch, all in one call to the
    /// backend (one arena on a GPU); a buffer this forward does not use asks for nothing and
    /// keeps what it has. `drop`: this forward draws dropout masks. Where the backend can tell its
    /// free memory, a batch whose activations would not fit is refused before anything is allocated.
    fn ensure_buffers(&mut self, be: &B, b: usize, t: usize, keeps: &[Keeps], drop: bool, flash: bool) -> Result<()> {
        let (h, i, heads) = (self.cfg.hidden_size, self.cfg.intermediate_size, self.cfg.num_attention_heads);
        let n = b * t;
        let (r, nk) = (self.adapters.lora_r, self.adapters.mslr_scales.len());
        let c = self.num_labels;
        let if_ = |cond: bool, len: usize| if cond { len } else { 0 };
        let shared = keeps.iter().any(|k| !(k.ctx && k.h1 && k.inter));
        let lora_xd = drop && self.adapters.lora_dropout > 0.0 && self.layers.iter().any(|lp| lp.lora.iter().any(Option::is_some));
        let a = &mut self.acts;
        let mut bufs: Vec<(&mut B::Buf, usize)> = vec![
            (&mut a.emb_sum, n * h), (&mut a.emb_mean, n), (&mut a.emb_rstd, n), (&mut a.emb_out, n * h),
            (&mut a.cls, b * h), (&mut a.head_in, b * h), (&mut a.head_drop_a, b * h), (&mut a.mslr_in, b * h),
            (&mut a.mslr_drop, b * h), (&mut a.mslr_us, b * nk), (&mut a.pre, b * h), (&mut a.act, b * h),
            (&mut a.head_out, b * h), (&mut a.head_drop_b, b * h), (&mut a.logits, b * c), (&mut a.probs, b * c),
            (&mut a.shared.ctx, if_(shared, n * h)), (&mut a.shared.h1, if_(shared, n * h)),
            (&mut a.shared.inter, if_(shared, n * i)),
        ];
        for ((la, lp), k) in a.layers.iter_mut().zip(&self.layers).zip(keeps) {
            let [q, kk, v] = &mut la.qkv;
            bufs.extend([(q, n * h), (kk, n * h), (v, n * h)]);
            for (lo, adapter) in la.lora.iter_mut().zip(&lp.lora) {
                bufs.push((&mut lo.xa, if_(adapter.is_some(), n * r)));
            }
            bufs.extend([(&mut la.probs, if_(!flash, b * heads * t * t)), (&mut la.lse, if_(flash, n * heads)),
                          (&mut la.res1, n * h), (&mut la.ln1_mean, n),
                          (&mut la.ln1_rstd, n), (&mut la.inter_saved, n * i), (&mut la.res2, n * h), (&mut la.ln2_mean, n),
                          (&mut la.ln2_rstd, n), (&mut la.out, n * h), (&mut la.ctx, if_(k.ctx, n * h)),
                          (&mut la.h1, if_(k.h1, n * h)), (&mut la.inter, if_(k.inter, n * i))]);
        }
        let s = &mut self.scratch;
        for (ti, dxa) in s.d_xa.iter_mut().enumerate() {
            let any = self.layers.iter().any(|lp| lp.lora[ti].is_some());
            bufs.push((dxa, if_(any, n * r)));
        }
        let [dq, dk, dv] = &mut s.d_qkv;
        bufs.extend([(&mut s.d_out, n * h), (&mut s.d_x, n * h), (&mut s.d_res, n * h), (&mut s.d_h1, n * h),
                     (&mut s.d_tmp, n * h), (&mut s.d_lx, n * h), (&mut s.d_ctx, n * h), (&mut s.d_inter, n * i),
                     (&mut s.d_inter_pre, n * i), (&mut s.d_small, n * r.max(nk).max(1)), (&mut s.d_logits, b * c),
                     (&mut s.d_head_out, b * h), (&mut s.d_pre, b * h), (&mut s.d_head_in, b * h), (dq, n * h),
                     (dk, n * h), (dv, n * h), (&mut s.mask, if_(drop, if_(!flash, b * heads * t * t).max(n * h))),
                     (&mut s.xd, if_(lora_xd, n * h))]);
        let held: usize = bufs.iter().map(|(buf, _)| be.len(buf)).sum();
        let after: usize = bufs.iter().map(|(buf, n)| be.len(buf).max(*n)).sum();
        if after > held {
            if let Some(available) = be.memory_available() {
                activation_memory_check((after - held) * std::mem::size_of::<f32>(), available, b, t, be.memory_owner(), flash)?;
            }
        }
        be.ensure_arena(&mut bufs);
        // Buffers that only frozen layers' GEMMs read (a backend with bf16 copies for those then
        // skips their f32 values): the feed-forward activation where its output weight is frozen
        // (the shared buffer), and, where every layer's dense weights and biases are frozen, the
        // feed-forward's pre-activation gradient and the sublayer outputs' dropped-out gradients.
        let p = &self.params.meta;
        let frozen = |ids: &[usize]| ids.iter().all(|&i| !p[i].trainable);
        let ffn_in = self.layers.iter().all(|l| frozen(&[l.inter.0, l.inter.1]));
        let sub_out = self.layers.iter().all(|l| frozen(&[l.attn_out.0, l.attn_out.1, l.out.0, l.out.1]));
        be.set_gemm_input_only(&mut self.acts.shared.inter, true);
        be.set_gemm_input_only(&mut self.scratch.d_inter_pre, ffn_in);
        be.set_gemm_input_only(&mut self.scratch.d_tmp, sub_out);
        Ok(())
    }

    /// Runs the model on a batch and returns the logits `[b, num_labels]` (host). With `train`,
    /// dropout is on (fresh masks every call) and the activations are kept for [`Self::backward`].
    pub fn forward(&mut self, be: &B, batch: &BatchRef, train: bool) -> Result<Vec<f32>> {
        self.forward_on_device(be, batch, train)?;
        let (b, ..) = self.last.expect("set by forward_on_device");
        Ok(be.to_host(&self.acts.logits, b * self.num_labels))
    }

    /// [`forward`](Self::forward) without reading the logits back: a training step needs only the
    /// loss, and on a GPU every read-back is a synchronisation.
    pub fn forward_on_device(&mut self, be: &B, batch: &BatchRef, train: bool) -> Result<()> {
        self.validate(batch)?;
        let (b, t) = (batch.b, batch.t);
        let flash = self.flash_for(b, t);
        let keeps: Vec<Keeps> = (0..self.layers.len()).map(|l| self.keeps(l, flash)).collect();
        // A dropout site is live only in training, with dropout on and p > 0.
        let drop = train && self.dropout_on;
        self.ensure_buffers(be, b, t, &keeps, drop, flash)?;
        let pad = match self.family {
            Family::Bert => None,
            Family::Roberta => self.cfg.pad_token_id,
        };
        self.pos_ids = embedding::position_ids(batch.ids, b, t, pad);
        self.type_ids.clear();
        self.type_ids.resize(b * t, 0);
        self.cls_rows = (0..b).map(|r| r * t).collect();
        if train {
            self.passes += 1;
        }
        let pass = self.passes;
        let seed = self.seed;
        let cfg = &self.cfg;
        let (h, inter, heads, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.head_dim());
        let n = b * t;
        let pv = &self.params.values;
        let a = &mut self.acts;
        let s = &mut self.scratch;
        let ad = &self.adapters;
        let live = |p: f32| drop && p > 0.0;
        let hp = cfg.hidden_dropout_prob;

        // embeddings -> layer norm -> dropout
        let e = &self.emb;
        embedding::embedding_forward(be, &mut a.emb_sum, &pv[e.word], &pv[e.pos], &pv[e.typ], batch.ids, &self.pos_ids,
                                     &self.type_ids, h);
        layer_norm::layer_norm_forward(be, &mut a.emb_out, &mut a.emb_mean, &mut a.emb_rstd, &a.emb_sum, &pv[e.ln_w],
                                       &pv[e.ln_b], n, h, cfg.layer_norm_eps);
        if live(hp) {
            be.dropout_mask_once(&mut s.mask, n * h, hp, seed, &[pass, site::EMB]);
            be.mul(&mut a.emb_out, &s.mask, n * h);
        }

        for (l, lp) in self.layers.iter().enumerate() {
            let (prev, rest) = a.layers.split_at_mut(l);
            let la = &mut rest[0];
            // the dense-layer inputs the backward will not read go to the shared buffers
            let k = keeps[l];
            let ctx = if k.ctx { &mut la.ctx } else { &mut a.shared.ctx };
            let h1 = if k.h1 { &mut la.h1 } else { &mut a.shared.h1 };
            let inter_out = if k.inter { &mut la.inter } else { &mut a.shared.inter };
            let x = if l == 0 { &a.emb_out } else { &prev[l - 1].out };
            let lid = l as u64;
            // the three projections of x first (a backend may share work on x), then their adapters
            {
                let [q, k, v] = &mut la.qkv;
                let [(wq, bq), (wk, bk), (wv, bv)] = lp.qkv;
                linear::linears_forward(be, &mut [(q, &pv[wq], &pv[bq]), (k, &pv[wk], &pv[bk]), (v, &pv[wv], &pv[bv])],
                                        x, n, h, h);
            }
            if live(ad.lora_dropout) {
                // each adapter's input through its own mask, one at a time in the one buffer
                for ti in 0..3 {
                    if let Some((la_a, la_b)) = lp.lora[ti] {
                        be.dropout_mask_once(&mut s.mask, n * h, ad.lora_dropout, seed, &[pass, site::LORA, lid, ti as u64]);
                        be.mul_into(&mut s.xd, x, &s.mask, n * h);
                        lora::lora_forward(be, &mut la.qkv[ti], &mut la.lora[ti].xa, &s.xd, &pv[la_a], &pv[la_b], n, h, h,
                                           ad.lora_r, ad.lora_scale);
                    }
                }
            } else {
                // every adapter reads x: their GEMMs run batched
                let mut items: Vec<lora::LoraFwd<'_, B>> = la.qkv.iter_mut().zip(la.lora.iter_mut()).zip(&lp.lora)
                    .filter_map(|((out, lo), ab)| ab.map(|(a, b)| lora::LoraFwd { out, xa: &mut lo.xa, inp: x, a: &pv[a], b: &pv[b] }))
                    .collect();
                lora::lora_forward_many(be, &mut items, n, h, h, ad.lora_r, ad.lora_scale);
            }
            let pa = cfg.attention_probs_dropout_prob;
            if flash {
                let masking = probs_masking(batch.mask, live(pa).then_some(pa), seed, pass, lid);
                flash_attention::flash_attention_forward(be, ctx, &mut la.lse, &la.qkv[0], &la.qkv[1], &la.qkv[2], masking,
                                                         b, t, heads, d);
            } else {
                let pdrop = if live(pa) {
                    be.dropout_mask_once(&mut s.mask, b * heads * t * t, pa, seed, &[pass, site::PROBS, lid]);
                    Some(&s.mask)
                } else {
                    None
                };
                attention::attention_forward(be, ctx, &mut la.probs, &la.qkv[0], &la.qkv[1], &la.qkv[2], batch.mask,
                                             pdrop, b, t, heads, d);
            }
            // attention output: dense -> dropout -> + x -> layer norm
            if live(hp) {
                be.dropout_mask_once(&mut s.mask, n * h, hp, seed, &[pass, site::ATTN, lid]);
            }
            let norm = NormOut { out: h1, mean: &mut la.ln1_mean, rstd: &mut la.ln1_rstd, w: &pv[lp.ln1.0],
                                 b: &pv[lp.ln1.1], eps: cfg.layer_norm_eps };
            linear::linear_dropout_residual_norm_forward(be, &mut la.res1, ctx, &pv[lp.attn_out.0], &pv[lp.attn_out.1],
                                                         live(hp).then_some(&s.mask), x, n, h, h, norm);
            // feed-forward: dense -> gelu -> dense -> dropout -> + h1 -> layer norm
            linear::linear_gelu_forward(be, &mut la.inter_saved, inter_out, h1, &pv[lp.inter.0], &pv[lp.inter.1], n,
                                        h, inter);
            if live(hp) {
                be.dropout_mask_once(&mut s.mask, n * h, hp, seed, &[pass, site::FFN, lid]);
            }
            let norm = NormOut { out: &mut la.out, mean: &mut la.ln2_mean, rstd: &mut la.ln2_rstd, w: &pv[lp.ln2.0],
                                 b: &pv[lp.ln2.1], eps: cfg.layer_norm_eps };
            linear::linear_dropout_residual_norm_forward(be, &mut la.res2, inter_out, &pv[lp.out.0], &pv[lp.out.1],
                                                         live(hp).then_some(&s.mask), h1, n, inter, h, norm);
        }

        // head: [CLS] state -> (RoBERTa: dropout) -> dense (+ MSLR) -> tanh -> dropout -> out
        let last = a.layers.last().map(|la| &la.out).unwrap_or(&a.emb_out);
        be.gather_rows(&mut a.cls, last, &self.cls_rows, h);
        let cp = cfg.head_dropout();
        be.copy(&mut a.head_in, &a.cls, b * h);
        if self.family == Family::Roberta && live(cp) {
            dropout::dropout_forward(be, &mut a.head_in, &mut a.head_drop_a, b * h, cp, seed, &[pass, site::HEAD_A]);
        }
        let hd = &self.head;
        linear::linear_forward(be, &mut a.pre, &a.head_in, &pv[hd.dense.0], Some(&pv[hd.dense.1]), b, h, h);
        if let Some((ml, mr)) = hd.mslr {
            let inp = if live(ad.mslr_dropout) {
                dropout::dropout_forward_into(be, &mut a.mslr_in, &a.head_in, &mut a.mslr_drop, b * h, ad.mslr_dropout, seed,
                                              &[pass, site::MSLR]);
                &a.mslr_in
            } else {
                &a.head_in
            };
            mslr::mslr_forward(be, &mut a.pre, &mut a.mslr_us, inp, &pv[ml], &pv[mr], &ad.mslr_scales, b, h, h, ad.mslr_scale);
        }
        activation::tanh_forward(be, &mut a.act, &a.pre, b * h);
        be.copy(&mut a.head_out, &a.act, b * h);
        if live(cp) {
            dropout::dropout_forward(be, &mut a.head_out, &mut a.head_drop_b, b * h, cp, seed, &[pass, site::HEAD_B]);
        }
        linear::linear_forward(be, &mut a.logits, &a.head_out, &pv[hd.out.0], Some(&pv[hd.out.1]), b, h, self.num_labels);
        self.last = Some((b, t, drop.then_some(pass), flash));
        Ok(())
    }

    /// Mean cross-entropy of the last forward against `labels`; keeps the probabilities for the backward.
    pub fn loss(&mut self, be: &B, labels: &[i32]) -> Result<f32> {
        let (b, ..) = self.last.ok_or_else(|| EngineError::Other("loss before forward".into()))?;
        if labels.len() != b {
            return Err(EngineError::Batch(format!("{} labels for {b} rows", labels.len())));
        }
        Ok(softmax_xent::softmax_xent_forward(be, &mut self.acts.probs, &self.acts.logits, labels, b, self.num_labels))
    }

    /// [`Self::loss`] with each row's loss left on the device in `losses` (grown to the batch),
    /// nothing read back: a training step reads it with its other scalars, in one wait.
    pub fn loss_on_device(&mut self, be: &B, labels: &[i32], losses: &mut B::Buf) -> Result<()> {
        let (b, ..) = self.last.ok_or_else(|| EngineError::Other("loss before forward".into()))?;
        if labels.len() != b {
            return Err(EngineError::Batch(format!("{} labels for {b} rows", labels.len())));
        }
        be.ensure(losses, b);
        be.softmax_xent_forward_rows(&mut self.acts.probs, losses, &self.acts.logits, labels, b, self.num_labels);
        Ok(())
    }

    /// Backpropagates the loss of the last (training-mode or eval-mode) forward into the
    /// gradients of the trainable tensors. Gradients are overwritten, not accumulated.
    pub fn backward(&mut self, be: &B, batch: &BatchRef) -> Result<()> {
        // `drawn`: the pass whose dropout masks the forward drew, which the backward draws again
        let (b, t, drawn, flash) = self.last.ok_or_else(|| EngineError::Other("backward before forward".into()))?;
        let labels = batch.labels.ok_or_else(|| EngineError::Batch("backward needs labels".into()))?;
        if (b, t) != (batch.b, batch.t) {
            return Err(EngineError::Batch("backward batch differs from the forward's".into()));
        }
        let cfg = &self.cfg;
        let (h, inter, heads, d) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.head_dim());
        let n = b * t;
        let c = self.num_labels;
        let pv = &self.params.values;
        let pg = &mut self.params.grads;
        let a = &self.acts;
        let s = &mut self.scratch;
        let ad = &self.adapters;
        let live = |p: f32| drawn.is_some() && p > 0.0;
        let (pass, seed) = (drawn.unwrap_or(0), self.seed);
        let hp = cfg.hidden_dropout_prob;
        let cp = cfg.head_dropout();

        // Borrow two distinct gradient buffers mutably at once.
        fn two<T>(v: &mut [Option<T>], i: usize, j: usize) -> (Option<&mut T>, Option<&mut T>) {
            assert_ne!(i, j);
            if i < j {
                let (x, y) = v.split_at_mut(j);
                (x[i].as_mut(), y[0].as_mut())
            } else {
                let (x, y) = v.split_at_mut(i);
                (y[0].as_mut(), x[j].as_mut())
            }
        }

        // Borrow several distinct gradient buffers mutably at once, in the order of `idx`.
        fn pick<'v, T>(v: &'v mut [Option<T>], idx: &[usize]) -> Vec<Option<&'v mut T>> {
            let mut out: Vec<Option<&mut T>> = idx.iter().map(|_| None).collect();
            for (i, slot) in v.iter_mut().enumerate() {
                let mut at = idx.iter().enumerate().filter(|&(_, &j)| j == i).map(|(k, _)| k);
                if let Some(k) = at.next() {
                    assert!(at.next().is_none(), "gradient {i} asked for twice");
                    out[k] = slot.as_mut();
                }
            }
            out
        }

        // ---- head -------------------------------------------------------------------------------
        softmax_xent::softmax_xent_backward(be, &mut s.d_logits, &a.probs, labels, b, c);
        let hd = &self.head;
        let (dw, db) = two(pg, hd.out.0, hd.out.1);
        linear::linear_backward(be, Some((&mut s.d_head_out, false)), dw, db, &s.d_logits, &a.head_out, &pv[hd.out.0], b, h, c);
        if live(cp) {
            dropout::dropout_backward(be, &mut s.d_head_out, &a.head_drop_b, b * h);
        }
        activation::tanh_backward(be, &mut s.d_pre, &a.act, &s.d_head_out, b * h);
        let need_below = self.lowest_trainable < self.layers.len();
        let (dw, db) = two(pg, hd.dense.0, hd.dense.1);
        linear::linear_backward(be, if need_below { Some((&mut s.d_head_in, false)) } else { None }, dw, db, &s.d_pre,
                                &a.head_in, &pv[hd.dense.0], b, h, h);
        if let Some((ml, mr)) = hd.mslr {
            let mslr_dropout = live(ad.mslr_dropout);
            let inp = if mslr_dropout { &a.mslr_in } else { &a.head_in };
            let (dl, dr) = two(pg, ml, mr);
            if need_below && mslr_dropout {
                be.fill(&mut s.d_lx, b * h, 0.0);
                mslr::mslr_backward(be, Some(&mut s.d_lx), dl, dr, &mut s.d_small, &s.d_pre, &a.mslr_us, inp, &pv[ml], &pv[mr],
                                    &ad.mslr_scales, b, h, h, ad.mslr_scale);
                dropout::dropout_backward(be, &mut s.d_lx, &a.mslr_drop, b * h);
                be.axpby(&mut s.d_head_in, 1.0, &s.d_lx, 1.0, b * h);
            } else {
                mslr::mslr_backward(be, if need_below { Some(&mut s.d_head_in) } else { None }, dl, dr, &mut s.d_small,
                                    &s.d_pre, &a.mslr_us, inp, &pv[ml], &pv[mr], &ad.mslr_scales, b, h, h, ad.mslr_scale);
            }
        }
        if !need_below {
            return Ok(());
        }
        if self.family == Family::Roberta && live(cp) {
            dropout::dropout_backward(be, &mut s.d_head_in, &a.head_drop_a, b * h);
        }
        be.fill(&mut s.d_out, n * h, 0.0);
        be.scatter_add_rows(&mut s.d_out, &s.d_head_in, &self.cls_rows, h);

        // ---- encoder, top to bottom ----------------------------------------------------------------
        // The scratch buffers the layers hand on by swapping go back to their places at the end, so
        // every step makes the same calls on the same buffers (a CUDA graph of the step then replays).
        #[derive(Clone, Copy)]
        enum Swap {
            OutX,
            XLx,
        }
        let mut swaps: Vec<Swap> = Vec::new();
        for l in (self.lowest_trainable..self.layers.len()).rev() {
            let lp = &self.layers[l];
            let la = &a.layers[l];
            let x = if l == 0 { &a.emb_out } else { &a.layers[l - 1].out };
            let need_dx = l > self.lowest_trainable || self.embeddings_train;
            // Second layer norm. Its input gradient is the residual's (d_h1, which the feed-forward's
            // input gradient is then added to) and, through the dropout, the feed-forward output's.
            let lid = l as u64;
            if live(hp) {
                be.dropout_mask_once(&mut s.mask, n * h, hp, seed, &[pass, site::FFN, lid]);
            }
            let (dw, db) = two(pg, lp.ln2.0, lp.ln2.1);
            layer_norm::layer_norm_backward_dropout(be, &mut s.d_h1, dw, db, &s.d_out, &la.res2, &pv[lp.ln2.0],
                                                    &la.ln2_mean, &la.ln2_rstd, n, h,
                                                    live(hp).then_some((&mut s.d_tmp, &s.mask)));
            let d_ffn = if live(hp) { &s.d_tmp } else { &s.d_h1 };
            let (dw, db) = two(pg, lp.out.0, lp.out.1);
            linear::linear_backward(be, None, dw, db, d_ffn, &la.inter, &pv[lp.out.0], n, inter, h);
            linear::linear_gelu_backward_input(be, &mut s.d_inter_pre, &mut s.d_inter, d_ffn, &pv[lp.out.0],
                                               &la.inter_saved, n, inter, h);
            let (dw, db) = two(pg, lp.inter.0, lp.inter.1);
            linear::linear_backward(be, Some((&mut s.d_h1, true)), dw, db, &s.d_inter_pre, &la.h1, &pv[lp.inter.0], n, h, inter);
            // First layer norm, the same way round: the residual's gradient goes to d_x (where the
            // q, k, v input gradients are added), or nowhere below the lowest trainable layer.
            if live(hp) {
                be.dropout_mask_once(&mut s.mask, n * h, hp, seed, &[pass, site::ATTN, lid]);
            }
            let (dw, db) = two(pg, lp.ln1.0, lp.ln1.1);
            let d_ln1 = if need_dx { &mut s.d_x } else { &mut s.d_res };
            layer_norm::layer_norm_backward_dropout(be, d_ln1, dw, db, &s.d_h1, &la.res1, &pv[lp.ln1.0], &la.ln1_mean,
                                                    &la.ln1_rstd, n, h, live(hp).then_some((&mut s.d_tmp, &s.mask)));
            let d_ln1 = if need_dx { &s.d_x } else { &s.d_res };
            let d_attn = if live(hp) { &s.d_tmp } else { d_ln1 };
            let (dw, db) = two(pg, lp.attn_out.0, lp.attn_out.1);
            linear::linear_backward(be, Some((&mut s.d_ctx, false)), dw, db, d_attn, &la.ctx, &pv[lp.attn_out.0], n, h, h);
            let pa = cfg.attention_probs_dropout_prob;
            if flash {
                let masking = probs_masking(batch.mask, live(pa).then_some(pa), seed, pass, lid);
                let [dq, dk, dv] = &mut s.d_qkv;
                flash_attention::flash_attention_backward(be, dq, dk, dv, &s.d_ctx, &la.ctx, &la.lse, &la.qkv[0], &la.qkv[1],
                                                          &la.qkv[2], masking, b, t, heads, d);
            } else {
                let pdrop = if live(pa) {
                    // kept: the backward reads it twice
                    be.dropout_mask(&mut s.mask, b * heads * t * t, pa, seed, &[pass, site::PROBS, lid]);
                    Some(&s.mask)
                } else {
                    None
                };
                let [dq, dk, dv] = &mut s.d_qkv;
                attention::attention_backward(be, dq, dk, dv, &s.d_ctx, &la.probs, &la.qkv[0], &la.qkv[1], &la.qkv[2],
                                              pdrop, b, t, heads, d);
            }
            for ti in 0..3 {
                let (w, bias) = lp.qkv[ti];
                let (dw, db) = two(pg, w, bias);
                linear::linear_backward(be, if need_dx { Some((&mut s.d_x, true)) } else { None }, dw, db, &s.d_qkv[ti], x,
                                        &pv[w], n, h, h);
            }
            if live(ad.lora_dropout) {
                for ti in 0..3 {
                    let Some((la_a, la_b)) = lp.lora[ti] else { continue };
                    // kept: the input gradient below reads the mask again
                    dropout::dropout_forward_into(be, &mut s.xd, x, &mut s.mask, n * h, ad.lora_dropout, seed,
                                                  &[pass, site::LORA, lid, ti as u64]);
                    let (da, dbb) = two(pg, la_a, la_b);
                    lora::lora_backward(be, None, da, dbb, &mut s.d_small, &s.d_qkv[ti], &la.lora[ti].xa, &s.xd, &pv[la_a],
                                        &pv[la_b], n, h, h, ad.lora_r, ad.lora_scale);
                    if need_dx {
                        // d_x += (dxa A) * mask, in the GEMM's store: into d_lx, which becomes d_x
                        lora::lora_backward_input_dropped(be, &mut s.d_lx, &s.d_small, &pv[la_a], &s.mask, &s.d_x, n, h,
                                                          ad.lora_r);
                        std::mem::swap(&mut s.d_x, &mut s.d_lx);
                        swaps.push(Swap::XLx);
                    }
                }
            } else {
                // every adapter read x: their GEMMs run batched, each with its own dxa
                let present: Vec<usize> = (0..3).filter(|&ti| lp.lora[ti].is_some()).collect();
                let idx: Vec<usize> = present.iter().flat_map(|&ti| lp.lora[ti].map(|(a, b)| [a, b])).flatten().collect();
                let mut grads = pick(pg, &idx).into_iter();
                let mut items = Vec::with_capacity(present.len());
                for (ti, dxa) in s.d_xa.iter_mut().enumerate().filter(|(ti, _)| present.contains(ti)) {
                    let (la_a, la_b) = lp.lora[ti].expect("present");
                    let (da, db) = (grads.next().flatten(), grads.next().flatten());
                    items.push(lora::LoraBwd { da, db, dxa, dout: &s.d_qkv[ti], xa: &la.lora[ti].xa, inp: x, a: &pv[la_a],
                                               b: &pv[la_b] });
                }
                lora::lora_backward_many(be, if need_dx { Some(&mut s.d_x) } else { None }, &mut items, n, h, h, ad.lora_r,
                                         ad.lora_scale);
            }
            if need_dx {
                std::mem::swap(&mut s.d_out, &mut s.d_x);
                swaps.push(Swap::OutX);
            }
        }

        // ---- embeddings ------------------------------------------------------------------------------
        if self.embeddings_train {
            let e = &self.emb;
            if live(hp) {
                be.dropout_mask_once(&mut s.mask, n * h, hp, seed, &[pass, site::EMB]);
                dropout::dropout_backward(be, &mut s.d_out, &s.mask, n * h);
            }
            let (dw, db) = two(pg, e.ln_w, e.ln_b);
            layer_norm::layer_norm_backward(be, &mut s.d_res, dw, db, &s.d_out, &a.emb_sum, &pv[e.ln_w], &a.emb_mean,
                                            &a.emb_rstd, n, h);
            for idx in [e.word, e.pos, e.typ] {
                if let Some(g) = pg[idx].as_mut() {
                    let len = be.len(g);
                    be.fill(g, len, 0.0);
                }
            }
            let (dword, rest) = pg.split_at_mut(e.word + 1);
            let dword = dword[e.word].as_mut();
            // word < pos < typ by construction order
            let (dpos, dtyp) = {
                let (p, t) = rest.split_at_mut(e.typ - e.word - 1);
                (p[e.pos - e.word - 1].as_mut(), t[0].as_mut())
            };
            // transformers builds word embeddings with padding_idx = pad_token_id, and RoBERTa's
            // position embeddings with padding_idx too: those rows never receive gradient.
            let pad = cfg.pad_token_id;
            let skip = match self.family {
                Family::Bert => [pad, None, None],
                Family::Roberta => [pad, pad, None],
            };
            embedding::embedding_backward(be, dword, dpos, dtyp, &s.d_res, batch.ids, &self.pos_ids, &self.type_ids, h, skip);
        }
        for swap in swaps.into_iter().rev() {
            match swap {
                Swap::OutX => std::mem::swap(&mut s.d_out, &mut s.d_x),
                Swap::XLx => std::mem::swap(&mut s.d_x, &mut s.d_lx),
            }
        }
        Ok(())
    }

    /// Turns the model's dropout (hidden, attention, head, adapters) on or off for training
    /// forwards; evaluation never drops.
    pub fn set_dropout(&mut self, on: bool) {
        self.dropout_on = on;
    }

    /// Sets the dropout pass counter; the next training forward uses `pass + 1`. Two forwards
    /// from the same counter draw identical masks (finite-difference checks, exact resume).
    pub fn set_pass(&mut self, pass: u64) {
        self.passes = pass;
    }

    pub fn pass(&self) -> u64 {
        self.passes
    }

    /// The encoder's last hidden state `[b*t, hidden]` of the last forward (host).
    pub fn last_hidden_state(&self, be: &B) -> Vec<f32> {
        let (b, t, ..) = self.last.unwrap_or((0, 0, None, false));
        let last = self.acts.layers.last().map(|l| &l.out).unwrap_or(&self.acts.emb_out);
        be.to_host(last, b * t * self.cfg.hidden_size)
    }

    /// The head's activation `tanh(dense(x))` of the last forward: BERT's pooled output.
    pub fn pooled_output(&self, be: &B) -> Vec<f32> {
        let (b, ..) = self.last.unwrap_or((0, 0, None, false));
        be.to_host(&self.acts.act, b * self.cfg.hidden_size)
    }

    /// Overwrites a tensor by canonical name (tests, resume, loading adapters).
    pub fn set_param(&mut self, be: &B, name: &str, data: &[f32]) -> Result<()> {
        let i = self.params.index_of(name).ok_or_else(|| EngineError::Other(format!("no tensor named `{name}`")))?;
        let meta = &self.params.meta[i];
        if meta.numel() != data.len() {
            return Err(EngineError::ShapeMismatch {
                path: "(set_param)".into(), name: name.into(), found: vec![data.len()], expected: meta.shape.clone(),
            });
        }
        self.params.values[i] = be.from_host(data);
        Ok(())
    }

    pub fn get_param(&self, be: &B, name: &str) -> Option<Vec<f32>> {
        let i = self.params.index_of(name)?;
        Some(be.to_host(&self.params.values[i], self.params.meta[i].numel()))
    }

    pub fn get_grad(&self, be: &B, name: &str) -> Option<Vec<f32>> {
        let i = self.params.index_of(name)?;
        self.params.grads[i].as_ref().map(|g| be.to_host(g, self.params.meta[i].numel()))
    }
}

/// A random checkpoint with Hugging Face names (weights Normal(0, `std`), layer-norm weights
/// near 1): for benchmarks and tests that need a model of a given shape but no trained weights.
pub fn random_tensors(cfg: &EncoderConfig, family: Family, num_labels: usize, std: f32, seed: u64, with_head: bool)
                      -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let root = match family {
        Family::Bert => "bert",
        Family::Roberta => "roberta",
    };
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let mut rng = Rng::new(seed);
    let mut t = std::collections::BTreeMap::new();
    let mut put = |name: String, shape: Vec<usize>, mean: f32, sd: f32| {
        let n = shape.iter().product();
        let data = (0..n).map(|_| mean + rng.normal() * sd).collect();
        t.insert(name, (shape, data));
    };
    put(format!("{root}.embeddings.word_embeddings.weight"), vec![cfg.vocab_size, h], 0.0, std);
    put(format!("{root}.embeddings.position_embeddings.weight"), vec![cfg.max_position_embeddings, h], 0.0, std);
    put(format!("{root}.embeddings.token_type_embeddings.weight"), vec![cfg.type_vocab_size, h], 0.0, std);
    put(format!("{root}.embeddings.LayerNorm.weight"), vec![h], 1.0, std);
    put(format!("{root}.embeddings.LayerNorm.bias"), vec![h], 0.0, std);
    for l in 0..cfg.num_hidden_layers {
        let p = format!("{root}.encoder.layer.{l}.");
        for (name, o, inp) in [("attention.self.query", h, h), ("attention.self.key", h, h), ("attention.self.value", h, h),
                               ("attention.output.dense", h, h), ("intermediate.dense", i, h), ("output.dense", h, i)] {
            put(format!("{p}{name}.weight"), vec![o, inp], 0.0, std);
            put(format!("{p}{name}.bias"), vec![o], 0.0, std);
        }
        for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
            put(format!("{p}{name}.weight"), vec![h], 1.0, std);
            put(format!("{p}{name}.bias"), vec![h], 0.0, std);
        }
    }
    if with_head {
        let heads: Vec<(String, Vec<usize>)> = match family {
            Family::Bert => vec![
                (format!("{root}.pooler.dense.weight"), vec![h, h]), (format!("{root}.pooler.dense.bias"), vec![h]),
                ("classifier.weight".into(), vec![num_labels, h]), ("classifier.bias".into(), vec![num_labels]),
            ],
            Family::Roberta => vec![
                ("classifier.dense.weight".into(), vec![h, h]), ("classifier.dense.bias".into(), vec![h]),
                ("classifier.out_proj.weight".into(), vec![num_labels, h]), ("classifier.out_proj.bias".into(), vec![num_labels]),
            ],
        };
        for (name, shape) in heads {
            put(name, shape, 0.0, std);
        }
    }
    t
}
