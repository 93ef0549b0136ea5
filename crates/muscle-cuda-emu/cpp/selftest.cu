// Kernels that test the emulator itself (compiled with the engine's, never loaded by the engine).

// Lanes 16-31 return before a full-mask shuffle: undefined on a GPU, an error in the emulator.
extern "C" __global__ void emu_selftest_exited_lane(float* x) {
    if ((threadIdx.x & 31) >= 16) return;
    x[threadIdx.x] = warp_sum(x[threadIdx.x]);
}

// One thread writes shared memory, every thread reads it after the barrier.
extern "C" __global__ void emu_selftest_barrier(float* out) {
    __shared__ float v;
    if (threadIdx.x == 5) v = 42.0f + blockIdx.x;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

// Lane l gets the value of lane l + 1 (the last lane keeps its own), through __shfl_down_sync.
extern "C" __global__ void emu_selftest_shuffle_down(float* x) {
    x[threadIdx.x] = __shfl_down_sync(0xffffffffu, x[threadIdx.x], 1);
}

// Writes one element past the end of x (n elements): the fault handler must name this kernel.
extern "C" __global__ void emu_selftest_overrun(float* x, int n) {
    if (threadIdx.x == 0) x[n] = 1.0f;
}
