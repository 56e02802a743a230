// adamw.cu: one decoupled-weight-decay Adam step, as kernels/cpu/adamw.go:
//
//   p ← p·decay                         decay = 1 − lr·wd
//   m ← β1·m + (1−β1)·g ;  v ← β2·v + (1−β2)·g²
//   p ← p − stepSize · m / (sqrt(v)/bc2s + eps)
//
// stepSize = lr/(1−β1ᵗ) and bc2s = sqrt(1−β2ᵗ) come from the host (f64 there).
// p is F32 or BF16 (updated in f32, rounded back).
#include "common.cuh"

extern "C" __global__ void adamw(void* p, int p_dt, const float* g, float* m, float* v, long long n,
                                 float beta1, float beta2, float eps, float decay, float step_size, float bc2s) {
  GRID_LOOP(i, n) {
    float w = ld(p, i, p_dt) * decay;
    float gi = g[i];
    float mi = beta1 * m[i] + (1.f - beta1) * gi;
    float vi = beta2 * v[i] + (1.f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float denom = sqrtf(vi) / bc2s + eps;
    w -= step_size * mi / denom;
    if (p_dt == DT_BF16) ((bf16_t*)p)[i] = f2bf(w);
    else ((float*)p)[i] = w;
  }
}
