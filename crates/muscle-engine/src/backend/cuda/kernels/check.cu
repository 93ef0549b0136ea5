// Graph mode's check (graphs.rs): a checksum of a buffer's bytes, taken after a graph's launch and
// after the same run issued call by call. The sum, wrapping, of a mix of each 16-bit half's index
// and value: integer adds commute, so the threads' order does not change it; two different
// contents give the same sum with a chance of about 2^-64. Halves, not floats: NaNs and -0 count
// too, and bf16 buffers of odd length are read to their end and no further.
__device__ __forceinline__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

extern "C" __global__ void halves_checksum(const unsigned short* a, i64 n, u64* out) {
    u64 sum = 0;
    FOR_EACH(i, n) sum += mix64(((u64)i << 16) ^ (u64)a[i]);
    if (sum != 0) atomicAdd(out, sum);
}
