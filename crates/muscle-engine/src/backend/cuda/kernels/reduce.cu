// Reductions: column sums (bias gradients), layer norm forward and backward (dot products: multi.cu).
// Column sums use a fixed summation order (no atomics), so gradients repeat bit for bit.

// dst[j] (+)= sum_r m[r, j]. Block (32, 8): 32 columns per block, 8 row lanes, then a shared reduce.
extern "C" __global__ void column_sums_f32(float* dst, const float* m, int rows, int n, int accumulate) {
    __shared__ float part[8][33];
    const int j = blockIdx.x * 32 + threadIdx.x;
    float acc = 0.0f;
    if (j < n) for (int r = threadIdx.y; r < rows; r += 8) acc += m[(i64)r * n + j];
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < n) {
        float s = 0.0f;
        #pragma unroll
        for (int y = 0; y < 8; y++) s += part[y][threadIdx.x];
        dst[j] = accumulate ? dst[j] + s : s;
    }
}

// Row r's layer norm by its block, given `s`, this thread's part of the row's sum (the threads
// strided over the row as below): mean and variance in two passes over the row (kept in
// registers where h is small, re-read from L1/L2 otherwise), then the affine normalisation.
// `half` (may be null): the output in bf16 too, for the bf16 GEMMs that read it next.
__device__ void layer_norm_row(const float* x, float s, float* out, float* mean, float* rstd, const float* w,
                               const float* b, int r, int h, float eps, unsigned short* half, float* scratch) {
    const float mu = block_sum(s, scratch) / h;
    float q = 0.0f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        const float d = x[j] - mu;
        q += d * d;
    }
    const float var = block_sum(q, scratch) / h;
    const float rs = rsqrtf(var + eps);
    float* o = out + (i64)r * h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        const float y = (x[j] - mu) * rs * w[j] + b[j];
        o[j] = y;
        if (half) half[(i64)r * h + j] = bf16_bits(y);
    }
    if (threadIdx.x == 0) {
        mean[r] = mu;
        rstd[r] = rs;
    }
}

// One block per row (layer_norm_row).
extern "C" __global__ void layer_norm_forward_f32(float* out, float* mean, float* rstd, const float* inp,
                                                  const float* w, const float* b, int rows, int h, float eps,
                                                  unsigned short* half) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* x = inp + (i64)r * h;
    float s = 0.0f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) s += x[j];
    layer_norm_row(x, s, out, mean, rstd, w, b, r, h, eps, half, scratch);
}

// One block per row: the stores after a sublayer's GEMM, as bias_dropout_residual_f32 (res =
// (res + bias) * mask + residual; bias and mask may be null; with p > 0 the mask is drawn here and
// written to `mask` unless that is null), then layer_norm_forward_f32 of the new res: one pass
// instead of two launches. Each thread re-reads only the elements it wrote.
extern "C" __global__ void residual_layer_norm_f32(float* res, const float* bias, float* mask, const float* residual,
                                                   float* out, float* mean, float* rstd, const float* w,
                                                   const float* b, int rows, int h, float eps, float p, float keep,
                                                   u64 key, unsigned short* half) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    float* x = res + (i64)r * h;
    const float* rr = residual + (i64)r * h;
    float s = 0.0f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        const i64 i = (i64)r * h + j;
        float v = x[j];
        if (bias) v += bias[j];
        v = v * dropout_factor(mask, i, p, keep, key) + rr[j];
        x[j] = v;
        s += v;
    }
    layer_norm_row(x, s, out, mean, rstd, w, b, r, h, eps, half, scratch);
}

// dinp per row: (g w - mean(g w) - n mean(g w n)) rstd, with n the normalised input.
// With a dropout mask (p > 0: drawn here, stream `key`, element r * h + j, and written to `mask`
// unless that is null; else read from `mask`; neither: no dropout), also dropped = dinp * mask.
// `half` (may be null): in bf16 too, for the bf16 GEMM that reads it next, the dropped values
// under dropout, else dinp; `dropped` may then be null (only that GEMM reads them).
extern "C" __global__ void layer_norm_backward_f32(float* dinp, const float* dout, const float* inp, const float* w,
                                                   const float* mean, const float* rstd, int rows, int h,
                                                   unsigned short* half, float* dropped, float* mask, float p,
                                                   float keep, u64 key) {
    __shared__ float scratch[32];
    const int r = blockIdx.x;
    if (r >= rows) return;
    const float* g = dout + (i64)r * h;
    const float* x = inp + (i64)r * h;
    const float mu = mean[r], rs = rstd[r];
    float sdn = 0.0f, sdnn = 0.0f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        const float n = (x[j] - mu) * rs;
        const float dn = g[j] * w[j];
        sdn += dn;
        sdnn += dn * n;
    }
    const float mdn = block_sum(sdn, scratch) / h;
    const float mdnn = block_sum(sdnn, scratch) / h;
    float* d = dinp + (i64)r * h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        const float n = (x[j] - mu) * rs;
        const float v = (g[j] * w[j] - mdn - n * mdnn) * rs;
        d[j] = v;
        const i64 i = (i64)r * h + j;
        if (mask || p > 0.0f) {
            const float z = dropout_factor(mask, i, p, keep, key);
            if (dropped) dropped[i] = v * z;
            if (half) half[i] = bf16_bits(v * z);
        } else if (half) {
            half[i] = bf16_bits(v);
        }
    }
}

// dw[j] = sum_r g[r, j] n[r, j], db[j] = sum_r g[r, j] (overwritten, as the CPU backend does);
// either pointer may be null. Same (32, 8) block shape as column_sums_f32.
extern "C" __global__ void layer_norm_params_backward_f32(float* dw, float* db, const float* dout, const float* inp,
                                                          const float* mean, const float* rstd, int rows, int h) {
    __shared__ float pw[8][33];
    __shared__ float pb[8][33];
    const int j = blockIdx.x * 32 + threadIdx.x;
    float aw = 0.0f, ab = 0.0f;
    if (j < h) {
        for (int r = threadIdx.y; r < rows; r += 8) {
            const float g = dout[(i64)r * h + j];
            aw += g * (inp[(i64)r * h + j] - mean[r]) * rstd[r];
            ab += g;
        }
    }
    pw[threadIdx.y][threadIdx.x] = aw;
    pb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && j < h) {
        float sw = 0.0f, sb = 0.0f;
        #pragma unroll
        for (int y = 0; y < 8; y++) {
            sw += pw[y][threadIdx.x];
            sb += pb[y][threadIdx.x];
        }
        if (dw) dw[j] = sw;
        if (db) db[j] = sb;
    }
}
