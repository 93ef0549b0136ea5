//! The CPU backend: f32 on every core. GEMMs go to our AVX2/FMA SGEMM (`sgemm.rs`) where the CPU
//! has it, else to the `gemm` crate; everything else is fused loops here, parallel over rows or
//! (batch, head).

mod attention;
mod decoder;
mod elementwise;
mod flash_attention;
mod norm;
#[cfg(target_arch = "x86_64")]
mod sgemm;
mod vmath;

/// Blocking overrides for `muscle-bench --tune` (x86-64 only).
#[cfg(target_arch = "x86_64")]
#[doc(hidden)]
pub use sgemm::tune as gemm_tune;

use super::{Backend, Mat};
use elementwise::RowEpilogue;
use gemm::Parallelism;

/// Below this many multiply-adds a GEMM runs on the calling thread: splitting tiny products
/// (LoRA's rank-8 updates, per-head attention blocks) costs more in synchronisation than it saves.
const PARALLEL_GEMM_MIN_FLOPS: usize = 48 * 48 * 48;

#[derive(Clone, Debug)]
pub struct Cpu {
    threads: usize,
    /// at most this many bytes for new activations, below the system's available memory
    memory_limit: Option<usize>,
}

impl Cpu {
    /// A backend using the global rayon pool (`threads` = its size).
    pub fn new() -> Self {
        Cpu { threads: rayon::current_num_threads().max(1), memory_limit: None }
    }

    /// The same backend, allowing a model's activations at most `bytes` more than they hold (and
    /// never more than the system's available memory): a batch beyond that is refused with an
    /// error instead of allocated.
    pub fn with_memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl Default for Cpu {
    fn default() -> Self {
        Cpu::new()
    }
}

/// Which SGEMM `sgemm` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKernel {
    /// Ours, `sgemm.rs`: x86-64 with AVX2 and FMA.
    Avx2,
    /// The `gemm` crate: everywhere else, or when `MUSCLE_GEMM=crate` asks for it (benchmarks
    /// and bisecting numerics).
    Crate,
}

/// The kernel this process uses, decided once from the CPU and `MUSCLE_GEMM`.
pub fn gemm_kernel() -> GemmKernel {
    static KERNEL: std::sync::OnceLock<GemmKernel> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(|| {
        let forced_crate = std::env::var("MUSCLE_GEMM").is_ok_and(|v| v == "crate");
        #[cfg(target_arch = "x86_64")]
        if !forced_crate && sgemm::available() {
            return GemmKernel::Avx2;
        }
        let _ = forced_crate;
        GemmKernel::Crate
    })
}

/// Raw SGEMM on row-major operands. `pub(crate)` so attention can run per-head products
/// on its own thread without the trait's buffer plumbing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    m: usize, n: usize, k: usize,
    c: &mut [f32], ldc: usize,
    a: &[f32], lda: usize, ta: bool,
    b: &[f32], ldb: usize, tb: bool,
    alpha: f32, accumulate: bool, parallel: bool,
) {
    sgemm_fused(m, n, k, c, ldc, a, lda, ta, b, ldb, tb, alpha, accumulate, parallel, Fused::None);
}

/// The element-wise step after a GEMM, done in its store (`sgemm::Epilogue`) where our kernel
/// runs and as a pass over C elsewhere. Operands shaped like C share its leading dimension.
pub(crate) enum Fused<'a> {
    None,
    /// `C[i, j] += bias[j]`.
    Bias(&'a [f32]),
    /// `z = C + bias[j]`: `act = gelu(z)`, `C = gelu'(z)`.
    BiasGelu(&'a [f32], &'a mut [f32]),
    /// `C *= s` element-wise.
    Mul(&'a [f32]),
    /// `C = (C + bias[j]) * mask + res` (no bias: none added; no mask: dropout off).
    BiasDropRes(Option<&'a [f32]>, Option<&'a [f32]>, &'a [f32]),
}

impl Fused<'_> {
    /// Row `i` (of `n` columns, rows `ldc` apart) of this epilogue; `None` for no epilogue.
    fn row(&mut self, i: usize, ldc: usize, n: usize) -> Option<RowEpilogue<'_>> {
        let r = i * ldc..i * ldc + n;
        Some(match self {
            Fused::None => return None,
            Fused::Bias(b) => RowEpilogue::Bias(&b[..n]),
            Fused::BiasGelu(b, act) => RowEpilogue::BiasGelu(&b[..n], &mut act[r]),
            Fused::Mul(f) => RowEpilogue::Mul(&f[r]),
            Fused::BiasDropRes(b, mask, res) => {
                RowEpilogue::BiasDropRes(b.map(|b| &b[..n]), mask.map(|m| &m[r.clone()]), &res[r])
            }
        })
    }

    /// The epilogue applied to an already computed `m x n` C (the path without our kernel).
    fn apply(&mut self, c: &mut [f32], ldc: usize, m: usize, n: usize) {
        for i in 0..m {
            if let Some(e) = self.row(i, ldc, n) {
                elementwise::epilogue_row(&mut c[i * ldc..i * ldc + n], e);
            }
        }
    }
}

/// [`sgemm`] with a fused epilogue.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm_fused(
    m: usize, n: usize, k: usize,
    c: &mut [f32], ldc: usize,
    a: &[f32], lda: usize, ta: bool,
    b: &[f32], ldb: usize, tb: bool,
    alpha: f32, accumulate: bool, parallel: bool, mut fused: Fused,
) {
    if m == 0 || n == 0 {
        return;
    }
    let c_last = (m - 1) * ldc + n - 1;
    match &fused {
        Fused::None => {}
        Fused::Bias(bias) => assert!(bias.len() >= n, "sgemm bias shorter than C's width"),
        Fused::BiasGelu(bias, act) => assert!(bias.len() >= n && act.len() > c_last, "sgemm epilogue out of bounds"),
        Fused::Mul(f) => assert!(f.len() > c_last, "sgemm epilogue out of bounds"),
        Fused::BiasDropRes(bias, mask, res) => assert!(bias.is_none_or(|b| b.len() >= n) && res.len() > c_last
            && mask.is_none_or(|m| m.len() > c_last), "sgemm epilogue out of bounds"),
    }
    // Bounds: the last element each operand touches must be inside its slice.
    let a_last = if ta { (k.max(1) - 1) * lda + m - 1 } else { (m - 1) * lda + k.max(1) - 1 };
    let b_last = if tb { (n - 1) * ldb + k.max(1) - 1 } else { (k.max(1) - 1) * ldb + n - 1 };
    assert!(k == 0 || (a_last < a.len() && b_last < b.len()), "sgemm operand out of bounds");
    assert!((m - 1) * ldc + n - 1 < c.len(), "sgemm destination out of bounds");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(0.0);
            }
        }
        fused.apply(c, ldc, m, n);
        return;
    }
    let (a_rs, a_cs) = if ta { (1, lda) } else { (lda, 1) };
    let (b_rs, b_cs) = if tb { (1, ldb) } else { (ldb, 1) };
    let parallel = parallel && m * n * k >= PARALLEL_GEMM_MIN_FLOPS;
    #[cfg(target_arch = "x86_64")]
    if gemm_kernel() == GemmKernel::Avx2 {
        use sgemm::{Out, View};
        let av = View { ptr: a.as_ptr(), rs: a_rs, cs: a_cs };
        let bv = View { ptr: b.as_ptr(), rs: b_rs, cs: b_cs };
        let cv = Out { ptr: c.as_mut_ptr(), ldc };
        let epi = match &mut fused {
            Fused::None => sgemm::Epilogue::None,
            Fused::Bias(b) => sgemm::Epilogue::Bias(b.as_ptr()),
            Fused::BiasGelu(b, act) => sgemm::Epilogue::BiasGelu(b.as_ptr(), Out { ptr: act.as_mut_ptr(), ldc }),
            Fused::Mul(f) => sgemm::Epilogue::Mul(f.as_ptr(), ldc),
            Fused::BiasDropRes(b, mask, res) => sgemm::Epilogue::BiasDropRes(
                b.map_or(std::ptr::null(), |b| b.as_ptr()), mask.map_or(std::ptr::null(), |m| m.as_ptr()), res.as_ptr(),
                ldc),
        };
        // SAFETY: `gemm_kernel` checked AVX2/FMA; the asserts above keep every access inside the
        // slices (the epilogue's operands span C's extent); `c` and `act` are borrowed mutably, so
        // they alias nothing else; k > 0.
        unsafe {
            if parallel {
                sgemm::gemm_parallel(m, n, k, av, bv, cv, alpha, accumulate, epi, rayon::current_num_threads());
            } else {
                sgemm::gemm_serial(m, n, k, av, bv, cv, alpha, accumulate, epi);
            }
        }
        return;
    }
    let (a_rs, a_cs) = (a_rs as isize, a_cs as isize);
    let (b_rs, b_cs) = (b_rs as isize, b_cs as isize);
    let par = if parallel {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above keep every access inside the slices; `c` does not alias `a`/`b`
    // because it is borrowed mutably.
    unsafe {
        gemm::gemm(
            m, n, k,
            c.as_mut_ptr(), 1, ldc as isize, accumulate,
            a.as_ptr(), a_cs, a_rs,
            b.as_ptr(), b_cs, b_rs,
            1.0, alpha, false, false, false, par,
        );
    }
    fused.apply(c, ldc, m, n);
}

impl Cpu {
    /// `C = op(A) op(B)` (C contiguous), then `fused`, in the GEMM's store.
    #[allow(clippy::too_many_arguments)]
    fn matmul_fused(&self, c: &mut [f32], a: Mat<'_, Self>, b: Mat<'_, Self>, m: usize, n: usize, k: usize, fused: Fused) {
        sgemm_fused(m, n, k, c, n, &a.buf[a.offset..], a.ld, a.trans, &b.buf[b.offset..], b.ld, b.trans, 1.0, false,
                    true, fused);
    }
}

impl Backend for Cpu {
    type Buf = Vec<f32>;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn memory_available(&self) -> Option<usize> {
        match (available_memory(), self.memory_limit) {
            (Some(a), Some(l)) => Some(a.min(l)),
            (a, l) => a.or(l),
        }
    }
    fn memory_owner(&self) -> &'static str {
        "this machine"
    }
    fn zeros(&self, n: usize) -> Vec<f32> {
        vec![0.0; n]
    }
    fn from_host(&self, data: &[f32]) -> Vec<f32> {
        data.to_vec()
    }
    fn to_host(&self, buf: &Vec<f32>, n: usize) -> Vec<f32> {
        buf[..n].to_vec()
    }
    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn ensure(&self, buf: &mut Vec<f32>, n: usize) {
        if buf.len() < n {
            buf.resize(n, 0.0);
        }
    }
    fn fill(&self, buf: &mut Vec<f32>, n: usize, value: f32) {
        elementwise::par_fill(&mut buf[..n], value);
    }
    fn copy(&self, dst: &mut Vec<f32>, src: &Vec<f32>, n: usize) {
        elementwise::copy(&mut dst[..n], &src[..n]);
    }

    fn matmul(&self, c: &mut Vec<f32>, c_off: usize, ldc: usize, a: Mat<'_, Self>, b: Mat<'_, Self>,
              m: usize, n: usize, k: usize, alpha: f32, accumulate: bool) {
        sgemm(m, n, k, &mut c[c_off..], ldc, &a.buf[a.offset..], a.ld, a.trans,
              &b.buf[b.offset..], b.ld, b.trans, alpha, accumulate, true);
    }
    fn add_bias(&self, out: &mut Vec<f32>, bias: &Vec<f32>, rows: usize, n: usize) {
        elementwise::add_bias(&mut out[..rows * n], &bias[..n]);
    }
    fn matmul_bias(&self, c: &mut Vec<f32>, a: Mat<'_, Self>, b: Mat<'_, Self>, m: usize, n: usize, k: usize,
                   bias: &Vec<f32>) {
        self.matmul_fused(c, a, b, m, n, k, Fused::Bias(&bias[..n]));
    }
    /// `saved` = gelu' of the pre-activation, computed with `act` from the same `erf` and `exp`.
    fn matmul_bias_gelu(&self, saved: &mut Vec<f32>, act: &mut Vec<f32>, a: Mat<'_, Self>, b: Mat<'_, Self>, m: usize,
                        n: usize, k: usize, bias: &Vec<f32>) {
        self.matmul_fused(saved, a, b, m, n, k, Fused::BiasGelu(&bias[..n], &mut act[..m * n]));
    }
    fn matmul_bias_dropout_residual(&self, out: &mut Vec<f32>, a: Mat<'_, Self>, b: Mat<'_, Self>, m: usize, n: usize,
                                    k: usize, bias: Option<&Vec<f32>>, mask: Option<&Vec<f32>>, residual: &Vec<f32>) {
        let fused = Fused::BiasDropRes(bias.map(|b| &b[..n]), mask.map(|x| &x[..m * n]), &residual[..m * n]);
        self.matmul_fused(out, a, b, m, n, k, fused);
    }
    /// `d_pre = (A B) * saved`, `saved` holding gelu' (see `matmul_bias_gelu`).
    fn matmul_gelu_backward(&self, d_pre: &mut Vec<f32>, _d_act: &mut Vec<f32>, a: Mat<'_, Self>, b: Mat<'_, Self>,
                            m: usize, n: usize, k: usize, saved: &Vec<f32>) {
        self.matmul_fused(d_pre, a, b, m, n, k, Fused::Mul(&saved[..m * n]));
    }
    fn bias_grad(&self, dbias: &mut Vec<f32>, dout: &Vec<f32>, rows: usize, n: usize, accumulate: bool) {
        elementwise::column_sums(&mut dbias[..n], &dout[..rows * n], accumulate);
    }
    fn axpby(&self, y: &mut Vec<f32>, a: f32, x: &Vec<f32>, b: f32, n: usize) {
        elementwise::axpby(&mut y[..n], a, &x[..n], b);
    }
    fn scale(&self, x: &mut Vec<f32>, a: f32, n: usize) {
        elementwise::scale(&mut x[..n], a);
    }
    fn add(&self, out: &mut Vec<f32>, a: &Vec<f32>, b: &Vec<f32>, n: usize) {
        elementwise::add(&mut out[..n], &a[..n], &b[..n]);
    }
    fn scale_cols(&self, x: &mut Vec<f32>, s: &[f32], rows: usize, n: usize) {
        for row in x[..rows * n].chunks_mut(n) {
            for (v, &f) in row.iter_mut().zip(s) {
                *v *= f;
            }
        }
    }
    fn dot(&self, a: &Vec<f32>, b: &Vec<f32>, n: usize) -> f64 {
        elementwise::dot(&a[..n], &b[..n])
    }

    fn gelu_forward(&self, out: &mut Vec<f32>, inp: &Vec<f32>, n: usize) {
        elementwise::gelu_forward(&mut out[..n], &inp[..n]);
    }
    fn gelu_backward(&self, dinp: &mut Vec<f32>, inp: &Vec<f32>, dout: &Vec<f32>, n: usize) {
        elementwise::gelu_backward(&mut dinp[..n], &inp[..n], &dout[..n]);
    }
    fn tanh_forward(&self, out: &mut Vec<f32>, inp: &Vec<f32>, n: usize) {
        for (o, &x) in out[..n].iter_mut().zip(&inp[..n]) {
            *o = x.tanh();
        }
    }
    fn tanh_backward(&self, dinp: &mut Vec<f32>, out: &Vec<f32>, dout: &Vec<f32>, n: usize) {
        for ((d, &y), &g) in dinp[..n].iter_mut().zip(&out[..n]).zip(&dout[..n]) {
            *d = g * (1.0 - y * y);
        }
    }
    fn dropout_mask(&self, mask: &mut Vec<f32>, n: usize, p: f32, seed: u64, stream: &[u64]) {
        elementwise::dropout_mask(&mut mask[..n], p, seed, stream);
    }
    fn mul(&self, x: &mut Vec<f32>, mask: &Vec<f32>, n: usize) {
        elementwise::mul(&mut x[..n], &mask[..n]);
    }
    fn mul_into(&self, out: &mut Vec<f32>, x: &Vec<f32>, mask: &Vec<f32>, n: usize) {
        elementwise::mul_into(&mut out[..n], &x[..n], &mask[..n]);
    }

    fn embedding_forward(&self, out: &mut Vec<f32>, word: &Vec<f32>, pos: &Vec<f32>, typ: &Vec<f32>,
                         ids: &[i32], pos_ids: &[i32], type_ids: &[i32], h: usize) {
        use rayon::prelude::*;
        // rows on both cores: at BERT-base's step shape this is a 6 MB pass the other core
        // would otherwise wait through
        out[..ids.len() * h].par_chunks_mut(h).enumerate().with_min_len(64).for_each(|(r, row)| {
            let w = &word[ids[r] as usize * h..][..h];
            let p = &pos[pos_ids[r] as usize * h..][..h];
            let t = &typ[type_ids[r] as usize * h..][..h];
            for j in 0..h {
                row[j] = w[j] + p[j] + t[j];
            }
        });
    }
    fn embedding_backward(&self, dword: Option<&mut Vec<f32>>, dpos: Option<&mut Vec<f32>>,
                          dtyp: Option<&mut Vec<f32>>, dout: &Vec<f32>,
                          ids: &[i32], pos_ids: &[i32], type_ids: &[i32], h: usize, skip: [Option<i32>; 3]) {
        for ((table, idx), skip) in [(dword, ids), (dpos, pos_ids), (dtyp, type_ids)].into_iter().zip(skip) {
            if let Some(table) = table {
                for (r, g) in dout[..idx.len() * h].chunks(h).enumerate() {
                    if Some(idx[r]) == skip {
                        continue;
                    }
                    let row = &mut table[idx[r] as usize * h..][..h];
                    for j in 0..h {
                        row[j] += g[j];
                    }
                }
            }
        }
    }
    fn layer_norm_forward(&self, out: &mut Vec<f32>, mean: &mut Vec<f32>, rstd: &mut Vec<f32>,
                          inp: &Vec<f32>, w: &Vec<f32>, b: &Vec<f32>, rows: usize, h: usize, eps: f32) {
        norm::layer_norm_forward(&mut out[..rows * h], &mut mean[..rows], &mut rstd[..rows],
                                 &inp[..rows * h], &w[..h], &b[..h], eps);
    }
    fn layer_norm_backward(&self, dinp: &mut Vec<f32>, dw: Option<&mut Vec<f32>>, db: Option<&mut Vec<f32>>,
                           dout: &Vec<f32>, inp: &Vec<f32>, w: &Vec<f32>, mean: &Vec<f32>,
                           rstd: &Vec<f32>, rows: usize, h: usize) {
        norm::layer_norm_backward(&mut dinp[..rows * h], dw.map(|x| &mut x[..h]), db.map(|x| &mut x[..h]),
                                  &dout[..rows * h], &inp[..rows * h], &w[..h], &mean[..rows], &rstd[..rows]);
    }
    fn rms_norm_forward(&self, out: &mut Vec<f32>, rstd: &mut Vec<f32>, inp: &Vec<f32>, w: &Vec<f32>, rows: usize,
                        h: usize, eps: f32) {
        decoder::rms_norm_forward(&mut out[..rows * h], &mut rstd[..rows], &inp[..rows * h], &w[..h], eps);
    }
    fn rms_norm_backward(&self, dinp: &mut Vec<f32>, dw: Option<&mut Vec<f32>>, dout: &Vec<f32>, inp: &Vec<f32>,
                         w: &Vec<f32>, rstd: &Vec<f32>, rows: usize, h: usize) {
        decoder::rms_norm_backward(&mut dinp[..rows * h], dw.map(|x| &mut x[..h]), &dout[..rows * h], &inp[..rows * h],
                                   &w[..h], &rstd[..rows]);
    }
    fn silu_gate_forward(&self, out: &mut Vec<f32>, gate: &Vec<f32>, up: &Vec<f32>, n: usize) {
        decoder::silu_gate_forward(&mut out[..n], &gate[..n], &up[..n]);
    }
    fn silu_gate_backward(&self, dgate: &mut Vec<f32>, dup: &mut Vec<f32>, gate: &Vec<f32>, up: &Vec<f32>,
                          dout: &Vec<f32>, n: usize) {
        decoder::silu_gate_backward(&mut dgate[..n], &mut dup[..n], &gate[..n], &up[..n], &dout[..n]);
    }
    fn rope(&self, x: &mut Vec<f32>, positions: &[i32], heads: usize, d: usize, theta: f32, inverse: bool) {
        let rows = positions.len();
        decoder::rope(&mut x[..rows * heads * d], positions, heads, d, theta, inverse);
    }
    fn flash_attention_forward(&self, out: &mut Vec<f32>, lse: &mut Vec<f32>, q: &Vec<f32>, k: &Vec<f32>,
                               v: &Vec<f32>, key_mask: &[i32], causal: bool, dropout: Option<(f32, u64)>, b: usize,
                               t: usize, heads: usize, d: usize) {
        let mk = flash_attention::Masking { key_mask, causal, dropout };
        flash_attention::forward(out, lse, q, k, v, mk, b, t, heads, d);
    }
    fn flash_attention_backward(&self, dq: &mut Vec<f32>, dk: &mut Vec<f32>, dv: &mut Vec<f32>, dout: &Vec<f32>,
                                out: &Vec<f32>, lse: &Vec<f32>, q: &Vec<f32>, k: &Vec<f32>, v: &Vec<f32>,
                                key_mask: &[i32], causal: bool, dropout: Option<(f32, u64)>, b: usize, t: usize,
                                heads: usize, d: usize) {
        let mk = flash_attention::Masking { key_mask, causal, dropout };
        flash_attention::backward(dq, dk, dv, dout, out, lse, q, k, v, mk, b, t, heads, d);
    }
    fn attention_forward(&self, out: &mut Vec<f32>, probs: &mut Vec<f32>, q: &Vec<f32>, k: &Vec<f32>,
                         v: &Vec<f32>, key_mask: &[i32], drop: Option<&Vec<f32>>, b: usize, t: usize,
                         heads: usize, d: usize) {
        attention::forward(out, probs, q, k, v, key_mask, drop.map(|x| x.as_slice()), b, t, heads, d);
    }
    fn attention_backward(&self, dq: &mut Vec<f32>, dk: &mut Vec<f32>, dv: &mut Vec<f32>, dout: &Vec<f32>,
                          probs: &Vec<f32>, q: &Vec<f32>, k: &Vec<f32>, v: &Vec<f32>,
                          drop: Option<&Vec<f32>>, b: usize, t: usize, heads: usize, d: usize) {
        attention::backward(dq, dk, dv, dout, probs, q, k, v, drop.map(|x| x.as_slice()), b, t, heads, d);
    }
    fn softmax_xent_forward(&self, probs: &mut Vec<f32>, logits: &Vec<f32>, labels: &[i32], rows: usize, n: usize) -> f32 {
        let loss: f64 = softmax_xent_rows(probs, logits, labels, rows, n).sum();
        (loss / rows as f64) as f32
    }
    fn softmax_xent_forward_rows(&self, probs: &mut Vec<f32>, losses: &mut Vec<f32>, logits: &Vec<f32>, labels: &[i32],
                                 rows: usize, n: usize) {
        for (out, loss) in losses[..rows].iter_mut().zip(softmax_xent_rows(probs, logits, labels, rows, n)) {
            *out = loss as f32;
        }
    }
    fn softmax_xent_backward(&self, dlogits: &mut Vec<f32>, probs: &Vec<f32>, labels: &[i32], rows: usize, n: usize) {
        let inv = 1.0 / rows as f32;
        for r in 0..rows {
            for j in 0..n {
                let y = if labels[r] as usize == j { 1.0 } else { 0.0 };
                dlogits[r * n + j] = (probs[r * n + j] - y) * inv;
            }
        }
    }
    fn gather_rows(&self, out: &mut Vec<f32>, inp: &Vec<f32>, rows: &[usize], n: usize) {
        for (i, &r) in rows.iter().enumerate() {
            out[i * n..][..n].copy_from_slice(&inp[r * n..][..n]);
        }
    }
    fn scatter_add_rows(&self, dinp: &mut Vec<f32>, dout: &Vec<f32>, rows: &[usize], n: usize) {
        for (i, &r) in rows.iter().enumerate() {
            for j in 0..n {
                dinp[r * n + j] += dout[i * n + j];
            }
        }
    }

    fn adamw(&self, param: &mut Vec<f32>, grad: &Vec<f32>, m: &mut Vec<f32>, v: &mut Vec<f32>, n: usize,
             lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32, step: u64) {
        elementwise::adamw(&mut param[..n], &grad[..n], &mut m[..n], &mut v[..n], lr, beta1, beta2, eps,
                           weight_decay, step);
    }
}

/// Softmax over each of `rows` rows of `n` logits into `probs`, yielding each row's cross-entropy
/// against its label (in f64; the exponentials summed in f64 too).
fn softmax_xent_rows<'a>(probs: &'a mut [f32], logits: &'a [f32], labels: &'a [i32], rows: usize, n: usize)
                         -> impl Iterator<Item = f64> + 'a {
    probs[..rows * n].chunks_mut(n).zip(logits[..rows * n].chunks(n)).zip(labels).map(move |((p, z), &y)| {
        let max = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f64;
        for (pj, &zj) in p.iter_mut().zip(z) {
            let e = ((zj - max) as f64).exp();
            *pj = e as f32;
            sum += e;
        }
        for x in p.iter_mut() {
            *x = (*x as f64 / sum) as f32;
        }
        sum.ln() - (z[y as usize] - max) as f64
    })
}

/// The system's available memory (`MemAvailable` of `/proc/meminfo`), in bytes; `None` where there
/// is no such file. A container's own limit is not seen here.
fn available_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

#[cfg(test)]
mod determinism_tests {
    use super::*;

    /// The parallel reductions (bias gradients, dot products, layer norm and RMSNorm parameter
    /// gradients) add their partial sums in a fixed order, so the result is the same bits whatever
    /// the number of threads and however they split the work: identical runs give identical
    /// gradients. (With rayon's reduce/sum/fold the combining tree follows the splitting, and two
    /// runs of the quickstart's first step differed in the gradient norm at 1e-11.)
    #[test]
    fn reductions_do_not_depend_on_the_threads() {
        let (rows, h) = (1000usize, 96usize);
        let x: Vec<f32> = (0..rows * h).map(|i| ((i * 7919 % 1009) as f32 / 504.5) - 1.0).collect();
        let g: Vec<f32> = (0..rows * h).map(|i| ((i * 104_729 % 997) as f32 / 498.5) - 1.0).collect();
        let w: Vec<f32> = (0..h).map(|j| 0.5 + j as f32 / h as f32).collect();
        let run = || {
            let be = Cpu::new();
            let mut sums = vec![0.0; h];
            be.bias_grad(&mut sums, &g, rows, h, false);
            let dot = be.dot(&x, &g, rows * h);
            let (mut y, mut m, mut r) = (vec![0.0; rows * h], vec![0.0; rows], vec![0.0; rows]);
            be.layer_norm_forward(&mut y, &mut m, &mut r, &x, &w, &w, rows, h, 1e-12);
            let (mut dx, mut dw, mut db) = (vec![0.0; rows * h], vec![0.0; h], vec![0.0; h]);
            be.layer_norm_backward(&mut dx, Some(&mut dw), Some(&mut db), &g, &x, &w, &m, &r, rows, h);
            let mut rms_rstd = vec![0.0; rows];
            be.rms_norm_forward(&mut y, &mut rms_rstd, &x, &w, rows, h, 1e-6);
            let mut rms_dw = vec![0.0; h];
            be.rms_norm_backward(&mut dx, Some(&mut rms_dw), &g, &x, &w, &rms_rstd, rows, h);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            (bits(&sums), dot.to_bits(), bits(&dw), bits(&db), bits(&rms_dw))
        };
        let on = |threads: usize| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(run);
        let one = on(1);
        for threads in [2, 3, 5] {
            assert!(on(threads) == one, "{threads} threads give other bits than one");
        }
    }
}
