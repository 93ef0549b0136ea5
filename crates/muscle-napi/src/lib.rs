//! `@musclelora/core-native`: the engine as a Node.js addon.
//!
//! A thin layer: it converts JS values, runs every long call as an `AsyncTask` on libuv's thread
//! pool (so the event loop, progress bars and Ctrl-C stay live), and turns engine errors and
//! Rust panics into JS `Error`s. One call per optimisation step crosses the boundary; the model,
//! adapters, gradients and optimiser state stay in the engine.

use muscle_engine::io::tokenizer::TextTokenizer;
use muscle_engine::{
    AdamWConfig, AttentionImpl, Backend, BatchRef, Classifier, DeviceChoice, Cpu, Cuda, GaBranch, GaRule, LoraSpec, MslrSpec, StepSettings as EngineStep,
    TrainMode, TrainSpec,
};
use muscle_engine::backend::cuda::Precision;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once};

// ---- options and results (mirroring packages/trainer/src/engine/session.ts) ------------------

#[napi(object)]
pub struct LoraOptions {
    pub r: u32,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
}

#[napi(object)]
pub struct MslrOptions {
    pub band: Vec<f64>,
    pub rank: u32,
    pub alpha: f64,
    pub dropout: f64,
}

#[napi(object)]
pub struct TrainSpecOptions {
    /// `full` (every weight trains) or `peft` (adapters, and the head with `trainHead`)
    pub mode: String,
    pub lora: Option<LoraOptions>,
    pub mslr: Option<MslrOptions>,
    pub train_head: bool,
}

#[napi(object)]
pub struct OptimizerOptions {
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub max_grad_norm: f64,
}

#[napi(object)]
pub struct SessionOptions {
    /// folder with config.json, model.safetensors (or shards) and tokenizer.json
    pub model_dir: String,
    pub num_labels: u32,
    pub max_length: u32,
    pub seed: f64,
    /// `cpu`, `cuda` (GPU 0), `cuda:N` (GPU N) or `auto`
    pub device: String,
    /// `f32`, `bf16` (GPU only: frozen weights and their GEMMs in bf16) or `auto` (bf16 on a GPU,
    /// f32 on the CPU); absent = `auto`
    pub precision: Option<String>,
    /// worker threads for the CPU backend (the first session of a process sets it)
    pub threads: Option<u32>,
    /// self-attention: `standard` (probabilities kept for the backward), `flash` (none kept,
    /// recomputed; slower kernels) or `auto` (flash where standard attention's probabilities would
    /// pass 4 GiB); absent = `auto`
    pub attention: Option<String>,
    /// dropout in training steps (the checkpoint's probabilities)
    pub dropout: bool,
    /// on a GPU, issue each step's calls as CUDA graphs (each checked on the device against its
    /// calls issued one by one before it is trusted); absent = the environment's
    /// `MUSCLE_CUDA_GRAPHS=1`, else off.
    /// Ignored on the CPU.
    pub cuda_graphs: Option<bool>,
    pub train: TrainSpecOptions,
    pub optimizer: OptimizerOptions,
}

#[napi(object)]
pub struct Batch {
    pub ids: Int32Array,
    pub mask: Int32Array,
    pub labels: Option<Int32Array>,
    pub batch: u32,
    pub seq: u32,
}

#[napi(object)]
pub struct GaSettings {
    /// `gated` (the reference code's rule) or `paper` (Eq. 7-8)
    pub rule: String,
    /// mixing weight of the raw gradient; for `gated`, null = keep g when the gate is closed
    #[napi(ts_type = "number | null")]
    pub rho: Option<Either<f64, Null>>,
    pub min_ref_loss: f64,
    pub min_ref_grad_norm: f64,
}

#[napi(object)]
pub struct StepSettings {
    pub lr: f64,
    pub ga: Option<GaSettings>,
}

#[napi(object)]
pub struct StepReport {
    pub loss: f64,
    /// null without a reference batch
    pub ref_loss: Either<f64, Null>,
    pub grad_norm: f64,
    pub ref_grad_norm: Either<f64, Null>,
    pub n_ref: Either<f64, Null>,
    pub projected: u32,
    /// `none`, `projection`, `mixed` or `raw`
    pub ga_branch: String,
    pub clipped_norm: f64,
}

#[napi(object)]
pub struct EncodedTexts {
    pub ids: Int32Array,
    pub offsets: Int32Array,
}

// ---- plumbing -----------------------------------------------------------------------------

/// `null` rather than `undefined` for absent numbers, as the TypeScript contract has it.
fn or_null(x: Option<f64>) -> Either<f64, Null> {
    x.map_or(Either::B(Null), Either::A)
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(Status::InvalidArg, msg.into())
}

fn engine_err(e: muscle_engine::EngineError) -> Error {
    Error::new(Status::GenericFailure, e.to_string())
}

/// Runs `f`, turning a panic into an `Error` carrying its message: a bug in the engine must
/// reject one promise, not abort Node.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::new(Status::GenericFailure, format!("internal error in the engine during {what}: {msg}")))
        }
    }
}

/// A batch copied out of JS memory, so the computation can run off the main thread.
struct OwnedBatch {
    ids: Vec<i32>,
    mask: Vec<i32>,
    labels: Option<Vec<i32>>,
    b: usize,
    t: usize,
}

impl OwnedBatch {
    fn from_js(batch: &Batch, what: &str, need_labels: bool) -> Result<Self> {
        let (b, t) = (batch.batch as usize, batch.seq as usize);
        if batch.ids.len() != b * t || batch.mask.len() != b * t {
            return Err(invalid(format!(
                "{what}: ids ({}) and mask ({}) must hold batch x seq = {b} x {t} values", batch.ids.len(), batch.mask.len())));
        }
        if need_labels && batch.labels.is_none() {
            return Err(invalid(format!("{what}: labels are required for training")));
        }
        Ok(OwnedBatch {
            ids: batch.ids.to_vec(),
            mask: batch.mask.to_vec(),
            labels: batch.labels.as_ref().map(|l| l.to_vec()),
            b,
            t,
        })
    }

    fn as_ref(&self) -> BatchRef<'_> {
        BatchRef { ids: &self.ids, mask: &self.mask, labels: self.labels.as_deref(), b: self.b, t: self.t }
    }
}

fn train_spec(o: &TrainSpecOptions) -> Result<TrainSpec> {
    let mode = match o.mode.as_str() {
        "full" => TrainMode::Full,
        "peft" => TrainMode::Peft,
        other => return Err(invalid(format!("train.mode `{other}` is not one of full, peft"))),
    };
    Ok(TrainSpec {
        mode,
        lora: o.lora.as_ref().map(|l| LoraSpec { r: l.r as usize, alpha: l.alpha as f32, dropout: l.dropout as f32,
                                                   targets: l.targets.clone() }),
        mslr: o.mslr.as_ref().map(|m| MslrSpec { band: m.band.iter().map(|&x| x as f32).collect(), rank: m.rank as usize,
                                                   alpha: m.alpha as f32, dropout: m.dropout as f32 }),
        train_head: o.train_head,
    })
}

fn ga_rule(g: &GaSettings) -> Result<GaRule> {
    let rho = match g.rho {
        Some(Either::A(r)) => Some(r as f32),
        _ => None,
    };
    match g.rule.as_str() {
        "gated" => Ok(GaRule::Gated { min_ref_loss: g.min_ref_loss as f32, min_ref_grad_norm: g.min_ref_grad_norm as f32, rho }),
        "paper" => Ok(GaRule::Paper { rho: rho.ok_or_else(|| invalid("ga.rho must be a number for the paper rule"))? }),
        other => Err(invalid(format!("ga.rule `{other}` is not one of gated, paper"))),
    }
}

static THREADS: Once = Once::new();

// ---- the session --------------------------------------------------------------------------

/// The classifier on whichever backend the session opened.
enum Engine {
    Cpu(Classifier<Cpu>),
    Cuda(Classifier<Cuda>),
}

/// `dispatch!(engine, c => expr)`: `expr` with `c` bound to the classifier, whatever its backend.
macro_rules! dispatch {
    ($e:expr, $c:ident => $body:expr) => {
        match $e {
            Engine::Cpu($c) => $body,
            Engine::Cuda($c) => $body,
        }
    };
}

impl Engine {
    fn open<B: Backend>(be: B, dir: &std::path::Path, o: &SessionOptions, spec: &TrainSpec, adamw: AdamWConfig)
                        -> Result<Classifier<B>> {
        let mut clf = Classifier::open(be, dir, o.num_labels as usize, spec, o.seed as u64, adamw).map_err(engine_err)?;
        clf.model.set_dropout(o.dropout);
        clf.model.set_attention(choose_attention(o.attention.as_deref())?);
        Ok(clf)
    }

    fn pad_id(&self) -> i32 {
        dispatch!(self, c => c.model.cfg.pad_token_id.unwrap_or(0))
    }

    fn num_trainable(&self) -> usize {
        dispatch!(self, c => c.model.params.num_trainable_elements())
    }

    /// What the engine has to say about how it runs (graph mode turned off, and why).
    fn warnings(&self) -> Vec<String> {
        match self {
            Engine::Cpu(_) => Vec::new(),
            Engine::Cuda(c) => c.be.graph_failure().map(|why| format!("CUDA graph mode turned itself off: {why}")).into_iter().collect(),
        }
    }
}

/// The attention a session asks for.
fn choose_attention(attention: Option<&str>) -> Result<AttentionImpl> {
    match attention.unwrap_or("auto") {
        "auto" => Ok(AttentionImpl::Auto),
        "standard" => Ok(AttentionImpl::Standard),
        "flash" => Ok(AttentionImpl::Flash),
        other => Err(invalid(format!("attention `{other}` is not one of auto, standard, flash"))),
    }
}

/// The precision a session asks for, on the device chosen: bf16 exists on the GPU only.
fn choose_precision(precision: Option<&str>, gpu: bool) -> Result<Precision> {
    match (precision.unwrap_or("auto"), gpu) {
        ("auto", true) | ("bf16", true) => Ok(Precision::Bf16),
        ("auto", false) | ("f32", _) => Ok(Precision::F32),
        ("bf16", false) => Err(invalid("precision `bf16` needs the GPU (device: cuda, or auto on a machine with one); use precision: f32 or auto")),
        (other, _) => Err(invalid(format!("precision `{other}` is not one of auto, f32, bf16"))),
    }
}

/// The device a session asks for, resolved to a GPU (`None`: the CPU): `auto` takes GPU 0 when the
/// driver offers one (and falls back to the CPU, saying why, when the CUDA libraries cannot be
/// opened); `cuda` is GPU 0 and `cuda:N` GPU N (opening it says so if there is none such).
fn choose_device(device: &str) -> Result<Option<usize>> {
    match DeviceChoice::parse(device).map_err(invalid)? {
        DeviceChoice::Cpu => Ok(None),
        DeviceChoice::Auto => Ok(Cuda::probe().ok().map(|_| 0)),
        DeviceChoice::Gpu(ordinal) => Cuda::probe().map(|_| Some(ordinal))
            .map_err(|why| invalid(format!("device `{device}`: {why}; use device: cpu (or auto, which falls back to the CPU)"))),
    }
}

struct Inner {
    clf: Option<Engine>,
    /// the engine's warnings already handed to `engineWarnings`
    warned: Vec<String>,
}

impl Inner {
    fn get(&mut self) -> Result<&mut Engine> {
        self.clf.as_mut().ok_or_else(|| Error::new(Status::GenericFailure, "the session was freed".to_string()))
    }
}

/// A model with its adapters and optimiser, on a device.
#[napi]
pub struct Session {
    inner: Arc<Mutex<Inner>>,
    device: String,
    tokenizer: Arc<TextTokenizer>,
    pad_id: i32,
    num_labels: u32,
    num_trainable: u32,
    max_grad_norm: f32,
}

fn lock(inner: &Arc<Mutex<Inner>>) -> std::sync::MutexGuard<'_, Inner> {
    // a panic inside a guarded call poisons the lock; the state it left is still consistent
    // enough to free or to report errors, so recover it
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct OpenTask {
    opts: Option<SessionOptions>,
}

pub struct Opened {
    clf: Engine,
    device: String,
    tokenizer: TextTokenizer,
    pad_id: i32,
    num_labels: u32,
    max_grad_norm: f32,
}

impl Task for OpenTask {
    type Output = Opened;
    type JsValue = Session;

    fn compute(&mut self) -> Result<Opened> {
        let o = self.opts.take().ok_or_else(|| invalid("session options already used"))?;
        guarded("openSession", || {
            let gpu = choose_device(&o.device)?;
            let precision = choose_precision(o.precision.as_deref(), gpu.is_some())?;
            if let Some(n) = o.threads {
                THREADS.call_once(|| {
                    // fails only if a pool already exists, in which case that one is used
                    let _ = rayon::ThreadPoolBuilder::new().num_threads(n.max(1) as usize).build_global();
                });
            }
            let dir = PathBuf::from(&o.model_dir);
            if !dir.is_dir() {
                return Err(invalid(format!(
                    "{}: model folder not found; give a folder with config.json, model.safetensors and tokenizer.json",
                    dir.display())));
            }
            let spec = train_spec(&o.train)?;
            let adamw = AdamWConfig {
                beta1: o.optimizer.beta1 as f32,
                beta2: o.optimizer.beta2 as f32,
                eps: o.optimizer.eps as f32,
                weight_decay: o.optimizer.weight_decay as f32,
            };
            let tokenizer = TextTokenizer::open(&dir, o.max_length as usize).map_err(engine_err)?;
            // `auto` on a machine whose GPU cannot be opened (no cuBLAS or NVRTC found, say) trains on
            // the CPU and says why in the device string; an explicit `cuda` or `bf16` fails instead.
            let mut not_used = None;
            let gpu_backend = if let Some(ordinal) = gpu {
                match Cuda::with_precision(ordinal, precision) {
                    Ok(be) => Some(be),
                    Err(e) if o.device == "auto" && o.precision.as_deref() != Some("bf16") => {
                        not_used = Some(e.to_string());
                        None
                    }
                    Err(e) => return Err(engine_err(e)),
                }
            } else {
                None
            };
            let (clf, device) = if let Some(be) = gpu_backend {
                if let Some(on) = o.cuda_graphs {
                    be.set_graphs(on).map_err(engine_err)?;
                }
                let info = be.info().clone();
                let device = format!("cuda:{} ({}, sm_{}{}, {}{})", info.ordinal, info.name, info.compute_capability.0,
                                     info.compute_capability.1, if precision == Precision::Bf16 { "bf16" } else { "f32" },
                                     if be.graph_mode() { ", CUDA graphs" } else { "" });
                (Engine::Cuda(Engine::open(be, &dir, &o, &spec, adamw)?), device)
            } else {
                let be = Cpu::new();
                let device = match not_used {
                    None => format!("cpu ({} threads)", be.threads()),
                    Some(why) => format!("cpu ({} threads; the GPU was not used: {why})", be.threads()),
                };
                (Engine::Cpu(Engine::open(be, &dir, &o, &spec, adamw)?), device)
            };
            let pad_id = clf.pad_id();
            Ok(Opened { clf, device, tokenizer, pad_id, num_labels: o.num_labels, max_grad_norm: o.optimizer.max_grad_norm as f32 })
        })
    }

    fn resolve(&mut self, _env: Env, out: Opened) -> Result<Session> {
        let num_trainable = out.clf.num_trainable() as u32;
        Ok(Session {
            inner: Arc::new(Mutex::new(Inner { clf: Some(out.clf), warned: Vec::new() })),
            device: out.device,
            tokenizer: Arc::new(out.tokenizer),
            pad_id: out.pad_id,
            num_labels: out.num_labels,
            num_trainable,
            max_grad_norm: out.max_grad_norm,
        })
    }
}

/// Loads a model and tokenizer and sets up what trains. Resolves to a `Session`.
#[napi(ts_return_type = "Promise<Session>")]
pub fn open_session(opts: SessionOptions) -> AsyncTask<OpenTask> {
    AsyncTask::new(OpenTask { opts: Some(opts) })
}

pub struct EncodeTask {
    tokenizer: Arc<TextTokenizer>,
    texts: Vec<String>,
}

impl Task for EncodeTask {
    type Output = (Vec<i32>, Vec<i32>);
    type JsValue = EncodedTexts;

    fn compute(&mut self) -> Result<Self::Output> {
        let texts = std::mem::take(&mut self.texts);
        guarded("encode", || {
            let enc = self.tokenizer.encode(&texts).map_err(engine_err)?;
            Ok((enc.ids, enc.offsets.iter().map(|&o| o as i32).collect()))
        })
    }

    fn resolve(&mut self, _env: Env, (ids, offsets): Self::Output) -> Result<EncodedTexts> {
        Ok(EncodedTexts { ids: Int32Array::new(ids), offsets: Int32Array::new(offsets) })
    }
}

pub struct StepTask {
    inner: Arc<Mutex<Inner>>,
    batch: OwnedBatch,
    reference: Option<OwnedBatch>,
    settings: EngineStep,
}

impl Task for StepTask {
    type Output = muscle_engine::StepReport;
    type JsValue = StepReport;

    fn compute(&mut self) -> Result<Self::Output> {
        guarded("trainStep", || {
            let mut inner = lock(&self.inner);
            let reference = self.reference.as_ref().map(|r| r.as_ref());
            dispatch!(inner.get()?, c => c.train_step(&self.batch.as_ref(), reference.as_ref(), &self.settings)).map_err(engine_err)
        })
    }

    fn resolve(&mut self, _env: Env, r: Self::Output) -> Result<StepReport> {
        Ok(StepReport {
            loss: r.loss as f64,
            ref_loss: or_null(r.ref_loss.map(|x| x as f64)),
            grad_norm: r.grad_norm,
            ref_grad_norm: or_null(r.ref_grad_norm),
            n_ref: or_null(r.n_ref),
            projected: r.projected as u32,
            ga_branch: match r.branch {
                GaBranch::None => "none",
                GaBranch::Projection => "projection",
                GaBranch::Mixed => "mixed",
                GaBranch::Raw => "raw",
            }
            .to_string(),
            clipped_norm: r.clipped_norm,
        })
    }
}

pub struct PredictTask {
    inner: Arc<Mutex<Inner>>,
    batch: OwnedBatch,
}

impl Task for PredictTask {
    type Output = Vec<f32>;
    type JsValue = Float32Array;

    fn compute(&mut self) -> Result<Vec<f32>> {
        guarded("predict", || {
            let mut inner = lock(&self.inner);
            dispatch!(inner.get()?, c => c.predict(&self.batch.as_ref())).map_err(engine_err)
        })
    }

    fn resolve(&mut self, _env: Env, logits: Vec<f32>) -> Result<Float32Array> {
        Ok(Float32Array::new(logits))
    }
}

#[derive(Clone, Copy)]
pub enum StateOp {
    Snapshot,
    Restore,
    /// test hook: proves a panic inside a task becomes a rejected promise
    Panic,
}

pub struct StateTask {
    inner: Arc<Mutex<Inner>>,
    op: StateOp,
}

impl Task for StateTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> Result<()> {
        guarded("a state operation", || {
            let mut inner = lock(&self.inner);
            let engine = inner.get()?;
            match self.op {
                StateOp::Snapshot => {
                    dispatch!(engine, c => c.snapshot());
                    Ok(())
                }
                StateOp::Restore => dispatch!(engine, c => c.restore()).map_err(engine_err),
                StateOp::Panic => panic!("deliberate panic for the test suite"),
            }
        })
    }

    fn resolve(&mut self, _env: Env, _: ()) -> Result<()> {
        Ok(())
    }
}

#[napi]
impl Session {
    /// Token id used for padding batches.
    #[napi(getter)]
    pub fn pad_id(&self) -> i32 {
        self.pad_id
    }

    /// Where the session runs, e.g. `cpu (16 threads)` or `cuda:0 (NVIDIA H100 80GB HBM3, sm_90, bf16)`.
    #[napi(getter)]
    pub fn device(&self) -> String {
        self.device.clone()
    }

    #[napi(getter)]
    pub fn num_labels(&self) -> u32 {
        self.num_labels
    }

    /// Number of trainable scalars.
    #[napi(getter)]
    pub fn num_trainable(&self) -> u32 {
        self.num_trainable
    }

    /// Tokenizes texts (with special tokens, truncated to maxLength); ragged result.
    #[napi(ts_return_type = "Promise<EncodedTexts>")]
    pub fn encode(&self, texts: Vec<String>) -> AsyncTask<EncodeTask> {
        AsyncTask::new(EncodeTask { tokenizer: self.tokenizer.clone(), texts })
    }

    /// One optimisation step on `batch`, aligned to `reference` when GA settings are given.
    #[napi(ts_return_type = "Promise<StepReport>")]
    pub fn train_step(&self, batch: Batch, reference: Option<Batch>, step: StepSettings) -> Result<AsyncTask<StepTask>> {
        let batch = OwnedBatch::from_js(&batch, "trainStep batch", true)?;
        let reference = reference.as_ref().map(|r| OwnedBatch::from_js(r, "trainStep reference batch", true)).transpose()?;
        let ga = step.ga.as_ref().map(ga_rule).transpose()?;
        if ga.is_some() && reference.is_none() {
            return Err(invalid("trainStep: GA settings need a reference batch"));
        }
        let settings = EngineStep { lr: step.lr as f32, max_grad_norm: self.max_grad_norm, ga };
        Ok(AsyncTask::new(StepTask { inner: self.inner.clone(), batch, reference, settings }))
    }

    /// Logits `[batch * numLabels]` in evaluation mode.
    #[napi(ts_return_type = "Promise<Float32Array>")]
    pub fn predict(&self, batch: Batch) -> Result<AsyncTask<PredictTask>> {
        let batch = OwnedBatch::from_js(&batch, "predict batch", false)?;
        Ok(AsyncTask::new(PredictTask { inner: self.inner.clone(), batch }))
    }

    /// Keeps a copy of the trainable tensors (best-on-dev selection).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn snapshot(&self) -> AsyncTask<StateTask> {
        AsyncTask::new(StateTask { inner: self.inner.clone(), op: StateOp::Snapshot })
    }

    /// Puts the snapshot back.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn restore(&self) -> AsyncTask<StateTask> {
        AsyncTask::new(StateTask { inner: self.inner.clone(), op: StateOp::Restore })
    }

    /// Writes the trainable tensors to a safetensors file (atomically).
    #[napi]
    pub fn save_trainable(&self, path: String) -> Result<()> {
        guarded("saveTrainable", || {
            let mut inner = lock(&self.inner);
            dispatch!(inner.get()?, c => c.save_trainable(&PathBuf::from(&path))).map_err(engine_err)
        })
    }

    /// The engine's warnings not yet returned by an earlier call (on a GPU: graph mode turned
    /// itself off, and why); empty on the CPU.
    #[napi]
    pub fn engine_warnings(&self) -> Vec<String> {
        let mut inner = lock(&self.inner);
        let now = inner.clf.as_ref().map(Engine::warnings).unwrap_or_default();
        let new: Vec<String> = now.into_iter().filter(|w| !inner.warned.contains(w)).collect();
        inner.warned.extend(new.iter().cloned());
        new
    }

    /// Releases the model's memory now rather than at garbage collection.
    #[napi]
    pub fn free(&self) {
        lock(&self.inner).clf = None;
    }

    /// Test hook: a task that panics inside the engine.
    #[napi(js_name = "__panicForTest", ts_return_type = "Promise<void>")]
    pub fn panic_for_test(&self) -> AsyncTask<StateTask> {
        AsyncTask::new(StateTask { inner: self.inner.clone(), op: StateOp::Panic })
    }
}
