// Multi-head attention's row kernels. The GEMMs around them (cuBLAS, batched through pointer arrays
// that address each head's block of the projections [b*t, heads*d] in place; see `Heads` in mod.rs)
// produce the scores [b*heads, t, t]; these kernels are the masked row softmax (with the dropout mask
// applied to a copy, since the backward needs the probabilities before dropout) and dS. Semantics
// are the CPU backend's (backend/cpu/attention.rs) exactly.

// One warp per row of the scores [b*heads*t, t] (already scaled): softmax over the keys the mask keeps
// (1 = token), 0 for the others, an all-zero row when every key is masked. `probs` is written in place;
// with `drop`, `pd` gets probs * drop (what multiplies V), else `pd` may alias nothing and is unused.
// With p > 0 the dropout mask is drawn here (stream `key`, element row * t + j) and written to `drop`
// unless that is null (a mask nothing reads again); `pd` then gets probs times the draws.
extern "C" __global__ void attention_softmax_f32(float* probs, float* pd, float* drop, const int* key_mask,
                                                 int rows, int t, int heads, float p_drop, float keep, u64 key) {
    const int lane = threadIdx.x & 31;
    const i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const int bi = (int)(row / t) / heads;
    const int* mask = key_mask + (i64)bi * t;
    float* p = probs + row * t;
    float mx = -INFINITY;
    for (int j = lane; j < t; j += 32) if (mask[j]) mx = fmaxf(mx, p[j]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j < t; j += 32) {
        const float e = mask[j] ? expf(p[j] - mx) : 0.0f;
        p[j] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (int j = lane; j < t; j += 32) {
        const float v = p[j] * inv;
        p[j] = v;
        if (p_drop > 0.0f) {
            const float z = dropout_draw(p_drop, keep, key, (u64)(row * t + j));
            if (drop) drop[row * t + j] = z;
            pd[row * t + j] = v * z;
        } else if (drop) {
            pd[row * t + j] = v * drop[row * t + j];
        }
    }
}

// One warp per row: dP (from dOut V^T) times the dropout mask, then dS = P * (dP - rowsum(P * dP)),
// in place over dP.
extern "C" __global__ void attention_dscores_f32(float* dp, const float* probs, const float* drop, int rows, int t) {
    const int lane = threadIdx.x & 31;
    const i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    float* g = dp + row * t;
    const float* p = probs + row * t;
    float rs = 0.0f;
    for (int j = lane; j < t; j += 32) {
        const float x = drop ? g[j] * drop[row * t + j] : g[j];
        g[j] = x;
        rs += p[j] * x;
    }
    rs = warp_sum(rs);
    for (int j = lane; j < t; j += 32) g[j] = p[j] * (g[j] - rs);
}
