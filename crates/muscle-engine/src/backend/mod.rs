//! The device abstraction: a buffer type and the fused operations the layers need.
//!
//! Buffers are flat `f32` arrays; every operation works on the first `n` elements (or rows) of the
//! buffers it is given, so activation buffers sized for the largest batch are reused for smaller
//! ones without reallocation. The set of operations is deliberately small and fused (attention,
//! layer norm, softmax + cross-entropy, AdamW): LoRA, MSLR and gradient alignment need explicit
//! control of memory, not a general autograd.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod device;

pub use device::{DeviceChoice, DEVICE_WORDS};

/// Row-major matrix operand: `rows x cols` with leading dimension `ld`, optionally transposed.
pub struct Mat<'a, B: Backend + ?Sized> {
    pub buf: &'a B::Buf,
    pub offset: usize,
    pub ld: usize,
    pub trans: bool,
}

// By hand: a derive would ask for `B: Clone`, and only the reference is copied.
impl<B: Backend + ?Sized> Clone for Mat<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend + ?Sized> Copy for Mat<'_, B> {}

/// Where a layer norm writes (`out`, and per row `mean` and `rstd` for its backward) and its
/// affine parameters: the norm half of [`Backend::matmul_bias_dropout_residual_norm`].
pub struct NormOut<'a, B: Backend + ?Sized> {
    pub out: &'a mut B::Buf,
    pub mean: &'a mut B::Buf,
    pub rstd: &'a mut B::Buf,
    pub w: &'a B::Buf,
    pub b: &'a B::Buf,
    pub eps: f32,
}

/// One GEMM of [`Backend::matmuls`]: `C = alpha op(A) op(B) (+ C)` into `c` at `c_off`.
pub struct GemmItem<'a, B: Backend + ?Sized> {
    pub c: &'a mut B::Buf,
    pub c_off: usize,
    pub a: Mat<'a, B>,
    pub b: Mat<'a, B>,
}

/// One tensor of a many-tensor AdamW step ([`Backend::adamw_many`]).
pub struct AdamwItem<'a, B: Backend + ?Sized> {
    pub param: &'a mut B::Buf,
    pub grad: &'a B::Buf,
    pub m: &'a mut B::Buf,
    pub v: &'a mut B::Buf,
    pub n: usize,
    pub weight_decay: f32,
}

/// One tensor of [`Backend::axpby_many`]: `(y, a, x, b, n)` for `y = a x + b y`.
pub type AxpbyItem<'a, B> = (&'a mut <B as Backend>::Buf, f32, &'a <B as Backend>::Buf, f32, usize);

pub trait Backend: Send + Sync + 'static {
    type Buf: Send + Sync;

    fn name(&self) -> &'static str;

    /// The first error of an asynchronous device since the backend was made, if any (the verbs
    /// below cannot fail by signature; a GPU backend keeps its first failure and reports it here).
    /// Callers check after each step. The CPU never fails.
    fn check(&self) -> crate::error::Result<()> {
        Ok(())
    }

    // ---- memory -------------------------------------------------------------------------------
    fn zeros(&self, n: usize) -> Self::Buf;
    fn from_host(&self, data: &[f32]) -> Self::Buf;
    fn to_host(&self, buf: &Self::Buf, n: usize) -> Vec<f32>;
    fn len(&self, buf: &Self::Buf) -> usize;
    /// Grow `buf` to hold at least `n` elements (contents unspecified when it grows).
    fn ensure(&self, buf: &mut Self::Buf, n: usize);
    /// Bytes this backend can still allocate, where it can tell (the CPU: the system's available
    /// memory; a GPU: its free memory): a model checks a batch's activations against it before
    /// allocating them, so a batch too large is an error that names its size, not an abort.
    fn memory_available(&self) -> Option<usize> {
        None
    }
    /// What this backend is called in messages about its memory ("the GPU", "this machine").
    fn memory_owner(&self) -> &'static str {
        "the device"
    }
    /// [`Backend::ensure`] for each `(buf, n)`: a model's activations and backward scratch,
    /// handed over together so that a backend can lay them out in one allocation (the CUDA
    /// backend's activation arena). Contents are unspecified afterwards when any buffer grew.
    fn ensure_arena(&self, bufs: &mut [(&mut Self::Buf, usize)]) {
        for (buf, n) in bufs.iter_mut() {
            self.ensure(buf, *n);
        }
    }
    /// Declares whether only GEMMs with a frozen weight read `buf` (a frozen layer's input or its
    /// input gradient): a backend that writes a bf16 copy beside such an output for those GEMMs
    /// (the CUDA backend in bf16 mode) may then write the copy alone, and treats any other read as
    /// an error. The CPU ignores it. The declaration holds until changed, through `ensure`.
    fn set_gemm_input_only(&self, _buf: &mut Self::Buf, _on: bool) {}
    fn fill(&self, buf: &mut Self::Buf, n: usize, value: f32);
    /// Declares `buf` (`n` elements) a frozen weight matrix that from now on is only an operand of
    /// `matmul` and read back by `to_host`: a backend may keep it in a compact form (the CUDA
    /// backend in bf16 mode keeps it in bf16 only). The CPU keeps f32.
    fn freeze_weight(&self, _buf: &mut Self::Buf, _n: usize) {}
    fn copy(&self, dst: &mut Self::Buf, src: &Self::Buf, n: usize);

    // ---- dense algebra ------------------------------------------------------------------------
    /// `C[m, n] = alpha * op(A)[m, k] op(B)[k, n] (+ C if accumulate)`, row-major, C contiguous
    /// at `c_off` with leading dimension `ldc`.
    #[allow(clippy::too_many_arguments)]
    fn matmul(&self, c: &mut Self::Buf, c_off: usize, ldc: usize, a: Mat<'_, Self>, b: Mat<'_, Self>,
              m: usize, n: usize, k: usize, alpha: f32, accumulate: bool);
    /// [`Backend::matmul`] for several GEMMs of one shape and one `ldc`, each into its own output:
    /// the LoRA branches of one layer's projections. The default runs them one by one; a GPU
    /// runs them as one batched GEMM (one launch instead of one per adapter).
    #[allow(clippy::too_many_arguments)]
    fn matmuls(&self, items: &mut [GemmItem<'_, Self>], ldc: usize, m: usize, n: usize, k: usize, alpha: f32,
               accumulate: bool) {
        for it in items.iter_mut() {
            self.matmul(it.c, it.c_off, ldc, it.a, it.b, m, n, k, alpha, accumulate);
        }
    }
    /// `out[r, :] += bias` for `rows` rows of width `n`.
    fn add_bias(&self, out: &mut Self::Buf, bias: &Self::Buf, rows: usize, n: usize);
    /// `C[m, n] = op(A) op(B) + bias` (C contiguous): a layer's forward. The default runs
    /// `matmul` then `add_bias`; a backend may fuse the bias into the GEMM's store.
    #[allow(clippy::too_many_arguments)]
    fn matmul_bias(&self, c: &mut Self::Buf, a: Mat<'_, Self>, b: Mat<'_, Self>, m: usize, n: usize, k: usize,
                   bias: &Self::Buf) {
        self.matmul(c, 0, n, a, b, m, n, k, 1.0, false);
        self.add_bias(c, bias, m, n);
    }
    /// `C_i = op(A) op(B_i) + bias_i` (each `[m, n]`, contiguous) for several layers reading one
    /// input: attention's q, k and v projections. The default runs `matmul_bias` for each; a backend
    /// may share the work on `A` (the CUDA backend in bf16 converts it to bf16 once, not three times).
    #[allow(clippy::too_many_arguments)]
    fn matmuls_bias(&self, a: Mat<'_, Self>, items: &mut [(&mut Self::Buf, Mat<'_, Self>, &Self::Buf)], m: usize,
                    n: usize, k: usize) {
        for (c, b, bias) in items.iter_mut() {
            self.matmul_bias(c, a, *b, m, n, k, bias);
        }
    }
    /// `out = (op(A) op(B) + bias) * mask + residual` (`[m, n]`; no mask when dropout is off, no
    /// bias for a branch without one): a layer's output through dropout into the residual sum, or
    /// an adapter's input gradient through its dropout into the gradient it joins. The default
    /// composes `matmul_bias`, `mul` and `axpby`; a backend may do it in the GEMM's store.
    #[allow(clippy::too_many_arguments)]
    fn matmul_bias_dropout_residual(&self, out: &mut Self::Buf, a: Mat<'_, Self>, b: Mat<'_, Self>, m: usize, n: usize,
                                    k: usize, bias: Option<&Self::Buf>, mask: Option<&Self::Buf>, residual: &Self::Buf) {
        match bias {
            Some(bias) => self.matmul_bias(out, a, b, m, n, k, bias),
            None => self.matmul(out, 0, n, a, b, m, n, k, 1.0, false),
        }
        if let Some(mask) = mask {
            self.mul(out, mask, m * n);
        }
        self.axpby(out, 1.0, residual, 1.0, m * n);
    }
    /// [`Backend::matmul_bias_dropout_residual`] into `res` (`[m, n]`), then the layer norm of
    /// `res` over rows of `n` into `norm`: a sublayer's output through dropout into the residual sum
    /// and the layer norm after it (BERT's post-norm). The default runs the two verbs; a backend may
    /// do the norm in the same pass over `res` (the CUDA backend: one row kernel after the GEMM).
    #[allow(clippy::too_many_arguments)]
    fn matmul_bias_dropout_residual_norm(&self, res: &mut Self::Buf, a: Mat<'_, Self>, b: Mat<'_, Self>, m: usize,
                                         n: usize, k: usize, bias: Option<&Self::Buf>, mask: Option<&Self::Buf>,
                                         residual: &Self::Buf, norm: NormOut<'_, Self>) {
        self.matmul_bias_dropout_residual(res, a, b, m, n, k, bias, mask, residual);
        self.layer_norm_forward(norm.out, norm.mean, norm.rstd, res, norm.w, norm.b, m, n, norm.eps);
    }
    /// `act = gelu(pre)` with `pre = op(A) op(B) + bias` (`[m, n]`): the feed-forward's first
    /// half. `saved` (`[m, n]`) receives what [`Backend::matmul_gelu_backward`] needs of `pre`,
    /// in a form of the backend's choosing: the default (`matmul_bias` then `gelu_forward`) keeps
    /// `pre` itself; the CPU keeps `gelu'(pre)`, computed in the GEMM's store with `act`.
    #[allow(clippy::too_many_arguments)]
    fn matmul_bias_gelu(&self, saved: &mut Self::Buf, act: &mut Self::Buf, a: Mat<'_, Self>, b: Mat<'_, Self>,
                        m: usize, n: usize, k: usize, bias: &Self::Buf) {
        self.matmul_bias(saved, a, b, m, n, k, bias);
        self.gelu_forward(act, saved, m * n);
    }
    /// `d_pre = (op(A) op(B)) * gelu'(pre)` (`[m, n]`): GELU's backward through the GEMM that
    /// yields its output gradient, `saved` as [`Backend::matmul_bias_gelu`] left it. The default
    /// stores `op(A) op(B)` in `d_act` on the way; a fused backend may leave `d_act` untouched.
    #[allow(clippy::too_many_arguments)]
    fn matmul_gelu_backward(&self, d_pre: &mut Self::Buf, d_act: &mut Self::Buf, a: Mat<'_, Self>, b: Mat<'_, Self>,
                            m: usize, n: usize, k: usize, saved: &Self::Buf) {
        self.matmul(d_act, 0, n, a, b, m, n, k, 1.0, false);
        self.gelu_backward(d_pre, saved, d_act, m * n);
    }
    /// `dbias (+)= sum over rows of dout[r, :]`.
    fn bias_grad(&self, dbias: &mut Self::Buf, dout: &Self::Buf, rows: usize, n: usize, accumulate: bool);
    /// `y[i] = a * x[i] + b * y[i]`.
    fn axpby(&self, y: &mut Self::Buf, a: f32, x: &Self::Buf, b: f32, n: usize);
    /// `x[i] *= a`.
    fn scale(&self, x: &mut Self::Buf, a: f32, n: usize);
    /// `out[i] = a[i] + b[i]`.
    fn add(&self, out: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf, n: usize);
    /// `x[r, j] *= s[j]` (MSLR's radial scaling of the low-rank components).
    fn scale_cols(&self, x: &mut Self::Buf, s: &[f32], rows: usize, n: usize);
    fn dot(&self, a: &Self::Buf, b: &Self::Buf, n: usize) -> f64;
    /// Many dot products at once, `(a, b, n)` each: the gradient alignment and the global norm
    /// need one per trainable tensor, and a GPU answers them all with one round trip instead of
    /// one per tensor.
    fn dots(&self, pairs: &[(&Self::Buf, &Self::Buf, usize)]) -> Vec<f64> {
        pairs.iter().map(|&(a, b, n)| self.dot(a, b, n)).collect()
    }


    // ---- many tensors at once -------------------------------------------------------------------
    // Clipping, gradient alignment's combination and AdamW touch every trainable tensor each step.
    // The defaults loop over the one-tensor verbs; a GPU does each in one launch, so a step is not
    // bound by one launch per tensor.

    /// `x *= a` for every `(x, n)` (gradient clipping).
    fn scale_many(&self, items: &mut [(&mut Self::Buf, usize)], a: f32) {
        for (x, n) in items.iter_mut() {
            self.scale(x, a, *n);
        }
    }
    /// `y = a x + b y` for every `(y, a, x, b, n)`; with `b = 0`, `y` is not read (`y = a x`, so a
    /// non-finite old `y` does not leak into the result): gradient alignment's combination.
    fn axpby_many(&self, items: &mut [AxpbyItem<'_, Self>]) {
        for (y, a, x, b, n) in items.iter_mut() {
            if *b == 0.0 {
                self.copy(y, x, *n);
                if *a != 1.0 {
                    self.scale(y, *a, *n);
                }
            } else {
                self.axpby(y, *a, x, *b, *n);
            }
        }
    }
    /// One AdamW step (as [`Backend::adamw`]) for every item, each with its own weight decay.
    #[allow(clippy::too_many_arguments)]
    fn adamw_many(&self, items: &mut [AdamwItem<'_, Self>], lr: f32, beta1: f32, beta2: f32, eps: f32, step: u64) {
        for it in items.iter_mut() {
            self.adamw(it.param, it.grad, it.m, it.v, it.n, lr, beta1, beta2, eps, it.weight_decay, step);
        }
    }

    // ---- element-wise ---------------------------------------------------------------------------
    fn gelu_forward(&self, out: &mut Self::Buf, inp: &Self::Buf, n: usize);
    fn gelu_backward(&self, dinp: &mut Self::Buf, inp: &Self::Buf, dout: &Self::Buf, n: usize);
    fn tanh_forward(&self, out: &mut Self::Buf, inp: &Self::Buf, n: usize);
    fn tanh_backward(&self, dinp: &mut Self::Buf, out: &Self::Buf, dout: &Self::Buf, n: usize);
    /// Draw an inverted-dropout mask (`0` or `1/(1-p)`) into `mask` from (seed, stream ids).
    fn dropout_mask(&self, mask: &mut Self::Buf, n: usize, p: f32, seed: u64, stream: &[u64]);
    /// [`Backend::dropout_mask`] for a mask that only the next verb applying it (to exactly `n`
    /// elements) reads; afterwards the buffer's contents are unspecified. A backend may then draw
    /// it inside that verb without storing it (the CUDA backend does; the CPU stores it).
    fn dropout_mask_once(&self, mask: &mut Self::Buf, n: usize, p: f32, seed: u64, stream: &[u64]) {
        self.dropout_mask(mask, n, p, seed, stream);
    }
    /// `x[i] *= mask[i]` (forward and backward of dropout alike).
    fn mul(&self, x: &mut Self::Buf, mask: &Self::Buf, n: usize);
    /// `out[i] = x[i] * mask[i]`: dropout out of place, where the undropped `x` is still needed.
    /// The default copies, then multiplies; a backend may do it in one pass.
    fn mul_into(&self, out: &mut Self::Buf, x: &Self::Buf, mask: &Self::Buf, n: usize) {
        self.copy(out, x, n);
        self.mul(out, mask, n);
    }

    // ---- fused layers ---------------------------------------------------------------------------
    #[allow(clippy::too_many_arguments)]
    fn embedding_forward(&self, out: &mut Self::Buf, word: &Self::Buf, pos: &Self::Buf, typ: &Self::Buf,
                         ids: &[i32], pos_ids: &[i32], type_ids: &[i32], h: usize);
    /// Scatter-adds `dout` rows into the tables; rows whose index equals the table's padding
    /// index in `skip` (word, position, type) get nothing, as `nn.Embedding(padding_idx=...)`.
    #[allow(clippy::too_many_arguments)]
    fn embedding_backward(&self, dword: Option<&mut Self::Buf>, dpos: Option<&mut Self::Buf>,
                          dtyp: Option<&mut Self::Buf>, dout: &Self::Buf,
                          ids: &[i32], pos_ids: &[i32], type_ids: &[i32], h: usize, skip: [Option<i32>; 3]);
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_forward(&self, out: &mut Self::Buf, mean: &mut Self::Buf, rstd: &mut Self::Buf,
                          inp: &Self::Buf, w: &Self::Buf, b: &Self::Buf, rows: usize, h: usize, eps: f32);
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_backward(&self, dinp: &mut Self::Buf, dw: Option<&mut Self::Buf>, db: Option<&mut Self::Buf>,
                           dout: &Self::Buf, inp: &Self::Buf, w: &Self::Buf, mean: &Self::Buf,
                           rstd: &Self::Buf, rows: usize, h: usize);
    /// [`Backend::layer_norm_backward`], then, where `dropped = (buf, mask)` is given,
    /// `buf = dinp * mask`: a post-norm layer's input gradient flows on as the residual's and,
    /// through the sublayer's dropout, into the sublayer's output. The default runs the two verbs;
    /// a backend may write both in one pass (the CUDA backend does, drawing a pending mask there).
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_backward_dropout(&self, dinp: &mut Self::Buf, dw: Option<&mut Self::Buf>, db: Option<&mut Self::Buf>,
                                   dout: &Self::Buf, inp: &Self::Buf, w: &Self::Buf, mean: &Self::Buf,
                                   rstd: &Self::Buf, rows: usize, h: usize,
                                   dropped: Option<(&mut Self::Buf, &Self::Buf)>) {
        self.layer_norm_backward(dinp, dw, db, dout, inp, w, mean, rstd, rows, h);
        if let Some((out, mask)) = dropped {
            self.mul_into(out, dinp, mask, rows * h);
        }
    }
    /// RMSNorm (decoders): `out = x rstd w` per row, `rstd = 1 / sqrt(mean(x^2) + eps)` saved for
    /// the backward.
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_forward(&self, out: &mut Self::Buf, rstd: &mut Self::Buf, inp: &Self::Buf, w: &Self::Buf, rows: usize,
                        h: usize, eps: f32);
    /// Writes `dinp` (not accumulated) and, where it trains, `dw`.
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_backward(&self, dinp: &mut Self::Buf, dw: Option<&mut Self::Buf>, dout: &Self::Buf, inp: &Self::Buf,
                         w: &Self::Buf, rstd: &Self::Buf, rows: usize, h: usize);
    /// The gated MLP's middle (Llama): `out = silu(gate) * up`.
    fn silu_gate_forward(&self, out: &mut Self::Buf, gate: &Self::Buf, up: &Self::Buf, n: usize);
    fn silu_gate_backward(&self, dgate: &mut Self::Buf, dup: &mut Self::Buf, gate: &Self::Buf, up: &Self::Buf,
                          dout: &Self::Buf, n: usize);
    /// Rotary position embeddings in place over `x: [rows, heads * d]` (rows = `positions.len()`),
    /// as Hugging Face's `apply_rotary_pos_emb` with base `theta`; `inverse` applies the opposite
    /// rotation, which is the backward.
    fn rope(&self, x: &mut Self::Buf, positions: &[i32], heads: usize, d: usize, theta: f32, inverse: bool);
    /// Multi-head scaled dot-product attention over `q, k, v: [b*t, heads*d]` with a key padding
    /// mask `[b*t]` (1 = token, 0 = padding). Saves the softmax probabilities `[b, heads, t, t]`;
    /// `drop` is an optional inverted-dropout mask of the same shape applied to them.
    #[allow(clippy::too_many_arguments)]
    fn attention_forward(&self, out: &mut Self::Buf, probs: &mut Self::Buf, q: &Self::Buf, k: &Self::Buf,
                         v: &Self::Buf, key_mask: &[i32], drop: Option<&Self::Buf>, b: usize, t: usize,
                         heads: usize, d: usize);
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(&self, dq: &mut Self::Buf, dk: &mut Self::Buf, dv: &mut Self::Buf, dout: &Self::Buf,
                          probs: &Self::Buf, q: &Self::Buf, k: &Self::Buf, v: &Self::Buf,
                          drop: Option<&Self::Buf>, b: usize, t: usize, heads: usize, d: usize);
    /// Attention without the `[t, t]` matrices, for long sequences (flash-style): the same inputs
    /// and output as [`Backend::attention_forward`], plus an optional causal mask (decoders);
    /// dropout is `(p, key)` with `key = rng::stream_key(seed, stream)`, dropping exactly the
    /// entries `dropout_mask` over a `[b*heads, t, t]` buffer would. It keeps `lse` (`[b*t, heads]`:
    /// each query row's log-sum-exp, +inf where no key is visible) for the backward, which
    /// recomputes the probabilities from it.
    #[allow(clippy::too_many_arguments)]
    fn flash_attention_forward(&self, out: &mut Self::Buf, lse: &mut Self::Buf, q: &Self::Buf, k: &Self::Buf,
                               v: &Self::Buf, key_mask: &[i32], causal: bool, dropout: Option<(f32, u64)>, b: usize,
                               t: usize, heads: usize, d: usize);
    /// Writes `dq`, `dk`, `dv` (not accumulated) from `dout` and the forward's `out` and `lse`.
    #[allow(clippy::too_many_arguments)]
    fn flash_attention_backward(&self, dq: &mut Self::Buf, dk: &mut Self::Buf, dv: &mut Self::Buf, dout: &Self::Buf,
                                out: &Self::Buf, lse: &Self::Buf, q: &Self::Buf, k: &Self::Buf, v: &Self::Buf,
                                key_mask: &[i32], causal: bool, dropout: Option<(f32, u64)>, b: usize, t: usize,
                                heads: usize, d: usize);
    /// Softmax + mean cross-entropy over `rows` rows of `n` classes; saves probabilities, returns
    /// the mean loss.
    fn softmax_xent_forward(&self, probs: &mut Self::Buf, logits: &Self::Buf, labels: &[i32], rows: usize, n: usize) -> f32;
    /// [`Backend::softmax_xent_forward`] that leaves each row's loss in `losses` (`rows` values)
    /// instead of reading the mean back: a training step reads it later, with its other scalars,
    /// in one wait on the device.
    fn softmax_xent_forward_rows(&self, probs: &mut Self::Buf, losses: &mut Self::Buf, logits: &Self::Buf,
                                 labels: &[i32], rows: usize, n: usize);
    /// `dlogits = (probs - onehot(labels)) / rows`.
    fn softmax_xent_backward(&self, dlogits: &mut Self::Buf, probs: &Self::Buf, labels: &[i32], rows: usize, n: usize);
    /// `out[i, :] = inp[rows[i], :]`.
    fn gather_rows(&self, out: &mut Self::Buf, inp: &Self::Buf, rows: &[usize], n: usize);
    /// `dinp[rows[i], :] += dout[i, :]`.
    fn scatter_add_rows(&self, dinp: &mut Self::Buf, dout: &Self::Buf, rows: &[usize], n: usize);

    // ---- optimiser ------------------------------------------------------------------------------
    /// One AdamW update as `torch.optim.AdamW` does it (decoupled decay first, then the step with
    /// bias corrections); `step` counts from 1.
    #[allow(clippy::too_many_arguments)]
    fn adamw(&self, param: &mut Self::Buf, grad: &Self::Buf, m: &mut Self::Buf, v: &mut Self::Buf, n: usize,
             lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32, step: u64);
}
