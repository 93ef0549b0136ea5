// Graph mode's check (graphs.rs): the buffers after a graph's launch against the same buffers after
// the run issued call by call, word by word. out[0] counts the words that differ in any bit; out[1]
// holds ~i of the first such word i (both start at 0; the largest ~i is the smallest i). Words, not
// floats: NaNs and -0 compare too.
extern "C" __global__ void words_differ(const unsigned* a, const unsigned* b, i64 n, u64* out) {
    u64 count = 0, first = ~0ull;
    FOR_EACH(i, n) {
        if (a[i] != b[i]) {
            count += 1;
            if ((u64)i < first) first = (u64)i;
        }
    }
    if (count > 0) {
        atomicAdd(&out[0], count);
        atomicMax(&out[1], ~first);
    }
}
