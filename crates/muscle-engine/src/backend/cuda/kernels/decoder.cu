// Decoder (Llama) kernels: RMSNorm, SiLU gating, rotary position embeddings. Semantics are the CPU
// backend's (backend/cpu/decoder.rs), which follows Hugging Face's Llama.

// One block per row: rstd = 1 / sqrt(mean(x^2) + eps) (the sum of squares in f64, as the CPU), out = x rstd w.
extern "C" __global__ void rms_norm_forward_f32(float* out, float* rstd, const float* inp, const float* w, int rows,
                                                int h, float eps) {
    __shared__ double scratch[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* x = inp + (i64)r * h;
    double s = 0.0;
    for (int j = threadIdx.x; j < h; j += blockDim.x) s += (double)x[j] * (double)x[j];
    // block sum in f64
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    s = warp_sum_f64(s);
    if (lane == 0) scratch[warp] = s;
    __syncthreads();
    s = lane < warps ? scratch[lane] : 0.0;
    s = warp_sum_f64(s);
    const float rs = (float)(1.0 / sqrt(s / h + (double)eps));
    float* o = out + (i64)r * h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) o[j] = x[j] * rs * w[j];
    if (threadIdx.x == 0) rstd[r] = rs;
}

// One block per row: dx = rstd (g w - n mean(g w n)), n = x rstd.
extern "C" __global__ void rms_norm_backward_f32(float* dinp, const float* dout, const float* inp, const float* w,
                                                 const float* rstd, int rows, int h) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* g = dout + (i64)r * h;
    const float* x = inp + (i64)r * h;
    const float s = rstd[r];
    float acc = 0.0f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) acc += g[j] * w[j] * x[j] * s;
    const float m = block_sum(acc, scratch) / h;
    float* d = dinp + (i64)r * h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) d[j] = s * (g[j] * w[j] - x[j] * s * m);
}

// dw[j] = sum_r g[r, j] x[r, j] rstd[r] (overwritten). Block (32, 8) as column_sums_f32.
extern "C" __global__ void rms_norm_weight_backward_f32(float* dw, const float* dout, const float* inp,
                                                        const float* rstd, int rows, int h) {
    __shared__ float part[8][33];
    const int j = blockIdx.x * 32 + threadIdx.x;
    float acc = 0.0f;
    if (j < h) for (int r = threadIdx.y; r < rows; r += 8) acc += dout[(i64)r * h + j] * inp[(i64)r * h + j] * rstd[r];
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < h) {
        float s = 0.0f;
        #pragma unroll
        for (int y = 0; y < 8; y++) s += part[y][threadIdx.x];
        dw[j] = s;
    }
}

__device__ __forceinline__ float sigmoid_f32(float x) { return 1.0f / (1.0f + expf(-x)); }

// out = silu(gate) up
extern "C" __global__ void silu_gate_forward_f32(float* out, const float* gate, const float* up, i64 n) {
    FOR_EACH(i, n) {
        const float g = gate[i];
        out[i] = g * sigmoid_f32(g) * up[i];
    }
}

// dup = dout silu(gate), dgate = dout up sigmoid(gate) (1 + gate (1 - sigmoid(gate)))
extern "C" __global__ void silu_gate_backward_f32(float* dgate, float* dup, const float* gate, const float* up,
                                                  const float* dout, i64 n) {
    FOR_EACH(i, n) {
        const float g = gate[i], s = sigmoid_f32(g), o = dout[i];
        dup[i] = o * g * s;
        dgate[i] = o * up[i] * s * (1.0f + g * (1.0f - s));
    }
}

// In place over x [rows, heads * d]: one thread per (row, head, j < d/2) turns the pair (j, j + d/2)
// by pos[row] theta^(-2j/d) (the opposite way with `inverse`: the backward).
extern "C" __global__ void rope_f32(float* x, const int* pos, int rows, int heads, int d, float theta, int inverse) {
    const int half = d / 2;
    FOR_EACH(i, (i64)rows * heads * half) {
        const int j = (int)(i % half);
        const i64 rh = i / half;  // row * heads + head
        const int r = (int)(rh / heads);
        const float inv_freq = 1.0f / powf(theta, (float)(2 * j) / (float)d);
        const float angle = (float)pos[r] * inv_freq;
        float sn, cs;
        sincosf(angle, &sn, &cs);
        if (inverse) sn = -sn;
        float* p = x + rh * d;
        const float a = p[j], b = p[j + half];
        p[j] = a * cs - b * sn;
        p[j + half] = b * cs + a * sn;
    }
}
