// rmsnorm.cu, as kernels/cpu/rmsnorm.go. Over rows of x [rows,dim]:
//
//   r = 1/sqrt(mean(x²)+eps) (saved) ;  out = x·r·w
//   dx += r·dout·w − x·r³/dim·Σ(dout·w·x) ;  dw += Σ_rows dout·x·r
//
// One block per row for the forward and dx; dw sums column slices of a band
// of rows per block and atomically adds them.
#include "common.cuh"

extern "C" __global__ void rmsnorm_fwd(const float* x, const void* w, int w_dt, float* out, float* rstd, int rows, int dim, float eps) {
  int row = blockIdx.x;
  if (row >= rows) return;
  const float* xr = x + (long long)row * dim;
  float ss = 0.f;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) ss += xr[j] * xr[j];
  ss = block_sum(ss);
  float r = rsqrtf(ss / (float)dim + eps);
  if (rstd && threadIdx.x == 0) rstd[row] = r;
  float* o = out + (long long)row * dim;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) o[j] = xr[j] * r * ld(w, j, w_dt);
}

extern "C" __global__ void rmsnorm_bwd_dx(const float* dout, const float* x, const void* w, int w_dt, const float* rstd,
                                          float* dx, int rows, int dim) {
  int row = blockIdx.x;
  if (row >= rows) return;
  const float* d = dout + (long long)row * dim;
  const float* xr = x + (long long)row * dim;
  float dot = 0.f;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) dot += d[j] * ld(w, j, w_dt) * xr[j];
  dot = block_sum(dot);
  float r = rstd[row];
  float c = dot * r * r * r / (float)dim;
  float* o = dx + (long long)row * dim;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) o[j] += r * d[j] * ld(w, j, w_dt) - xr[j] * c;
}

// grid (ceil(dim/blockDim.x), bands): block (cx, band) sums rows
// [band*rows_per_band, ...) for its columns.
extern "C" __global__ void rmsnorm_bwd_dw(const float* dout, const float* x, const float* rstd, float* dw, int rows, int dim,
                                          int rows_per_band) {
  int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= dim) return;
  int r0 = blockIdx.y * rows_per_band;
  int r1 = min(rows, r0 + rows_per_band);
  float s = 0.f;
  for (int i = r0; i < r1; i++) s += dout[(long long)i * dim + j] * x[(long long)i * dim + j] * rstd[i];
  if (r1 > r0) atomicAdd(&dw[j], s);
}
