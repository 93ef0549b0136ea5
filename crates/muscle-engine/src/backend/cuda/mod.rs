//! The CUDA backend: f32 buffers on one GPU, GEMMs through cuBLAS, everything else through the
//! kernels of `kernels/*.cu`, compiled at run time with NVRTC.
//!
//! cudarc loads the driver, cuBLAS and NVRTC with `dlopen` when first used, so the same binary builds
//! without a CUDA toolkit and runs on machines without a GPU; `Cuda::probe` says whether this one
//! has one. All work goes to one stream in issue order, so no event tracking is needed.
//!
//! The verbs talk to a `runtime::Runtime`: the driver with cuBLAS on a GPU, or, with no GPU, the
//! kernel emulator of the tests (`Cuda::emulated`: the same kernel sources run on the CPU) or a dry
//! run that only counts calls and allocations (`Cuda::dry_run`).
//!
//! Errors: the `Backend` verbs cannot fail by signature (the CPU's never do), so the first CUDA error
//! is kept (sticky), every later verb becomes a no-op, and `Backend::check` hands the error to the
//! caller, which checks after each step. Nothing here panics on a CUDA failure.

pub mod graphs;
pub mod kernel_cache;
pub mod kernels;
pub mod libs;
pub mod runtime;

use super::{AdamwItem, AxpbyItem, Backend, DeviceChoice, GemmItem, Mat, NormOut};
use crate::error::{EngineError, Result};
use cudarc::driver::{CudaContext, DeviceRepr, ValidAsZeroBits};
use runtime::{Calls, Driver, Gemm, KernelEmulator, Kind, Mem, Runtime};
use std::collections::HashMap;
use std::sync::Mutex;

/// A device buffer: f32, or bf16 for a frozen weight in bf16 mode (`freeze_weight`).
pub struct GpuBuf {
    store: Store,
    len: usize,
    /// A dropout mask not drawn yet (`dropout_mask` records it): the kernel that applies it draws
    /// it and writes it here, saving a launch; any other use of the buffer draws it first.
    pending: Mutex<Option<PendingMask>>,
    /// In bf16 mode, the contents in bf16, written by the kernel that produced them (layer norm,
    /// GELU and their backwards) for the bf16 GEMM that reads them next, which then needs no
    /// conversion. Valid only until the buffer's address is taken for anything else (`Cuda::ptr`
    /// clears it), so a stale copy is never read.
    half: Option<Mem<u16>>,
    half_valid: std::sync::atomic::AtomicBool,
    /// `Backend::set_gemm_input_only`: only GEMMs read this buffer, through its bf16 copy, so a
    /// kernel writing the copy skips the f32 values (`Cuda::out_ptr`); kept across re-layouts.
    gemm_only: bool,
    /// The last write skipped the f32 values: any f32 use is then an error (`Cuda::address`), not
    /// a silent read of old values.
    f32_stale: std::sync::atomic::AtomicBool,
}

/// A mask of `n` inverted-dropout draws from stream `key` (0 with probability `p`, else `keep`).
/// `write`: the kernel applying it also writes it to the buffer, for a later read (not for a mask
/// of `dropout_mask_once`, which only that kernel reads).
#[derive(Clone, Copy)]
struct PendingMask {
    n: usize,
    p: f32,
    keep: f32,
    key: u64,
    write: bool,
}

enum Store {
    F32(Mem<f32>),
    /// bf16 bit patterns; only `matmul` and `to_host` read these
    Bf16(Mem<u16>),
    /// an allocation failed (the error is then sticky)
    Missing,
}

impl GpuBuf {
    /// `len` f32s in `mem` (`None`: the allocation failed, and the error is kept).
    fn new(mem: Option<Mem<f32>>, len: usize) -> GpuBuf {
        GpuBuf { store: mem.map_or(Store::Missing, Store::F32), len, pending: Mutex::new(None), half: None,
                 half_valid: Default::default(), gemm_only: false, f32_stale: Default::default() }
    }

    fn is_bf16(&self) -> bool {
        matches!(self.store, Store::Bf16(_))
    }
}

/// What the GEMMs with frozen weights compute in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32 everywhere (no TF32): the CPU's numbers to 1e-4
    F32,
    /// frozen weight matrices stored in bf16 only; their GEMMs take bf16 operands on the tensor
    /// cores with f32 accumulation and f32 results. Trainable tensors (master weights, adapters),
    /// their gradients and the optimiser state stay f32, as does everything outside those GEMMs.
    Bf16,
}

/// What a machine offers, as `Cuda::probe` found it.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
}

/// Device scratch the verbs reuse: uploaded indices, per-block partial sums, attention's dS.
#[derive(Default)]
struct Scratch {
    ints: Vec<Option<Mem<i32>>>,
    /// what each `ints` slot was last given: an upload of the same values is skipped (attention's
    /// key mask, the same for every layer)
    ints_last: Vec<Option<Vec<i32>>>,
    f64s: Option<Mem<f64>>,
    f32s: Option<Mem<f32>>,
    /// bf16 copies of the f32 operands of a mixed GEMM (A and B)
    halves: [Option<Mem<u16>>; 2],
    /// attention's head-major copies and [b*heads, t, t] temporaries (see `attention`)
    attn: Vec<Option<Mem<f32>>>,
    /// the records of a many-tensor launch (`launch_many`) that change from call to call
    table: Option<Mem<u64>>,
    /// Device copies of tables that recur unchanged (attention's GEMM pointer arrays, the tensor
    /// tables of the dot products and of clipping), by content, or by what determines their
    /// content where that is shorter (attention's: the shape and the base addresses, see
    /// `head_arrays`): with the activations in one arena and the parameters in place, every step
    /// after the first finds them all here and uploads none of them. Emptied when it reaches
    /// `MAX_TABLES` (batch shapes that keep changing).
    tables: rustc_hash::FxHashMap<Vec<u64>, Mem<u64>>,
}

/// See `Scratch::tables`: a BERT-base step uses a few dozen.
const MAX_TABLES: usize = 1024;

pub struct Cuda {
    rt: Runtime,
    scratch: Mutex<Scratch>,
    error: Mutex<Option<String>>,
    info: DeviceInfo,
    precision: Precision,
    /// whether any weight was frozen to bf16: only then do producers write bf16 copies (full
    /// fine-tuning in bf16 mode trains every weight in f32, and its GEMMs would never read them)
    bf16_weights: std::sync::atomic::AtomicBool,
    /// bf16 mode: attention's batched GEMMs (activations times activations, no weight to keep in
    /// bf16) run on the tensor cores in TF32, 10 mantissa bits to bf16's 7; `MUSCLE_CUDA_TF32=0`
    /// keeps them in exact f32
    tf32_attention: bool,
    /// Same-shaped GEMMs of one verb (`matmuls`, `matmuls_bias`) as one batched GEMM, one launch
    /// for several (unless `MUSCLE_CUDA_BATCHED=0`, which issues them one by one: to time both)
    batch_gemms: bool,
}

/// Whether bf16 mode may run attention's GEMMs in TF32 (unless `MUSCLE_CUDA_TF32=0`).
fn tf32_allowed(precision: Precision) -> bool {
    precision == Precision::Bf16 && std::env::var("MUSCLE_CUDA_TF32").map_or(true, |v| v != "0")
}

/// A kernel argument, passed to `cuLaunchKernel` from an 8-byte slot (the kernel reads the first
/// 4 bytes of a slot for 32-bit types; x86-64 and the GPU are little-endian).
#[derive(Clone, Copy)]
enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
    U64(u64),
}

impl Arg {
    fn bits(self) -> u64 {
        match self {
            Arg::Ptr(p) | Arg::U64(p) => p,
            Arg::I32(v) => v as u32 as u64,
            Arg::I64(v) => v as u64,
            Arg::F32(v) => v.to_bits() as u64,
        }
    }
}

const THREADS: u32 = 256;

/// Blocks for a grid-stride loop over `n` elements.
fn blocks_for(n: usize) -> u32 {
    n.div_ceil(THREADS as usize).clamp(1, 1 << 16) as u32
}

fn driver_error(what: &str, e: impl std::fmt::Debug) -> String {
    format!("CUDA: {what} failed: {e:?}")
}

impl Cuda {
    /// How many GPUs this machine's driver offers; else why none can be used, in one line.
    pub fn probe() -> std::result::Result<usize, String> {
        libs::preload_default();
        // SAFETY: only tries to dlopen the driver library by its candidate names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("no NVIDIA driver found (libcuda.so could not be loaded)".into());
        }
        let count = CudaContext::device_count().map_err(|e| driver_error("cuInit/cuDeviceGetCount", e))?;
        if count < 1 {
            return Err("the NVIDIA driver reports no GPU".into());
        }
        Ok(count as usize)
    }

    /// Opens GPU `ordinal` in f32: context, stream, cuBLAS, and the kernels compiled for its
    /// architecture.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_precision(ordinal, Precision::F32)
    }

    /// [`Cuda::new`] with the precision of the frozen-weight GEMMs.
    pub fn with_precision(ordinal: usize, precision: Precision) -> Result<Self> {
        let fail = |what: &str, e: &dyn std::fmt::Debug| EngineError::Device(driver_error(what, e));
        let count = Self::probe().map_err(EngineError::Device)?;
        DeviceChoice::check_gpu(&format!("cuda:{ordinal}"), ordinal, count).map_err(EngineError::Device)?;
        // SAFETY: probing the library names only.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(EngineError::Device(
                "cuBLAS not found (libcublas.so.13 or .12); install the CUDA runtime libraries (e.g. `pip install nvidia-cublas`) and add their lib folder to LD_LIBRARY_PATH".into()));
        }
        if !kernels::nvrtc_available() {
            return Err(EngineError::Device(
                "NVRTC not found (libnvrtc.so.13 or .12), needed to compile the kernels; install it (e.g. `pip install nvidia-cuda-nvrtc`) and add its lib folder to LD_LIBRARY_PATH".into()));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| fail("opening the device", &e))?;
        // One stream, used in issue order: cudarc's per-buffer events would only add overhead.
        // SAFETY: set before any buffer exists; all buffers of this backend live on `stream`.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let (major, minor) = ctx.compute_capability().map_err(|e| fail("reading the compute capability", &e))?;
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
            compute_capability: (major, minor),
            total_memory: ctx.total_mem().unwrap_or(0),
        };
        let mut functions = rustc_hash::FxHashMap::default();
        for (module, image) in kernels::images_for(major, minor).map_err(EngineError::Device)? {
            let loaded = ctx.load_module(image).map_err(|e| fail(&format!("loading {}", module.file), &e))?;
            for &name in module.kernels {
                let f = loaded.load_function(name).map_err(|e| fail(&format!("finding kernel {name}"), &e))?;
                functions.insert(name, f);
            }
        }
        let blas = cudarc::cublas::CudaBlas::new(stream.clone()).map_err(|e| fail("creating the cuBLAS handle", &e))?;
        let driver = Driver::new(ctx, stream, blas, functions).map_err(|e| fail("setting up staging memory, the capture stream and the cuBLAS workspace", &e))?;
        Ok(Self::assemble(Kind::Driver(driver), info, precision))
    }

    /// The backend on the CPU: host memory, the kernels run by `emulator` (the `muscle-cuda-emu`
    /// crate compiles their sources for the CPU) and cuBLAS's GEMMs written out. For tests on machines
    /// without a GPU; as slow as it is exact.
    #[doc(hidden)]
    pub fn emulated(emulator: Box<dyn KernelEmulator>, precision: Precision) -> Self {
        let info = DeviceInfo { ordinal: 0, name: "emulated on the CPU".into(), compute_capability: (0, 0), total_memory: 0 };
        Self::assemble(Kind::Emulated(emulator), info, precision)
    }

    /// A backend that allocates nothing and runs nothing but counts: the driver calls a step would
    /// make and the device memory it would allocate at most (`memory_used`), for any model size, on
    /// any machine. Every value read back is 0, so a step's branches (gradient alignment's gate)
    /// are those of all-zero gradients.
    pub fn dry_run(precision: Precision) -> Self {
        let info = DeviceInfo { ordinal: 0, name: "dry run (no device)".into(), compute_capability: (0, 0), total_memory: 0 };
        Self::assemble(Kind::DryRun(Default::default()), info, precision)
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    fn failed(&self) -> bool {
        self.error.lock().map(|e| e.is_some()).unwrap_or(true)
    }

    /// Keeps the first error; later ones are consequences of it.
    fn record<T>(&self, what: &str, r: std::result::Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                if let Ok(mut slot) = self.error.lock() {
                    slot.get_or_insert_with(|| format!("CUDA: {what} failed: {e}"));
                }
                None
            }
        }
    }

    /// Binds the context to this thread (N-API worker threads change); false once an error is kept.
    fn begin(&self) -> bool {
        if self.failed() {
            return false;
        }
        self.record("binding the context", self.rt.bind()).is_some()
    }

    /// The device address of an f32 buffer (0, with the error kept, for anything else: a launch
    /// checks `failed` first, so a 0 never reaches a kernel).
    fn ptr(&self, b: &GpuBuf) -> u64 {
        let addr = self.address(b);
        let pending = b.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(m) = pending {
            // drawn now: this use does not apply it itself
            self.launch_n("dropout_mask_f32", m.n, &[Arg::Ptr(addr), Arg::I64(m.n as i64), Arg::F32(m.p), Arg::F32(m.keep),
                                                     Arg::U64(m.key)]);
        }
        addr
    }

    /// In bf16 mode, the address of `b`'s bf16 copy of at least `n` elements (made or grown here)
    /// for a producing kernel to fill; 0 (the kernel then writes none) in f32 mode.
    fn half_out(&self, b: &mut GpuBuf, n: usize) -> u64 {
        if self.precision != Precision::Bf16 || n == 0 || !self.bf16_weights.load(std::sync::atomic::Ordering::Relaxed) {
            return 0;
        }
        if b.half.as_ref().is_none_or(|h| h.len() < n) {
            b.half = None;
            b.half = self.record("allocating a bf16 copy", self.rt.alloc_zeros::<u16>(n));
        }
        b.half_valid.store(false, std::sync::atomic::Ordering::Relaxed);
        b.half.as_ref().map_or(0, |h| self.rt.addr(h))
    }

    /// The softmax cross-entropy kernel over `rows` rows of `n` classes, each row's loss going to
    /// `losses` = (f64 address, f32 address), either 0 for none.
    #[allow(clippy::too_many_arguments)]
    fn softmax_xent_launch(&self, scratch: &mut Scratch, probs: &GpuBuf, logits: &GpuBuf, labels: &[i32], rows: usize,
                           n: usize, losses: (u64, u64)) {
        let pl = self.upload_ints(scratch, 0, &labels[..rows]);
        self.launch("softmax_xent_forward_f32", (rows.div_ceil(128) as u32, 1, 1), (128, 1, 1), 0, &[
            Arg::Ptr(self.ptr(probs)), Arg::Ptr(self.ptr(logits)), Arg::Ptr(pl), Arg::I32(rows as i32), Arg::I32(n as i32),
            Arg::Ptr(losses.0), Arg::Ptr(losses.1)]);
    }

    /// The f32 address of a GEMM operand (its buffer at its offset).
    fn f32_operand(&self, m: &Mat<'_, Self>) -> u64 {
        self.ptr(m.buf) + 4 * m.offset as u64
    }

    /// The f32 address a kernel writes `b` at, beside its bf16 copy at `half` (from `half_out`): 0,
    /// so that the kernel writes the copy alone, for a GEMM-input-only buffer that has one.
    fn out_ptr(&self, b: &GpuBuf, half: u64) -> u64 {
        let skip = b.gemm_only && half != 0;
        b.f32_stale.store(skip, std::sync::atomic::Ordering::Relaxed);
        if skip { 0 } else { self.ptr(b) }
    }

    /// After the kernel that wrote `b` and its bf16 copy (`half_out` gave `half`).
    fn half_written(&self, b: &GpuBuf, half: u64) {
        if half != 0 && !self.failed() {
            b.half_valid.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The mask `b` still has to receive, when a kernel applying `n` elements of it can draw it
    /// itself (it then owes the buffer those draws); `None` when there is none or of another size.
    fn take_pending(&self, b: &GpuBuf, n: usize) -> Option<PendingMask> {
        let mut slot = b.pending.lock().unwrap_or_else(|e| e.into_inner());
        match *slot {
            Some(m) if m.n == n => slot.take(),
            _ => None,
        }
    }

    /// Records a dropout mask for the kernel that applies it to draw (see `PendingMask`).
    fn pend_mask(&self, mask: &mut GpuBuf, n: usize, p: f32, seed: u64, stream: &[u64], write: bool) {
        if n > mask.len {
            self.record::<()>("dropout_mask", Err(format!("a mask of {n} in a buffer of {}", mask.len)));
            return;
        }
        let key = crate::rng::stream_key(seed, stream);
        *mask.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(PendingMask { n, p, keep: 1.0 / (1.0 - p), key, write });
    }

    /// A dropout mask's kernel arguments `(address, p, keep, key)` for a kernel applying `n` of it:
    /// a pending mask is drawn by the kernel (`p > 0`) and written to the buffer only if it is read
    /// again; a drawn one is read (`p = 0`); no mask is address 0.
    fn mask_args(&self, mask: Option<&GpuBuf>, n: usize) -> (u64, f32, f32, u64) {
        let Some(x) = mask else { return (0, 0.0, 1.0, 0) };
        match self.take_pending(x, n) {
            Some(m) => (self.draws_to(x, &m), m.p, m.keep, m.key),
            None => (self.ptr(x), 0.0, 1.0, 0),
        }
    }

    /// Where the kernel applying pending mask `m` writes its draws: `mask`'s address, or 0 (none)
    /// for a mask nothing reads again.
    fn draws_to(&self, mask: &GpuBuf, m: &PendingMask) -> u64 {
        if m.write { self.address(mask) } else { 0 }
    }

    /// The address of an f32 buffer as it is, pending mask or not. Any use may write it, so its bf16
    /// copy stops being valid.
    fn address(&self, b: &GpuBuf) -> u64 {
        if b.f32_stale.load(std::sync::atomic::Ordering::Relaxed) {
            self.record::<()>("internal", Err("a buffer declared a GEMM input only (Backend::set_gemm_input_only) was used as \
                                               f32 after a write of its bf16 copy alone".into()));
            return 0;
        }
        b.half_valid.store(false, std::sync::atomic::Ordering::Relaxed);
        match &b.store {
            Store::F32(s) => self.rt.addr(s),
            Store::Bf16(_) => {
                self.record::<()>("internal", Err("a bf16 weight was passed to an f32 kernel".into()));
                0
            }
            Store::Missing => 0,
        }
    }

    fn launch(&self, name: &'static str, grid: (u32, u32, u32), block: (u32, u32, u32), smem: u32, args: &[Arg]) {
        if self.failed() {
            return; // an argument may be a 0 address from the failure
        }
        let slots: Vec<u64> = args.iter().map(|a| a.bits()).collect();
        // SAFETY: the slots hold each argument in the layout the kernel's signature declares (the
        // emulated tests check every launch's count against the source); the grid covers the sizes passed.
        let r = unsafe { self.rt.launch(name, grid, block, smem, slots) };
        self.record(name, r);
    }

    /// Grid-stride launch of an element-wise kernel over `n` elements.
    fn launch_n(&self, name: &'static str, n: usize, args: &[Arg]) {
        if n > 0 {
            self.launch(name, (blocks_for(n), 1, 1), (THREADS, 1, 1), 0, args);
        }
    }

    /// Uploads host indices into scratch slot `slot` (each call of a verb uses its own slots, so
    /// one verb's uploads never overwrite each other before the kernels read them: the stream
    /// runs the copy after every earlier kernel).
    fn upload_ints(&self, scratch: &mut Scratch, slot: usize, data: &[i32]) -> u64 {
        if scratch.ints.len() <= slot {
            scratch.ints.resize_with(slot + 1, || None);
            scratch.ints_last.resize_with(slot + 1, || None);
        }
        // the slot already holds these values (uploads land in stream order, so the last one given
        // is what the next kernel reads)
        if let (Some(mem), Some(last)) = (scratch.ints[slot].as_ref(), scratch.ints_last[slot].as_deref()) {
            if last == data {
                return self.rt.addr(mem);
            }
        }
        scratch.ints_last[slot] = None;
        let p = self.grown(&mut scratch.ints[slot], data.len().max(1), data.len().next_power_of_two());
        if let Some(dst) = scratch.ints[slot].as_mut() {
            if self.record("uploading indices", self.rt.upload(dst, data)).is_none() {
                return 0;
            }
            scratch.ints_last[slot] = Some(data.to_vec());
        }
        p
    }

    /// The address of `slot`'s scratch after growing it to hold at least `need` elements
    /// (reallocated zeroed with `alloc` of them, the old one freed first); 0 with the error kept
    /// when the allocation fails.
    fn grown<T: DeviceRepr + ValidAsZeroBits + Copy + Default>(&self, slot: &mut Option<Mem<T>>, need: usize, alloc: usize) -> u64 {
        if slot.as_ref().is_none_or(|s| s.len() < need) {
            *slot = None;
            *slot = self.record("allocating scratch", self.rt.alloc_zeros::<T>(alloc.max(need).max(1)));
        }
        slot.as_ref().map_or(0, |s| self.rt.addr(s))
    }

    fn usizes_to_i32(v: &[usize]) -> Vec<i32> {
        v.iter().map(|&x| x as i32).collect()
    }

    fn download_f64(&self, scratch: &Scratch, n: usize) -> Vec<f64> {
        let Some(s) = scratch.f64s.as_ref() else { return vec![0.0; n] };
        self.record("downloading results", self.rt.download(s, n)).unwrap_or_else(|| vec![0.0; n])
    }

    fn alloc(&self, n: usize) -> GpuBuf {
        let slice = if self.begin() { self.record("allocating device memory", self.rt.alloc_zeros::<f32>(n)) } else { None };
        GpuBuf::new(slice, n)
    }

    /// `matmul`'s GEMM. With a frozen bf16 operand both go to the tensor cores in bf16 (f32
    /// accumulation and C): the f32 one converted into scratch, unless `a_half` already holds A in
    /// bf16 (`matmuls_bias`).
    #[allow(clippy::too_many_arguments)]
    fn gemm(&self, scratch: &mut Scratch, c: &mut GpuBuf, c_off: usize, ldc: usize, a: Mat<'_, Self>,
            a_half: Option<u64>, b: Mat<'_, Self>, m: usize, n: usize, k: usize, alpha: f32, accumulate: bool) {
        // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands and
        // keep each one's transpose flag (a row-major matrix read column-major is its transpose).
        let beta: f32 = if accumulate { 1.0 } else { 0.0 };
        let bf16 = a.buf.is_bf16() || b.buf.is_bf16();
        let (pa, pb) = if bf16 {
            let (ar, ac) = if a.trans { (k, m) } else { (m, k) };
            let (br, bc) = if b.trans { (n, k) } else { (k, n) };
            let pa = match a_half {
                Some(p) => p,
                None => self.bf16_operand(scratch, 0, &a, ar, ac),
            };
            (pa, self.bf16_operand(scratch, 1, &b, br, bc))
        } else {
            (self.f32_operand(&a), self.f32_operand(&b))
        };
        let pc = self.ptr(c) + 4 * c_off as u64;
        if self.failed() {
            return;
        }
        let g = Gemm { ta: b.trans, tb: a.trans, m: n, n: m, k, alpha, a: (pb, b.ld, 0), b: (pa, a.ld, 0), beta,
                       c: (pc, ldc, 0), batch: 1, bf16, tf32: false, arrays: None };
        // SAFETY: operands and C are inside their buffers (the layers' shapes; checked on the CPU
        // backend by bounds asserts); a bf16 operand holds the same extent as its f32 source.
        let r = unsafe { self.rt.gemm(&g) };
        self.record(if bf16 { "cublasGemmEx (bf16)" } else { "cublasSgemm" }, r);
    }

    /// The bf16 address of a GEMM operand: a frozen weight's own storage, the bf16 copy its producer
    /// wrote (`GpuBuf::half`, still valid), or a bf16 copy (in scratch `slot`) of the stored extent
    /// of an f32 operand of `rows x cols` with its `ld`.
    fn bf16_operand(&self, scratch: &mut Scratch, slot: usize, m: &Mat<'_, Self>, rows: usize, cols: usize) -> u64 {
        if let Store::Bf16(s) = &m.buf.store {
            return self.rt.addr(s) + 2 * m.offset as u64;
        }
        let extent = (rows - 1) * m.ld + cols;
        if let Some(half) = m.buf.half.as_ref() {
            if m.buf.half_valid.load(std::sync::atomic::Ordering::Relaxed) && half.len() >= m.offset + extent {
                return self.rt.addr(half) + 2 * m.offset as u64;
            }
        }
        let dst = self.grown(&mut scratch.halves[slot], extent, extent.next_power_of_two());
        let src = self.f32_operand(m);
        self.launch_n("f32_to_bf16", extent, &[Arg::Ptr(dst), Arg::Ptr(src), Arg::I64(extent as i64)]);
        dst
    }
}

impl Backend for Cuda {
    type Buf = GpuBuf;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn check(&self) -> Result<()> {
        if !self.failed() {
            // surface asynchronous failures (a kernel fault shows at the next synchronisation)
            let r = self.rt.synchronize();
            self.record("running the step", r);
        }
        match self.error.lock() {
            Ok(e) => e.clone().map_or(Ok(()), |m| Err(EngineError::Device(m))),
            Err(_) => Err(EngineError::Device("CUDA backend state poisoned by an earlier panic".into())),
        }
    }

    fn zeros(&self, n: usize) -> GpuBuf {
        self.alloc(n)
    }
    fn memory_available(&self) -> Option<usize> {
        self.rt.memory_free()
    }
    fn memory_owner(&self) -> &'static str {
        "the GPU"
    }
    fn from_host(&self, data: &[f32]) -> GpuBuf {
        let mut b = self.alloc(data.len());
        if let Store::F32(s) = &mut b.store {
            let r = self.rt.upload(s, data);
            self.record("uploading", r);
        }
        b
    }
    fn to_host(&self, buf: &GpuBuf, n: usize) -> Vec<f32> {
        if n == 0 || !self.begin() {
            return vec![0.0; n];
        }
        if !buf.is_bf16() {
            self.ptr(buf); // a pending mask is drawn before it is read
        }
        match &buf.store {
            Store::F32(s) => self.record("downloading", self.rt.download(s, n)).unwrap_or_else(|| vec![0.0; n]),
            Store::Bf16(s) => match self.record("downloading", self.rt.download(s, n)) {
                Some(bits) => bits.into_iter().map(|b| half::bf16::from_bits(b).to_f32()).collect(),
                None => vec![0.0; n],
            },
            Store::Missing => vec![0.0; n],
        }
    }
    fn len(&self, buf: &GpuBuf) -> usize {
        buf.len
    }
    fn ensure(&self, buf: &mut GpuBuf, n: usize) {
        if buf.len < n {
            buf.store = Store::Missing; // free before allocating the larger one
            let gemm_only = buf.gemm_only;
            *buf = self.alloc(n);
            buf.gemm_only = gemm_only;
        }
    }
    /// One allocation for all of them (the activation arena), made again, larger, only when a
    /// buffer is short: a model's activations and backward scratch cost one `cuMemAlloc` for the
    /// largest batch (which the model first checks against `memory_available`). A buffer keeps its
    /// length when it is laid out again, so alternating batch shapes settle on one arena; the old
    /// arena is released first, in stream order, so growing needs only the difference.
    fn ensure_arena(&self, bufs: &mut [(&mut GpuBuf, usize)]) {
        if bufs.iter().all(|(b, n)| b.len >= *n) {
            return;
        }
        let lens: Vec<usize> = bufs.iter().map(|(b, n)| b.len.max(*n)).collect();
        let gemm_only: Vec<bool> = bufs.iter().map(|(b, _)| b.gemm_only).collect();
        // the old arena is freed (once every part is dropped) before the new one is made
        for (b, _) in bufs.iter_mut() {
            **b = GpuBuf::new(None, 0);
        }
        let parts = if self.begin() { self.record("allocating the activation arena", self.rt.alloc_arena::<f32>(&lens)) } else { None };
        match parts {
            Some(parts) => {
                for ((b, _), (mem, len)) in bufs.iter_mut().zip(parts.into_iter().zip(lens)) {
                    **b = GpuBuf::new(Some(mem), len);
                }
            }
            None => {
                for ((b, _), len) in bufs.iter_mut().zip(lens) {
                    b.len = len; // Missing: every use is a no-op after the kept error
                }
            }
        }
        for ((b, _), only) in bufs.iter_mut().zip(gemm_only) {
            b.gemm_only = only;
        }
    }
    fn set_gemm_input_only(&self, buf: &mut GpuBuf, on: bool) {
        buf.gemm_only = on;
    }
    fn freeze_weight(&self, buf: &mut GpuBuf, n: usize) {
        if self.precision != Precision::Bf16 || buf.is_bf16() || !self.begin() {
            return;
        }
        let Some(half) = self.record("allocating bf16 weights", self.rt.alloc_zeros::<u16>(n)) else { return };
        let (dst, src) = (self.rt.addr(&half), self.ptr(buf));
        self.launch_n("f32_to_bf16", n, &[Arg::Ptr(dst), Arg::Ptr(src), Arg::I64(n as i64)]);
        // the f32 copy is freed in stream order, after the conversion has read it
        buf.store = Store::Bf16(half);
        self.bf16_weights.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    fn fill(&self, buf: &mut GpuBuf, n: usize, value: f32) {
        if self.begin() {
            self.launch_n("fill_f32", n, &[Arg::Ptr(self.ptr(buf)), Arg::I64(n as i64), Arg::F32(value)]);
        }
    }
    fn copy(&self, dst: &mut GpuBuf, src: &GpuBuf, n: usize) {
        if n == 0 || !self.begin() {
            return;
        }
        let (d, s) = (self.ptr(dst), self.ptr(src));
        // SAFETY: both buffers hold at least n floats (the trait's contract) on this context.
        let r = unsafe { self.rt.copy(d, s, n * 4) };
        self.record("device copy", r);
    }

    fn matmul(&self, c: &mut GpuBuf, c_off: usize, ldc: usize, a: Mat<'_, Self>, b: Mat<'_, Self>,
              m: usize, n: usize, k: usize, alpha: f32, accumulate: bool) {
        if m == 0 || n == 0 || !self.begin() {
            return;
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        self.gemm(&mut scratch, c, c_off, ldc, a, None, b, m, n, k, alpha, accumulate);
    }
    fn matmuls(&self, items: &mut [GemmItem<'_, Self>], ldc: usize, m: usize, n: usize, k: usize, alpha: f32,
               accumulate: bool) {
        // Batched only for f32 operands of one layout (the LoRA branches), and not for a long
        // reduction into a small output (LoRA's weight gradients, [r, in] over b*t tokens): one
        // such GEMM gets its K split across the GPU, a batch of them may not. Anything else one by one.
        let batched = self.batch_gemms && items.len() > 1 && k < 2 * m.max(n) && items.iter().all(|it| {
            !it.a.buf.is_bf16() && !it.b.buf.is_bf16() && (it.a.ld, it.a.trans, it.b.ld, it.b.trans)
                == (items[0].a.ld, items[0].a.trans, items[0].b.ld, items[0].b.trans)
        });
        if !batched {
            for it in items.iter_mut() {
                self.matmul(it.c, it.c_off, ldc, it.a, it.b, m, n, k, alpha, accumulate);
            }
            return;
        }
        if m == 0 || n == 0 || !self.begin() {
            return;
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let pa = items.iter().map(|it| self.f32_operand(&it.a)).collect();
        let pb = items.iter().map(|it| self.f32_operand(&it.b)).collect();
        let pc = items.iter().map(|it| self.ptr(it.c) + 4 * it.c_off as u64).collect();
        let arrays = self.pointer_arrays(&mut scratch, &[[pa, pb, pc]]);
        let (a, b) = (items[0].a, items[0].b);
        self.gemm_arrays(arrays[0], (a.ld, a.trans), (b.ld, b.trans), ldc, m, n, k, alpha, items.len(),
                         Batched { bf16: false, tf32: false, accumulate });
    }
    fn matmuls_bias(&self, a: Mat<'_, Self>, items: &mut [(&mut GpuBuf, Mat<'_, Self>, &GpuBuf)], m: usize, n: usize,
                    k: usize) {
        if m == 0 || n == 0 || !self.begin() {
            return;
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        // A in bf16 once for every bf16 GEMM of the set (scratch slot 0 is not touched by the GEMMs)
        let a_half = (items.iter().any(|(_, b, _)| b.buf.is_bf16()) && !a.buf.is_bf16()).then(|| {
            let (ar, ac) = if a.trans { (k, m) } else { (m, k) };
            self.bf16_operand(&mut scratch, 0, &a, ar, ac)
        });
        // One batched GEMM where every weight has one type and layout (q, k and v: frozen in bf16,
        // or all trained in f32): one launch, and three products' tiles to fill the GPU at once
        // (one [b*t, 768] product alone leaves SMs idle); else one GEMM each.
        let all_bf16 = items.iter().all(|(_, b, _)| b.buf.is_bf16());
        let same = items.iter().all(|(_, b, _)| {
            (b.buf.is_bf16(), b.ld, b.trans) == (all_bf16, items[0].1.ld, items[0].1.trans)
        });
        if self.batch_gemms && items.len() > 1 && same && !a.buf.is_bf16() {
            let (br, bc) = if items[0].1.trans { (n, k) } else { (k, n) };
            let pa = a_half.unwrap_or_else(|| self.f32_operand(&a));
            let pb = items.iter().map(|(_, b, _)| match all_bf16 {
                true => self.bf16_operand(&mut scratch, 1, b, br, bc), // a weight's own bf16 storage
                false => self.f32_operand(b),
            }).collect();
            let pc = items.iter().map(|(c, _, _)| self.ptr(c)).collect();
            let arrays = self.pointer_arrays(&mut scratch, &[[vec![pa; items.len()], pb, pc]]);
            let b = items[0].1;
            self.gemm_arrays(arrays[0], (a.ld, a.trans), (b.ld, b.trans), n, m, n, k, 1.0, items.len(),
                             Batched { bf16: all_bf16, tf32: false, accumulate: false });
        } else {
            for (c, b, _) in items.iter_mut() {
                let half = if b.buf.is_bf16() { a_half } else { None };
                self.gemm(&mut scratch, c, 0, n, a, half, *b, m, n, k, 1.0, false);
            }
        }
        // the biases after the GEMMs, three outputs a launch
        for group in items.chunks(3) {
            let mut args = Vec::with_capacity(8);
            for i in 0..3 {
                match group.get(i) {
                    Some((c, _, bias)) => args.extend([Arg::Ptr(self.ptr(c)), Arg::Ptr(self.ptr(bias))]),
                    None => args.extend([Arg::Ptr(0), Arg::Ptr(0)]),
                }
            }
            args.extend([Arg::I64(m as i64), Arg::I32(n as i32)]);
            self.launch_n("add_bias_3_f32", 3 * m * n, &args);
        }
    }
    fn matmul_bias_dropout_residual(&self, out: &mut GpuBuf, a: Mat<'_, Self>, b: Mat<'_, Self>, m: usize, n: usize,
                                    k: usize, bias: Option<&GpuBuf>, mask: Option<&GpuBuf>, residual: &GpuBuf) {
        self.matmul(out, 0, n, a, b, m, n, k, 1.0, false);
        if m * n > 0 && self.begin() {
            let pb = bias.map_or(0, |x| self.ptr(x));
            let (pm, p, keep, key) = self.mask_args(mask, m * n);
            self.launch_n("bias_dropout_residual_f32", m * n, &[
                Arg::Ptr(self.ptr(out)), Arg::Ptr(pb), Arg::Ptr(pm), Arg::Ptr(self.ptr(residual)), Arg::I64(m as i64),
                Arg::I32(n as i32), Arg::F32(p), Arg::F32(keep), Arg::U64(key)]);
        }
    }
    fn matmul_bias_dropout_residual_norm(&self, res: &mut GpuBuf, a: Mat<'_, Self>, b: Mat<'_, Self>, m: usize,
                                         n: usize, k: usize, bias: Option<&GpuBuf>, mask: Option<&GpuBuf>,
                                         residual: &GpuBuf, norm: NormOut<'_, Self>) {
        self.matmul(res, 0, n, a, b, m, n, k, 1.0, false);
        if m * n > 0 && self.begin() {
            let pb = bias.map_or(0, |x| self.ptr(x));
            let (pm, p, keep, key) = self.mask_args(mask, m * n);
            let half = self.half_out(norm.out, m * n);
            self.launch("residual_layer_norm_f32", (m as u32, 1, 1), (THREADS, 1, 1), 0, &[
                Arg::Ptr(self.ptr(res)), Arg::Ptr(pb), Arg::Ptr(pm), Arg::Ptr(self.ptr(residual)),
                Arg::Ptr(self.ptr(norm.out)), Arg::Ptr(self.ptr(norm.mean)), Arg::Ptr(self.ptr(norm.rstd)),
                Arg::Ptr(self.ptr(norm.w)), Arg::Ptr(self.ptr(norm.b)), Arg::I32(m as i32), Arg::I32(n as i32),
                Arg::F32(norm.eps), Arg::F32(p), Arg::F32(keep), Arg::U64(key), Arg::Ptr(half)]);
            self.half_written(norm.out, half);
        }
    }
    fn matmul_bias_gelu(&self, saved: &mut GpuBuf, act: &mut GpuBuf, a: Mat<'_, Self>, b: Mat<'_, Self>, m: usize,
                        n: usize, k: usize, bias: &GpuBuf) {
        // `saved` keeps the pre-activation, as the trait's default matmul_gelu_backward expects
        self.matmul(saved, 0, n, a, b, m, n, k, 1.0, false);
        if m * n > 0 && self.begin() {
            let half = self.half_out(act, m * n);
            self.launch_n("bias_gelu_f32", m * n, &[Arg::Ptr(self.ptr(saved)), Arg::Ptr(self.out_ptr(act, half)),
                                                     Arg::Ptr(self.ptr(bias)), Arg::I64(m as i64), Arg::I32(n as i32),
                                                     Arg::Ptr(half)]);
            self.half_written(act, half);
        }
    }
    fn add_bias(&self, out: &mut GpuBuf, bias: &GpuBuf, rows: usize, n: usize) {
        if self.begin() {
            self.launch_n("add_bias_f32", rows * n, &[Arg::Ptr(self.ptr(out)), Arg::Ptr(self.ptr(bias)), Arg::I64(rows as i64), Arg::I32(n as i32)]);
        }
    }
    fn bias_grad(&self, dbias: &mut GpuBuf, dout: &GpuBuf, rows: usize, n: usize, accumulate: bool) {
        if n > 0 && self.begin() {
            self.launch("column_sums_f32", (n.div_ceil(32) as u32, 1, 1), (32, 8, 1), 0,
                        &[Arg::Ptr(self.ptr(dbias)), Arg::Ptr(self.ptr(dout)), Arg::I32(rows as i32), Arg::I32(n as i32), Arg::I32(accumulate as i32)]);
        }
    }
    fn axpby(&self, y: &mut GpuBuf, a: f32, x: &GpuBuf, b: f32, n: usize) {
        if self.begin() {
            self.launch_n("axpby_f32", n, &[Arg::Ptr(self.ptr(y)), Arg::F32(a), Arg::Ptr(self.ptr(x)), Arg::F32(b), Arg::I64(n as i64)]);
        }
    }
    fn scale(&self, x: &mut GpuBuf, a: f32, n: usize) {
        if self.begin() {
            self.launch_n("scale_f32", n, &[Arg::Ptr(self.ptr(x)), Arg::F32(a), Arg::I64(n as i64)]);
        }
    }
    fn add(&self, out: &mut GpuBuf, a: &GpuBuf, b: &GpuBuf, n: usize) {
        if self.begin() {
            self.launch_n("add_f32", n, &[Arg::Ptr(self.ptr(out)), Arg::Ptr(self.ptr(a)), Arg::Ptr(self.ptr(b)), Arg::I64(n as i64)]);
        }
    }
    fn scale_cols(&self, x: &mut GpuBuf, s: &[f32], rows: usize, n: usize) {
        if !self.begin() {
            return;
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        // the factors go through the f32 scratch; it is not in use between verbs
        let p = self.grown(&mut scratch.f32s, n, n);
        if let Some(dst) = scratch.f32s.as_mut() {
            let r = self.rt.upload(dst, &s[..n]);
            self.record("uploading scales", r);
        }
        self.launch_n("scale_cols_f32", rows * n, &[Arg::Ptr(self.ptr(x)), Arg::Ptr(p), Arg::I64(rows as i64), Arg::I32(n as i32)]);
    }
    fn dot(&self, a: &GpuBuf, b: &GpuBuf, n: usize) -> f64 {
        self.dots(&[(a, b, n)])[0]
    }
    fn dots(&self, pairs: &[(&GpuBuf, &GpuBuf, usize)]) -> Vec<f64> {
        if pairs.is_empty() || !self.begin() {
            return vec![0.0; pairs.len()];
        }
        // one launch for all pairs, each pair's block partials in its own stretch; one download
        let words: Vec<u64> = pairs.iter().flat_map(|&(a, b, n)| [self.ptr(a), self.ptr(b), n as u64]).collect();
        let lens: Vec<usize> = pairs.iter().map(|p| p.2).collect();
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        // a block partial each (at most 64 per pair)
        let partial = self.grown(&mut scratch.f64s, pairs.len() * 64, (pairs.len() * 64).next_power_of_two());
        let starts = self.launch_many(&mut scratch, "dots_many_f32", 3, &words, &lens, true, |_| vec![Arg::Ptr(partial)]);
        let total = starts.last().copied().unwrap_or(0) as usize;
        let all = self.download_f64(&scratch, total);
        starts.windows(2).map(|w| all.get(w[0] as usize..w[1] as usize).map_or(0.0, |p| p.iter().sum())).collect()
    }
    fn scale_many(&self, items: &mut [(&mut GpuBuf, usize)], a: f32) {
        if items.is_empty() || !self.begin() {
            return;
        }
        let words: Vec<u64> = items.iter().flat_map(|(x, n)| [self.ptr(x), *n as u64]).collect();
        let lens: Vec<usize> = items.iter().map(|i| i.1).collect();
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        self.launch_many(&mut scratch, "scale_many_f32", 2, &words, &lens, true, |_| vec![Arg::F32(a)]);
    }
    fn axpby_many(&self, items: &mut [AxpbyItem<'_, Self>]) {
        if items.is_empty() || !self.begin() {
            return;
        }
        let words: Vec<u64> = items.iter()
            .flat_map(|(y, a, x, b, n)| [self.ptr(y), self.ptr(x), *n as u64, a.to_bits() as u64, b.to_bits() as u64])
            .collect();
        let lens: Vec<usize> = items.iter().map(|i| i.4).collect();
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        self.launch_many(&mut scratch, "axpby_many_f32", 5, &words, &lens, false, |_| vec![]);
    }
    fn adamw_many(&self, items: &mut [AdamwItem<'_, Self>], lr: f32, beta1: f32, beta2: f32, eps: f32, step: u64) {
        if items.is_empty() || !self.begin() {
            return;
        }
        let (step_size, bc2_sqrt) = adam_corrections(lr, beta1, beta2, step);
        let words: Vec<u64> = items.iter()
            .flat_map(|it| {
                let decay = 1.0 - lr * it.weight_decay;
                [self.ptr(it.param), self.ptr(it.grad), self.ptr(it.m), self.ptr(it.v), it.n as u64,
                 decay.to_bits() as u64]
            })
            .collect();
        let lens: Vec<usize> = items.iter().map(|i| i.n).collect();
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        // not `recurs`: the decay factor follows the learning rate's schedule
        self.launch_many(&mut scratch, "adamw_many_f32", 6, &words, &lens, false, |_| {
            vec![Arg::F32(beta1), Arg::F32(beta2), Arg::F32(eps), Arg::F32(step_size), Arg::F32(bc2_sqrt)]
        });
    }

    fn gelu_forward(&self, out: &mut GpuBuf, inp: &GpuBuf, n: usize) {
        if self.begin() {
            self.launch_n("gelu_forward_f32", n, &[Arg::Ptr(self.ptr(out)), Arg::Ptr(self.ptr(inp)), Arg::I64(n as i64)]);
        }
    }
    fn gelu_backward(&self, dinp: &mut GpuBuf, inp: &GpuBuf, dout: &GpuBuf, n: usize) {
        if self.begin() {
            let half = self.half_out(dinp, n);
            self.launch_n("gelu_backward_f32", n, &[Arg::Ptr(self.out_ptr(dinp, half)), Arg::Ptr(self.ptr(inp)),
                                                    Arg::Ptr(self.ptr(dout)),
                                                    Arg::I64(n as i64), Arg::Ptr(half)]);
            self.half_written(dinp, half);
        }
    }
    fn tanh_forward(&self, out: &mut GpuBuf, inp: &GpuBuf, n: usize) {
        if self.begin() {
            self.launch_n("tanh_forward_f32", n, &[Arg::Ptr(self.ptr(out)), Arg::Ptr(self.ptr(inp)), Arg::I64(n as i64)]);
        }
    }
    fn tanh_backward(&self, dinp: &mut GpuBuf, out: &GpuBuf, dout: &GpuBuf, n: usize) {
        if self.begin() {
            self.launch_n("tanh_backward_f32", n, &[Arg::Ptr(self.ptr(dinp)), Arg::Ptr(self.ptr(out)), Arg::Ptr(self.ptr(dout)), Arg::I64(n as i64)]);
        }
    }
    fn dropout_mask(&self, mask: &mut GpuBuf, n: usize, p: f32, seed: u64, stream: &[u64]) {
        if p <= 0.0 {
            return self.fill(mask, n, 1.0);
        }
        self.pend_mask(mask, n, p, seed, stream, true);
    }
    fn dropout_mask_once(&self, mask: &mut GpuBuf, n: usize, p: f32, seed: u64, stream: &[u64]) {
        if p <= 0.0 {
            return self.fill(mask, n, 1.0);
        }
        self.pend_mask(mask, n, p, seed, stream, false);
    }
    fn mul_into(&self, out: &mut GpuBuf, x: &GpuBuf, mask: &GpuBuf, n: usize) {
        if !self.begin() {
            return;
        }
        // `out` is a dropped-out gradient on its way into a frozen (bf16) layer's input-gradient
        // GEMM, or an adapter's input: its bf16 copy saves that GEMM a conversion
        let po = self.ptr(out);
        let half = self.half_out(out, n);
        match self.take_pending(mask, n) {
            Some(m) => self.launch_n("dropout_mul_into_f32", n, &[
                Arg::Ptr(po), Arg::Ptr(self.ptr(x)), Arg::Ptr(self.draws_to(mask, &m)), Arg::I64(n as i64),
                Arg::F32(m.p), Arg::F32(m.keep), Arg::U64(m.key), Arg::Ptr(half)]),
            None => self.launch_n("mul_into_f32", n, &[Arg::Ptr(po), Arg::Ptr(self.ptr(x)),
                                                       Arg::Ptr(self.ptr(mask)), Arg::I64(n as i64), Arg::Ptr(half)]),
        }
        self.half_written(out, half);
    }
    fn mul(&self, x: &mut GpuBuf, mask: &GpuBuf, n: usize) {
        if !self.begin() {
            return;
        }
        match self.take_pending(mask, n) {
            Some(m) => self.launch_n("dropout_mul_f32", n, &[
                Arg::Ptr(self.ptr(x)), Arg::Ptr(self.draws_to(mask, &m)), Arg::I64(n as i64), Arg::F32(m.p),
                Arg::F32(m.keep), Arg::U64(m.key)]),
            None => self.launch_n("mul_f32", n, &[Arg::Ptr(self.ptr(x)), Arg::Ptr(self.ptr(mask)), Arg::I64(n as i64)]),
        }
    }

    fn embedding_forward(&self, out: &mut GpuBuf, word: &GpuBuf, pos: &GpuBuf, typ: &GpuBuf,
                         ids: &[i32], pos_ids: &[i32], type_ids: &[i32], h: usize) {
        if !self.begin() {
            return;
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let (pi, pp, pt) = (self.upload_ints(&mut scratch, 0, ids), self.upload_ints(&mut scratch, 1, pos_ids),
                            self.upload_ints(&mut scratch, 2, type_ids));
        self.launch_n("embedding_forward_f32", ids.len() * h, &[
            Arg::Ptr(self.ptr(out)), Arg::Ptr(self.ptr(word)), Arg::Ptr(self.ptr(pos)), Arg::Ptr(self.ptr(typ)),
            Arg::Ptr(pi), Arg::Ptr(pp), Arg::Ptr(pt), Arg::I32(ids.len() as i32), Arg::I32(h as i32)]);
    }
    fn embedding_backward(&self, dword: Option<&mut GpuBuf>, dpos: Option<&mut GpuBuf>,
                          dtyp: Option<&mut GpuBuf>, dout: &GpuBuf,
                          ids: &[i32], pos_ids: &[i32], type_ids: &[i32], h: usize, skip: [Option<i32>; 3]) {
        if !self.begin() {
            return;
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        for (slot, ((table, idx), skip)) in [(dword, ids), (dpos, pos_ids), (dtyp, type_ids)].into_iter().zip(skip).enumerate() {
            if let Some(table) = table {
                let pidx = self.upload_ints(&mut scratch, slot, idx);
                self.launch_n("embedding_backward_f32", idx.len() * h, &[
                    Arg::Ptr(self.ptr(table)), Arg::Ptr(self.ptr(dout)), Arg::Ptr(pidx), Arg::I32(idx.len() as i32),
                    Arg::I32(h as i32), Arg::I32(skip.unwrap_or(0)), Arg::I32(skip.is_some() as i32)]);
            }
        }
    }
    fn layer_norm_forward(&self, out: &mut GpuBuf, mean: &mut GpuBuf, rstd: &mut GpuBuf,
                          inp: &GpuBuf, w: &GpuBuf, b: &GpuBuf, rows: usize, h: usize, eps: f32) {
        if rows > 0 && self.begin() {
            let half = self.half_out(out, rows * h);
            self.launch("layer_norm_forward_f32", (rows as u32, 1, 1), (THREADS, 1, 1), 0, &[
                Arg::Ptr(self.ptr(out)), Arg::Ptr(self.ptr(mean)), Arg::Ptr(self.ptr(rstd)), Arg::Ptr(self.ptr(inp)),
                Arg::Ptr(self.ptr(w)), Arg::Ptr(self.ptr(b)), Arg::I32(rows as i32), Arg::I32(h as i32), Arg::F32(eps),
                Arg::Ptr(half)]);
            self.half_written(out, half);
        }
    }
    fn layer_norm_backward(&self, dinp: &mut GpuBuf, dw: Option<&mut GpuBuf>, db: Option<&mut GpuBuf>,
                           dout: &GpuBuf, inp: &GpuBuf, w: &GpuBuf, mean: &GpuBuf,
                           rstd: &GpuBuf, rows: usize, h: usize) {
        self.layer_norm_backward_dropout(dinp, dw, db, dout, inp, w, mean, rstd, rows, h, None);
    }
    fn layer_norm_backward_dropout(&self, dinp: &mut GpuBuf, dw: Option<&mut GpuBuf>, db: Option<&mut GpuBuf>,
                                   dout: &GpuBuf, inp: &GpuBuf, w: &GpuBuf, mean: &GpuBuf, rstd: &GpuBuf, rows: usize,
                                   h: usize, dropped: Option<(&mut GpuBuf, &GpuBuf)>) {
        if rows == 0 || !self.begin() {
            return;
        }
        let pd = self.ptr(dinp);
        let (pdrop, (pm, p, keep, key), half) = match dropped {
            Some((out, mask)) => {
                let half = self.half_out(out, rows * h);
                let pout = self.out_ptr(out, half);
                (Some((pout, out)), self.mask_args(Some(mask), rows * h), half)
            }
            None => (None, (0, 0.0, 1.0, 0), self.half_out(dinp, rows * h)),
        };
        self.launch("layer_norm_backward_f32", (rows as u32, 1, 1), (THREADS, 1, 1), 0, &[
            Arg::Ptr(pd), Arg::Ptr(self.ptr(dout)), Arg::Ptr(self.ptr(inp)), Arg::Ptr(self.ptr(w)),
            Arg::Ptr(self.ptr(mean)), Arg::Ptr(self.ptr(rstd)), Arg::I32(rows as i32), Arg::I32(h as i32), Arg::Ptr(half),
            Arg::Ptr(pdrop.as_ref().map_or(0, |d| d.0)), Arg::Ptr(pm), Arg::F32(p), Arg::F32(keep), Arg::U64(key)]);
        match pdrop {
            Some((_, out)) => self.half_written(out, half),
            None => self.half_written(dinp, half),
        }
        if dw.is_some() || db.is_some() {
            let pw = dw.map_or(0, |x| self.ptr(x));
            let pb = db.map_or(0, |x| self.ptr(x));
            self.launch("layer_norm_params_backward_f32", (h.div_ceil(32) as u32, 1, 1), (32, 8, 1), 0, &[
                Arg::Ptr(pw), Arg::Ptr(pb), Arg::Ptr(self.ptr(dout)), Arg::Ptr(self.ptr(inp)), Arg::Ptr(self.ptr(mean)),
                Arg::Ptr(self.ptr(rstd)), Arg::I32(rows as i32), Arg::I32(h as i32)]);
        }
    }
    fn rms_norm_forward(&self, out: &mut GpuBuf, rstd: &mut GpuBuf, inp: &GpuBuf, w: &GpuBuf, rows: usize, h: usize,
                        eps: f32) {
        if rows > 0 && self.begin() {
            self.launch("rms_norm_forward_f32", (rows as u32, 1, 1), (THREADS, 1, 1), 0, &[
                Arg::Ptr(self.ptr(out)), Arg::Ptr(self.ptr(rstd)), Arg::Ptr(self.ptr(inp)), Arg::Ptr(self.ptr(w)),
                Arg::I32(rows as i32), Arg::I32(h as i32), Arg::F32(eps)]);
        }
    }
    fn rms_norm_backward(&self, dinp: &mut GpuBuf, dw: Option<&mut GpuBuf>, dout: &GpuBuf, inp: &GpuBuf, w: &GpuBuf,
                         rstd: &GpuBuf, rows: usize, h: usize) {
        if rows == 0 || !self.begin() {
            return;
        }
        self.launch("rms_norm_backward_f32", (rows as u32, 1, 1), (THREADS, 1, 1), 0, &[
            Arg::Ptr(self.ptr(dinp)), Arg::Ptr(self.ptr(dout)), Arg::Ptr(self.ptr(inp)), Arg::Ptr(self.ptr(w)),
            Arg::Ptr(self.ptr(rstd)), Arg::I32(rows as i32), Arg::I32(h as i32)]);
        if let Some(dw) = dw {
            self.launch("rms_norm_weight_backward_f32", (h.div_ceil(32) as u32, 1, 1), (32, 8, 1), 0, &[
                Arg::Ptr(self.ptr(dw)), Arg::Ptr(self.ptr(dout)), Arg::Ptr(self.ptr(inp)), Arg::Ptr(self.ptr(rstd)),
                Arg::I32(rows as i32), Arg::I32(h as i32)]);
        }
    }
    fn silu_gate_forward(&self, out: &mut GpuBuf, gate: &GpuBuf, up: &GpuBuf, n: usize) {
        if self.begin() {
            self.launch_n("silu_gate_forward_f32", n, &[Arg::Ptr(self.ptr(out)), Arg::Ptr(self.ptr(gate)),
                                                        Arg::Ptr(self.ptr(up)), Arg::I64(n as i64)]);
        }
    }
    fn silu_gate_backward(&self, dgate: &mut GpuBuf, dup: &mut GpuBuf, gate: &GpuBuf, up: &GpuBuf, dout: &GpuBuf,
                          n: usize) {
        if self.begin() {
            self.launch_n("silu_gate_backward_f32", n, &[
                Arg::Ptr(self.ptr(dgate)), Arg::Ptr(self.ptr(dup)), Arg::Ptr(self.ptr(gate)), Arg::Ptr(self.ptr(up)),
                Arg::Ptr(self.ptr(dout)), Arg::I64(n as i64)]);
        }
    }
    fn rope(&self, x: &mut GpuBuf, positions: &[i32], heads: usize, d: usize, theta: f32, inverse: bool) {
        if positions.is_empty() || !self.begin() {
            return;
        }
        let rows = positions.len();
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let pp = self.upload_ints(&mut scratch, 0, positions);
        self.launch_n("rope_f32", rows * heads * (d / 2), &[
            Arg::Ptr(self.ptr(x)), Arg::Ptr(pp), Arg::I32(rows as i32), Arg::I32(heads as i32), Arg::I32(d as i32),
            Arg::F32(theta), Arg::I32(inverse as i32)]);
    }
    fn attention_forward(&self, out: &mut GpuBuf, probs: &mut GpuBuf, q: &GpuBuf, k: &GpuBuf,
                         v: &GpuBuf, key_mask: &[i32], drop: Option<&GpuBuf>, b: usize, t: usize,
                         heads: usize, d: usize) {
        if b * t == 0 || !self.begin() {
            return;
        }
        use HeadOperand::{Items, Scores};
        let bh = b * heads;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let pm = self.upload_ints(&mut scratch, 0, &key_mask[..b * t]);
        let [pd] = self.attn_scratch(&mut scratch, [if drop.is_some() { bh * t * t } else { 1 }]);
        let heads_of = Heads { b, t, heads, d };
        let (pq, pk, pv, po, pp) = (self.ptr(q), self.ptr(k), self.ptr(v), self.ptr(out), self.ptr(probs));
        let (pdrop, p_drop, keep, key) = self.mask_args(drop, bh * t * t);
        let used = if drop.is_some() { pd } else { pp };
        // scores = scale Q K^T into `probs`, then out = P' V (P' the dropped-out probabilities)
        let arrays = self.head_arrays(&mut scratch, &heads_of, &[
            [Items(pq), Items(pk), Scores(pp)],
            [Scores(used), Items(pv), Items(po)],
        ]);
        let hd = heads * d;
        self.gemm_arrays(arrays[0], (hd, false), (hd, true), t, t, t, d, 1.0 / (d as f32).sqrt(), bh, self.attention_gemms());
        self.launch("attention_softmax_f32", ((bh * t).div_ceil(ATTN_WARPS) as u32, 1, 1), (32 * ATTN_WARPS as u32, 1, 1), 0, &[
            Arg::Ptr(pp), Arg::Ptr(pd), Arg::Ptr(pdrop), Arg::Ptr(pm), Arg::I32((bh * t) as i32), Arg::I32(t as i32),
            Arg::I32(heads as i32), Arg::F32(p_drop), Arg::F32(keep), Arg::U64(key)]);
        self.gemm_arrays(arrays[1], (t, false), (hd, false), hd, t, d, t, 1.0, bh, self.attention_gemms());
    }
    fn attention_backward(&self, dq: &mut GpuBuf, dk: &mut GpuBuf, dv: &mut GpuBuf, dout: &GpuBuf,
                          probs: &GpuBuf, q: &GpuBuf, k: &GpuBuf, v: &GpuBuf,
                          drop: Option<&GpuBuf>, b: usize, t: usize, heads: usize, d: usize) {
        if b * t == 0 || !self.begin() {
            return;
        }
        use HeadOperand::{Items, Scores};
        let bh = b * heads;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let [pd, dp] = self.attn_scratch(&mut scratch, [if drop.is_some() { bh * t * t } else { 1 }, bh * t * t]);
        let pp = self.ptr(probs);
        // a mask the model draws again for the backward is still pending: drawn (and written, for
        // dS below, whatever `write` says) by the kernel that applies it
        let pending = drop.and_then(|x| self.take_pending(x, bh * t * t));
        let pdrop = drop.map_or(0, |x| if pending.is_some() { self.address(x) } else { self.ptr(x) });
        let used = match (drop, pending) {
            // P' = P * mask, as the forward multiplied V with
            (Some(_), Some(m)) => {
                self.launch_n("dropout_mul_into_f32", bh * t * t, &[
                    Arg::Ptr(pd), Arg::Ptr(pp), Arg::Ptr(pdrop), Arg::I64((bh * t * t) as i64), Arg::F32(m.p),
                    Arg::F32(m.keep), Arg::U64(m.key), Arg::Ptr(0)]);
                pd
            }
            (Some(_), None) => {
                self.launch_n("mul_into_f32", bh * t * t, &[Arg::Ptr(pd), Arg::Ptr(pp), Arg::Ptr(pdrop), Arg::I64((bh * t * t) as i64),
                                                             Arg::Ptr(0)]);
                pd
            }
            (None, _) => pp,
        };
        let h = Heads { b, t, heads, d };
        let (pq, pk, pv, pg) = (self.ptr(q), self.ptr(k), self.ptr(v), self.ptr(dout));
        let (pdq, pdk, pdv) = (self.ptr(dq), self.ptr(dk), self.ptr(dv));
        let arrays = self.head_arrays(&mut scratch, &h, &[
            [Scores(used), Items(pg), Items(pdv)], // dV = P'^T dOut
            [Items(pg), Items(pv), Scores(dp)],    // dP = dOut V^T
            [Scores(dp), Items(pk), Items(pdq)],   // dQ = scale dS K
            [Scores(dp), Items(pq), Items(pdk)],   // dK = scale dS^T Q
        ]);
        let (hd, scale) = (heads * d, 1.0 / (d as f32).sqrt());
        self.gemm_arrays(arrays[0], (t, true), (hd, false), hd, t, d, t, 1.0, bh, self.attention_gemms());
        self.gemm_arrays(arrays[1], (hd, false), (hd, true), t, t, t, d, 1.0, bh, self.attention_gemms());
        self.launch("attention_dscores_f32", ((bh * t).div_ceil(ATTN_WARPS) as u32, 1, 1), (32 * ATTN_WARPS as u32, 1, 1), 0, &[
            Arg::Ptr(dp), Arg::Ptr(pp), Arg::Ptr(pdrop), Arg::I32((bh * t) as i32), Arg::I32(t as i32)]);
        self.gemm_arrays(arrays[2], (t, false), (hd, false), hd, t, d, t, scale, bh, self.attention_gemms());
        self.gemm_arrays(arrays[3], (t, true), (hd, false), hd, t, d, t, scale, bh, self.attention_gemms());
        // In bf16 mode the three gradients next meet the frozen q, k, v weights in bf16 GEMMs (their
        // input gradient): their bf16 copies in one launch instead of a conversion before each.
        let n = b * t * hd;
        let halves = [self.half_out(dq, n), self.half_out(dk, n), self.half_out(dv, n)];
        if halves.iter().any(|&x| x != 0) {
            self.launch_n("f32_to_bf16_3", 3 * n, &[Arg::Ptr(halves[0]), Arg::Ptr(pdq), Arg::Ptr(halves[1]), Arg::Ptr(pdk),
                                                     Arg::Ptr(halves[2]), Arg::Ptr(pdv), Arg::I64(n as i64)]);
            for (buf, half) in [(&*dq, halves[0]), (&*dk, halves[1]), (&*dv, halves[2])] {
                self.half_written(buf, half);
            }
        }
    }
    fn flash_attention_forward(&self, out: &mut GpuBuf, lse: &mut GpuBuf, q: &GpuBuf, k: &GpuBuf, v: &GpuBuf,
                               key_mask: &[i32], causal: bool, dropout: Option<(f32, u64)>, b: usize, t: usize,
                               heads: usize, d: usize) {
        if b * t == 0 || !self.flash_shape_ok(d) {
            return;
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let pm = self.upload_ints(&mut scratch, 0, &key_mask[..b * t]);
        let mut args = vec![Arg::Ptr(self.ptr(out)), Arg::Ptr(self.ptr(lse)), Arg::Ptr(self.ptr(q)), Arg::Ptr(self.ptr(k)),
                            Arg::Ptr(self.ptr(v)), Arg::Ptr(pm)];
        args.extend(flash_tail(t, heads, d, causal, dropout));
        self.launch("flash_attention_forward_f32", (t.div_ceil(FA_WARPS) as u32, (b * heads) as u32, 1),
                    (32 * FA_WARPS as u32, 1, 1), 0, &args);
    }
    fn flash_attention_backward(&self, dq: &mut GpuBuf, dk: &mut GpuBuf, dv: &mut GpuBuf, dout: &GpuBuf, out: &GpuBuf,
                                lse: &GpuBuf, q: &GpuBuf, k: &GpuBuf, v: &GpuBuf, key_mask: &[i32], causal: bool,
                                dropout: Option<(f32, u64)>, b: usize, t: usize, heads: usize, d: usize) {
        if b * t == 0 || !self.flash_shape_ok(d) {
            return;
        }
        let rows = b * t * heads;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let pm = self.upload_ints(&mut scratch, 0, &key_mask[..b * t]);
        let [dsum] = self.attn_scratch(&mut scratch, [rows]);
        // D = rowsum(dOut * Out), then dQ over query rows and dK, dV over key rows
        self.launch("attention_row_dot_f32", (rows.div_ceil(ATTN_WARPS) as u32, 1, 1), (32 * ATTN_WARPS as u32, 1, 1), 0,
                    &[Arg::Ptr(dsum), Arg::Ptr(self.ptr(dout)), Arg::Ptr(self.ptr(out)), Arg::I64(rows as i64),
                      Arg::I32(d as i32)]);
        let grid = (t.div_ceil(FA_WARPS) as u32, (b * heads) as u32, 1);
        let (pg, pl, pq, pk, pv) = (self.ptr(dout), self.ptr(lse), self.ptr(q), self.ptr(k), self.ptr(v));
        let mut args = vec![Arg::Ptr(self.ptr(dq)), Arg::Ptr(pg), Arg::Ptr(pl), Arg::Ptr(dsum), Arg::Ptr(pq), Arg::Ptr(pk),
                            Arg::Ptr(pv), Arg::Ptr(pm)];
        args.extend(flash_tail(t, heads, d, causal, dropout));
        self.launch("flash_attention_dq_f32", grid, (32 * FA_WARPS as u32, 1, 1), 0, &args);
        let mut args = vec![Arg::Ptr(self.ptr(dk)), Arg::Ptr(self.ptr(dv)), Arg::Ptr(pg), Arg::Ptr(pl), Arg::Ptr(dsum),
                            Arg::Ptr(pq), Arg::Ptr(pk), Arg::Ptr(pv), Arg::Ptr(pm)];
        args.extend(flash_tail(t, heads, d, causal, dropout));
        self.launch("flash_attention_dkv_f32", grid, (32 * FA_WARPS as u32, 1, 1), 0, &args);
    }
    fn softmax_xent_forward(&self, probs: &mut GpuBuf, logits: &GpuBuf, labels: &[i32], rows: usize, n: usize) -> f32 {
        if rows == 0 || !self.begin() {
            return f32::NAN;
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let loss = self.grown(&mut scratch.f64s, rows, rows.next_power_of_two());
        self.softmax_xent_launch(&mut scratch, probs, logits, labels, rows, n, (loss, 0));
        (self.download_f64(&scratch, rows).iter().sum::<f64>() / rows as f64) as f32
    }
    fn softmax_xent_forward_rows(&self, probs: &mut GpuBuf, losses: &mut GpuBuf, logits: &GpuBuf, labels: &[i32],
                                 rows: usize, n: usize) {
        if rows == 0 || !self.begin() {
            return;
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let rows_out = self.ptr(losses);
        self.softmax_xent_launch(&mut scratch, probs, logits, labels, rows, n, (0, rows_out));
    }
    fn softmax_xent_backward(&self, dlogits: &mut GpuBuf, probs: &GpuBuf, labels: &[i32], rows: usize, n: usize) {
        if !self.begin() {
            return;
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let pl = self.upload_ints(&mut scratch, 0, &labels[..rows]);
        self.launch_n("softmax_xent_backward_f32", rows * n, &[
            Arg::Ptr(self.ptr(dlogits)), Arg::Ptr(self.ptr(probs)), Arg::Ptr(pl), Arg::I32(rows as i32), Arg::I32(n as i32)]);
    }
    fn gather_rows(&self, out: &mut GpuBuf, inp: &GpuBuf, rows: &[usize], n: usize) {
        if !self.begin() {
            return;
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let pr = self.upload_ints(&mut scratch, 0, &Self::usizes_to_i32(rows));
        self.launch_n("gather_rows_f32", rows.len() * n, &[
            Arg::Ptr(self.ptr(out)), Arg::Ptr(self.ptr(inp)), Arg::Ptr(pr), Arg::I32(rows.len() as i32), Arg::I32(n as i32)]);
    }
    fn scatter_add_rows(&self, dinp: &mut GpuBuf, dout: &GpuBuf, rows: &[usize], n: usize) {
        if !self.begin() {
            return;
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let pr = self.upload_ints(&mut scratch, 0, &Self::usizes_to_i32(rows));
        self.launch_n("scatter_add_rows_f32", rows.len() * n, &[
            Arg::Ptr(self.ptr(dinp)), Arg::Ptr(self.ptr(dout)), Arg::Ptr(pr), Arg::I32(rows.len() as i32), Arg::I32(n as i32)]);
    }

    fn adamw(&self, param: &mut GpuBuf, grad: &GpuBuf, m: &mut GpuBuf, v: &mut GpuBuf, n: usize,
             lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32, step: u64) {
        if !self.begin() {
            return;
        }
        let (step_size, bc2_sqrt) = adam_corrections(lr, beta1, beta2, step);
        let decay = 1.0 - lr * weight_decay;
        self.launch_n("adamw_f32", n, &[
            Arg::Ptr(self.ptr(param)), Arg::Ptr(self.ptr(grad)), Arg::Ptr(self.ptr(m)), Arg::Ptr(self.ptr(v)),
            Arg::I64(n as i64), Arg::F32(beta1), Arg::F32(beta2), Arg::F32(eps), Arg::F32(decay), Arg::F32(step_size),
            Arg::F32(bc2_sqrt)]);
    }
}

/// AdamW's bias-corrected step size `lr / (1 - beta1^t)` and `sqrt(1 - beta2^t)`, in f64 on the host
/// as the CPU backend computes them.
fn adam_corrections(lr: f32, beta1: f32, beta2: f32, step: u64) -> (f32, f32) {
    let bc1 = 1.0 - (beta1 as f64).powi(step as i32);
    let bc2 = 1.0 - (beta2 as f64).powi(step as i32);
    ((lr as f64 / bc1) as f32, bc2.sqrt() as f32)
}

/// Rows (warps) per block of the flash-attention kernels, and the largest head dimension they take
/// (flash_attention.cu's FA_WARPS and FA_DMAX).
const FA_WARPS: usize = 4;
const FA_DMAX: usize = 128;

/// The flash-attention kernels' last arguments: t, heads, d, causal, dropout (p, 1/(1-p), key).
fn flash_tail(t: usize, heads: usize, d: usize, causal: bool, dropout: Option<(f32, u64)>) -> [Arg; 7] {
    let (p, key) = dropout.filter(|&(p, _)| p > 0.0).unwrap_or((0.0, 0));
    let keep = if p > 0.0 { 1.0 / (1.0 - p) } else { 1.0 };
    [Arg::I32(t as i32), Arg::I32(heads as i32), Arg::I32(d as i32), Arg::I32(causal as i32), Arg::F32(p), Arg::F32(keep),
     Arg::U64(key)]
}

/// How the items of a batched GEMM (`Cuda::gemm_arrays`) multiply.
#[derive(Clone, Copy)]
struct Batched {
    /// bf16 operands (f32 accumulation and C), else f32
    bf16: bool,
    /// f32 operands rounded to TF32 on the tensor cores
    tf32: bool,
    /// C += the products, else C = the products
    accumulate: bool,
}

/// Rows (warps) per block of the attention row kernels.
const ATTN_WARPS: usize = 4;

/// Each GEMM's three pointer arrays (A's, B's, C's) in a table at `at` holding them in order, for
/// GEMMs of `items` items each.
fn split_arrays(mut at: u64, items: impl Iterator<Item = usize>) -> Vec<(u64, u64, u64)> {
    items.map(|n| {
        let mut next = || {
            let p = at;
            at += 8 * n as u64;
            p
        };
        (next(), next(), next())
    }).collect()
}

/// An operand of attention's batched GEMMs: a projection's heads, or a [b*heads, t, t] buffer's
/// matrices (`Heads::items`, `Heads::scores`), at a base address.
#[derive(Clone, Copy)]
enum HeadOperand {
    Items(u64),
    Scores(u64),
}

/// Where attention's per-(sequence, head) matrices start. The projections stay in their layout
/// [b*t, heads*d] (a head's [t, d] block has leading dimension heads*d), so the batched GEMMs read
/// and write them in place through pointer arrays; scores and probabilities are [b*heads, t, t].
struct Heads {
    b: usize,
    t: usize,
    heads: usize,
    d: usize,
}

impl Heads {
    /// Item (sequence i, head h), in that order, of a projection at `base`.
    fn items(&self, base: u64) -> Vec<u64> {
        (0..self.b * self.heads)
            .map(|j| base + 4 * ((j / self.heads) * self.t * self.heads * self.d + (j % self.heads) * self.d) as u64)
            .collect()
    }

    /// Item j of a [b*heads, t, t] buffer at `base`.
    fn scores(&self, base: u64, t: usize) -> Vec<u64> {
        (0..self.b * self.heads).map(|j| base + 4 * (j * t * t) as u64).collect()
    }
}

impl Cuda {
    /// Runs a many-tensor kernel of `multi.cu`: `records` holds `per` 64-bit words for each tensor and
    /// `lens` each tensor's length. The block offsets and the records go up in one copy; `extra(total
    /// blocks)` gives the kernel's arguments after the table and the tensor count. Returns each
    /// tensor's block range (start of each, then the total).
    /// `recurs`: the records hold addresses and sizes only (no per-step scalars), so the table is
    /// found in `Scratch::tables` from the second step on.
    #[allow(clippy::too_many_arguments)]
    fn launch_many(&self, scratch: &mut Scratch, name: &'static str, per: usize, records: &[u64], lens: &[usize],
                   recurs: bool, extra: impl Fn(usize) -> Vec<Arg>) -> Vec<u64> {
        debug_assert_eq!(records.len(), per * lens.len());
        let mut starts = Vec::with_capacity(lens.len() + 1 + records.len());
        starts.push(0u64);
        for &n in lens {
            let blocks = n.div_ceil(THREADS as usize).clamp(1, 64) as u64;
            starts.push(starts.last().copied().unwrap_or(0) + blocks);
        }
        let total = starts.last().copied().unwrap_or(0) as usize;
        let mut words = starts.clone();
        words.extend_from_slice(records);
        let table = if recurs {
            self.cached_table(scratch, &words)
        } else {
            let table = self.grown(&mut scratch.table, words.len(), words.len().next_power_of_two());
            if let Some(dst) = scratch.table.as_mut() {
                let r = self.rt.upload(dst, &words);
                if self.record("uploading a tensor table", r).is_none() {
                    return starts;
                }
            }
            table
        };
        if table == 0 {
            return starts;
        }
        let mut args = vec![Arg::Ptr(table), Arg::I32(lens.len() as i32)];
        args.extend(extra(total));
        self.launch(name, (total as u32, 1, 1), (THREADS, 1, 1), 0, &args);
        starts
    }

    /// The device address of a copy of `words` (see `Scratch::tables`): uploaded the first time
    /// these words are asked for, found afterwards; 0 with the error kept if that fails.
    fn cached_table(&self, scratch: &mut Scratch, words: &[u64]) -> u64 {
        self.cached_table_by(scratch, words, || words.to_vec())
    }

    /// `cached_table` of the words `words()` makes, found by `key`, which must determine them
    /// (and differ from every other key's table: keys of another form start with a tag no table's
    /// first word can be).
    fn cached_table_by(&self, scratch: &mut Scratch, key: &[u64], words: impl FnOnce() -> Vec<u64>) -> u64 {
        if let Some(m) = scratch.tables.get(key) {
            return self.rt.addr(m);
        }
        if scratch.tables.len() >= MAX_TABLES {
            scratch.tables.clear(); // freed once no queued run reads them
        }
        let words = words();
        let Some(mut m) = self.record("allocating a table", self.rt.alloc_zeros::<u64>(words.len())) else { return 0 };
        if self.record("uploading a table", self.rt.upload(&mut m, &words)).is_none() {
            return 0;
        }
        let at = self.rt.addr(&m);
        scratch.tables.insert(key.to_vec(), m);
        at
    }

    /// False, with the error kept, for a head dimension the flash kernels do not take.
    fn flash_shape_ok(&self, d: usize) -> bool {
        if !self.begin() {
            return false;
        }
        if d > FA_DMAX {
            self.record::<()>("flash attention", Err(format!("head dimension {d} is over the kernels' {FA_DMAX}")));
            return false;
        }
        true
    }

    /// Attention's scratch buffers, at least `sizes[i]` floats each; returns their addresses.
    fn attn_scratch<const N: usize>(&self, scratch: &mut Scratch, sizes: [usize; N]) -> [u64; N] {
        if scratch.attn.len() < N {
            scratch.attn.resize_with(N, || None);
        }
        std::array::from_fn(|i| self.grown(&mut scratch.attn[i], sizes[i], sizes[i]))
    }

    /// Uploads the pointer arrays of several batched GEMMs in one copy: `gemms[g]` holds the item
    /// addresses of GEMM g's A, B and C. Returns each GEMM's three array addresses.
    fn pointer_arrays(&self, scratch: &mut Scratch, gemms: &[[Vec<u64>; 3]]) -> Vec<(u64, u64, u64)> {
        let words: Vec<u64> = gemms.iter().flat_map(|g| g.iter().flatten().copied()).collect();
        let at = self.cached_table(scratch, &words);
        split_arrays(at, gemms.iter().map(|g| g[0].len()))
    }

    /// `pointer_arrays` of attention's batched GEMMs over `h`'s heads, found by the shape and the
    /// operands' base addresses (a few words) instead of by the thousands of item addresses they
    /// make: building and hashing those took most of a step's host time (dry run, BERT-base).
    fn head_arrays(&self, scratch: &mut Scratch, h: &Heads, gemms: &[[HeadOperand; 3]]) -> Vec<(u64, u64, u64)> {
        // u64::MAX: no content table starts with it (a pointer array starts with an address, a
        // tensor table with block offset 0)
        let mut key = vec![u64::MAX, h.b as u64, h.t as u64, h.heads as u64, h.d as u64];
        key.extend(gemms.iter().flatten().flat_map(|o| match *o {
            HeadOperand::Items(base) => [0, base],
            HeadOperand::Scores(base) => [1, base],
        }));
        let at = self.cached_table_by(scratch, &key, || {
            gemms.iter().flatten().flat_map(|o| match *o {
                HeadOperand::Items(base) => h.items(base),
                HeadOperand::Scores(base) => h.scores(base, h.t),
            }).collect()
        });
        split_arrays(at, gemms.iter().map(|_| h.b * h.heads))
    }

    /// `C_i[m, n] = alpha op(A_i) op(B_i) (+ C_i)` (row-major) for `batch` items at the addresses in
    /// `arrays` (A's, B's, C's); each operand is (leading dimension, transposed).
    #[allow(clippy::too_many_arguments)]
    fn gemm_arrays(&self, arrays: (u64, u64, u64), a: (usize, bool), b: (usize, bool), ldc: usize, m: usize, n: usize,
                   k: usize, alpha: f32, batch: usize, how: Batched) {
        if self.failed() {
            return;
        }
        // the row-major to column-major swap of `matmul`: B's items first
        let beta = if how.accumulate { 1.0 } else { 0.0 };
        let g = Gemm { ta: b.1, tb: a.1, m: n, n: m, k, alpha, a: (0, b.0, 0), b: (0, a.0, 0), beta,
                       c: (0, ldc, 0), batch, bf16: how.bf16, tf32: how.tf32,
                       arrays: Some((arrays.1, arrays.0, arrays.2)) };
        // SAFETY: every item address lies inside the buffer it came from (`Heads`, or a verb's
        // operands with their extents), in bf16 where `how.bf16` says so.
        let r = unsafe { self.rt.gemm(&g) };
        self.record(if how.bf16 { "cublasGemmBatchedEx (bf16)" } else { "cublasSgemmBatched" }, r);
    }

    /// Attention's batched GEMMs: f32 operands, in TF32 where allowed, C overwritten.
    fn attention_gemms(&self) -> Batched {
        Batched { bf16: false, tf32: self.tf32_attention, accumulate: false }
    }

    /// Draws `n` values of the counter-based stream `key` on the GPU (the test holding the kernel
    /// to `rng::counter_uniform`).
    pub fn counter_uniform(&self, key: u64, n: usize) -> Result<Vec<f32>> {
        let out = self.zeros(n);
        if self.begin() {
            self.launch_n("counter_uniform_f32", n, &[Arg::Ptr(self.ptr(&out)), Arg::I64(n as i64), Arg::U64(key)]);
        }
        let v = self.to_host(&out, n);
        self.check().map(|_| v)
    }

    /// Turns graph mode on or off: a step's calls between two waits are queued and issued as one
    /// CUDA graph, rebuilt only when their shape changes (module `graphs`). Also on from the start
    /// with `MUSCLE_CUDA_GRAPHS=1`.
    pub fn set_graphs(&self, on: bool) -> Result<()> {
        self.rt.set_graphs(on).map_err(EngineError::Device)
    }

    /// Whether graph mode is on (it may since have turned itself off: `graph_failure`).
    pub fn graph_mode(&self) -> bool {
        self.rt.graph_mode()
    }

    /// Graph mode's books: runs issued call by call, graphs built and launched, nodes patched.
    pub fn graph_stats(&self) -> graphs::GraphStats {
        self.rt.graph_stats()
    }

    /// Why graph mode fell back to issuing every call at once on this device (a graph could not be
    /// built or launched, or its check found other results than its calls issued one by one, or
    /// there was no memory for the check), if it did; training goes on either way.
    pub fn graph_failure(&self) -> Option<String> {
        self.rt.graph_failure()
    }

    /// Tests only (emulated): graph replays leave out their patched arguments, which the graphs'
    /// check must catch.
    #[doc(hidden)]
    pub fn emulate_stale_graph_patches(&self, on: bool) {
        self.rt.set_stale_patches(on);
    }

    /// The backend over a runtime of `kind`, in graph mode from the start with `MUSCLE_CUDA_GRAPHS=1`.
    fn assemble(kind: Kind, info: DeviceInfo, precision: Precision) -> Self {
        let cuda = Cuda { rt: Runtime::new(kind), scratch: Mutex::new(Scratch::default()), error: Mutex::new(None), info,
                          precision, bf16_weights: Default::default(), tf32_attention: tf32_allowed(precision),
                          batch_gemms: std::env::var("MUSCLE_CUDA_BATCHED").map_or(true, |v| v != "0") };
        if std::env::var("MUSCLE_CUDA_GRAPHS").is_ok_and(|v| v == "1") {
            let _ = cuda.rt.set_graphs(true); // nothing is queued yet: cannot fail
        }
        cuda
    }

    /// Starts (or stops, `false`) timing every call on the GPU; `profile` reads the times. Slow: for
    /// finding where a step's time goes (`muscle-bench --profile`), never while timing steps.
    pub fn set_profiling(&self, on: bool) -> Result<()> {
        self.rt.set_profiling(on).map_err(EngineError::Device)
    }

    /// The GPU time of each kind of call since profiling started.
    pub fn profile(&self) -> runtime::Profile {
        self.rt.profile()
    }

    /// The driver calls made so far (for benchmarks and the launch-count test).
    pub fn calls(&self) -> Calls {
        self.rt.calls()
    }

    /// Kernel launches so far, per kernel.
    pub fn launches(&self) -> HashMap<&'static str, u64> {
        self.rt.launches()
    }

    /// Bytes of device memory in use by this process's context (for benchmarks); in a dry run, the
    /// most it had allocated at once.
    pub fn memory_used(&self) -> usize {
        self.rt.memory_used()
    }
}
