// Multi-head attention over q, k, v, out: [b*t, heads*d] row-major (heads interleaved in a row, as the
// projections produce them; no transpose copies). One warp per query row (forward, dQ) or key row
// (dK, dV); lanes split the head dimension d (d <= 32 * MAXC). The [t] row of scores lives in shared
// memory. The softmax probabilities [b, heads, t, t] are saved because the backward needs them;
// `drop` (nullable) is an inverted-dropout mask of the same shape applied to them after saving.
// Semantics are the CPU backend's (backend/cpu/attention.rs) exactly.

#define WARPS 4
#define MAXC 8

__device__ __forceinline__ void load_row(float (&r)[MAXC], const float* src, int d, int lane) {
    #pragma unroll
    for (int c = 0; c < MAXC; c++) {
        const int idx = lane + 32 * c;
        r[c] = idx < d ? src[idx] : 0.0f;
    }
}

__device__ __forceinline__ float dot_row(const float (&r)[MAXC], const float* src, int d, int lane) {
    float acc = 0.0f;
    #pragma unroll
    for (int c = 0; c < MAXC; c++) {
        const int idx = lane + 32 * c;
        if (idx < d) acc += r[c] * src[idx];
    }
    return warp_sum(acc);
}

__device__ __forceinline__ void axpy_row(float (&acc)[MAXC], float a, const float* src, int d, int lane) {
    #pragma unroll
    for (int c = 0; c < MAXC; c++) {
        const int idx = lane + 32 * c;
        if (idx < d) acc[c] += a * src[idx];
    }
}

__device__ __forceinline__ void store_row(float* dst, const float (&r)[MAXC], float scale, int d, int lane) {
    #pragma unroll
    for (int c = 0; c < MAXC; c++) {
        const int idx = lane + 32 * c;
        if (idx < d) dst[idx] = r[c] * scale;
    }
}

// grid (ceil(t / WARPS), b * heads), block 32 * WARPS, shared WARPS * t floats.
extern "C" __global__ void attention_forward_f32(float* out, float* probs, const float* q, const float* k,
                                                 const float* v, const int* key_mask, const float* drop,
                                                 int b, int t, int heads, int d, float scale) {
    extern __shared__ float smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int bh = blockIdx.y, bi = bh / heads, hh = bh % heads;
    const int i = blockIdx.x * WARPS + warp;
    if (i >= t) return;  // the whole warp leaves; nothing below synchronises the block
    const i64 hd = (i64)heads * d;
    const i64 head = (i64)bi * t * hd + (i64)hh * d;  // row 0 of this (batch, head)
    const int* mask = key_mask + (i64)bi * t;
    float* s = smem + warp * t;

    float qi[MAXC];
    load_row(qi, q + head + i * hd, d, lane);
    float mx = -INFINITY;
    for (int j = 0; j < t; j++) {
        const float score = dot_row(qi, k + head + j * hd, d, lane) * scale;
        if (lane == 0) s[j] = score;
        if (mask[j]) mx = fmaxf(mx, score);
    }
    __syncwarp();
    float sum = 0.0f;
    for (int j = lane; j < t; j += 32) {
        const float e = mask[j] ? expf(s[j] - mx) : 0.0f;
        s[j] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // a fully masked row is all 0
    const i64 prow = ((i64)bh * t + i) * t;
    for (int j = lane; j < t; j += 32) {
        const float p = s[j] * inv;
        probs[prow + j] = p;
        s[j] = drop ? p * drop[prow + j] : p;
    }
    __syncwarp();
    float acc[MAXC] = {};
    for (int j = 0; j < t; j++) {
        const float p = s[j];
        if (p != 0.0f) axpy_row(acc, p, v + head + j * hd, d, lane);
    }
    store_row(out + head + i * hd, acc, 1.0f, d, lane);
}

// Per query row i: dP = dOut V^T (times the dropout mask), dS = P * (dP - rowsum(P * dP)) saved to
// `ds` [b, heads, t, t], and dQ = scale * dS K. Same launch shape as the forward.
extern "C" __global__ void attention_backward_rows_f32(float* dq, float* ds, const float* dout, const float* probs,
                                                       const float* k, const float* v, const float* drop,
                                                       int b, int t, int heads, int d, float scale) {
    extern __shared__ float smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int bh = blockIdx.y, bi = bh / heads, hh = bh % heads;
    const int i = blockIdx.x * WARPS + warp;
    if (i >= t) return;
    const i64 hd = (i64)heads * d;
    const i64 head = (i64)bi * t * hd + (i64)hh * d;
    const i64 prow = ((i64)bh * t + i) * t;
    float* dp = smem + warp * t;

    float go[MAXC];
    load_row(go, dout + head + i * hd, d, lane);
    for (int j = 0; j < t; j++) {
        const float x = dot_row(go, v + head + j * hd, d, lane);
        if (lane == 0) dp[j] = x;
    }
    __syncwarp();
    float rs = 0.0f;
    for (int j = lane; j < t; j += 32) {
        const float x = drop ? dp[j] * drop[prow + j] : dp[j];
        dp[j] = x;
        rs += probs[prow + j] * x;
    }
    rs = warp_sum(rs);
    for (int j = lane; j < t; j += 32) {
        const float x = probs[prow + j] * (dp[j] - rs);
        dp[j] = x;
        ds[prow + j] = x;
    }
    __syncwarp();
    float acc[MAXC] = {};
    for (int j = 0; j < t; j++) {
        const float x = dp[j];
        if (x != 0.0f) axpy_row(acc, x, k + head + j * hd, d, lane);
    }
    store_row(dq + head + i * hd, acc, scale, d, lane);
}

// Per key row j: dV = P'^T dOut with P' the dropped-out probabilities, dK = scale * dS^T Q.
// grid (ceil(t / WARPS), b * heads), block 32 * WARPS, no shared memory.
extern "C" __global__ void attention_backward_cols_f32(float* dk, float* dv, const float* ds, const float* dout,
                                                       const float* probs, const float* q, const float* drop,
                                                       int b, int t, int heads, int d, float scale) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int bh = blockIdx.y, bi = bh / heads, hh = bh % heads;
    const int j = blockIdx.x * WARPS + warp;
    if (j >= t) return;
    const i64 hd = (i64)heads * d;
    const i64 head = (i64)bi * t * hd + (i64)hh * d;
    const i64 pbase = (i64)bh * t * t;
    float av[MAXC] = {};
    float ak[MAXC] = {};
    for (int i = 0; i < t; i++) {
        const i64 at = pbase + (i64)i * t + j;
        const float p = drop ? probs[at] * drop[at] : probs[at];
        const float x = ds[at];
        if (p != 0.0f) axpy_row(av, p, dout + head + i * hd, d, lane);
        if (x != 0.0f) axpy_row(ak, x, q + head + i * hd, d, lane);
    }
    store_row(dv + head + j * hd, av, 1.0f, d, lane);
    store_row(dk + head + j * hd, ak, scale, d, lane);
}
