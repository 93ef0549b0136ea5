// Many tensors in one launch. The host uploads one table: `items + 1` block offsets (tensor i owns
// blocks [starts[i], starts[i + 1]), about one per 256 elements, at most 64), then a record of
// 64-bit words per tensor (addresses, length, per-tensor coefficients as f32 bits). A block finds its
// tensor by binary search and grid-strides over it with that tensor's blocks. Clipping, gradient
// alignment and AdamW touch every trainable tensor each step; one launch per tensor would make a
// step wait on the host.

// The tensor that owns this block; sets `first` and `count` to its block range.
__device__ __forceinline__ int owner(const u64* starts, int items, u64* first, u64* count) {
    const u64 block = blockIdx.x;
    int lo = 0, hi = items - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (starts[mid] <= block) lo = mid; else hi = mid - 1;
    }
    *first = starts[lo];
    *count = starts[lo + 1] - starts[lo];
    return lo;
}

#define ITEM_FOR_EACH(i, n) for (i64 i = (i64)(blockIdx.x - first) * blockDim.x + threadIdx.x; i < (n); i += (i64)count * blockDim.x)
#define ITEM(words) u64 first, count; const u64* r = table + (items + 1) + (words) * (u64)owner(table, items, &first, &count)

__device__ __forceinline__ float f32_bits(u64 w) { return __uint_as_float((unsigned int)w); }

// records [x, n]: x *= a
extern "C" __global__ void scale_many_f32(const u64* table, int items, float a) {
    ITEM(2);
    float* x = (float*)r[0];
    const i64 n = (i64)r[1];
    ITEM_FOR_EACH(i, n) x[i] *= a;
}

// records [y, x, n, a, b]: y = a x + b y, as axpby_f32; b = 0 does not read y
extern "C" __global__ void axpby_many_f32(const u64* table, int items) {
    ITEM(5);
    float* y = (float*)r[0];
    const float* x = (const float*)r[1];
    const i64 n = (i64)r[2];
    const float a = f32_bits(r[3]), b = f32_bits(r[4]);
    if (b == 0.0f) {
        ITEM_FOR_EACH(i, n) y[i] = a * x[i];
    } else {
        ITEM_FOR_EACH(i, n) y[i] = a * x[i] + b * y[i];
    }
}

// records [param, grad, m, v, n, decay]: adamw_f32's update, decay = 1 - lr weight_decay per tensor
extern "C" __global__ void adamw_many_f32(const u64* table, int items, float beta1, float beta2, float eps,
                                          float step_size, float bc2_sqrt) {
    ITEM(6);
    float* param = (float*)r[0];
    const float* grad = (const float*)r[1];
    float* m = (float*)r[2];
    float* v = (float*)r[3];
    const i64 n = (i64)r[4];
    const float decay = f32_bits(r[5]);
    ITEM_FOR_EACH(i, n) adamw_element(param, grad, m, v, i, beta1, beta2, eps, decay, step_size, bc2_sqrt);
}

// records [a, b, n]: partial[block] = this block's share of sum a[i] b[i], in f64 as the CPU sums;
// the host adds each pair's partials (its block range).
extern "C" __global__ void dots_many_f32(const u64* table, int items, double* partial) {
    __shared__ double scratch[32];
    ITEM(3);
    const float* a = (const float*)r[0];
    const float* b = (const float*)r[1];
    const i64 n = (i64)r[2];
    double acc = 0.0;
    ITEM_FOR_EACH(i, n) acc += (double)a[i] * (double)b[i];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    acc = warp_sum_f64(acc);
    if (lane == 0) scratch[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        acc = lane < warps ? scratch[lane] : 0.0;
        acc = warp_sum_f64(acc);
        if (lane == 0) partial[blockIdx.x] = acc;
    }
}
