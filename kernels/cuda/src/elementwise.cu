// elementwise.cu: Add, AddScaled, Scale, Mul, dtype conversion (Copy),
// SwiGLU forward/backward, and the per-block partial sums of SumSquares.
// Mirrors kernels/cpu/elementwise.go and swiglu.go.
#include "common.cuh"

extern "C" __global__ void add_f32(const float* a, const float* b, float* out, long long n) {
  GRID_LOOP(i, n) out[i] = a[i] + b[i];
}

// dst += s * src (src F32 or BF16)
extern "C" __global__ void add_scaled(float* dst, const void* src, int src_dt, float s, long long n) {
  GRID_LOOP(i, n) dst[i] += s * ld(src, i, src_dt);
}

extern "C" __global__ void scale_f32(float* b, float s, long long n) {
  GRID_LOOP(i, n) b[i] *= s;
}

// dst *= src (src F32 or BF16)
extern "C" __global__ void mul_f32(float* dst, const void* src, int src_dt, long long n) {
  GRID_LOOP(i, n) dst[i] *= ld(src, i, src_dt);
}

extern "C" __global__ void f32_to_bf16(bf16_t* dst, const float* src, long long n) {
  GRID_LOOP(i, n) dst[i] = f2bf(src[i]);
}

extern "C" __global__ void bf16_to_f32(float* dst, const bf16_t* src, long long n) {
  GRID_LOOP(i, n) dst[i] = bf2f(src[i]);
}

// SwiGLU: out = silu(g)·u, silu(g) = g·σ(g).
extern "C" __global__ void swiglu_fwd(const float* g, const float* u, float* out, long long n) {
  GRID_LOOP(i, n) {
    float s = 1.f / (1.f + expf(-g[i]));
    out[i] = g[i] * s * u[i];
  }
}

// du += dout·silu(g); dg += dout·u·σ(g)·(1 + g·(1−σ(g))). dg or du may be null.
extern "C" __global__ void swiglu_bwd(const float* d, const float* g, const float* u, float* dg, float* du, long long n) {
  GRID_LOOP(i, n) {
    float s = 1.f / (1.f + expf(-g[i]));
    if (du) du[i] += d[i] * g[i] * s;
    if (dg) dg[i] += d[i] * u[i] * s * (1.f + g[i] * (1.f - s));
  }
}

// partial[blockIdx.x] = Σ x² over this block's grid-stride share, in f64.
// The host adds the partials in order (deterministic).
extern "C" __global__ void sum_squares_partial(const void* x, int dt, long long n, double* partial) {
  double s = 0.0;
  GRID_LOOP(i, n) {
    double v = (double)ld(x, i, dt);
    s += v * v;
  }
  s = block_sum_d(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
