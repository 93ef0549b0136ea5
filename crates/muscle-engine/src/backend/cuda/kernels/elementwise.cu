// Element-wise kernels: one thread per element (grid-stride), each the CPU backend's loop body.

extern "C" __global__ void fill_f32(float* x, i64 n, float value) {
    FOR_EACH(i, n) x[i] = value;
}

extern "C" __global__ void add_bias_f32(float* out, const float* bias, i64 rows, int n) {
    FOR_EACH(i, rows * n) out[i] += bias[i % n];
}

// add_bias_f32 over up to three outputs of [rows, n] in one launch (attention's q, k and v
// projections); a null output is skipped.
extern "C" __global__ void add_bias_3_f32(float* c0, const float* b0, float* c1, const float* b1, float* c2,
                                          const float* b2, i64 rows, int n) {
    const i64 each = rows * n;
    FOR_EACH(i, 3 * each) {
        const int which = (int)(i / each);
        const i64 j = i - which * each;
        float* c = which == 0 ? c0 : which == 1 ? c1 : c2;
        const float* b = which == 0 ? b0 : which == 1 ? b1 : b2;
        if (c) c[j] += b[j % n];
    }
}

extern "C" __global__ void axpby_f32(float* y, float a, const float* x, float b, i64 n) {
    FOR_EACH(i, n) y[i] = a * x[i] + b * y[i];
}

extern "C" __global__ void scale_f32(float* x, float a, i64 n) {
    FOR_EACH(i, n) x[i] *= a;
}

extern "C" __global__ void add_f32(float* out, const float* a, const float* b, i64 n) {
    FOR_EACH(i, n) out[i] = a[i] + b[i];
}

extern "C" __global__ void mul_f32(float* x, const float* m, i64 n) {
    FOR_EACH(i, n) x[i] *= m[i];
}

// out = a * b; `half` (may be null): out in bf16 too, for the bf16 GEMM that reads it next.
extern "C" __global__ void mul_into_f32(float* out, const float* a, const float* b, i64 n, unsigned short* half) {
    FOR_EACH(i, n) {
        const float v = a[i] * b[i];
        out[i] = v;
        if (half) half[i] = bf16_bits(v);
    }
}

// Dropout drawn where it is applied: mask[i] = the draw (when `mask` is not null: a mask read
// again later), then x *= mask (in place) or out = x * mask (and its bf16 copy, as mul_into_f32).
extern "C" __global__ void dropout_mul_f32(float* x, float* mask, i64 n, float p, float keep, u64 key) {
    FOR_EACH(i, n) {
        const float z = dropout_draw(p, keep, key, (u64)i);
        if (mask) mask[i] = z;
        x[i] *= z;
    }
}

extern "C" __global__ void dropout_mul_into_f32(float* out, const float* x, float* mask, i64 n, float p, float keep,
                                                u64 key, unsigned short* half) {
    FOR_EACH(i, n) {
        const float z = dropout_draw(p, keep, key, (u64)i);
        if (mask) mask[i] = z;
        const float v = x[i] * z;
        out[i] = v;
        if (half) half[i] = bf16_bits(v);
    }
}

extern "C" __global__ void scale_cols_f32(float* x, const float* s, i64 rows, int n) {
    FOR_EACH(i, rows * n) x[i] *= s[i % n];
}

// GELU, erf form (BERT's "gelu"): 0.5 x (1 + erf(x / sqrt 2)).
extern "C" __global__ void gelu_forward_f32(float* out, const float* x, i64 n) {
    FOR_EACH(i, n) {
        const float v = x[i];
        out[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}

// `half` (may be null): also the result in bf16, for the bf16 GEMM that reads it next; `dinp` may
// then be null (only that GEMM reads the result).
extern "C" __global__ void gelu_backward_f32(float* dinp, const float* x, const float* dout, i64 n,
                                             unsigned short* half) {
    FOR_EACH(i, n) {
        const float v = x[i];
        const float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
        const float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
        const float d = dout[i] * (cdf + v * pdf);
        if (dinp) dinp[i] = d;
        if (half) half[i] = bf16_bits(d);
    }
}

extern "C" __global__ void tanh_forward_f32(float* out, const float* x, i64 n) {
    FOR_EACH(i, n) out[i] = tanhf(x[i]);
}

extern "C" __global__ void tanh_backward_f32(float* dinp, const float* out, const float* dout, i64 n) {
    FOR_EACH(i, n) {
        const float y = out[i];
        dinp[i] = dout[i] * (1.0f - y * y);
    }
}

// Inverted dropout mask: 0 with probability p, else 1 / (1 - p) (`keep`).
extern "C" __global__ void dropout_mask_f32(float* mask, i64 n, float p, float keep, u64 key) {
    FOR_EACH(i, n) mask[i] = counter_uniform(key, (u64)i) < p ? 0.0f : keep;
}

// The first `n` draws of a stream, for the test that holds this kernel to rng.rs.
extern "C" __global__ void counter_uniform_f32(float* out, i64 n, u64 key) {
    FOR_EACH(i, n) out[i] = counter_uniform(key, (u64)i);
}

// torch.optim.AdamW: decoupled decay, then the moment updates and the bias-corrected step.
// `step_size` = lr / (1 - beta1^t) and `bc2_sqrt` = sqrt(1 - beta2^t) come from the host in f64.
extern "C" __global__ void adamw_f32(float* param, const float* grad, float* m, float* v, i64 n,
                                     float beta1, float beta2, float eps, float decay,
                                     float step_size, float bc2_sqrt) {
    FOR_EACH(i, n) adamw_element(param, grad, m, v, i, beta1, beta2, eps, decay, step_size, bc2_sqrt);
}

// f32 -> bf16 bit patterns (bf16_bits): a GEMM operand for the tensor cores.
extern "C" __global__ void f32_to_bf16(unsigned short* dst, const float* src, i64 n) {
    FOR_EACH(i, n) dst[i] = bf16_bits(src[i]);
}

// f32_to_bf16 over three buffers of n each in one launch (attention's q, k and v gradients, for the
// bf16 GEMMs of their input gradients); a null destination is skipped.
extern "C" __global__ void f32_to_bf16_3(unsigned short* d0, const float* s0, unsigned short* d1, const float* s1,
                                         unsigned short* d2, const float* s2, i64 n) {
    FOR_EACH(i, 3 * n) {
        const int which = (int)(i / n);
        const i64 j = i - which * n;
        unsigned short* d = which == 0 ? d0 : which == 1 ? d1 : d2;
        const float* s = which == 0 ? s0 : which == 1 ? s1 : s2;
        if (d) d[j] = bf16_bits(s[j]);
    }
}

// The stores after a layer's GEMM (the CPU does these inside its GEMM's store):
// out = (out + bias) * mask + residual over [rows, n]; bias and mask may be null. With p > 0 the
// mask is drawn here (stream `key`) and written to `mask` unless that is null.
extern "C" __global__ void bias_dropout_residual_f32(float* out, const float* bias, float* mask,
                                                     const float* residual, i64 rows, int n, float p, float keep,
                                                     u64 key) {
    FOR_EACH(i, rows * n) {
        float v = out[i];
        if (bias) v += bias[i % n];
        out[i] = v * dropout_factor(mask, i, p, keep, key) + residual[i];
    }
}

// pre += bias, act = gelu(pre) (erf form, as gelu_forward_f32) over [rows, n]; `half` (may be
// null): act in bf16 too, for the bf16 GEMM that reads it next; `act` may then be null (only that
// GEMM reads it).
extern "C" __global__ void bias_gelu_f32(float* pre, float* act, const float* bias, i64 rows, int n,
                                         unsigned short* half) {
    FOR_EACH(i, rows * n) {
        const float v = pre[i] + bias[i % n];
        pre[i] = v;
        const float a = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
        if (act) act[i] = a;
        if (half) half[i] = bf16_bits(a);
    }
}
