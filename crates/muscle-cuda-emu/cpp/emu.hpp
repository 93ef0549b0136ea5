// The CUDA C++ that our kernels use, for running them on the CPU (tests only).
//
// Each block's threads are cooperative fibers in one OS thread: a thread runs until it reaches a
// barrier (__syncthreads, a warp shuffle, __syncwarp) or returns, then the next one runs. So the
// arithmetic, the indexing, the barriers and the warp exchanges are exactly the kernel's, and shared
// memory is per block; what this cannot show is timing, or a race that only another interleaving
// would expose (the launches alternate the order the threads run in to catch the common ones).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>

struct dim3 {
    unsigned int x, y, z;
};

namespace emu {
extern thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;
// the calling thread's lane in its warp (linear thread index mod 32)
int lane();
// waits until every live thread of the block is here
void sync_block();
// waits until every lane of the caller's warp is here
void sync_warp();
// posts `bits`, waits for the warp, returns what lane `src` posted
unsigned long long exchange(unsigned long long bits, int src);
// the launch's dynamic shared memory
void* dynamic_shared();
}  // namespace emu

#define threadIdx (::emu::thread_idx)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// one copy per OS thread; a block runs entirely in one, so this is per-block shared memory
#define __shared__ static thread_local

inline void __syncthreads() { emu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::sync_warp(); }

template <class T>
inline T emu_shuffle(T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffles move up to 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    bits = emu::exchange(bits, src);
    T out;
    std::memcpy(&out, &bits, sizeof(T));
    return out;
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    const int l = emu::lane();
    return emu_shuffle(v, (l & ~(width - 1)) | ((l ^ mask) & (width - 1)));
}
template <class T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    const int l = emu::lane();
    return emu_shuffle(v, (l & ~(width - 1)) | (src & (width - 1)));
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned d, int width = 32) {
    const int l = emu::lane();
    return emu_shuffle(v, (int)((l & (width - 1)) + d) < width ? l + (int)d : l);
}

// Fibers only switch at barriers, so a read-modify-write is already indivisible here.
template <class T>
inline T atomicAdd(T* p, T v) {
    const T old = *p;
    *p = old + v;
    return old;
}
template <class T>
inline T atomicMax(T* p, T v) {
    const T old = *p;
    *p = std::max(old, v);
    return old;
}
inline float atomicMax_f(float* p, float v) { const float o = *p; *p = std::max(o, v); return o; }

inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline float __uint_as_float(unsigned v) { float f; std::memcpy(&f, &v, 4); return f; }
inline int __float_as_int(float f) { int v; std::memcpy(&v, &f, 4); return v; }
inline unsigned __float_as_uint(float f) { unsigned v; std::memcpy(&v, &f, 4); return v; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return std::min(1.0f, std::max(0.0f, x)); }
inline void sincosf(float x, float* s, float* c) {
    *s = std::sin(x);
    *c = std::cos(x);
}
using std::max;
using std::min;
