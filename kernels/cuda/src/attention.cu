// attention.cu: causal grouped-query flash attention over packed rows, as
// kernels/cpu/attention.go (layouts in kernels.AttnArgs). For query i of head
// h (kv head kh = h/(H/KVH)) over allowed keys j ∈ [first_i, qoff+i], with
// first_i = doc_start[b, qoff+i] (0 without documents):
//
//   s_j = scale·q_i·k_j ;  lse_i = log Σ_j exp(s_j) ;  out_i = Σ_j exp(s_j − lse_i)·v_j
//
// Backward (probabilities recomputed from lse, FlashAttention-2 style):
//
//   D_i = dout_i·out_i ;  p_j = exp(s_j − lse_i) ;  ds_j = p_j·(dout_i·v_j − D_i)·scale
//   dq_i += Σ_j ds_j·k_j ;  dk_j += Σ_i ds_j·q_i ;  dv_j += Σ_i p_j·dout_i
//
// Work split: the forward and dq give one warp to one query row (online
// softmax over key tiles staged in shared memory; lane l scores key l of a
// 32-key tile and owns dims d = l + 32r of the accumulator). dk/dv give one
// warp to one key, looping over every query tile and every head of its GQA
// group, so no two warps write the same dk/dv row: no atomics, deterministic.
// head_dim ≤ 32·MAXR = 256. CUDA cores only: a tensor-core (mma) version is
// future work.
#include "common.cuh"

#define KT 32   // keys per shared tile
#define QW 8    // warps (queries or keys) per block
#define MAXR 8  // accumulator registers per lane: head_dim ≤ 256

__device__ __forceinline__ int key_first(const int* doc_start, int b, int Tk, int pos) {
  return doc_start ? doc_start[(long long)b * Tk + pos] : 0;
}

// grid (ceil(Tq/QW), H, B), block QW*32, dynamic shared
// (KT*(HD+1) + KT*HD + QW*HD) floats.
extern "C" __global__ void attn_fwd(const float* q, const float* k, const float* v, float* out, float* lse,
                                    const int* doc_start, int Tq, int Tk, int H, int KVH, int HD, int qoff, float scale) {
  extern __shared__ float smem[];
  __shared__ int s_first;
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int b = blockIdx.z, h = blockIdx.y, kh = h / (H / KVH);
  int i = blockIdx.x * QW + warp;
  float* Ks = smem;
  float* Vs = Ks + KT * (HD + 1);
  float* Qs = Vs + KT * HD + warp * HD;
  bool active = i < Tq;
  int first = 0, last = -1;
  if (threadIdx.x == 0) s_first = 0x7fffffff;
  __syncthreads();
  if (active) {
    last = qoff + i;
    first = key_first(doc_start, b, Tk, last);
    for (int d = lane; d < HD; d += 32) Qs[d] = q[(((long long)b * Tq + i) * H + h) * HD + d];
    if (lane == 0) atomicMin(&s_first, first);
  }
  __syncthreads();
  int blockFirst = s_first;
  int blockLast = qoff + min(Tq, (int)blockIdx.x * QW + QW) - 1;
  float m = -INFINITY, l = 0.f;
  float acc[MAXR];
#pragma unroll
  for (int r = 0; r < MAXR; r++) acc[r] = 0.f;
  for (int j0 = blockFirst; j0 <= blockLast; j0 += KT) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < KT * HD; idx += blockDim.x) {
      int jj = idx / HD, d = idx % HD, j = j0 + jj;
      float kv = 0.f, vv = 0.f;
      if (j <= blockLast) {
        long long off = (((long long)b * Tk + j) * KVH + kh) * HD + d;
        kv = k[off];
        vv = v[off];
      }
      Ks[jj * (HD + 1) + d] = kv;
      Vs[jj * HD + d] = vv;
    }
    __syncthreads();
    if (!active || j0 > last || j0 + KT - 1 < first) continue;  // warp-uniform
    int j = j0 + lane;
    float s = -INFINITY;
    if (j >= first && j <= last) {
      float dot = 0.f;
      for (int d = 0; d < HD; d++) dot += Qs[d] * Ks[lane * (HD + 1) + d];
      s = dot * scale;
    }
    float mnew = fmaxf(m, warp_max(s));  // finite: the tile holds an allowed key
    float p = (j >= first && j <= last) ? expf(s - mnew) : 0.f;
    float corr = expf(m - mnew);
    l = l * corr + warp_sum(p);
#pragma unroll
    for (int r = 0; r < MAXR; r++) acc[r] *= corr;
    for (int jj = 0; jj < KT; jj++) {
      float pj = __shfl_sync(0xffffffffu, p, jj);
      if (pj == 0.f) continue;  // uniform across the warp
#pragma unroll
      for (int r = 0; r < MAXR; r++) {
        int d = lane + 32 * r;
        if (d < HD) acc[r] += pj * Vs[jj * HD + d];
      }
    }
    m = mnew;
  }
  if (!active) return;
  float inv = 1.f / l;
  long long o = (((long long)b * Tq + i) * H + h) * HD;
#pragma unroll
  for (int r = 0; r < MAXR; r++) {
    int d = lane + 32 * r;
    if (d < HD) out[o + d] = acc[r] * inv;
  }
  if (lse && lane == 0) lse[((long long)b * H + h) * Tq + i] = m + logf(l);
}

// D[b,h,i] = dout_i·out_i; one warp per (b, i, h), grid ceil(B*Tq*H/QW), block QW*32.
extern "C" __global__ void attn_bwd_dot(const float* out, const float* dout, float* D, int B, int Tq, int H, int HD) {
  long long row = (long long)blockIdx.x * QW + (threadIdx.x >> 5);
  int lane = threadIdx.x & 31;
  if (row >= (long long)B * Tq * H) return;
  float s = 0.f;
  for (int d = lane; d < HD; d += 32) s += out[row * HD + d] * dout[row * HD + d];
  s = warp_sum(s);
  if (lane == 0) {
    long long h = row % H, bi = row / H, i = bi % Tq, b = bi / Tq;
    D[(b * H + h) * Tq + i] = s;
  }
}

// dq += Σ_j ds_j·k_j. grid (ceil(Tq/QW), H, B), block QW*32, dynamic shared
// (2*KT*(HD+1) + 2*QW*HD) floats.
extern "C" __global__ void attn_bwd_dq(const float* q, const float* k, const float* v, const float* lse, const float* D,
                                       const float* dout, float* dq, const int* doc_start, int Tq, int Tk, int H, int KVH,
                                       int HD, int qoff, float scale) {
  extern __shared__ float smem[];
  __shared__ int s_first;
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int b = blockIdx.z, h = blockIdx.y, kh = h / (H / KVH);
  int i = blockIdx.x * QW + warp;
  float* Ks = smem;
  float* Vs = Ks + KT * (HD + 1);
  float* Qs = Vs + KT * (HD + 1) + warp * 2 * HD;
  float* dOs = Qs + HD;
  bool active = i < Tq;
  int first = 0, last = -1;
  float li = 0.f, Di = 0.f;
  long long qrow = (((long long)b * Tq + i) * H + h) * HD;
  if (threadIdx.x == 0) s_first = 0x7fffffff;
  __syncthreads();
  if (active) {
    last = qoff + i;
    first = key_first(doc_start, b, Tk, last);
    for (int d = lane; d < HD; d += 32) {
      Qs[d] = q[qrow + d];
      dOs[d] = dout[qrow + d];
    }
    li = lse[((long long)b * H + h) * Tq + i];
    Di = D[((long long)b * H + h) * Tq + i];
    if (lane == 0) atomicMin(&s_first, first);
  }
  __syncthreads();
  int blockFirst = s_first;
  int blockLast = qoff + min(Tq, (int)blockIdx.x * QW + QW) - 1;
  float acc[MAXR];
#pragma unroll
  for (int r = 0; r < MAXR; r++) acc[r] = 0.f;
  for (int j0 = blockFirst; j0 <= blockLast; j0 += KT) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < KT * HD; idx += blockDim.x) {
      int jj = idx / HD, d = idx % HD, j = j0 + jj;
      float kv = 0.f, vv = 0.f;
      if (j <= blockLast) {
        long long off = (((long long)b * Tk + j) * KVH + kh) * HD + d;
        kv = k[off];
        vv = v[off];
      }
      Ks[jj * (HD + 1) + d] = kv;
      Vs[jj * (HD + 1) + d] = vv;
    }
    __syncthreads();
    if (!active || j0 > last || j0 + KT - 1 < first) continue;
    int j = j0 + lane;
    float ds = 0.f;
    if (j >= first && j <= last) {
      float sq = 0.f, dp = 0.f;
      for (int d = 0; d < HD; d++) {
        sq += Qs[d] * Ks[lane * (HD + 1) + d];
        dp += dOs[d] * Vs[lane * (HD + 1) + d];
      }
      float p = expf(sq * scale - li);
      ds = p * (dp - Di) * scale;
    }
    for (int jj = 0; jj < KT; jj++) {
      float dsj = __shfl_sync(0xffffffffu, ds, jj);
      if (dsj == 0.f) continue;
#pragma unroll
      for (int r = 0; r < MAXR; r++) {
        int d = lane + 32 * r;
        if (d < HD) acc[r] += dsj * Ks[jj * (HD + 1) + d];
      }
    }
  }
  if (!active) return;
#pragma unroll
  for (int r = 0; r < MAXR; r++) {
    int d = lane + 32 * r;
    if (d < HD) dq[qrow + d] += acc[r];
  }
}

// dk_j += Σ ds·q_i, dv_j += Σ p·dout_i over every query i and every head of
// kv head kh's group. grid (ceil(Tk/QW), KVH, B), block QW*32, dynamic shared
// (2*KT*(HD+1) + 2*QW*HD + 3*KT) floats. dk or dv may be null.
extern "C" __global__ void attn_bwd_dkdv(const float* q, const float* k, const float* v, const float* lse, const float* D,
                                         const float* dout, float* dk, float* dv, const int* doc_start, int Tq, int Tk, int H,
                                         int KVH, int HD, int qoff, float scale) {
  extern __shared__ float smem[];
  int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int b = blockIdx.z, kh = blockIdx.y, group = H / KVH;
  int j = blockIdx.x * QW + warp;
  float* Qt = smem;
  float* dOt = Qt + KT * (HD + 1);
  float* Kw = dOt + KT * (HD + 1) + warp * 2 * HD;
  float* Vw = Kw + HD;
  float* Lt = smem + 2 * KT * (HD + 1) + 2 * QW * HD;
  float* Dt = Lt + KT;
  int* Ft = (int*)(Dt + KT);
  bool active = j < Tk;
  long long krow = (((long long)b * Tk + j) * KVH + kh) * HD;
  if (active)
    for (int d = lane; d < HD; d += 32) {
      Kw[d] = k[krow + d];
      Vw[d] = v[krow + d];
    }
  float adk[MAXR], adv[MAXR];
#pragma unroll
  for (int r = 0; r < MAXR; r++) adk[r] = adv[r] = 0.f;
  int iStart = max(0, (int)blockIdx.x * QW - qoff);  // query i sees key j only if qoff+i >= j
  for (int h = kh * group; h < (kh + 1) * group; h++) {
    for (int i0 = iStart; i0 < Tq; i0 += KT) {
      __syncthreads();
      for (int idx = threadIdx.x; idx < KT * HD; idx += blockDim.x) {
        int ii = idx / HD, d = idx % HD, i = i0 + ii;
        float qv = 0.f, dv0 = 0.f;
        if (i < Tq) {
          long long off = (((long long)b * Tq + i) * H + h) * HD + d;
          qv = q[off];
          dv0 = dout[off];
        }
        Qt[ii * (HD + 1) + d] = qv;
        dOt[ii * (HD + 1) + d] = dv0;
      }
      for (int ii = threadIdx.x; ii < KT; ii += blockDim.x) {
        int i = i0 + ii;
        bool ok = i < Tq;
        Lt[ii] = ok ? lse[((long long)b * H + h) * Tq + i] : 0.f;
        Dt[ii] = ok ? D[((long long)b * H + h) * Tq + i] : 0.f;
        Ft[ii] = ok ? key_first(doc_start, b, Tk, qoff + i) : 0x7fffffff;
      }
      __syncthreads();
      if (!active) continue;
      int i = i0 + lane;
      float p = 0.f, ds = 0.f;
      if (i < Tq && qoff + i >= j && Ft[lane] <= j) {
        float sq = 0.f, dp = 0.f;
        for (int d = 0; d < HD; d++) {
          sq += Qt[lane * (HD + 1) + d] * Kw[d];
          dp += dOt[lane * (HD + 1) + d] * Vw[d];
        }
        p = expf(sq * scale - Lt[lane]);
        ds = p * (dp - Dt[lane]) * scale;
      }
      for (int ii = 0; ii < KT; ii++) {
        float pi = __shfl_sync(0xffffffffu, p, ii);
        float dsi = __shfl_sync(0xffffffffu, ds, ii);
        if (pi == 0.f && dsi == 0.f) continue;
#pragma unroll
        for (int r = 0; r < MAXR; r++) {
          int d = lane + 32 * r;
          if (d < HD) {
            adv[r] += pi * dOt[ii * (HD + 1) + d];
            adk[r] += dsi * Qt[ii * (HD + 1) + d];
          }
        }
      }
    }
  }
  if (!active) return;
#pragma unroll
  for (int r = 0; r < MAXR; r++) {
    int d = lane + 32 * r;
    if (d < HD) {
      if (dk) dk[krow + d] += adk[r];
      if (dv) dv[krow + d] += adv[r];
    }
  }
}
