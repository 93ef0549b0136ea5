//! CUDA graphs: a step's calls between two waits issued as one graph launch.
//!
//! Why: a BERT-base MuScleLoRA step makes about 1,400 driver calls, and at several microseconds of
//! host time each, issuing them can take longer than the GPU takes to run them. In graph mode the
//! runtime queues each call as an [`Op`] instead of issuing it. At the next wait (a download, a
//! synchronisation) the run of queued calls is issued: the first time a run of its shape is seen,
//! call by call; the second time it is built into a CUDA graph (kernels as kernel nodes, GEMMs and
//! copies captured as child graphs) and launched; from then on the graph is launched again with
//! the kernel arguments that changed (dropout keys, AdamW's step, the scalars the host computed from
//! read-back values) patched into its nodes. A run's shape is everything but those arguments: the
//! kernels and their grids, the GEMMs with their addresses, the copies. Uploads read page-locked
//! staging memory when the graph runs, so new batches go through the same nodes.
//!
//! A buffer freed while a run that may use it is still queued must outlive the run: [`Held`]
//! buffers are buried in the runtime's [`Graveyard`] instead, and freed once the run is issued
//! (stream order then puts the free after the run's work).
//!
//! A graph is checked before it is trusted: the first launch of each graph, and each launch that
//! patches a node no checked launch patched before, run on the device twice from the same state,
//! once call by call and once as the graph, and every live buffer must come out with the same
//! bytes, by a checksum of them (the runtime's `check_graph`; the [`Graveyard`] knows the live
//! buffers). A difference turns graph mode off with the calls' results kept. Runs with a kernel
//! whose results vary from run to run in the last bits (atomic sums in an order the GPU picks:
//! [`VARYING_KERNELS`]) cannot be checked that way and are always issued call by call.

use super::runtime::Gemm;
use rustc_hash::{FxHashMap, FxHasher};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One queued call.
#[derive(Clone)]
pub enum Op {
    Launch { name: &'static str, grid: (u32, u32, u32), block: (u32, u32, u32), smem: u32, args: Vec<u64> },
    Gemm(Gemm),
    /// host to device, from page-locked staging memory (a GPU) or from bytes kept here (emulated)
    Upload { dst: u64, bytes: usize, src: UploadSrc },
    /// device to device
    Copy { dst: u64, src: u64, bytes: usize },
}

#[derive(Clone)]
pub enum UploadSrc {
    Staging(u64),
    Kept(Vec<u8>),
}

impl Op {
    /// What the profiler calls it.
    pub fn label(&self) -> &'static str {
        match self {
            Op::Launch { name, .. } => name,
            Op::Gemm(g) => g.label(),
            Op::Upload { .. } => "copy host to device",
            Op::Copy { .. } => "copy device to device",
        }
    }

    /// Everything a graph node fixes; a kernel's arguments are left out (they can be patched).
    fn hash_shape(&self, h: &mut FxHasher) {
        match self {
            Op::Launch { name, grid, block, smem, args } => (0u8, name, grid, block, smem, args.len()).hash(h),
            Op::Gemm(g) => (1u8, g.key()).hash(h),
            Op::Upload { dst, bytes, src } => (2u8, dst, bytes, match src {
                UploadSrc::Staging(at) => *at,
                UploadSrc::Kept(_) => 0,
            }).hash(h),
            Op::Copy { dst, src, bytes } => (3u8, dst, src, bytes).hash(h),
        }
    }

    fn same_shape(&self, o: &Op) -> bool {
        match (self, o) {
            (Op::Launch { name, grid, block, smem, args }, Op::Launch { name: n2, grid: g2, block: b2, smem: s2, args: a2 }) => {
                name == n2 && grid == g2 && block == b2 && smem == s2 && args.len() == a2.len()
            }
            (Op::Gemm(a), Op::Gemm(b)) => a.key() == b.key(),
            (Op::Upload { dst, bytes, src }, Op::Upload { dst: d2, bytes: b2, src: s2 }) => {
                dst == d2 && bytes == b2 && match (src, s2) {
                    (UploadSrc::Staging(a), UploadSrc::Staging(b)) => a == b,
                    (UploadSrc::Kept(_), UploadSrc::Kept(_)) => true,
                    _ => false,
                }
            }
            (Op::Copy { dst, src, bytes }, Op::Copy { dst: d2, src: s2, bytes: b2 }) => dst == d2 && src == s2 && bytes == b2,
            _ => false,
        }
    }
}

/// The shape of a whole run, hashed.
pub fn shape_key(ops: &[Op]) -> u64 {
    // Fx, not SipHash: the shape of every run is hashed at every wait (a third of a graph-mode
    // step's host time with SipHash), and nothing adversarial chooses the keys
    let mut h = FxHasher::default();
    ops.len().hash(&mut h);
    for op in ops {
        op.hash_shape(&mut h);
    }
    h.finish()
}

pub fn same_shape(a: &[Op], b: &[Op]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_shape(y))
}

/// The kernel launches of `new` whose arguments differ from `old`'s (same shape): the graph nodes
/// to patch.
pub fn changed_launches(old: &[Op], new: &[Op]) -> Vec<usize> {
    old.iter().zip(new).enumerate()
        .filter(|(_, pair)| matches!(pair, (Op::Launch { args: a, .. }, Op::Launch { args: b, .. }) if a != b))
        .map(|(i, _)| i)
        .collect()
}

/// Graph mode's books: runs issued call by call, graphs built, graph launches, kernel nodes
/// patched, and graph launches checked against the same run issued call by call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GraphStats {
    pub eager_runs: u64,
    pub built: u64,
    pub launched: u64,
    pub patched: u64,
    pub checked: u64,
}

/// Kernels whose results differ from run to run in the last bits (atomic adds into rows that
/// several threads share, in the order the GPU runs them: the embeddings' gradient, where a token
/// repeats): a run with one is issued call by call, since a graph of it could not be checked bit
/// for bit.
pub const VARYING_KERNELS: &[&str] = &["embedding_backward_f32"];

/// Runs shorter than this are issued call by call: a graph would not pay for itself.
pub const MIN_GRAPH_OPS: usize = 16;
/// Run shapes remembered at most (to build a graph the second time one is seen).
pub const MAX_SEEN: usize = 4096;
/// Graphs kept at most; past it, all are dropped (a new batch shape, say) and rebuilt as needed.
pub const MAX_GRAPHS: usize = 64;

/// What a runtime in graph mode keeps: the queued run, the runs seen and the graphs built (`G`: the
/// runtime's graph objects: the driver's, or none emulated and in a dry run, where a "graph" is
/// the cached run itself).
pub struct Queue<G> {
    pub run: Vec<Op>,
    /// why graphs could not be built or launched on this device; every call is then issued at once
    pub failed: Option<String>,
    seen: FxHashMap<u64, u32>,
    pub graphs: FxHashMap<u64, Cached<G>>,
    pub stats: GraphStats,
}

/// A built graph and the run it was last launched for (whose arguments its nodes hold).
pub struct Cached<G> {
    pub ops: Vec<Op>,
    pub graph: G,
    /// per launch of the run: a replay patching it has been checked against the run issued call
    /// by call (a node patched for the first time, even late, is checked once more)
    patch_checked: Vec<bool>,
}

impl<G> Cached<G> {
    /// Whether a replay patching the launches `changed` needs the check: one of them has never
    /// been patched in a checked replay.
    pub fn needs_check(&self, changed: &[usize]) -> bool {
        changed.iter().any(|&i| !self.patch_checked.get(i).copied().unwrap_or(false))
    }

    /// A replay patching `changed` passed the check.
    pub fn checked(&mut self, changed: &[usize]) {
        for &i in changed {
            if let Some(c) = self.patch_checked.get_mut(i) {
                *c = true;
            }
        }
    }
}

impl<G> Default for Queue<G> {
    fn default() -> Self {
        Queue { run: Vec::new(), failed: None, seen: FxHashMap::default(), graphs: FxHashMap::default(), stats: GraphStats::default() }
    }
}

/// What to do with a run at a wait.
pub enum Plan {
    /// issue it call by call (short, or its shape seen for the first time)
    Eager(Vec<Op>),
    /// build a graph of it, launch it, keep it under this key
    Build(u64, Vec<Op>),
    /// launch the graph under this key after patching these launches' arguments
    Replay(u64, Vec<usize>, Vec<Op>),
}

impl<G> Queue<G> {
    /// Takes the queued run and decides how to issue it.
    pub fn plan(&mut self) -> Option<Plan> {
        if self.run.is_empty() {
            return None;
        }
        let ops = std::mem::take(&mut self.run);
        if ops.len() < MIN_GRAPH_OPS {
            self.stats.eager_runs += 1;
            return Some(Plan::Eager(ops));
        }
        let key = shape_key(&ops);
        if let Some(c) = self.graphs.get(&key) {
            if same_shape(&c.ops, &ops) {
                let changed = changed_launches(&c.ops, &ops);
                self.stats.launched += 1;
                self.stats.patched += changed.len() as u64;
                return Some(Plan::Replay(key, changed, ops));
            }
        }
        if self.seen.len() >= MAX_SEEN {
            self.seen.clear(); // shapes that never repeat (a new batch shape every step, say)
        }
        let seen = self.seen.entry(key).or_default();
        *seen += 1;
        // a run with a varying kernel is never built, so it never reaches the replays above
        let varies = || ops.iter().any(|op| matches!(op, Op::Launch { name, .. } if VARYING_KERNELS.contains(name)));
        if *seen < 2 || varies() {
            self.stats.eager_runs += 1;
            return Some(Plan::Eager(ops));
        }
        self.stats.built += 1;
        self.stats.launched += 1;
        Some(Plan::Build(key, ops))
    }

    /// Keeps a graph built for `ops` (dropping every graph first when there are too many).
    pub fn keep(&mut self, key: u64, ops: Vec<Op>, graph: G) {
        if self.graphs.len() >= MAX_GRAPHS {
            self.graphs.clear();
        }
        let patch_checked = vec![false; ops.len()];
        self.graphs.insert(key, Cached { ops, graph, patch_checked });
    }
}

/// A freed buffer waiting for its queued run: the raw resource, freed by `Graveyard::release`.
pub enum Body {
    /// device memory (bytes), freed on its stream as cudarc frees it
    Device(cudarc::driver::sys::CUdeviceptr, usize, Arc<cudarc::driver::CudaStream>),
    /// an emulated buffer's mapping: (start, bytes)
    Host(*mut libc::c_void, usize),
}

// SAFETY: a device address or a private mapping, owned by the body alone.
unsafe impl Send for Body {}

impl Drop for Body {
    fn drop(&mut self) {
        match self {
            // SAFETY: the allocation `leak` gave up, of `bytes`, on that stream; freed once
            Body::Device(ptr, bytes, stream) => drop(unsafe { stream.upgrade_device_ptr::<u8>(*ptr, *bytes) }),
            // SAFETY: the mapping HostMem made, unmapped once
            Body::Host(map, bytes) => unsafe {
                libc::munmap(*map, *bytes);
            },
        }
    }
}

/// A buffer that can give up its raw resource to be freed later.
pub trait Bury {
    fn bury(self) -> Body;
}

impl<T> Bury for cudarc::driver::CudaSlice<T> {
    fn bury(self) -> Body {
        let (bytes, stream) = (self.len() * std::mem::size_of::<T>(), self.stream().clone());
        Body::Device(self.leak(), bytes, stream)
    }
}

/// Where buffers freed during a queued run wait until the run is issued; and the book of every
/// live buffer's bytes, which a graph's check copies.
#[derive(Default)]
pub struct Graveyard {
    /// a run is queued: frees must wait
    queued: AtomicBool,
    /// each buried buffer with the start addresses of its spans, dropped from `live` when freed
    bodies: Mutex<Vec<(Body, Vec<u64>)>>,
    /// start address -> bytes of every span of memory the runtime's buffers hold (buried ones
    /// included: a queued run may still read them)
    live: Mutex<BTreeMap<u64, usize>>,
}

impl Graveyard {
    /// A run has been started (a call queued).
    pub fn hold(&self) {
        self.queued.store(true, Ordering::Release);
    }

    /// The queued run has been issued: the buried buffers are freed now (their frees follow the
    /// run's work in stream order).
    pub fn release(&self) {
        let bodies = {
            let mut b = self.bodies.lock().unwrap_or_else(|e| e.into_inner());
            self.queued.store(false, Ordering::Release);
            std::mem::take(&mut *b)
        };
        for (body, spans) in bodies {
            drop(body);
            self.forget(&spans);
        }
    }

    /// Every live span of memory: (start address, bytes), in address order.
    pub fn live_spans(&self) -> Vec<(u64, usize)> {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(&a, &b)| (a, b)).collect()
    }

    fn forget(&self, spans: &[u64]) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        for at in spans {
            live.remove(at);
        }
    }
}

/// A buffer whose free waits for a queued run (see the module's notes).
pub struct Held<X: Bury> {
    inner: Option<X>,
    yard: Arc<Graveyard>,
    /// the start addresses of its spans in the yard's book of live memory
    spans: Vec<u64>,
}

impl<X: Bury> Held<X> {
    /// `inner`, whose memory is `spans` (start address, bytes): one span, or an emulated arena's
    /// parts (the guard pages between them are not memory a kernel may touch).
    pub fn new(inner: X, yard: Arc<Graveyard>, spans: &[(u64, usize)]) -> Self {
        yard.live.lock().unwrap_or_else(|e| e.into_inner()).extend(spans.iter().copied());
        Held { inner: Some(inner), yard, spans: spans.iter().map(|&(at, _)| at).collect() }
    }
}

impl<X: Bury> std::ops::Deref for Held<X> {
    type Target = X;
    fn deref(&self) -> &X {
        self.inner.as_ref().expect("a held buffer is present until dropped")
    }
}

impl<X: Bury> std::ops::DerefMut for Held<X> {
    fn deref_mut(&mut self) -> &mut X {
        self.inner.as_mut().expect("a held buffer is present until dropped")
    }
}

impl<X: Bury> Drop for Held<X> {
    fn drop(&mut self) {
        let Some(x) = self.inner.take() else { return };
        let spans = std::mem::take(&mut self.spans);
        let mut bodies = self.yard.bodies.lock().unwrap_or_else(|e| e.into_inner());
        if self.yard.queued.load(Ordering::Acquire) {
            bodies.push((x.bury(), spans));
        } else {
            drop(bodies);
            drop(x); // no run queued: freed now
            self.yard.forget(&spans);
        }
    }
}

/// A built CUDA graph: the graph (kept, since patching names its nodes), its executable, and the
/// kernel node of each launch of the run it was built from.
pub struct DriverGraph {
    graph: cudarc::driver::sys::CUgraph,
    exec: cudarc::driver::sys::CUgraphExec,
    nodes: Vec<cudarc::driver::sys::CUgraphNode>,
}

// SAFETY: graph handles are context objects, used under the runtime's graph mutex.
unsafe impl Send for DriverGraph {}

fn dbg(e: impl std::fmt::Debug) -> String {
    format!("{e:?}")
}

/// A kernel node's parameters for `op` (a launch); `slots` and `ptrs` hold the argument values and
/// the pointers to them, which must outlive the call that reads them.
fn kernel_params(func: cudarc::driver::sys::CUfunction, op: &Op, slots: &mut Vec<u64>,
                 ptrs: &mut Vec<*mut std::ffi::c_void>) -> cudarc::driver::sys::CUDA_KERNEL_NODE_PARAMS {
    let Op::Launch { grid, block, smem, args, .. } = op else { unreachable!("kernel parameters of a launch only") };
    *slots = args.clone();
    *ptrs = slots.iter_mut().map(|s| s as *mut u64 as *mut std::ffi::c_void).collect();
    // SAFETY: a plain C struct; zero is null for its handles and pointers.
    let mut p: cudarc::driver::sys::CUDA_KERNEL_NODE_PARAMS = unsafe { std::mem::zeroed() };
    p.func = func;
    (p.gridDimX, p.gridDimY, p.gridDimZ) = *grid;
    (p.blockDimX, p.blockDimY, p.blockDimZ) = *block;
    p.sharedMemBytes = *smem;
    p.kernelParams = ptrs.as_mut_ptr();
    p
}

impl DriverGraph {
    pub fn new(ops: usize) -> Result<Self, String> {
        let mut graph = std::ptr::null_mut();
        // SAFETY: creates an empty graph (the context is current).
        unsafe { cudarc::driver::sys::cuGraphCreate(&mut graph, 0) }.result().map_err(dbg)?;
        Ok(DriverGraph { graph, exec: std::ptr::null_mut(), nodes: vec![std::ptr::null_mut(); ops] })
    }

    /// Adds launch `i` of the run as a kernel node after `deps`.
    pub fn add_kernel(&mut self, i: usize, deps: &[cudarc::driver::sys::CUgraphNode], func: cudarc::driver::sys::CUfunction,
                      op: &Op) -> Result<cudarc::driver::sys::CUgraphNode, String> {
        let (mut slots, mut ptrs) = (Vec::new(), Vec::new());
        let p = kernel_params(func, op, &mut slots, &mut ptrs);
        let mut node = std::ptr::null_mut();
        // SAFETY: the parameters point at live values (copied by the call).
        unsafe { cudarc::driver::sys::cuGraphAddKernelNode_v2(&mut node, self.graph, deps.as_ptr(), deps.len(), &p) }
            .result().map_err(dbg)?;
        self.nodes[i] = node;
        Ok(node)
    }

    /// Adds a captured graph (a GEMM, a copy) as a child node after `deps`; the child is consumed.
    ///
    /// # Safety
    /// `child` is a live graph of this graph's context that nothing else uses or destroys (it is
    /// destroyed here), and `deps` are nodes of this graph.
    pub unsafe fn add_child(&mut self, deps: &[cudarc::driver::sys::CUgraphNode], child: cudarc::driver::sys::CUgraph)
                            -> Result<cudarc::driver::sys::CUgraphNode, String> {
        let mut node = std::ptr::null_mut();
        // SAFETY: `child` is a graph this call clones into ours (the caller's contract); destroyed once after.
        let r = unsafe { cudarc::driver::sys::cuGraphAddChildGraphNode(&mut node, self.graph, deps.as_ptr(), deps.len(), child) }
            .result().map_err(dbg);
        // SAFETY: as above.
        unsafe { cudarc::driver::sys::cuGraphDestroy(child) };
        r.map(|_| node)
    }

    pub fn instantiate(&mut self) -> Result<(), String> {
        // SAFETY: a complete graph of this context.
        unsafe { cudarc::driver::sys::cuGraphInstantiateWithFlags(&mut self.exec, self.graph, 0) }.result().map_err(dbg)
    }

    /// # Safety
    /// `stream` is a live stream of this graph's context.
    pub unsafe fn launch(&self, stream: cudarc::driver::sys::CUstream) -> Result<(), String> {
        // SAFETY: an instantiated graph, launched in stream order.
        unsafe { cudarc::driver::sys::cuGraphLaunch(self.exec, stream) }.result().map_err(dbg)
    }

    /// Gives launch `i`'s kernel node `op`'s arguments (same kernel and grid) for later launches.
    pub fn patch(&self, i: usize, func: cudarc::driver::sys::CUfunction, op: &Op) -> Result<(), String> {
        let (mut slots, mut ptrs) = (Vec::new(), Vec::new());
        let p = kernel_params(func, op, &mut slots, &mut ptrs);
        // SAFETY: node `i` is a kernel node of the graph `exec` was instantiated from.
        unsafe { cudarc::driver::sys::cuGraphExecKernelNodeSetParams_v2(self.exec, self.nodes[i], &p) }.result().map_err(dbg)
    }
}

impl Drop for DriverGraph {
    fn drop(&mut self) {
        // SAFETY: made by `new` / `instantiate`, destroyed once; a launched graph still running is
        // freed by the driver when it completes.
        unsafe {
            if !self.exec.is_null() {
                cudarc::driver::sys::cuGraphExecDestroy(self.exec);
            }
            cudarc::driver::sys::cuGraphDestroy(self.graph);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(arg: u64) -> Op {
        Op::Launch { name: "fill_f32", grid: (1, 1, 1), block: (32, 1, 1), smem: 0, args: vec![arg] }
    }

    /// A replay is checked when it patches a node no checked replay patched before: the first
    /// replay, and later one whose changes reach a node for the first time (an argument that
    /// changes only from some step on); not one whose patched nodes were all checked already.
    #[test]
    fn replays_are_checked_when_they_patch_a_node_for_the_first_time() {
        let run = |args: [u64; 20]| args.iter().map(|&a| launch(a)).collect::<Vec<_>>();
        let mut q: Queue<()> = Queue::default();
        let plan = |q: &mut Queue<()>, args| {
            q.run = run(args);
            q.plan().unwrap()
        };
        assert!(matches!(plan(&mut q, [0; 20]), Plan::Eager(_)), "a shape seen once is issued call by call");
        let Plan::Build(key, ops) = plan(&mut q, [0; 20]) else { panic!("the second sighting builds") };
        q.keep(key, ops, ());
        let replay = |q: &mut Queue<()>, args| match plan(q, args) {
            Plan::Replay(key, changed, ops) => {
                let c = q.graphs.get_mut(&key).unwrap();
                let check = c.needs_check(&changed);
                c.checked(&changed);
                c.ops = ops;
                (changed, check)
            }
            _ => panic!("a graph was built for this shape"),
        };
        let mut args = [0u64; 20];
        args[3] = 1;
        assert_eq!(replay(&mut q, args), (vec![3], true), "the first patch of node 3");
        args[3] = 2;
        assert_eq!(replay(&mut q, args), (vec![3], false), "node 3 again");
        assert_eq!(replay(&mut q, args), (vec![], false), "nothing patched");
        args[3] = 3;
        args[7] = 1;
        assert_eq!(replay(&mut q, args), (vec![3, 7], true), "node 7 patched for the first time");
        args[7] = 2;
        assert_eq!(replay(&mut q, args), (vec![7], false));
    }
}
