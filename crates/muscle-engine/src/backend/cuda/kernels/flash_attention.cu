// Attention without the [t, t] matrices (flash-style, for long sequences). Layouts as attention.cu:
// q, k, v, out [b*t, heads*d]; lse and D [b*t, heads]. The forward keeps each query row's
// log-sum-exp; the backward recomputes the probabilities from it, in two kernels that need no
// atomics (dQ over query rows; dK and dV over key rows), after D = rowsum(dOut * Out).
//
// A block is FA_WARPS warps, one query (or key) row each, sharing tiles of FA_TILE rows of the other
// side in shared memory. Within a tile lane l owns row l of the tile for the scores, and output
// columns lane, lane + 32, ... for the accumulations (which take the tile's weights from the other
// lanes by shuffles). Head dimensions up to FA_DMAX. Semantics: backend/cpu/flash_attention.rs.

#define FA_WARPS 4
#define FA_TILE 32
#define FA_DMAX 128
#define FA_PER (FA_DMAX / 32)

// The inverted-dropout factor of (pair bh, row i, key j): the entry dropout_mask would draw for a
// [b*heads, t, t] buffer.
__device__ __forceinline__ float fa_keep(float p_drop, float keep, u64 key, int bh, int t, int i, int j) {
    if (p_drop <= 0.0f) return 1.0f;
    return counter_uniform(key, ((u64)bh * t + i) * (u64)t + j) < p_drop ? 0.0f : keep;
}

__device__ __forceinline__ i64 fa_at(int bi, int i, int h, int t, int heads, int d) {
    return (((i64)bi * t + i) * heads + h) * d;
}

extern "C" __global__ void flash_attention_forward_f32(float* out, float* lse, const float* q, const float* k,
                                                       const float* v, const int* key_mask, int t, int heads, int d,
                                                       int causal, float p_drop, float keep, u64 key) {
    __shared__ float ks[FA_TILE][FA_DMAX + 1];
    __shared__ float vs[FA_TILE][FA_DMAX + 1];
    __shared__ float qs[FA_WARPS][FA_DMAX];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int bh = blockIdx.y, bi = bh / heads, h = bh % heads;
    const int i = blockIdx.x * FA_WARPS + w;
    const bool active = i < t;
    const float scale = rsqrtf((float)d);
    if (active) for (int c = lane; c < d; c += 32) qs[w][c] = q[fa_at(bi, i, h, t, heads, d) + c];
    float o[FA_PER];
    #pragma unroll
    for (int x = 0; x < FA_PER; x++) o[x] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    // causal: no row of this block sees a key past its last row
    const int last = causal ? min(t, (int)(blockIdx.x + 1) * FA_WARPS) : t;
    for (int j0 = 0; j0 < last; j0 += FA_TILE) {
        __syncthreads();  // the previous tile is consumed (and qs written, the first time)
        for (int e = threadIdx.x; e < FA_TILE * d; e += blockDim.x) {
            const int jj = e / d, c = e % d, j = j0 + jj;
            ks[jj][c] = j < t ? k[fa_at(bi, j, h, t, heads, d) + c] : 0.0f;
            vs[jj][c] = j < t ? v[fa_at(bi, j, h, t, heads, d) + c] : 0.0f;
        }
        __syncthreads();
        if (!active) continue;  // a whole warp: it still joins every barrier
        const int j = j0 + lane;
        const bool vis = j < t && key_mask[bi * t + j] != 0 && (!causal || j <= i);
        float s = -INFINITY;
        if (vis) {
            float acc = 0.0f;
            for (int c = 0; c < d; c++) acc += qs[w][c] * ks[lane][c];
            s = acc * scale;
        }
        const float mn = fmaxf(m, warp_max(s));
        if (mn == -INFINITY) continue;  // nothing visible yet (the same for the whole warp)
        const float corr = expf(m - mn);
        const float p = vis ? expf(s - mn) : 0.0f;
        l = l * corr + warp_sum(p);
        const float pz = vis ? p * fa_keep(p_drop, keep, key, bh, t, i, j) : 0.0f;
        #pragma unroll
        for (int x = 0; x < FA_PER; x++) o[x] *= corr;
        for (int src = 0; src < FA_TILE; src++) {
            const float ps = __shfl_sync(0xffffffffu, pz, src);
            if (ps == 0.0f) continue;
            #pragma unroll
            for (int x = 0; x < FA_PER; x++) {
                const int c = lane + 32 * x;
                if (c < d) o[x] += ps * vs[src][c];
            }
        }
        m = mn;
    }
    if (!active) return;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    #pragma unroll
    for (int x = 0; x < FA_PER; x++) {
        const int c = lane + 32 * x;
        if (c < d) out[fa_at(bi, i, h, t, heads, d) + c] = o[x] * inv;
    }
    if (lane == 0) lse[((i64)bi * t + i) * heads + h] = l > 0.0f ? m + logf(l) : INFINITY;
}

// D[r] = dOut[r] . Out[r] over rows of d: one warp per row.
extern "C" __global__ void attention_row_dot_f32(float* dsum, const float* dout, const float* out, i64 rows, int d) {
    const int lane = threadIdx.x & 31;
    const i64 r = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    float acc = 0.0f;
    for (int c = lane; c < d; c += 32) acc += dout[r * d + c] * out[r * d + c];
    acc = warp_sum(acc);
    if (lane == 0) dsum[r] = acc;
}

// dQ_i = scale sum_j dS_ij k_j, dS_ij = P_ij (Z_ij dOut_i . v_j - D_i): one warp per query row.
extern "C" __global__ void flash_attention_dq_f32(float* dq, const float* dout, const float* lse, const float* dsum,
                                                  const float* q, const float* k, const float* v, const int* key_mask,
                                                  int t, int heads, int d, int causal, float p_drop, float keep,
                                                  u64 key) {
    __shared__ float ks[FA_TILE][FA_DMAX + 1];
    __shared__ float vs[FA_TILE][FA_DMAX + 1];
    __shared__ float qs[FA_WARPS][FA_DMAX];
    __shared__ float gs[FA_WARPS][FA_DMAX];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int bh = blockIdx.y, bi = bh / heads, h = bh % heads;
    const int i = blockIdx.x * FA_WARPS + w;
    const i64 row = ((i64)bi * t + i) * heads + h;
    const float li = i < t ? lse[row] : INFINITY;
    const bool active = i < t && li != INFINITY;  // a row that sees no key has zero gradients
    const float di = active ? dsum[row] : 0.0f;
    const float scale = rsqrtf((float)d);
    if (active) {
        for (int c = lane; c < d; c += 32) {
            qs[w][c] = q[fa_at(bi, i, h, t, heads, d) + c];
            gs[w][c] = dout[fa_at(bi, i, h, t, heads, d) + c];
        }
    }
    float acc[FA_PER];
    #pragma unroll
    for (int x = 0; x < FA_PER; x++) acc[x] = 0.0f;
    const int last = causal ? min(t, (int)(blockIdx.x + 1) * FA_WARPS) : t;
    for (int j0 = 0; j0 < last; j0 += FA_TILE) {
        __syncthreads();
        for (int e = threadIdx.x; e < FA_TILE * d; e += blockDim.x) {
            const int jj = e / d, c = e % d, j = j0 + jj;
            ks[jj][c] = j < t ? k[fa_at(bi, j, h, t, heads, d) + c] : 0.0f;
            vs[jj][c] = j < t ? v[fa_at(bi, j, h, t, heads, d) + c] : 0.0f;
        }
        __syncthreads();
        if (!active) continue;
        const int j = j0 + lane;
        const bool vis = j < t && key_mask[bi * t + j] != 0 && (!causal || j <= i);
        float ds = 0.0f;
        if (vis) {
            float s = 0.0f, dp = 0.0f;
            for (int c = 0; c < d; c++) {
                s += qs[w][c] * ks[lane][c];
                dp += gs[w][c] * vs[lane][c];
            }
            const float p = expf(s * scale - li);
            ds = p * (fa_keep(p_drop, keep, key, bh, t, i, j) * dp - di);
        }
        for (int src = 0; src < FA_TILE; src++) {
            const float x_ds = __shfl_sync(0xffffffffu, ds, src);
            if (x_ds == 0.0f) continue;
            #pragma unroll
            for (int x = 0; x < FA_PER; x++) {
                const int c = lane + 32 * x;
                if (c < d) acc[x] += x_ds * ks[src][c];
            }
        }
    }
    if (i >= t) return;
    #pragma unroll
    for (int x = 0; x < FA_PER; x++) {
        const int c = lane + 32 * x;
        if (c < d) dq[fa_at(bi, i, h, t, heads, d) + c] = scale * acc[x];
    }
}

// dV_j = sum_i P_ij Z_ij dOut_i and dK_j = scale sum_i dS_ij q_i: one warp per key row, tiles of query rows.
extern "C" __global__ void flash_attention_dkv_f32(float* dk, float* dv, const float* dout, const float* lse,
                                                   const float* dsum, const float* q, const float* k, const float* v,
                                                   const int* key_mask, int t, int heads, int d, int causal,
                                                   float p_drop, float keep, u64 key) {
    __shared__ float qs[FA_TILE][FA_DMAX + 1];
    __shared__ float gs[FA_TILE][FA_DMAX + 1];
    __shared__ float kj[FA_WARPS][FA_DMAX];
    __shared__ float vj[FA_WARPS][FA_DMAX];
    __shared__ float ls[FA_TILE], dsums[FA_TILE];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int bh = blockIdx.y, bi = bh / heads, h = bh % heads;
    const int j = blockIdx.x * FA_WARPS + w;
    const bool active = j < t && key_mask[bi * t + j] != 0;  // a masked key gets zero gradients
    const float scale = rsqrtf((float)d);
    if (active) {
        for (int c = lane; c < d; c += 32) {
            kj[w][c] = k[fa_at(bi, j, h, t, heads, d) + c];
            vj[w][c] = v[fa_at(bi, j, h, t, heads, d) + c];
        }
    }
    float gk[FA_PER], gv[FA_PER];
    #pragma unroll
    for (int x = 0; x < FA_PER; x++) gk[x] = gv[x] = 0.0f;
    // causal: no query before this block's first key sees any of its keys
    const int first = causal ? (int)(blockIdx.x * FA_WARPS) / FA_TILE * FA_TILE : 0;
    for (int i0 = first; i0 < t; i0 += FA_TILE) {
        __syncthreads();
        for (int e = threadIdx.x; e < FA_TILE * d; e += blockDim.x) {
            const int ii = e / d, c = e % d, i = i0 + ii;
            qs[ii][c] = i < t ? q[fa_at(bi, i, h, t, heads, d) + c] : 0.0f;
            gs[ii][c] = i < t ? dout[fa_at(bi, i, h, t, heads, d) + c] : 0.0f;
        }
        for (int ii = threadIdx.x; ii < FA_TILE; ii += blockDim.x) {
            const int i = i0 + ii;
            const i64 row = ((i64)bi * t + i) * heads + h;
            ls[ii] = i < t ? lse[row] : INFINITY;
            dsums[ii] = i < t ? dsum[row] : 0.0f;
        }
        __syncthreads();
        if (!active) continue;
        const int i = i0 + lane;
        const bool vis = i < t && ls[lane] != INFINITY && (!causal || j <= i);
        float pz = 0.0f, ds = 0.0f;
        if (vis) {
            float s = 0.0f, dp = 0.0f;
            for (int c = 0; c < d; c++) {
                s += qs[lane][c] * kj[w][c];
                dp += gs[lane][c] * vj[w][c];
            }
            const float p = expf(s * scale - ls[lane]);
            const float z = fa_keep(p_drop, keep, key, bh, t, i, j);
            pz = p * z;
            ds = p * (z * dp - dsums[lane]);
        }
        for (int src = 0; src < FA_TILE; src++) {
            const float x_pz = __shfl_sync(0xffffffffu, pz, src);
            const float x_ds = __shfl_sync(0xffffffffu, ds, src);
            if (x_pz == 0.0f && x_ds == 0.0f) continue;
            #pragma unroll
            for (int x = 0; x < FA_PER; x++) {
                const int c = lane + 32 * x;
                if (c < d) {
                    gv[x] += x_pz * gs[src][c];
                    gk[x] += x_ds * qs[src][c];
                }
            }
        }
    }
    if (j >= t) return;
    #pragma unroll
    for (int x = 0; x < FA_PER; x++) {
        const int c = lane + 32 * x;
        if (c < d) {
            dk[fa_at(bi, j, h, t, heads, d) + c] = scale * gk[x];
            dv[fa_at(bi, j, h, t, heads, d) + c] = gv[x];
        }
    }
}
