// common.cuh: helpers shared by every kernel family. Compiled by NVRTC
// (prepended to each .cu by compile.go) or by nvcc for the compile check.
// No CUDA headers are needed: bf16 is handled as raw 16-bit words.
#pragma once

typedef unsigned short bf16_t;

// NVRTC has no <math.h>; nvcc does. Device code only.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// Storage types of a buffer, as kernels.DType.
#define DT_F32 0
#define DT_BF16 1

__device__ __forceinline__ float bf2f(bf16_t h) { return __uint_as_float(((unsigned int)h) << 16); }

// Round to nearest even; NaN stays a quiet NaN (as kernels.F32ToBF16).
__device__ __forceinline__ bf16_t f2bf(float f) {
  unsigned int u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
  unsigned int rounding = 0x7fffu + ((u >> 16) & 1u);
  return (bf16_t)((u + rounding) >> 16);
}

// Load element i of a buffer of storage type dt as f32.
__device__ __forceinline__ float ld(const void* p, long long i, int dt) {
  return dt == DT_BF16 ? bf2f(((const bf16_t*)p)[i]) : ((const float*)p)[i];
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide reductions; every thread gets the result. blockDim.x must be a
// multiple of 32 (at most 1024). They end with a barrier, so they can be
// called back to back.
__device__ float block_sum(float v) {
  __shared__ float sh[32];
  __shared__ float res;
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) sh[w] = v;
  __syncthreads();
  if (w == 0) {
    float x = lane < nw ? sh[lane] : 0.f;
    x = warp_sum(x);
    if (lane == 0) res = x;
  }
  __syncthreads();
  float r = res;
  __syncthreads();
  return r;
}

__device__ double block_sum_d(double v) {
  __shared__ double sh[32];
  __shared__ double res;
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum_d(v);
  if (lane == 0) sh[w] = v;
  __syncthreads();
  if (w == 0) {
    double x = lane < nw ? sh[lane] : 0.0;
    x = warp_sum_d(x);
    if (lane == 0) res = x;
  }
  __syncthreads();
  double r = res;
  __syncthreads();
  return r;
}

__device__ float block_max(float v) {
  __shared__ float sh[32];
  __shared__ float res;
  int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  if (lane == 0) sh[w] = v;
  __syncthreads();
  if (w == 0) {
    float x = lane < nw ? sh[lane] : -INFINITY;
    x = warp_max(x);
    if (lane == 0) res = x;
  }
  __syncthreads();
  float r = res;
  __syncthreads();
  return r;
}

// Grid-stride loop over [0, n).
#define GRID_LOOP(i, n) \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n); i += (long long)gridDim.x * blockDim.x)
