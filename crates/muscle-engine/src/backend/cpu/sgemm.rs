//! Our own SGEMM for x86-64 with AVX2 + FMA, BLIS-style:
//!
//! - B is packed into `NR`-column micro-panels of `kc` rows, A into `MR`-row micro-panels, both
//!   zero-padded to whole panels so the micro-kernel never branches on edges while it multiplies;
//! - the `6 x 16` micro-kernel keeps the C tile in 12 ymm accumulators (two FMA pipes with a
//!   4-cycle latency need at least 8 independent chains), streams one B row (2 loads) and six
//!   broadcasts of A per `k`;
//! - `kc` is chosen so an A micro-panel plus a B micro-panel stay (about) in L1 (32 KiB per core), `mc`
//!   so the packed A block stays in L2 (512 KiB per core), `nc` so the C panel stays in L3;
//! - a parallel call splits C into one block per thread (along M when it is tall enough, else N);
//!   each thread runs the whole blocked loop on its block with its own packing. Packing B twice
//!   costs `k * n` copies against `2 m n k / threads` flops, which is noise for the layer shapes,
//!   and it leaves the threads with no barrier between packing and computing.
//!
//! Machines without AVX2/FMA, and other architectures, use the `gemm` crate (see `mod.rs`).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::cell::Cell;

/// Micro-tile rows (broadcasts of A) and columns (two 8-wide vectors of B).
pub const MR: usize = 6;
pub const NR: usize = 16;

/// Upper bound on the k block. Every k block reads and writes the C panel once more, and BERT's
/// forward and input-gradient GEMMs have k = 768: `kc = 384` (two blocks) instead of 256 (three)
/// measured 1-4% faster on those shapes and about 2% at 2048^3 (`muscle-bench --tune`, the
/// configurations interleaved). The B micro-panel (24 KiB) then shares L1 with the A micro-panel
/// only just; the hardware prefetcher covers the rest.
const KC_MAX: usize = 384;
/// Rows of A per packed block: `MC * KC_MAX * 4` = 108 KiB of L2. At `kc = 384`, 72 rows ran
/// 1-3% faster than 144 (the B micro-panel is reused over fewer A panels, which the prefetcher
/// keeps ahead of).
const MC: usize = 72;
/// Columns of B per packed block (`KC_MAX * NC * 4` = 1.5 MiB) and so of the C panel every k block
/// reads and writes again: at 1024 a thread's C panel (1024 x 1024 at 2048^3, 4 MiB) stays in L3
/// across the k blocks, where with the whole width (4096) it went to memory each time; measured
/// 5-8% faster at 2048^3 and no slower on the layer shapes (3 A repacks at n = 3072 cost little).
const NC: usize = 1024;

/// Blocking overrides for tuning experiments (`muscle-bench --tune`); 0 = the constant.
pub mod tune {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    pub static KC: AtomicUsize = AtomicUsize::new(0);
    pub static MC: AtomicUsize = AtomicUsize::new(0);
    pub static NC: AtomicUsize = AtomicUsize::new(0);
    /// 0: the rule; 1: always split M; 2: always split N.
    pub static SPLIT: AtomicUsize = AtomicUsize::new(0);
    pub(super) fn get(v: &AtomicUsize, default: usize) -> usize {
        match v.load(Relaxed) {
            0 => default,
            x => x,
        }
    }
}

/// Strided view of a row-major operand: element `(i, j)` is at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub struct View {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

/// Mutable C: element `(i, j)` is at `ptr + i * ldc + j`.
#[derive(Clone, Copy)]
pub struct Out {
    pub ptr: *mut f32,
    pub ldc: usize,
}

/// What the last k block's store does after `C = alpha A B (+ C)`. Fusing the element-wise step
/// that follows a layer's GEMM into the store saves a pass over C through memory (6-25 MB at
/// BERT-base's step shape, where such passes run at memory speed, not at FMA speed).
#[derive(Clone, Copy)]
pub enum Epilogue {
    None,
    /// `C[i, j] += bias[j]`.
    Bias(*const f32),
    /// With `z = C[i, j] + bias[j]`: `act[i, j] = gelu(z)` and `C[i, j] = gelu'(z)` (`act` shaped
    /// like C). Keeping the derivative, not `z`, makes GELU's backward a product ([`Self::Mul`]):
    /// its `erf` and `exp` are computed once, here, for both directions.
    BiasGelu(*const f32, Out),
    /// `C[i, j] *= s[i, j]` (`s` shaped like C, rows `.1` apart).
    Mul(*const f32, usize),
    /// `C[i, j] = (C[i, j] + bias[j]) * mask[i, j] + res[i, j]`: a layer's output through dropout
    /// into the residual sum (`bias` null: none added; `mask` null when dropout is off; `mask` and
    /// `res` shaped like C, rows `.3` apart).
    BiasDropRes(*const f32, *const f32, *const f32, usize),
}

impl Epilogue {
    /// The same epilogue for the C block whose top-left element is `(i, j)`.
    ///
    /// # Safety
    /// `(i, j)` must lie inside the C view the epilogue was made for.
    unsafe fn at(self, i: usize, j: usize) -> Epilogue {
        match self {
            Epilogue::None => Epilogue::None,
            Epilogue::Bias(b) => Epilogue::Bias(b.add(j)),
            Epilogue::BiasGelu(b, act) => Epilogue::BiasGelu(b.add(j), Out { ptr: act.ptr.add(i * act.ldc + j), ldc: act.ldc }),
            Epilogue::Mul(f, ld) => Epilogue::Mul(f.add(i * ld + j), ld),
            Epilogue::BiasDropRes(b, mask, res, ld) => {
                let mask = if mask.is_null() { mask } else { mask.add(i * ld + j) };
                let b = if b.is_null() { b } else { b.add(j) };
                Epilogue::BiasDropRes(b, mask, res.add(i * ld + j), ld)
            }
        }
    }
}

// SAFETY: the driver hands disjoint C blocks to the threads and only reads A and B.
unsafe impl Send for Epilogue {}
unsafe impl Sync for Epilogue {}
unsafe impl Send for View {}
unsafe impl Sync for View {}
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// Whether this CPU runs the AVX2 kernels (the check is cached by std).
pub fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

thread_local! {
    /// Per-thread packing buffers, reused across calls so steady-state GEMMs do not allocate (a
    /// fresh multi-MiB `Vec` is a fresh `mmap` and its page faults). Taken out of the cell for
    /// the duration of a call, so a nested call on the same thread (rayon work stealing while a
    /// parallel call waits) gets its own buffers instead of a double borrow.
    static PACK: Cell<Option<(AlignedBuf, AlignedBuf)>> = const { Cell::new(None) };
}

/// An f32 buffer whose usable part starts on a 64-byte boundary, so the kernel's 32-byte loads
/// of packed panels never split a cache line.
#[derive(Default)]
struct AlignedBuf {
    data: Vec<f32>,
}

impl AlignedBuf {
    fn get(&mut self, len: usize) -> *mut f32 {
        // 16 floats to align the start, 16 of slack after `len` for `pack_a`'s overlapping stores.
        if self.data.len() < len + 32 {
            self.data = vec![0.0; len + 32];
        }
        let p = self.data.as_mut_ptr();
        let skip = p.align_offset(64);
        // SAFETY: `skip < 16` floats and the buffer has 32 floats of slack.
        unsafe { p.add(skip) }
    }
}

/// Largest `kc <= KC_MAX` that splits `k` into equal blocks (rounded up to a multiple of 8), so a
/// `k` just above `KC_MAX` does not leave a thin, inefficient last block.
fn pick_kc(k: usize) -> usize {
    let kc_max = tune::get(&tune::KC, KC_MAX);
    let blocks = k.div_ceil(kc_max);
    k.div_ceil(blocks).next_multiple_of(8).min(kc_max)
}

/// `C[m, n] = alpha * A[m, k] B[k, n] (+ C if accumulate)`, then `epi`, one thread.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `a`, `b` must be readable and `c` writable at every
/// element of their `m x k`, `k x n`, `m x n` views, and the epilogue's operands likewise over
/// `m x n`; `c` must not overlap `a`, `b` or the epilogue's operands; `k > 0`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_serial(m: usize, n: usize, k: usize, a: View, b: View, c: Out, alpha: f32, accumulate: bool,
                          epi: Epilogue) {
    let (mut abuf, mut bbuf) = PACK.with(|p| p.take()).unwrap_or_default();
    let kc_blk = pick_kc(k);
    let (mc_max, nc_max) = (tune::get(&tune::MC, MC), tune::get(&tune::NC, NC));
    let nc_blk = nc_max.min(n.next_multiple_of(NR));
    let mc_blk = mc_max.min(m.next_multiple_of(MR));
    let ap = abuf.get(mc_blk * kc_blk);
    let bp = bbuf.get(kc_blk * nc_blk);
    for jc in (0..n).step_by(nc_max) {
        let nc = nc_max.min(n - jc);
        for pc in (0..k).step_by(kc_blk) {
            let kc = kc_blk.min(k - pc);
            let bv = View { ptr: b.ptr.add(pc * b.rs + jc * b.cs), ..b };
            pack_b(kc, nc, bv, bp);
            // The first k block applies the caller's accumulate; later ones add to it; the last
            // one finishes C, so it runs the epilogue.
            let beta = accumulate || pc > 0;
            let last = pc + kc == k;
            for ic in (0..m).step_by(mc_max) {
                let mc = mc_max.min(m - ic);
                let av = View { ptr: a.ptr.add(ic * a.rs + pc * a.cs), ..a };
                pack_a(mc, kc, av, ap);
                let cb = Out { ptr: c.ptr.add(ic * c.ldc + jc), ldc: c.ldc };
                let e = if last { epi.at(ic, jc) } else { Epilogue::None };
                macro_kernel(mc, nc, kc, ap, bp, cb, alpha, beta, e);
            }
        }
    }
    PACK.with(|p| p.set(Some((abuf, bbuf))));
}

/// `C = alpha A B (+ C)` split over the rayon pool: one C block per thread, along M when each
/// thread gets at least a few micro-rows' worth of rows, else along N.
///
/// # Safety
/// As [`gemm_serial`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_parallel(m: usize, n: usize, k: usize, a: View, b: View, c: Out, alpha: f32, accumulate: bool,
                            epi: Epilogue, threads: usize) {
    use rayon::prelude::*;
    let split_m = match tune::SPLIT.load(std::sync::atomic::Ordering::Relaxed) {
        1 => m >= threads * MR,
        2 => n < threads * NR,
        _ => m >= n || n < threads * NR,
    };
    let (len, unit) = if split_m { (m, MR) } else { (n, NR) };
    let parts = threads.min(len.div_ceil(unit)).max(1);
    if parts == 1 {
        return gemm_serial(m, n, k, a, b, c, alpha, accumulate, epi);
    }
    // Whole micro-tiles per part, spread as evenly as possible.
    let tiles = len.div_ceil(unit);
    (0..parts).into_par_iter().for_each(|p| {
        // Capture the Send/Sync wrappers whole, not their raw-pointer fields.
        let (a, b, c, epi) = (a, b, c, epi);
        let t0 = tiles * p / parts * unit;
        let t1 = (tiles * (p + 1) / parts * unit).min(len);
        if t0 >= t1 {
            return;
        }
        // SAFETY: the parts write disjoint row (or column) ranges of C; the caller's contract
        // covers the sub-views.
        unsafe {
            if split_m {
                let av = View { ptr: a.ptr.add(t0 * a.rs), ..a };
                let cv = Out { ptr: c.ptr.add(t0 * c.ldc), ldc: c.ldc };
                gemm_serial(t1 - t0, n, k, av, b, cv, alpha, accumulate, epi.at(t0, 0));
            } else {
                let bv = View { ptr: b.ptr.add(t0 * b.cs), ..b };
                let cv = Out { ptr: c.ptr.add(t0), ldc: c.ldc };
                gemm_serial(m, t1 - t0, k, a, bv, cv, alpha, accumulate, epi.at(0, t0));
            }
        }
    });
}

/// Pack `A[0..mc, 0..kc]` into `MR`-row micro-panels: panel `q`, step `p` holds
/// `A[q*MR .. q*MR+MR, p]` contiguously; rows past `mc` are zero.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_a(mc: usize, kc: usize, a: View, dst: *mut f32) {
    let mut d = dst;
    for i0 in (0..mc).step_by(MR) {
        let mr = MR.min(mc - i0);
        let src = a.ptr.add(i0 * a.rs);
        if a.cs == 1 && mr == MR {
            // Rows contiguous in k: transpose 8 k-steps x 6 rows (plus 2 dummy rows) in
            // registers. Each transposed vector holds one k-step's 6 values and 2 garbage lanes;
            // storing them in increasing k order lets each store overwrite the previous one's
            // garbage, and the last one's lands in memory written later (or the buffer's slack).
            let rows: [*const f32; MR] = std::array::from_fn(|i| src.add(i * a.rs));
            let zero = _mm256_setzero_ps();
            let mut p = 0;
            while p + 8 <= kc {
                let r: [__m256; 8] =
                    std::array::from_fn(|i| if i < MR { _mm256_loadu_ps(rows[i].add(p)) } else { zero });
                for (q, v) in transpose8(r).iter().enumerate() {
                    _mm256_storeu_ps(d.add((p + q) * MR), *v);
                }
                p += 8;
            }
            for p in p..kc {
                for (i, row) in rows.iter().enumerate() {
                    *d.add(p * MR + i) = *row.add(p);
                }
            }
        } else if a.rs == 1 && mr == MR {
            // A^T stored row-major (the weight gradients' `dy^T x`): a micro-panel's six values
            // of one k-step are contiguous; copy them as a 4-wide and a 2-wide move.
            for p in 0..kc {
                let s = src.add(p * a.cs);
                _mm_storeu_ps(d.add(p * MR), _mm_loadu_ps(s));
                _mm_store_sd(d.add(p * MR + 4) as *mut f64, _mm_load_sd(s.add(4) as *const f64));
            }
        } else {
            for p in 0..kc {
                let s = src.add(p * a.cs);
                for i in 0..MR {
                    *d.add(p * MR + i) = if i < mr { *s.add(i * a.rs) } else { 0.0 };
                }
            }
        }
        d = d.add(kc * MR);
    }
}

/// Pack `B[0..kc, 0..nc]` into `NR`-column micro-panels: panel `q`, step `p` holds
/// `B[p, q*NR .. q*NR+NR]` contiguously; columns past `nc` are zero.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_b(kc: usize, nc: usize, b: View, dst: *mut f32) {
    let mut d = dst;
    for j0 in (0..nc).step_by(NR) {
        let nr = NR.min(nc - j0);
        let src = b.ptr.add(j0 * b.cs);
        if b.cs == 1 && nr == NR {
            for p in 0..kc {
                let s = src.add(p * b.rs);
                _mm256_store_ps(d.add(p * NR), _mm256_loadu_ps(s));
                _mm256_store_ps(d.add(p * NR + 8), _mm256_loadu_ps(s.add(8)));
            }
        } else if b.rs == 1 && nr == NR {
            // B^T stored row-major (the layers' `x W^T`): each column of B is contiguous in k.
            // Transpose 8 x 8 blocks in registers.
            let mut p = 0;
            while p + 8 <= kc {
                for half in 0..2 {
                    let cols = src.add(half * 8 * b.cs + p);
                    let r: [__m256; 8] = std::array::from_fn(|j| _mm256_loadu_ps(cols.add(j * b.cs)));
                    let t = transpose8(r);
                    for (q, v) in t.iter().enumerate() {
                        _mm256_store_ps(d.add((p + q) * NR + half * 8), *v);
                    }
                }
                p += 8;
            }
            for p in p..kc {
                for j in 0..NR {
                    *d.add(p * NR + j) = *src.add(j * b.cs + p);
                }
            }
        } else {
            for p in 0..kc {
                let s = src.add(p * b.rs);
                for j in 0..NR {
                    *d.add(p * NR + j) = if j < nr { *s.add(j * b.cs) } else { 0.0 };
                }
            }
        }
        d = d.add(kc * NR);
    }
}

/// 8 x 8 transpose: `out[q]` lane `j` = `r[j]` lane `q`.
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// Columns of C a fused epilogue runs over at once: the `mc x EPI_COLS` block just finished
/// (144 KiB) is still in L2, and rows this long vectorise (per 16-column tile they would not: LLVM's
/// vector loop wants more iterations than a tile row has).
const EPI_COLS: usize = 256;

/// All micro-tiles of one packed (A block, B block) pair. B micro-panel outer, so it stays in L1
/// while the A micro-panels stream from L2. `epi` (only on the last k block) runs behind the
/// tiles, every `EPI_COLS` finished columns.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn macro_kernel(mc: usize, nc: usize, kc: usize, ap: *const f32, bp: *const f32, c: Out, alpha: f32,
                       beta: bool, epi: Epilogue) {
    let mut done = 0;
    for j0 in (0..nc).step_by(NR) {
        let nr = NR.min(nc - j0);
        let b = bp.add(j0 * kc);
        for i0 in (0..mc).step_by(MR) {
            let mr = MR.min(mc - i0);
            let a = ap.add(i0 * kc);
            let ct = c.ptr.add(i0 * c.ldc + j0);
            kernel_6x16(kc, a, b, ct, c.ldc, mr, nr, alpha, beta);
        }
        let end = j0 + nr;
        if !matches!(epi, Epilogue::None) && (end - done >= EPI_COLS || end == nc) {
            epilogue_block(c, mc, done, end, epi);
            done = end;
        }
    }
}

/// Runs `epi` over rows `0..m`, columns `j0..j1` of C (already holding `alpha A B (+ C)`).
#[target_feature(enable = "avx2,fma")]
unsafe fn epilogue_block(c: Out, m: usize, j0: usize, j1: usize, epi: Epilogue) {
    use super::elementwise::{epilogue_row, RowEpilogue};
    use std::slice::{from_raw_parts as part, from_raw_parts_mut as part_mut};
    let w = j1 - j0;
    for i in 0..m {
        let row = part_mut(c.ptr.add(i * c.ldc + j0), w);
        let e = match epi {
            Epilogue::None => continue,
            Epilogue::Bias(bias) => RowEpilogue::Bias(part(bias.add(j0), w)),
            Epilogue::BiasGelu(bias, act) => RowEpilogue::BiasGelu(part(bias.add(j0), w),
                                                                    part_mut(act.ptr.add(i * act.ldc + j0), w)),
            Epilogue::Mul(f, ld) => RowEpilogue::Mul(part(f.add(i * ld + j0), w)),
            Epilogue::BiasDropRes(bias, mask, res, ld) => RowEpilogue::BiasDropRes(
                (!bias.is_null()).then(|| part(bias.add(j0), w)), (!mask.is_null()).then(|| part(mask.add(i * ld + j0), w)),
                part(res.add(i * ld + j0), w)),
        };
        epilogue_row(row, e);
    }
}

/// One `MR x NR` tile: `C = alpha * A_panel B_panel (+ C if beta)`, storing only `mr x nr`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_6x16(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, mr: usize, nr: usize,
                      alpha: f32, beta: bool) {
    // Pull the C tile towards L1 while the k loop runs; it is only touched at the end.
    for i in 0..mr {
        _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + NR - 1) as *const i8);
    }
    let mut c00 = _mm256_setzero_ps();
    let mut c01 = _mm256_setzero_ps();
    let mut c10 = _mm256_setzero_ps();
    let mut c11 = _mm256_setzero_ps();
    let mut c20 = _mm256_setzero_ps();
    let mut c21 = _mm256_setzero_ps();
    let mut c30 = _mm256_setzero_ps();
    let mut c31 = _mm256_setzero_ps();
    let mut c40 = _mm256_setzero_ps();
    let mut c41 = _mm256_setzero_ps();
    let mut c50 = _mm256_setzero_ps();
    let mut c51 = _mm256_setzero_ps();
    let (mut a, mut b) = (a, b);
    macro_rules! step {
        () => {{
            let b0 = _mm256_load_ps(b);
            let b1 = _mm256_load_ps(b.add(8));
            let x = _mm256_broadcast_ss(&*a);
            c00 = _mm256_fmadd_ps(x, b0, c00);
            c01 = _mm256_fmadd_ps(x, b1, c01);
            let x = _mm256_broadcast_ss(&*a.add(1));
            c10 = _mm256_fmadd_ps(x, b0, c10);
            c11 = _mm256_fmadd_ps(x, b1, c11);
            let x = _mm256_broadcast_ss(&*a.add(2));
            c20 = _mm256_fmadd_ps(x, b0, c20);
            c21 = _mm256_fmadd_ps(x, b1, c21);
            let x = _mm256_broadcast_ss(&*a.add(3));
            c30 = _mm256_fmadd_ps(x, b0, c30);
            c31 = _mm256_fmadd_ps(x, b1, c31);
            let x = _mm256_broadcast_ss(&*a.add(4));
            c40 = _mm256_fmadd_ps(x, b0, c40);
            c41 = _mm256_fmadd_ps(x, b1, c41);
            let x = _mm256_broadcast_ss(&*a.add(5));
            c50 = _mm256_fmadd_ps(x, b0, c50);
            c51 = _mm256_fmadd_ps(x, b1, c51);
            a = a.add(MR);
            b = b.add(NR);
        }};
    }
    let mut p = 0;
    while p + 4 <= kc {
        step!();
        step!();
        step!();
        step!();
        p += 4;
    }
    while p < kc {
        step!();
        p += 1;
    }
    let acc = [[c00, c01], [c10, c11], [c20, c21], [c30, c31], [c40, c41], [c50, c51]];
    store_tile(&acc, c, ldc, mr, nr, alpha, beta);
}

/// Writes the `mr x nr` valid part of a `6 x 16` accumulator tile: `C = alpha acc (+ C if beta)`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn store_tile(acc: &[[__m256; 2]; MR], c: *mut f32, ldc: usize, mr: usize, nr: usize, alpha: f32, beta: bool) {
    let va = _mm256_set1_ps(alpha);
    if mr == MR && nr == NR {
        for (i, row) in acc.iter().enumerate() {
            let cp = c.add(i * ldc);
            for (h, v) in row.iter().enumerate() {
                let out = if beta {
                    _mm256_fmadd_ps(*v, va, _mm256_loadu_ps(cp.add(h * 8)))
                } else {
                    _mm256_mul_ps(*v, va)
                };
                _mm256_storeu_ps(cp.add(h * 8), out);
            }
        }
    } else {
        // Edge tile: spill the accumulators and store the valid part, rounding as the full path.
        let mut tile = [0.0f32; MR * NR];
        for (i, row) in acc.iter().enumerate() {
            for (h, v) in row.iter().enumerate() {
                _mm256_storeu_ps(tile.as_mut_ptr().add(i * NR + h * 8), *v);
            }
        }
        for i in 0..mr {
            let cp = c.add(i * ldc);
            for j in 0..nr {
                let v = tile[i * NR + j];
                *cp.add(j) = if beta { v.mul_add(alpha, *cp.add(j)) } else { v * alpha };
            }
        }
    }
}

/// `C[m, n] = alpha A[m, k] B[k, n]` without packing, one thread: for attention's per-head products
/// (64 x 64 x 64), where packing both operands costs about as much as multiplying them. A may have
/// any strides; B's rows must be contiguous (`ldb` apart) and readable for `n.next_multiple_of(NR)`
/// columns (the caller pads B where `n` is not a multiple of `NR`).
///
/// # Safety
/// AVX2 and FMA present; every element read or written inside its buffer as described; `k > 0`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_direct(m: usize, n: usize, k: usize, a: View, b: *const f32, ldb: usize, c: Out, alpha: f32) {
    for j0 in (0..n).step_by(NR) {
        let nr = NR.min(n - j0);
        for i0 in (0..m).step_by(MR) {
            let mr = MR.min(m - i0);
            // rows past `mr` repeat the last valid row (in bounds); their results are not stored
            let rows: [*const f32; MR] = std::array::from_fn(|i| a.ptr.add((i0 + i.min(mr - 1)) * a.rs));
            kernel_direct(k, rows, a.cs, b.add(j0), ldb, c.ptr.add(i0 * c.ldc + j0), c.ldc, mr, nr, alpha);
        }
    }
}

/// The `6 x 16` tile of [`gemm_direct`]: A read through six row pointers with column stride `acs`,
/// B through rows `ldb` apart.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_direct(kc: usize, rows: [*const f32; MR], acs: usize, b: *const f32, ldb: usize, c: *mut f32,
                        ldc: usize, mr: usize, nr: usize, alpha: f32) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for p in 0..kc {
        let bp = b.add(p * ldb);
        let b0 = _mm256_loadu_ps(bp);
        let b1 = _mm256_loadu_ps(bp.add(8));
        for (i, row) in rows.iter().enumerate() {
            let x = _mm256_broadcast_ss(&*row.add(p * acs));
            acc[i][0] = _mm256_fmadd_ps(x, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(x, b1, acc[i][1]);
        }
    }
    store_tile(&acc, c, ldc, mr, nr, alpha, false);
}

#[cfg(test)]
mod tests {
    use super::super::sgemm as dispatch;
    use super::*;

    /// Deterministic values in [-1, 1).
    fn fill(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[derive(Clone, Copy, Debug)]
    struct Case {
        m: usize,
        n: usize,
        k: usize,
        ta: bool,
        tb: bool,
        /// Extra leading-dimension padding of A, B, C and a start offset into every buffer.
        pad: usize,
        off: usize,
        alpha: f32,
        accumulate: bool,
    }

    /// Runs `case` through `run` and checks every element of C against an f64 reference, and
    /// that nothing outside the C view was written.
    fn check(case: Case, run: &dyn Fn(Case, &mut [f32], usize, &[f32], usize, &[f32], usize)) {
        let Case { m, n, k, ta, tb, pad, off, alpha, accumulate } = case;
        let (ar, ac) = if ta { (k, m) } else { (m, k) };
        let (br, bc) = if tb { (n, k) } else { (k, n) };
        let (lda, ldb, ldc) = (ac + pad, bc + pad, n + pad);
        let a = fill(off + ar * lda, 1 + m as u64);
        let b = fill(off + br * ldb, 2 + n as u64);
        let c0 = fill(off + m * ldc + pad, 3 + k as u64);
        let mut c = c0.clone();
        run(case, &mut c[off..], ldc, &a[off..], lda, &b[off..], ldb);
        let at = |i: usize, p: usize| a[off + if ta { p * lda + i } else { i * lda + p }] as f64;
        let bt = |p: usize, j: usize| b[off + if tb { j * ldb + p } else { p * ldb + j }] as f64;
        for i in 0..m {
            for j in 0..n {
                let (mut dot, mut mag) = (0.0f64, 0.0f64);
                for p in 0..k {
                    dot += at(i, p) * bt(p, j);
                    mag += (at(i, p) * bt(p, j)).abs();
                }
                let idx = off + i * ldc + j;
                let old = c0[idx] as f64;
                let want = alpha as f64 * dot + if accumulate { old } else { 0.0 };
                let tol = 1e-6 * (1.0 + alpha.abs() as f64 * mag + old.abs());
                let got = c[idx] as f64;
                assert!((got - want).abs() <= tol, "{case:?}: C[{i},{j}] = {got}, want {want}");
            }
        }
        // Padding columns of C and everything before the offset must be untouched.
        for (idx, (&got, &was)) in c.iter().zip(&c0).enumerate() {
            let inside = idx >= off && (idx - off) / ldc < m && (idx - off) % ldc < n;
            if !inside {
                assert_eq!(got.to_bits(), was.to_bits(), "{case:?}: wrote outside C at {idx}");
            }
        }
    }

    fn cases() -> Vec<Case> {
        let shapes = [
            (1, 1, 1), (7, 13, 5), (65, 33, 129), (6, 16, 8), (12, 32, 4), (5, 15, 3), (1, 40, 17),
            (40, 1, 17), (97, 200, 300), (300, 20, 9), (8, 768, 70), (150, 150, 513), (64, 64, 64),
            (33, 8, 600), (145, 17, 257),
        ];
        let mut out = Vec::new();
        for (idx, &(m, n, k)) in shapes.iter().enumerate() {
            for flags in 0..4 {
                out.push(Case {
                    m, n, k,
                    ta: flags & 1 != 0,
                    tb: flags & 2 != 0,
                    pad: [0, 3, 16][(idx + flags) % 3],
                    off: [0, 5][(idx + flags) % 2],
                    alpha: [1.0, 0.125, -2.5][(idx + 2 * flags) % 3],
                    accumulate: (idx + flags) % 2 == 1,
                });
            }
        }
        out
    }

    /// Through the backend entry point, single-threaded and parallel.
    #[test]
    fn dispatch_matches_reference() {
        for case in cases() {
            for parallel in [false, true] {
                check(case, &|c, cbuf, ldc, a, lda, b, ldb| {
                    dispatch(c.m, c.n, c.k, cbuf, ldc, a, lda, c.ta, b, ldb, c.tb, c.alpha, c.accumulate, parallel)
                });
            }
        }
    }

    /// The AVX2 driver itself, serial and split over several parts along M and along N, so the
    /// test does not depend on the dispatch thresholds or the machine's thread count.
    #[test]
    fn avx2_driver_matches_reference() {
        if !available() {
            return;
        }
        let run = |threads: usize| {
            move |c: Case, cbuf: &mut [f32], ldc: usize, a: &[f32], lda: usize, b: &[f32], ldb: usize| {
                let av = if c.ta { View { ptr: a.as_ptr(), rs: 1, cs: lda } } else { View { ptr: a.as_ptr(), rs: lda, cs: 1 } };
                let bv = if c.tb { View { ptr: b.as_ptr(), rs: 1, cs: ldb } } else { View { ptr: b.as_ptr(), rs: ldb, cs: 1 } };
                let cv = Out { ptr: cbuf.as_mut_ptr(), ldc };
                // SAFETY: AVX2/FMA checked above; `check` sizes every buffer for its view.
                unsafe {
                    if threads == 1 {
                        gemm_serial(c.m, c.n, c.k, av, bv, cv, c.alpha, c.accumulate, Epilogue::None);
                    } else {
                        gemm_parallel(c.m, c.n, c.k, av, bv, cv, c.alpha, c.accumulate, Epilogue::None, threads);
                    }
                }
            }
        };
        for case in cases().into_iter().filter(|c| c.k > 0) {
            for threads in [1, 2, 3] {
                check(case, &run(threads));
            }
        }
    }

    /// The unpacked path, on A in both layouts, edge tiles in m and n (B padded as required).
    #[test]
    fn direct_matches_reference() {
        if !available() {
            return;
        }
        for &(m, n, k, ta) in &[(64, 64, 64, false), (37, 37, 64, true), (5, 16, 3, false), (13, 70, 9, true), (1, 1, 1, false)] {
            let case = Case { m, n, k, ta, tb: false, pad: 0, off: 0, alpha: 0.125, accumulate: false };
            check(case, &|c, cbuf, ldc, a, lda, b, ldb| {
                // B padded to whole 16-column panels, as the caller must
                let np = c.n.next_multiple_of(NR);
                let mut bp = vec![0.0f32; c.k * np];
                for p in 0..c.k {
                    bp[p * np..p * np + c.n].copy_from_slice(&b[p * ldb..p * ldb + c.n]);
                }
                let av = if c.ta { View { ptr: a.as_ptr(), rs: 1, cs: lda } } else { View { ptr: a.as_ptr(), rs: lda, cs: 1 } };
                // SAFETY: AVX2/FMA checked; `check` sizes A and C for their views; B padded above.
                unsafe { gemm_direct(c.m, c.n, c.k, av, bp.as_ptr(), np, Out { ptr: cbuf.as_mut_ptr(), ldc }, c.alpha) };
            });
        }
    }

    /// k = 0: C is zeroed, or left alone when accumulating.
    #[test]
    fn empty_inner_dimension() {
        for accumulate in [false, true] {
            check(Case { m: 7, n: 9, k: 0, ta: false, tb: true, pad: 2, off: 1, alpha: 1.0, accumulate },
                  &|c, cbuf, ldc, a, lda, b, ldb| {
                      dispatch(c.m, c.n, c.k, cbuf, ldc, a, lda, c.ta, b, ldb, c.tb, c.alpha, c.accumulate, true)
                  });
        }
    }

    /// Blocks larger than one KC/MC/NC step, so the block loops and the k-block accumulation run.
    #[test]
    fn multi_block_shapes() {
        for &(m, n, k, ta, tb) in &[(MC + 7, 2 * NR + 3, 2 * KC_MAX + 5, false, true), (300, 70, 700, true, false),
                                    (13, NC + 37, KC_MAX + 9, false, false),
                                    // split along M, each part with two column and two k blocks
                                    (NC + 100, NC + 37, KC_MAX + 9, false, true)] {
            for accumulate in [false, true] {
                let case = Case { m, n, k, ta, tb, pad: 1, off: 3, alpha: 0.5, accumulate };
                check(case, &|c, cbuf, ldc, a, lda, b, ldb| {
                    dispatch(c.m, c.n, c.k, cbuf, ldc, a, lda, c.ta, b, ldb, c.tb, c.alpha, c.accumulate, true)
                });
            }
        }
    }

    #[test]
    fn kc_blocks_are_even() {
        assert_eq!(KC_MAX, 384, "the cases below assume it");
        assert_eq!(pick_kc(1), 8);
        assert_eq!(pick_kc(384), 384);
        assert_eq!(pick_kc(385), 200);
        assert_eq!(pick_kc(768), 384);
        assert_eq!(pick_kc(2048), 344);
        assert_eq!(pick_kc(3072), 384);
    }
}
