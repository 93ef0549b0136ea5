// Row-indexed kernels: embeddings, gathers and scatters, softmax cross-entropy.
// Indices arrive as int32 device arrays uploaded by the host for each call.

extern "C" __global__ void embedding_forward_f32(float* out, const float* word, const float* pos, const float* typ,
                                                 const int* ids, const int* pos_ids, const int* type_ids,
                                                 int rows, int h) {
    FOR_EACH(i, (i64)rows * h) {
        const int r = (int)(i / h), j = (int)(i % h);
        out[i] = word[(i64)ids[r] * h + j] + pos[(i64)pos_ids[r] * h + j] + typ[(i64)type_ids[r] * h + j];
    }
}

// table[idx[r], :] += dout[r, :] for rows whose index is not `skip` (the padding row, as
// nn.Embedding(padding_idx=...)); `has_skip` = 0 skips nothing. Repeated indices add up (atomics).
extern "C" __global__ void embedding_backward_f32(float* table, const float* dout, const int* idx, int rows, int h,
                                                  int skip, int has_skip) {
    FOR_EACH(i, (i64)rows * h) {
        const int r = (int)(i / h), j = (int)(i % h);
        const int row = idx[r];
        if (has_skip && row == skip) continue;
        atomicAdd(&table[(i64)row * h + j], dout[i]);
    }
}

extern "C" __global__ void gather_rows_f32(float* out, const float* inp, const int* rows_idx, int rows, int n) {
    FOR_EACH(i, (i64)rows * n) {
        const int r = (int)(i / n), j = (int)(i % n);
        out[i] = inp[(i64)rows_idx[r] * n + j];
    }
}

extern "C" __global__ void scatter_add_rows_f32(float* dinp, const float* dout, const int* rows_idx, int rows, int n) {
    FOR_EACH(i, (i64)rows * n) {
        const int r = (int)(i / n), j = (int)(i % n);
        atomicAdd(&dinp[(i64)rows_idx[r] * n + j], dout[i]);
    }
}

// One thread per row (rows = batch size, n = classes: small). Probabilities in f64 as the CPU does;
// row_loss[r] = log(sum exp(z - max)) - (z[y] - max), added up on the host.
extern "C" __global__ void softmax_xent_forward_f32(float* probs, const float* logits, const int* labels, int rows,
                                                    int n, double* row_loss, float* row_loss32) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const float* z = logits + (i64)r * n;
    float* p = probs + (i64)r * n;
    float mx = -INFINITY;
    for (int j = 0; j < n; j++) mx = fmaxf(mx, z[j]);
    double sum = 0.0;
    for (int j = 0; j < n; j++) {
        const double e = exp((double)(z[j] - mx));
        p[j] = (float)e;
        sum += e;
    }
    for (int j = 0; j < n; j++) p[j] = (float)((double)p[j] / sum);
    const double loss = log(sum) - (double)(z[labels[r]] - mx);
    if (row_loss) row_loss[r] = loss;
    if (row_loss32) row_loss32[r] = (float)loss;
}

extern "C" __global__ void softmax_xent_backward_f32(float* dlogits, const float* probs, const int* labels, int rows,
                                                     int n) {
    const float inv = 1.0f / rows;
    FOR_EACH(i, (i64)rows * n) {
        const int r = (int)(i / n), j = (int)(i % n);
        dlogits[i] = (probs[i] - (labels[r] == j ? 1.0f : 0.0f)) * inv;
    }
}
