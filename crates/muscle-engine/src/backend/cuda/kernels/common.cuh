// Shared by every kernel file (prepended by kernels.rs; NVRTC has no file system to include from).
// Sizes that can pass 2^31 elements (activations of big batches, 7B-parameter buffers) are 64-bit.

typedef long long i64;
typedef unsigned long long u64;

// Grid-stride loop over [0, n): any grid size covers any n.
#define FOR_EACH(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

__device__ __forceinline__ float warp_sum(float v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ double warp_sum_f64(double v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over a block of up to 1024 threads; every thread gets the result. `scratch` holds 32 floats.
__device__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

// Element i of the counter-based uniform stream `key` (rng.rs `counter_uniform`, bit for bit): two
// rounds of Wellons' lowbias32 mixer over the counter, keyed by both halves of `key`, top 24 bits.
__device__ __forceinline__ unsigned int mix32(unsigned int x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    return x ^ (x >> 16);
}

__device__ __forceinline__ float counter_uniform(u64 key, u64 i) {
    unsigned int x = mix32((unsigned int)i ^ (unsigned int)key);
    x = mix32(x ^ (unsigned int)(key >> 32) ^ ((unsigned int)(i >> 32) * 0x9E3779B9u));
    return (float)(x >> 8) * (1.0f / 16777216.0f);
}

// Element i of an inverted-dropout mask drawn from stream `key`: 0 with probability p, else `keep`
// = 1 / (1 - p), as dropout_mask_f32 draws it. Kernels that apply a mask can draw it themselves
// (writing it out for the backward) instead of reading one drawn by a launch before them.
__device__ __forceinline__ float dropout_draw(float p, float keep, u64 key, u64 i) {
    return counter_uniform(key, i) < p ? 0.0f : keep;
}

// Element i of a dropout mask as the kernels applying one take it: with p > 0 drawn here from
// stream `key` (and written to `mask` unless that is null: a mask nothing reads again), else read
// from `mask`, or 1 when there is none.
__device__ __forceinline__ float dropout_factor(float* mask, i64 i, float p, float keep, u64 key) {
    if (p > 0.0f) {
        const float z = dropout_draw(p, keep, key, (u64)i);
        if (mask) mask[i] = z;
        return z;
    }
    return mask ? mask[i] : 1.0f;
}

// f32 -> bf16 bit pattern, rounding to nearest even (as half::bf16::from_f32 on the host); NaN stays NaN.
__device__ __forceinline__ unsigned short bf16_bits(float x) {
    const unsigned int u = __float_as_uint(x);
    return (u & 0x7fffffffu) > 0x7f800000u ? (unsigned short)0x7fc0
                                           : (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// One element of torch.optim.AdamW's update (decoupled decay first, then the moments and the
// bias-corrected step): shared by the one-tensor and the many-tensor kernels.
__device__ __forceinline__ void adamw_element(float* param, const float* grad, float* m, float* v, i64 i, float beta1,
                                              float beta2, float eps, float decay, float step_size, float bc2_sqrt) {
    const float g = grad[i];
    const float p = param[i] * decay;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float denom = sqrtf(vi) / bc2_sqrt + eps;
    param[i] = p - step_size * mi / denom;
}

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
