// embedding.cu: out[t,:] = w[ids[t],:] and its scatter-add backward
// dw[ids[t],:] += dout[t,:] (atomicAdd: the same id may repeat). Ids are
// checked against the vocabulary on the host before launch.
#include "common.cuh"

extern "C" __global__ void embedding_fwd(const void* w, int w_dt, const int* ids, float* out, int tokens, int dim) {
  GRID_LOOP(i, (long long)tokens * dim) {
    long long t = i / dim, j = i % dim;
    out[i] = ld(w, (long long)ids[t] * dim + j, w_dt);
  }
}

extern "C" __global__ void embedding_bwd(const float* dout, const int* ids, float* dw, int tokens, int dim) {
  GRID_LOOP(i, (long long)tokens * dim) {
    long long t = i / dim, j = i % dim;
    atomicAdd(&dw[(long long)ids[t] * dim + j], dout[i]);
  }
}
