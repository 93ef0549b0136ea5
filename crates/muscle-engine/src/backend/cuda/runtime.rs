//! Where the CUDA backend's memory and work live: a GPU through the CUDA driver and cuBLAS, or the
//! CPU through a kernel emulator (tests on machines without a GPU; see the `muscle-cuda-emu`
//! crate). The backend's verbs are written once against this layer, so on a machine without a GPU
//! every verb and whole training steps still run the same kernel sources, argument lists, scratch
//! handling and GEMM calls, and are held to the CPU backend.

use super::graphs::{Body, Bury, DriverGraph, GraphStats, Graveyard, Held, Op, Plan, Queue, UploadSrc};
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits};
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::Arc;

/// Where each of `lens` elements of `size` bytes starts in an arena (256-byte aligned, as
/// `cudaMalloc`'s allocations are), and the arena's bytes.
pub fn arena_layout(lens: &[usize], size: usize) -> (Vec<usize>, usize) {
    let mut starts = Vec::with_capacity(lens.len());
    let mut end = 0usize;
    for &n in lens {
        starts.push(end);
        end += (n * size).div_ceil(256) * 256;
    }
    (starts, end.max(size))
}

/// Runs one kernel by name on host memory, arguments as `cuLaunchKernel` takes them: an 8-byte slot
/// per argument holding its value in the low bytes.
pub trait KernelEmulator: Send + Sync {
    /// # Safety
    /// Every pointer in `args` addresses host memory covering what the kernel touches for this grid.
    unsafe fn launch(&self, name: &str, grid: (u32, u32, u32), block: (u32, u32, u32), shared_bytes: u32,
                     args: &mut [u64]) -> Result<(), String>;
}

/// A buffer of `T`: device memory, or (emulated) host memory whose address stands for a device address.
pub enum Mem<T> {
    Device(Held<CudaSlice<T>>),
    Host(Held<HostMem<T>>),
    /// a dry run's buffer: a size on the books, no memory
    Dry(DryMem),
    /// `len` elements `bytes` into an arena ([`Runtime::alloc_arena`]), which lives while any of
    /// its parts does
    Part { arena: Arc<Mem<T>>, bytes: usize, len: usize },
}

/// What a dry run has allocated: bytes now and at most, shared by its buffers.
#[derive(Default)]
pub struct Ledger {
    now: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
    /// fake addresses, distinct per buffer (nothing dereferences them)
    next_address: std::sync::atomic::AtomicU64,
}

impl Ledger {
    /// For a moment, a second copy of what is allocated now (a graph's check).
    fn hold_copy(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.now.load(Relaxed);
        self.peak.fetch_max(2 * now, Relaxed);
    }
}

/// A dry run's buffer: `len` elements of `bytes` in all, taken off the ledger when dropped.
pub struct DryMem {
    len: usize,
    bytes: usize,
    address: u64,
    ledger: Arc<Ledger>,
}

impl Drop for DryMem {
    fn drop(&mut self) {
        self.ledger.now.fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<T> Mem<T> {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        match self {
            Mem::Device(s) => s.len(),
            Mem::Host(h) => h.len,
            Mem::Dry(d) => d.len,
            Mem::Part { len, .. } => *len,
        }
    }
}

/// Zeroed host memory written through raw addresses by emulated kernels (hence no `Vec`: nothing
/// else holds a reference into it while a kernel runs). Each buffer is mapped on its own pages and
/// ends exactly where an inaccessible guard page begins, so a kernel that reads or writes past the
/// end faults at once (the emulator then names the kernel) instead of corrupting other buffers.
pub struct HostMem<T> {
    ptr: NonNull<T>,
    len: usize,
    /// the whole mapping: (start, bytes), guard page included
    map: (*mut libc::c_void, usize),
}

// SAFETY: plain numbers; the backend orders every access on one logical stream.
unsafe impl<T: Send> Send for HostMem<T> {}
unsafe impl<T: Sync> Sync for HostMem<T> {}

impl<T: Copy + Default> HostMem<T> {
    fn zeroed(n: usize) -> Result<Self, String> {
        let (mut mem, starts) = Self::zeroed_parts(&[n.max(1)])?;
        mem.ptr = NonNull::new(starts[0] as *mut T).ok_or("mmap returned null")?;
        mem.len = n.max(1);
        Ok(mem)
    }

    /// One mapping holding buffers of `lens` elements, each ending exactly where an inaccessible
    /// guard page begins; returns it (its `ptr` the mapping's start) and each buffer's address.
    fn zeroed_parts(lens: &[usize]) -> Result<(Self, Vec<usize>), String> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let spans: Vec<usize> = lens.iter().map(|&n| (n * std::mem::size_of::<T>()).div_ceil(page) + 1).collect();
        let total = spans.iter().sum::<usize>() * page;
        // SAFETY: a fresh private anonymous mapping (zero-filled); each span's last page is made
        // inaccessible.
        unsafe {
            let map = libc::mmap(std::ptr::null_mut(), total, libc::PROT_READ | libc::PROT_WRITE,
                                 libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
            if map == libc::MAP_FAILED {
                return Err(format!("mmap of {total} bytes failed"));
            }
            let mut starts = Vec::with_capacity(lens.len());
            let mut at = map as *mut u8;
            for (&n, &span) in lens.iter().zip(&spans) {
                let guard = at.add((span - 1) * page);
                if libc::mprotect(guard as *mut libc::c_void, page, libc::PROT_NONE) != 0 {
                    libc::munmap(map, total);
                    return Err("mprotect of a guard page failed".into());
                }
                // the buffer ends where the guard page starts (its alignment is T's: page - bytes keeps it)
                starts.push(guard.sub(n * std::mem::size_of::<T>()) as usize);
                at = guard.add(page);
            }
            let whole = total / std::mem::size_of::<T>().max(1);
            Ok((HostMem { ptr: NonNull::new_unchecked(map as *mut T), len: whole, map: (map, total) }, starts))
        }
    }
}

impl<T> Bury for HostMem<T> {
    fn bury(self) -> Body {
        let map = self.map;
        std::mem::forget(self); // the body unmaps it
        Body::Host(map.0, map.1)
    }
}

impl<T> Drop for HostMem<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made by `zeroed`, unmapped once.
        unsafe { libc::munmap(self.map.0, self.map.1) };
    }
}

/// The CUDA driver's side: context, the one stream all work goes to, cuBLAS, the loaded kernels,
/// and the page-locked memory small copies go through.
pub struct Driver {
    // declared first so it is freed first, while the context is still alive
    staging: std::sync::Mutex<Staging>,
    profiler: std::sync::Mutex<Option<Profiler>>,
    /// graph mode: the stream GEMMs and copies are captured on (the main stream is the legacy
    /// default stream, which cannot be captured)
    capture: Arc<CudaStream>,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub blas: cudarc::cublas::CudaBlas,
    pub functions: FxHashMap<&'static str, CudaFunction>,
    /// cuBLAS's workspace, set explicitly so that captured GEMMs allocate nothing (declared after
    /// `blas`, so it outlives the handle)
    _workspace: CudaSlice<u8>,
}

impl Driver {
    pub fn new(ctx: Arc<CudaContext>, stream: Arc<CudaStream>, blas: cudarc::cublas::CudaBlas,
               functions: FxHashMap<&'static str, CudaFunction>) -> Result<Self, String> {
        ctx.bind_to_thread().map_err(dbg)?;
        let staging = Staging::new(STAGING_BYTES)?;
        let capture = ctx.new_stream().map_err(dbg)?;
        let workspace = stream.alloc_zeros::<u8>(CUBLAS_WORKSPACE).map_err(dbg)?;
        // SAFETY: a workspace the Driver keeps for as long as the handle.
        unsafe {
            cudarc::cublas::sys::cublasSetWorkspace_v2(*blas.handle(), workspace.device_ptr(&stream).0 as *mut c_void,
                                                       CUBLAS_WORKSPACE).result().map_err(dbg)?;
        }
        Ok(Driver { staging: std::sync::Mutex::new(staging), profiler: Default::default(), capture, _workspace: workspace,
                    ctx, stream, blas, functions })
    }

    fn profiler(&self) -> std::sync::MutexGuard<'_, Option<Profiler>> {
        self.profiler.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Before a call: when profiling and no run of calls is open, queue the spin and the run's
    /// first event.
    fn profile_before(&self) -> Result<(), String> {
        let mut guard = self.profiler();
        let Some(p) = guard.as_mut() else { return Ok(()) };
        if !p.marks.is_empty() {
            return Ok(());
        }
        let spin = self.function("profile_spin")?;
        let mut ns = PROFILE_SPIN_NS;
        let mut params = [&mut ns as *mut i64 as *mut c_void];
        // SAFETY: profile_spin takes one long long.
        unsafe { cudarc::driver::result::launch_kernel(spin.cu_function(), (1, 1, 1), (1, 1, 1), 0, self.stream.cu_stream(), &mut params) }
            .map_err(dbg)?;
        p.opened = Some(std::time::Instant::now());
        p.mark("", self.stream.cu_stream())
    }

    /// After a call: its closing event.
    fn profile_after(&self, name: &'static str) -> Result<(), String> {
        match self.profiler().as_mut() {
            Some(p) => p.mark(name, self.stream.cu_stream()),
            None => Ok(()),
        }
    }

    /// After the stream was waited for: the open run's times go to the totals.
    fn profile_close(&self) -> Result<(), String> {
        match self.profiler().as_mut() {
            Some(p) => p.close(),
            None => Ok(()),
        }
    }
}

/// cuBLAS's workspace: 32 MiB, what NVIDIA advises for Hopper.
const CUBLAS_WORKSPACE: usize = 32 << 20;

/// How long the profiler's spin holds the GPU ahead of each run of calls: longer than the host
/// takes to queue a run (a BERT-base step's longest, with the events, is a few milliseconds).
const PROFILE_SPIN_NS: i64 = 50_000_000;

/// The GPU time of each call, from events recorded between calls (`Runtime::set_profiling`). A run
/// of calls (from one wait for the device to the next) starts behind a spin of the GPU, so it is
/// queued whole before the GPU reaches it and each event pair times the call's work on the device
/// alone. Slow (an event per call, a spin per run): for finding where a step's GPU time goes.
#[derive(Default)]
struct Profiler {
    pool: Vec<cudarc::driver::sys::CUevent>,
    /// the open run's events, each after the call named (the first, at the start, unnamed)
    marks: Vec<(&'static str, cudarc::driver::sys::CUevent)>,
    /// when the run's spin was queued, and when its last event was
    opened: Option<std::time::Instant>,
    last: Option<std::time::Instant>,
    report: Profile,
}

/// What the profiler measured: per call name, the calls and their GPU milliseconds; the GPU's busy
/// milliseconds in all (the sum of its runs); runs the host had not queued whole before the spin
/// ended (their times then include the host's issuing: lengthen the spin).
#[derive(Debug, Default, Clone)]
pub struct Profile {
    pub calls: HashMap<&'static str, (u64, f64)>,
    pub busy_ms: f64,
    pub runs: u64,
    pub starved_runs: u64,
}

// SAFETY: CUDA events are context objects usable from any thread; the profiler is used under the
// Driver's mutex.
unsafe impl Send for Profiler {}

impl Profiler {
    fn mark(&mut self, name: &'static str, stream: cudarc::driver::sys::CUstream) -> Result<(), String> {
        let event = match self.pool.pop() {
            Some(e) => e,
            None => cudarc::driver::result::event::create(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT).map_err(dbg)?,
        };
        // SAFETY: a live event of this context, recorded on its stream.
        unsafe { cudarc::driver::result::event::record(event, stream) }.map_err(dbg)?;
        self.marks.push((name, event));
        self.last = Some(std::time::Instant::now());
        Ok(())
    }

    fn close(&mut self) -> Result<(), String> {
        if self.marks.len() > 1 {
            let queued = match (self.opened, self.last) {
                (Some(a), Some(b)) => (b - a).as_secs_f64() * 1e3,
                _ => 0.0,
            };
            self.report.runs += 1;
            // the host's issuing took longer than the spin: the GPU may have waited inside the run
            if queued > PROFILE_SPIN_NS as f64 / 1e6 {
                self.report.starved_runs += 1;
            }
            for w in self.marks.windows(2) {
                // SAFETY: both recorded on this stream, which has been waited for.
                let ms = unsafe { cudarc::driver::result::event::elapsed(w[0].1, w[1].1) }.map_err(dbg)? as f64;
                let entry = self.report.calls.entry(w[1].0).or_default();
                entry.0 += 1;
                entry.1 += ms;
                self.report.busy_ms += ms;
            }
        }
        self.pool.extend(self.marks.drain(..).map(|(_, e)| e));
        (self.opened, self.last) = (None, None);
        Ok(())
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        for e in self.pool.drain(..).chain(self.marks.drain(..).map(|(_, e)| e)) {
            // SAFETY: created by `mark`, destroyed once; nothing waits on it any more.
            unsafe { let _ = cudarc::driver::result::event::destroy(e); }
        }
    }
}

impl Driver {
    /// The loaded kernel `name`.
    fn function(&self, name: &str) -> Result<&CudaFunction, String> {
        self.functions.get(name).ok_or_else(|| format!("kernel {name} was not loaded"))
    }

    fn staging(&self) -> std::sync::MutexGuard<'_, Staging> {
        self.staging.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Issues `op` on `stream` now.
    ///
    /// # Safety
    /// The op's addresses lie inside live buffers (staging memory for an upload's source).
    unsafe fn issue(&self, op: &Op, stream: cudarc::driver::sys::CUstream) -> Result<(), String> {
        match op {
            Op::Launch { name, grid, block, smem, args } => {
                let f = self.function(name)?;
                let mut slots = args.clone();
                let mut params: Vec<*mut c_void> = slots.iter_mut().map(|s| s as *mut u64 as *mut c_void).collect();
                cudarc::driver::result::launch_kernel(f.cu_function(), *grid, *block, *smem, stream, &mut params).map_err(dbg)
            }
            Op::Gemm(g) => driver_gemm(self, g),
            Op::Upload { dst, bytes, src: UploadSrc::Staging(at) } => {
                cudarc::driver::sys::cuMemcpyHtoDAsync_v2(*dst, *at as *const c_void, *bytes, stream).result().map_err(dbg)
            }
            Op::Upload { dst, src: UploadSrc::Kept(data), .. } => {
                cudarc::driver::result::memcpy_htod_async(*dst, data.as_slice(), stream).map_err(dbg)
            }
            Op::Copy { dst, src, bytes } => cudarc::driver::result::memcpy_dtod_async(*dst, *src, *bytes, stream).map_err(dbg),
        }
    }

    /// `op` (a GEMM or a copy) captured on the capture stream as a graph of its own.
    ///
    /// # Safety
    /// As `issue`.
    unsafe fn capture(&self, op: &Op) -> Result<cudarc::driver::sys::CUgraph, String> {
        use cudarc::driver::sys::{self, CUstreamCaptureMode};
        let cs = self.capture.cu_stream();
        sys::cuStreamBeginCapture_v2(cs, CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).result().map_err(dbg)?;
        let issued = match op {
            Op::Gemm(g) => {
                let h = *self.blas.handle();
                let set = |s: sys::CUstream| cudarc::cublas::sys::cublasSetStream_v2(h, s as _).result().map_err(dbg);
                set(cs).and_then(|_| driver_gemm(self, g)).and(set(self.stream.cu_stream()))
            }
            other => self.issue(other, cs),
        };
        let mut child = std::ptr::null_mut();
        let ended = sys::cuStreamEndCapture(cs, &mut child).result().map_err(dbg);
        match issued.and(ended) {
            Ok(()) => Ok(child),
            Err(e) => {
                if !child.is_null() {
                    sys::cuGraphDestroy(child);
                }
                Err(e)
            }
        }
    }

    /// A CUDA graph of `ops` in order: kernels as kernel nodes (their arguments can be patched),
    /// GEMMs and copies as captured child graphs.
    fn build_graph(&self, ops: &[Op]) -> Result<DriverGraph, String> {
        let mut g = DriverGraph::new(ops.len())?;
        let mut prev: Option<cudarc::driver::sys::CUgraphNode> = None;
        for (i, op) in ops.iter().enumerate() {
            let deps: Vec<_> = prev.into_iter().collect();
            let node = match op {
                Op::Launch { name, .. } => g.add_kernel(i, &deps, self.function(name)?.cu_function(), op)?,
                // SAFETY: the op's addresses are those the run was queued with (its buffers are held);
                // the captured graph is this context's, handed over to `add_child` alone.
                other => unsafe { g.add_child(&deps, self.capture(other)?)? },
            };
            prev = Some(node);
        }
        g.instantiate()?;
        Ok(g)
    }

    /// Copies `n` elements from device address `src` to the host, after all queued work.
    fn download<T: DeviceRepr + Copy + Default>(&self, src: u64, n: usize) -> Result<Vec<T>, String> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let bytes = n * std::mem::size_of::<T>();
        let mut out = vec![T::default(); n];
        let mut st = self.staging();
        let at = st.take(bytes, || self.stream.synchronize().map_err(dbg))?;
        // SAFETY: `src` holds `n` elements (the caller checked); `at`, when given, is `bytes` of
        // staging memory no queued copy uses; the wait makes the copy complete before it is read.
        unsafe {
            match at {
                Some(at) => cudarc::driver::sys::cuMemcpyDtoHAsync_v2(at as *mut c_void, src, bytes, self.stream.cu_stream())
                    .result().map_err(dbg)?,
                None => cudarc::driver::result::memcpy_dtoh_async(&mut out, src, self.stream.cu_stream()).map_err(dbg)?,
            }
            self.stream.synchronize().map_err(dbg)?;
            if let Some(at) = at {
                std::ptr::copy_nonoverlapping(at as *const u8, out.as_mut_ptr() as *mut u8, bytes);
            }
        }
        st.drained();
        drop(st);
        self.profile_close()?;
        Ok(out)
    }

    fn synchronize(&self) -> Result<(), String> {
        self.stream.synchronize().map_err(dbg)?;
        self.staging().drained();
        self.profile_close()
    }

    /// Runs `call` (queueing work on the stream) between the profiler's events when profiling.
    fn profiled(&self, name: &'static str, call: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
        self.profile_before()?;
        call()?;
        self.profile_after(name)
    }
}

/// Bytes of page-locked memory for small copies (a BERT-base step stages well under 1 MiB between
/// two waits).
const STAGING_BYTES: usize = 8 << 20;

/// Page-locked host memory that small copies go through. A copy from pageable memory can make the
/// driver wait for the stream to drain, so the host's issuing and the GPU's work run one after the
/// other at every upload (indices, pointer arrays, tensor tables: dozens per step) instead of
/// overlapping; from page-locked memory the copy is queued like a kernel. Space is handed out front
/// to back and reused from the start once the stream has been waited for: at every download, and
/// first when it runs out.
struct Staging {
    base: *mut u8,
    cap: usize,
    used: usize,
}

// SAFETY: the memory is the process's (page-locked host memory), used under the Driver's mutex.
unsafe impl Send for Staging {}

impl Staging {
    fn new(cap: usize) -> Result<Self, String> {
        // SAFETY: a plain page-locked allocation (the context is current), freed in `drop`.
        let base = unsafe { cudarc::driver::result::malloc_host(cap, 0) }.map_err(dbg)? as *mut u8;
        Ok(Staging { base, cap, used: 0 })
    }

    /// `bytes` of staging memory that no queued copy still uses (`wait`, which drains the stream,
    /// is called first when the rest of the space is too small); `None` when `bytes` is over the
    /// whole of it.
    fn take(&mut self, bytes: usize, wait: impl FnOnce() -> Result<(), String>) -> Result<Option<*mut u8>, String> {
        let span = bytes.div_ceil(256) * 256;
        if span > self.cap {
            return Ok(None);
        }
        if self.used + span > self.cap {
            wait()?;
            self.used = 0;
        }
        // SAFETY: used + span <= cap, inside the allocation.
        let at = unsafe { self.base.add(self.used) };
        self.used += span;
        Ok(Some(at))
    }

    /// The stream has been waited for: every queued copy is done with the space.
    fn drained(&mut self) {
        self.used = 0;
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // SAFETY: allocated by `malloc_host` in `new`, freed once; the context outlives it (field order).
        unsafe { let _ = cudarc::driver::result::free_host(self.base as *mut c_void); }
    }
}

pub enum Kind {
    Driver(Driver),
    Emulated(Box<dyn KernelEmulator>),
    /// Allocates nothing and runs nothing, but keeps the books: what a step would allocate on a GPU
    /// and which calls it would make, for a model of any size, on any machine. Values read back are 0.
    DryRun(Arc<Ledger>),
}

/// What a runtime was asked to do: each is one call into the driver (or the emulator). A GPU step
/// whose time is mostly the host issuing these is launch-bound; the counts say how far from that.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Calls {
    pub kernels: u64,
    pub gemms: u64,
    /// host to device, device to host, and device to device copies
    pub copies: u64,
    /// downloads, each of which waits for all work before it
    pub waits: u64,
    /// device allocations (each also zeroes its memory)
    pub allocs: u64,
    /// On a GPU: the host's nanoseconds inside the driver and cuBLAS issuing the calls above, and
    /// waiting for the device (downloads, synchronisations). A step whose time is mostly the first
    /// is bound by the host; mostly the second, by the GPU. 0 emulated and in a dry run.
    pub issue_ns: u64,
    pub wait_ns: u64,
}

impl Calls {
    pub fn total(&self) -> u64 {
        self.kernels + self.gemms + self.copies
    }
}

impl std::ops::Sub for Calls {
    type Output = Calls;
    fn sub(self, o: Calls) -> Calls {
        Calls { kernels: self.kernels - o.kernels, gemms: self.gemms - o.gemms, copies: self.copies - o.copies,
                waits: self.waits - o.waits, allocs: self.allocs - o.allocs, issue_ns: self.issue_ns - o.issue_ns,
                wait_ns: self.wait_ns - o.wait_ns }
    }
}

pub struct Runtime {
    /// graph mode's queue and graphs (None: every call is issued at once); declared first so that
    /// its graphs are destroyed while the context is alive
    graphs: std::sync::Mutex<Option<Queue<Option<DriverGraph>>>>,
    pub kind: Kind,
    calls: std::sync::Mutex<(Calls, FxHashMap<&'static str, u64>)>,
    /// where buffers freed during a queued run wait for it, and the book of live memory
    yard: Arc<Graveyard>,
    /// tests only: emulated graph replays leave out their patches (stale arguments, which the
    /// graph's check must catch)
    stale_patches: std::sync::atomic::AtomicBool,
}

/// What checking a graph against its calls issued one by one found (`Runtime::check_graph`).
enum Checked<R> {
    /// the same bytes in every live buffer: the graph can be trusted
    Same(R),
    /// different bytes (the buffers now hold the calls' results): graph mode turns off
    Differs(String),
    /// not enough free memory for the check; nothing was issued
    Unchecked(String),
    /// the graph could not be built, patched or launched; the buffers are as before the run
    Failed(String),
}

/// Memory left free beside a graph check's copy of the live buffers.
const CHECK_MARGIN: usize = 256 << 20;

/// A GEMM in cuBLAS's column-major terms: `C_i = alpha op(A_i) op(B_i) + beta C_i` for `batch` items
/// at fixed strides (elements), or, with `arrays`, at the addresses held by three device arrays of
/// `batch` pointers (A's, B's, C's; the strides are then unused). With `bf16`, A and B hold bf16
/// bit patterns (C stays f32, and the products accumulate in f32).
#[derive(Clone)]
pub struct Gemm {
    pub ta: bool,
    pub tb: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub a: (u64, usize, usize),
    pub b: (u64, usize, usize),
    pub beta: f32,
    pub c: (u64, usize, usize),
    pub batch: usize,
    pub bf16: bool,
    /// f32 operands multiplied on the tensor cores in TF32 (rounded to 10 mantissa bits), f32 accumulation
    pub tf32: bool,
    pub arrays: Option<(u64, u64, u64)>,
}

/// A GEMM's fields, comparable and hashable (the scalars as their bits).
type GemmKey = ((bool, bool, usize, usize, usize), (u32, (u64, usize, usize), (u64, usize, usize), u32, (u64, usize, usize)),
                (usize, bool, bool, Option<(u64, u64, u64)>));

impl Gemm {
    pub fn key(&self) -> GemmKey {
        ((self.ta, self.tb, self.m, self.n, self.k), (self.alpha.to_bits(), self.a, self.b, self.beta.to_bits(), self.c),
         (self.batch, self.bf16, self.tf32, self.arrays))
    }

    /// The kind of GEMM, for the profiler.
    pub fn label(&self) -> &'static str {
        match (self.arrays.is_some(), self.batch > 1, self.bf16, self.tf32) {
            (true, _, true, _) => "GEMM batched (pointer arrays), bf16",
            (true, _, _, true) => "GEMM batched (pointer arrays), TF32",
            (true, _, _, false) => "GEMM batched (pointer arrays), f32",
            (false, true, _, _) => "GEMM strided batched, f32",
            (false, false, true, _) => "GEMM bf16",
            (false, false, false, _) => "GEMM f32",
        }
    }
}

fn op(trans: bool) -> cublasOperation_t {
    if trans { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N }
}

fn dbg(e: impl std::fmt::Debug) -> String {
    format!("{e:?}")
}

impl Runtime {
    pub fn new(kind: Kind) -> Self {
        Runtime { graphs: Default::default(), kind, calls: Default::default(), yard: Default::default(),
                  stale_patches: Default::default() }
    }

    pub fn calls(&self) -> Calls {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Launches so far per kernel name.
    pub fn launches(&self) -> HashMap<&'static str, u64> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).1.iter().map(|(&k, &n)| (k, n)).collect()
    }

    fn count(&self, f: impl FnOnce(&mut Calls)) {
        f(&mut self.calls.lock().unwrap_or_else(|e| e.into_inner()).0);
    }

    /// Runs `f` (a call into the driver) and adds its host time to the books: to `wait_ns` when it
    /// waits for the device, else to `issue_ns`.
    fn timed<R>(&self, waits: bool, f: impl FnOnce() -> R) -> R {
        let t0 = std::time::Instant::now();
        let r = f();
        let ns = t0.elapsed().as_nanos() as u64;
        self.count(|c| if waits { c.wait_ns += ns } else { c.issue_ns += ns });
        r
    }

    /// Turns graph mode on or off (module `graphs`); the queued run is issued first.
    pub fn set_graphs(&self, on: bool) -> Result<(), String> {
        self.flush()?;
        let mut q = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
        if q.is_some() != on {
            *q = on.then(Queue::default);
        }
        Ok(())
    }

    /// Tests only: emulated graph replays leave out their patches, as a driver that ignored them
    /// would, so that the graphs' check has something to catch.
    pub fn set_stale_patches(&self, on: bool) {
        self.stale_patches.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether graph mode is on.
    pub fn graph_mode(&self) -> bool {
        self.graphs.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Why graph mode stopped using graphs on this device, if it did.
    pub fn graph_failure(&self) -> Option<String> {
        self.graphs.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|q| q.failed.clone())
    }

    /// Graph mode's books (zeros when it is off).
    pub fn graph_stats(&self) -> GraphStats {
        self.graphs.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|q| q.stats).unwrap_or_default()
    }

    fn profiling(&self) -> bool {
        matches!(&self.kind, Kind::Driver(d) if d.profiler().is_some())
    }

    /// Queues `op` in graph mode (unless profiling, which times calls one by one), else issues it.
    fn submit(&self, op: Op) -> Result<(), String> {
        if !self.profiling() {
            let mut q = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(q) = q.as_mut().filter(|q| q.failed.is_none()) {
                self.yard.hold();
                q.run.push(op);
                return Ok(());
            }
        }
        self.issue(&op)
    }

    /// Issues `op` now.
    fn issue(&self, op: &Op) -> Result<(), String> {
        match &self.kind {
            // SAFETY: the op was made by this runtime's verbs from live buffers (held while queued).
            Kind::Driver(d) => self.timed(false, || d.profiled(op.label(), || unsafe { d.issue(op, d.stream.cu_stream()) })),
            // SAFETY: as above.
            Kind::Emulated(e) => unsafe { emulated_issue(e.as_ref(), op) },
            Kind::DryRun(_) => Ok(()),
        }
    }

    /// Graph mode: issues the queued run, call by call or as a graph (see `graphs::Queue::plan`),
    /// then frees the buffers dropped while it was queued.
    pub fn flush(&self) -> Result<(), String> {
        let mut guard = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = guard.as_mut() else { return Ok(()) };
        let Some(plan) = q.plan() else { return Ok(()) };
        let issued = match (&self.kind, plan) {
            // nothing runs, but the books follow the plans (graphs kept and checked, replays
            // counted), and the checks' copy of the live memory counts towards the peak
            (Kind::DryRun(ledger), Plan::Build(key, ops)) => {
                q.stats.checked += 1;
                ledger.hold_copy();
                q.keep(key, ops, None);
                Ok(())
            }
            (Kind::DryRun(ledger), Plan::Replay(key, changed, ops)) => {
                if let Some(cached) = q.graphs.get_mut(&key) {
                    if cached.needs_check(&changed) {
                        q.stats.checked += 1;
                        ledger.hold_copy();
                        cached.checked(&changed);
                    }
                    cached.ops = ops;
                }
                Ok(())
            }
            (Kind::DryRun(_), Plan::Eager(_)) => Ok(()),
            (_, Plan::Eager(ops)) => ops.iter().try_for_each(|op| self.issue(op)),
            // A graph that cannot be built, patched or launched (a driver or cuBLAS that refuses
            // stream capture, say) turns graph mode off for good: the run is issued call by call
            // (nothing of it ran: capture only records, a failed launch queues nothing, and the
            // check puts the buffers back first), and `graph_failure` says why. So does a graph
            // whose check finds other results than its calls issued one by one (those are kept).
            (Kind::Driver(d), Plan::Build(key, ops)) => {
                // SAFETY: the graph and the stream are this context's.
                let checked = self.launch_graph(&mut q.stats, true, &ops, || {
                    self.timed(false, || d.build_graph(&ops).and_then(|g| unsafe { g.launch(d.stream.cu_stream()) }.map(|_| g)))
                })?;
                self.settle(q, checked, &ops, "building a CUDA graph", |q, g| q.keep(key, ops.clone(), Some(g)))
            }
            (Kind::Driver(d), Plan::Replay(key, changed, ops)) => {
                let replay = || self.timed(false, || {
                    let cached = q.graphs.get(&key).ok_or("a planned graph is missing")?;
                    let g = cached.graph.as_ref().ok_or("a planned graph was not built")?;
                    for &i in &changed {
                        let Op::Launch { name, .. } = &ops[i] else { continue };
                        g.patch(i, d.function(name)?.cu_function(), &ops[i])?;
                    }
                    // SAFETY: the graph and the stream are this context's.
                    unsafe { g.launch(d.stream.cu_stream()) }
                });
                let check = q.graphs.get(&key).is_some_and(|c| c.needs_check(&changed));
                let checked = self.launch_graph(&mut q.stats, check, &ops, replay)?;
                self.settle(q, checked, &ops, "launching a CUDA graph", |q, ()| {
                    if let Some(cached) = q.graphs.get_mut(&key) {
                        cached.ops = ops.clone();
                        cached.checked(&changed);
                    }
                })
            }
            // Emulated, a "graph" is its run: built, it is the run issued call by call, and a replay
            // issues the cached run with only the detected changes applied, as the driver's graph
            // runs after patching its nodes; a change the detection missed runs with stale
            // arguments, and the check (or the tests) see it. Uploads read their newly staged data,
            // as graph nodes do.
            (Kind::Emulated(_), Plan::Build(key, ops)) => {
                let checked = self.launch_graph(&mut q.stats, true, &ops, || ops.iter().try_for_each(|op| self.issue(op)))?;
                self.settle(q, checked, &ops, "building a CUDA graph", |q, ()| q.keep(key, ops.clone(), None))
            }
            (Kind::Emulated(_), Plan::Replay(key, changed, ops)) => {
                let check = q.graphs.get(&key).is_some_and(|c| c.needs_check(&changed));
                let stale = self.stale_patches.load(std::sync::atomic::Ordering::Relaxed);
                let graphs = &mut q.graphs;
                let replay = || {
                    let cached = graphs.get_mut(&key).ok_or("a planned graph is missing")?;
                    for &i in changed.iter().filter(|_| !stale) {
                        cached.ops[i] = ops[i].clone();
                    }
                    for (i, op) in ops.iter().enumerate() {
                        if let Op::Upload { .. } = op {
                            cached.ops[i] = op.clone();
                        }
                    }
                    cached.ops.iter().try_for_each(|op| self.issue(op))
                };
                let checked = self.launch_graph(&mut q.stats, check, &ops, replay)?;
                self.settle(q, checked, &ops, "launching a CUDA graph", |q, ()| {
                    if let Some(cached) = q.graphs.get_mut(&key) {
                        cached.checked(&changed);
                    }
                })
            }
        };
        drop(guard);
        self.yard.release();
        issued
    }

    /// Launches a graph by `run`: checked against its calls issued one by one (`check_graph`) where
    /// `check` says so, else as it is.
    fn launch_graph<R>(&self, stats: &mut GraphStats, check: bool, ops: &[Op], run: impl FnOnce() -> Result<R, String>)
                       -> Result<Checked<R>, String> {
        if !check {
            return Ok(run().map_or_else(Checked::Failed, Checked::Same));
        }
        stats.checked += 1;
        self.check_graph(ops, run)
    }

    /// Acts on what a graph's launch (checked or not) found: keeps the graph (`keep`) when its
    /// results were right; otherwise turns graph mode off, says why, drops the graphs, and issues
    /// the run call by call where its work is not yet done.
    fn settle<R, G>(&self, q: &mut Queue<G>, checked: Checked<R>, ops: &[Op], doing: &str,
                    keep: impl FnOnce(&mut Queue<G>, R)) -> Result<(), String> {
        let (why, issue) = match checked {
            Checked::Same(r) => {
                keep(q, r);
                return Ok(());
            }
            Checked::Differs(why) => (why, false),
            Checked::Unchecked(why) => (why, true),
            Checked::Failed(e) => (format!("{doing}: {e}"), true),
        };
        q.failed = Some(why);
        q.graphs.clear();
        if issue {
            ops.iter().try_for_each(|op| self.issue(op))?;
        }
        Ok(())
    }

    /// Graph mode's check (module `graphs`): copies every live buffer aside, issues `ops` call by
    /// call and takes a checksum of each buffer, puts them all back, runs `graph` (which launches
    /// the graph of `ops`) and takes the checksums again (kernel `halves_checksum`). Where any
    /// differs, the buffers are put back once more and the calls issued again, so that they hold
    /// the calls' results. Costs one copy of the live memory (checked against the free memory
    /// first) and a second run, once per graph and once for its patches.
    fn check_graph<R>(&self, ops: &[Op], graph: impl FnOnce() -> Result<R, String>) -> Result<Checked<R>, String> {
        let spans = self.yard.live_spans();
        let mut packed = Vec::with_capacity(spans.len());
        let mut total = 0usize;
        for &(_, bytes) in &spans {
            packed.push(total);
            total += bytes.div_ceil(256) * 256;
        }
        let total = total.max(256);
        if let Some(free) = self.memory_free() {
            if total + CHECK_MARGIN > free {
                let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
                return Ok(Checked::Unchecked(format!(
                    "checking a graph against its calls issued one by one needs {:.2} GiB free (a copy of the {:.2} GiB the \
                     buffers hold), and {:.2} GiB are; graph mode is off", gib(total + CHECK_MARGIN), gib(total), gib(free))));
            }
        }
        // the check's own buffers and calls are not on the books: they are not the step's
        let before = self.alloc_unbooked::<u32>(total / 4)?;
        let sums = self.alloc_unbooked::<u64>(2 * spans.len().max(1))?;
        let (b, s) = (self.addr(&before), self.addr(&sums));
        let copy_all = |to_packed: bool| spans.iter().zip(&packed).try_for_each(|(&(at, bytes), &off)| {
            let (dst, src) = if to_packed { (b + off as u64, at) } else { (at, b + off as u64) };
            self.issue(&Op::Copy { dst, src, bytes })
        });
        // each span's checksum into slot `first + i` of `sums`
        let checksums = |first: usize| spans.iter().enumerate().try_for_each(|(i, &(at, bytes))| {
            let halves = (bytes / 2) as u64;
            let grid = (halves.div_ceil(256).clamp(1, 1 << 16) as u32, 1, 1);
            self.issue(&Op::Launch { name: "halves_checksum", grid, block: (256, 1, 1), smem: 0,
                                     args: vec![at, halves, s + 8 * (first + i) as u64] })
        });
        let n = spans.len();
        copy_all(true)?;
        ops.iter().try_for_each(|op| self.issue(op))?;
        checksums(0)?;
        copy_all(false)?;
        let r = match graph() {
            Ok(r) => r,
            Err(e) => return Ok(Checked::Failed(e)),
        };
        checksums(n)?;
        let sums = match &self.kind {
            Kind::Driver(d) => d.download::<u64>(s, 2 * n)?,
            // SAFETY: `sums` holds 2n values; nothing runs concurrently on an emulated runtime.
            Kind::Emulated(_) => unsafe { std::slice::from_raw_parts(s as *const u64, 2 * n) }.to_vec(),
            Kind::DryRun(_) => vec![0; 2 * n],
        };
        let differ: Vec<usize> = (0..n).filter(|&i| sums[i] != sums[n + i]).collect();
        let Some(&first) = differ.first() else { return Ok(Checked::Same(r)) };
        // the calls' results, which are right
        copy_all(false)?;
        ops.iter().try_for_each(|op| self.issue(op))?;
        Ok(Checked::Differs(format!(
            "a CUDA graph gave other results than its {} calls issued one by one ({} of {n} live buffers differ, the \
             first of {} bytes); graph mode is off, every call is issued at once", ops.len(), differ.len(), spans[first].1)))
    }

    /// Starts (or stops) timing each call on the GPU (a GPU runtime only; `profile` reads the times).
    pub fn set_profiling(&self, on: bool) -> Result<(), String> {
        self.flush()?;
        if let Kind::Driver(d) = &self.kind {
            d.synchronize()?;
            *d.profiler() = on.then(Profiler::default);
        }
        Ok(())
    }

    /// The GPU times measured since profiling started (empty when it is off).
    pub fn profile(&self) -> Profile {
        match &self.kind {
            Kind::Driver(d) => d.profiler().as_ref().map(|p| p.report.clone()).unwrap_or_default(),
            _ => Profile::default(),
        }
    }

    /// Makes the context current on this thread (N-API worker threads change).
    pub fn bind(&self) -> Result<(), String> {
        match &self.kind {
            Kind::Driver(d) => d.ctx.bind_to_thread().map_err(dbg),
            Kind::Emulated(_) | Kind::DryRun(_) => Ok(()),
        }
    }

    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits + Copy + Default>(&self, n: usize) -> Result<Mem<T>, String> {
        self.count(|c| c.allocs += 1);
        self.alloc_unbooked(n)
    }

    /// `alloc_zeros` without counting it.
    fn alloc_unbooked<T: DeviceRepr + ValidAsZeroBits + Copy + Default>(&self, n: usize) -> Result<Mem<T>, String> {
        match &self.kind {
            Kind::Driver(d) => {
                let s = d.stream.alloc_zeros::<T>(n.max(1)).map_err(dbg)?;
                let span = (s.device_ptr(&d.stream).0, s.len() * std::mem::size_of::<T>());
                Ok(Mem::Device(Held::new(s, self.yard.clone(), &[span])))
            }
            Kind::Emulated(_) => HostMem::zeroed(n).map(|h| {
                let span = (h.ptr.as_ptr() as u64, h.len * std::mem::size_of::<T>());
                Mem::Host(Held::new(h, self.yard.clone(), &[span]))
            }),
            Kind::DryRun(ledger) => {
                use std::sync::atomic::Ordering::Relaxed;
                let bytes = n.max(1) * std::mem::size_of::<T>();
                let now = ledger.now.fetch_add(bytes, Relaxed) + bytes;
                ledger.peak.fetch_max(now, Relaxed);
                // 256-byte aligned, as cudaMalloc's
                let address = ledger.next_address.fetch_add(bytes.div_ceil(256) as u64 * 256, Relaxed) + (1 << 40);
                Ok(Mem::Dry(DryMem { len: n.max(1), bytes, address, ledger: ledger.clone() }))
            }
        }
    }

    /// Buffers of `lens` elements in one allocation (zeroed): a model's activations. On a GPU each
    /// starts 256 bytes aligned (as `cudaMalloc`'s do); emulated, every part still ends at a guard
    /// page. (The model checks a batch's growth against the free memory before asking.)
    pub fn alloc_arena<T: DeviceRepr + ValidAsZeroBits + Copy + Default>(&self, lens: &[usize])
                                                                        -> Result<Vec<Mem<T>>, String> {
        let size = std::mem::size_of::<T>();
        let (arena, starts) = match &self.kind {
            Kind::Emulated(_) => {
                self.count(|c| c.allocs += 1);
                let (mem, starts) = HostMem::<T>::zeroed_parts(lens)?;
                let base = mem.ptr.as_ptr() as usize;
                // the parts, not the mapping: its guard pages cannot be read
                let spans: Vec<(u64, usize)> = starts.iter().zip(lens).filter(|(_, &n)| n > 0).map(|(&at, &n)| (at as u64, n * size)).collect();
                (Mem::Host(Held::new(mem, self.yard.clone(), &spans)), starts.into_iter().map(|s| s - base).collect())
            }
            Kind::Driver(_) | Kind::DryRun(_) => {
                let (starts, end) = arena_layout(lens, size);
                (self.alloc_zeros::<T>(end.div_ceil(size))?, starts)
            }
        };
        let arena = Arc::new(arena);
        Ok(lens.iter().zip(starts).map(|(&len, bytes)| Mem::Part { arena: arena.clone(), bytes, len }).collect())
    }

    /// The address kernels and GEMMs are given for `m`.
    pub fn addr<T>(&self, m: &Mem<T>) -> u64 {
        match (&self.kind, m) {
            (Kind::Driver(d), Mem::Device(s)) => s.device_ptr(&d.stream).0,
            (_, Mem::Host(h)) => h.ptr.as_ptr() as u64,
            (_, Mem::Dry(d)) => d.address,
            (_, Mem::Part { arena, bytes, .. }) => self.addr(arena) + *bytes as u64,
            (_, Mem::Device(_)) => 0, // never made: only the driver allocates device memory
        }
    }

    /// Copies `data` into the start of `dst` (in stream order).
    pub fn upload<T: DeviceRepr>(&self, dst: &mut Mem<T>, data: &[T]) -> Result<(), String> {
        if data.is_empty() {
            return Ok(());
        }
        if data.len() > dst.len() {
            return Err(format!("upload of {} elements into a buffer of {}", data.len(), dst.len()));
        }
        self.count(|c| c.copies += 1);
        let bytes = std::mem::size_of_val(data);
        let dst = self.addr(dst);
        match &self.kind {
            Kind::Driver(d) => {
                // staging space no queued copy still reads; when it runs out, the queued run is
                // issued and waited for first
                let at = d.staging().take(bytes, || {
                    self.flush()?;
                    d.stream.synchronize().map_err(dbg)
                })?;
                match at {
                    Some(at) => {
                        // SAFETY: `at` holds `bytes` (Staging::take).
                        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr() as *const u8, at, bytes) };
                        self.submit(Op::Upload { dst, bytes, src: UploadSrc::Staging(at as u64) })
                    }
                    // larger than all the staging memory (weights, once, at load): from pageable
                    // memory, which the driver stages before returning
                    None => {
                        self.flush()?;
                        // SAFETY: `dst` holds `bytes` (checked above).
                        self.timed(false, || unsafe {
                            cudarc::driver::result::memcpy_htod_async(dst, data, d.stream.cu_stream()).map_err(dbg)
                        })
                    }
                }
            }
            Kind::DryRun(_) => Ok(()),
            Kind::Emulated(_) => {
                // SAFETY: plain values viewed as their bytes.
                let kept = unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, bytes) }.to_vec();
                self.submit(Op::Upload { dst, bytes, src: UploadSrc::Kept(kept) })
            }
        }
    }

    /// The first `n` elements of `src` (waits for the work before it).
    pub fn download<T: DeviceRepr + Copy + Default>(&self, src: &Mem<T>, n: usize) -> Result<Vec<T>, String> {
        if n > src.len() {
            return Err(format!("download of {n} elements from a buffer of {}", src.len()));
        }
        self.count(|c| {
            c.copies += 1;
            c.waits += 1;
        });
        self.flush()?;
        let src = self.addr(src);
        match &self.kind {
            Kind::Driver(d) => self.timed(true, || d.download(src, n)),
            Kind::DryRun(_) => Ok(vec![T::default(); n]),
            // SAFETY: in bounds (checked above); no kernel runs concurrently on an emulated runtime.
            Kind::Emulated(_) => Ok(unsafe { std::slice::from_raw_parts(src as *const T, n) }.to_vec()),
        }
    }

    /// # Safety
    /// Both ranges lie inside live buffers of this runtime.
    pub unsafe fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<(), String> {
        self.count(|c| c.copies += 1);
        self.submit(Op::Copy { dst, src, bytes })
    }

    pub fn synchronize(&self) -> Result<(), String> {
        self.flush()?;
        match &self.kind {
            Kind::Driver(d) => self.timed(true, || d.synchronize()),
            Kind::Emulated(_) | Kind::DryRun(_) => Ok(()),
        }
    }

    /// # Safety
    /// `args` hold, in order, values of the types kernel `name` declares; pointers cover the grid's accesses.
    pub unsafe fn launch(&self, name: &'static str, grid: (u32, u32, u32), block: (u32, u32, u32), shared_bytes: u32,
                         args: Vec<u64>) -> Result<(), String> {
        {
            let mut books = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            books.0.kernels += 1;
            *books.1.entry(name).or_default() += 1;
        }
        self.submit(Op::Launch { name, grid, block, smem: shared_bytes, args })
    }

    /// # Safety
    /// Every item of A, B and C lies inside a live buffer of this runtime.
    pub unsafe fn gemm(&self, g: &Gemm) -> Result<(), String> {
        self.count(|c| c.gemms += 1);
        self.submit(Op::Gemm(g.clone()))
    }

    /// Bytes of device memory free (None when emulated or dry).
    pub fn memory_free(&self) -> Option<usize> {
        match &self.kind {
            Kind::Driver(d) => {
                let _ = d.ctx.bind_to_thread();
                d.ctx.mem_get_info().ok().map(|(free, _)| free)
            }
            Kind::Emulated(_) | Kind::DryRun(_) => None,
        }
    }

    /// Bytes of device memory in use (0 when emulated).
    pub fn memory_used(&self) -> usize {
        match &self.kind {
            Kind::Driver(d) => {
                let _ = d.ctx.bind_to_thread();
                d.ctx.mem_get_info().map(|(free, total)| total - free).unwrap_or(0)
            }
            Kind::Emulated(_) => 0,
            // the peak of what was allocated
            Kind::DryRun(ledger) => ledger.peak.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

unsafe fn driver_gemm(d: &Driver, g: &Gemm) -> Result<(), String> {
    let h = *d.blas.handle();
    let (m, n, k) = (g.m as i32, g.n as i32, g.k as i32);
    if g.bf16 {
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType};
        if let Some((pa, pb, pc)) = g.arrays {
            return cudarc::cublas::sys::cublasGemmBatchedEx(
                h, op(g.ta), op(g.tb), m, n, k, &g.alpha as *const f32 as *const c_void, pa as *const *const c_void,
                cudaDataType::CUDA_R_16BF, g.a.1 as i32, pb as *const *const c_void, cudaDataType::CUDA_R_16BF,
                g.b.1 as i32, &g.beta as *const f32 as *const c_void, pc as *const *mut c_void, cudaDataType::CUDA_R_32F,
                g.c.1 as i32, g.batch as i32, cublasComputeType_t::CUBLAS_COMPUTE_32F, cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT)
                .result().map_err(dbg);
        }
        if g.batch != 1 {
            return Err("strided batched bf16 GEMMs are not used".into());
        }
        return cudarc::cublas::result::gemm_ex(
            h, op(g.ta), op(g.tb), m, n, k, &g.alpha as *const f32 as *const c_void, g.a.0 as *const c_void,
            cudaDataType::CUDA_R_16BF, g.a.1 as i32, g.b.0 as *const c_void, cudaDataType::CUDA_R_16BF, g.b.1 as i32,
            &g.beta as *const f32 as *const c_void, g.c.0 as *mut c_void, cudaDataType::CUDA_R_32F, g.c.1 as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F, cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT).map_err(dbg);
    }
    if let (Some((pa, pb, pc)), true) = (g.arrays, g.tf32) {
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType::CUDA_R_32F};
        return cudarc::cublas::sys::cublasGemmBatchedEx(
            h, op(g.ta), op(g.tb), m, n, k, &g.alpha as *const f32 as *const c_void, pa as *const *const c_void, CUDA_R_32F,
            g.a.1 as i32, pb as *const *const c_void, CUDA_R_32F, g.b.1 as i32, &g.beta as *const f32 as *const c_void,
            pc as *const *mut c_void, CUDA_R_32F, g.c.1 as i32, g.batch as i32, cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT).result().map_err(dbg);
    }
    if let Some((pa, pb, pc)) = g.arrays {
        return cudarc::cublas::sys::cublasSgemmBatched(
            h, op(g.ta), op(g.tb), m, n, k, &g.alpha, pa as *const *const f32, g.a.1 as i32, pb as *const *const f32,
            g.b.1 as i32, &g.beta, pc as *const *mut f32, g.c.1 as i32, g.batch as i32).result().map_err(dbg);
    }
    if g.batch == 1 {
        return cudarc::cublas::result::sgemm(h, op(g.ta), op(g.tb), m, n, k, &g.alpha, g.a.0 as *const f32, g.a.1 as i32,
                                             g.b.0 as *const f32, g.b.1 as i32, &g.beta, g.c.0 as *mut f32, g.c.1 as i32)
            .map_err(dbg);
    }
    cudarc::cublas::result::sgemm_strided_batched(
        h, op(g.ta), op(g.tb), m, n, k, &g.alpha, g.a.0 as *const f32, g.a.1 as i32, g.a.2 as i64, g.b.0 as *const f32,
        g.b.1 as i32, g.b.2 as i64, &g.beta, g.c.0 as *mut f32, g.c.1 as i32, g.c.2 as i64, g.batch as i32).map_err(dbg)
}

/// `x` rounded to TF32's 10 mantissa bits, to nearest (ties to even), as the tensor cores take f32
/// operands in TF32 mode.
pub fn to_tf32(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0xfff + ((bits >> 13) & 1)) & !0x1fff;
    f32::from_bits(rounded)
}

/// Runs `op` on the emulated runtime.
///
/// # Safety
/// The op's addresses lie inside live host buffers of that runtime.
unsafe fn emulated_issue(e: &dyn KernelEmulator, op: &Op) -> Result<(), String> {
    match op {
        Op::Launch { name, grid, block, smem, args } => e.launch(name, *grid, *block, *smem, &mut args.clone()),
        Op::Gemm(g) => {
            emulated_gemm(g);
            Ok(())
        }
        Op::Upload { dst, src: UploadSrc::Kept(data), .. } => {
            std::ptr::copy_nonoverlapping(data.as_ptr(), *dst as *mut u8, data.len());
            Ok(())
        }
        Op::Upload { .. } => Err("a staged upload on an emulated runtime".into()),
        Op::Copy { dst, src, bytes } => {
            std::ptr::copy(*src as *const u8, *dst as *mut u8, *bytes);
            Ok(())
        }
    }
}

/// cuBLAS's column-major GEMM, written out: element (i, j) of a column-major matrix with leading
/// dimension `ld` is at `i + j ld`; op(X) = X^T reads X(j, i). f32 products (bf16 operands widened
/// exactly) summed in f64, then rounded: as exact as the tensor cores' f32 accumulation, or more.
unsafe fn emulated_gemm(g: &Gemm) {
    let load = |base: u64, idx: usize| -> f32 {
        if g.bf16 {
            half::bf16::from_bits(*(base as *const u16).add(idx)).to_f32()
        } else if g.tf32 {
            to_tf32(*(base as *const f32).add(idx))
        } else {
            *(base as *const f32).add(idx)
        }
    };
    let size = if g.bf16 { 2 } else { 4 };
    for item in 0..g.batch {
        let (a, b, c) = match g.arrays {
            Some((pa, pb, pc)) => {
                let at = |arr: u64| *(arr as *const u64).add(item);
                (at(pa), at(pb), at(pc) as *mut f32)
            }
            None => (g.a.0 + (item * g.a.2 * size) as u64, g.b.0 + (item * g.b.2 * size) as u64,
                     (g.c.0 as *mut f32).add(item * g.c.2)),
        };
        for j in 0..g.n {
            for i in 0..g.m {
                let mut acc = 0.0f64;
                for p in 0..g.k {
                    let av = if g.ta { load(a, p + i * g.a.1) } else { load(a, i + p * g.a.1) };
                    let bv = if g.tb { load(b, j + p * g.b.1) } else { load(b, p + j * g.b.1) };
                    acc += av as f64 * bv as f64;
                }
                let out = c.add(i + j * g.c.1);
                // beta = 0 must not read C (it may hold NaN), as cuBLAS does not
                let prior = if g.beta == 0.0 { 0.0 } else { g.beta as f64 * *out as f64 };
                *out = (g.alpha as f64 * acc + prior) as f32;
            }
        }
    }
}
