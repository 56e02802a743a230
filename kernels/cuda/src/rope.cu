// rope.cu: rotate-half RoPE (HF Llama) on x [tokens, heads, headDim], as
// kernels/cpu/rope.go. With h = headDim/2 and θ = pos·invFreq[d]:
//
//   out[d] = x[d]·cosθ − x[d+h]·sinθ ;  out[d+h] = x[d+h]·cosθ + x[d]·sinθ
//
// sign = −1 rotates by −θ (the VJP). The angle is formed in f64 as on the
// CPU (positions reach 10⁵ and f32 would lose the phase). out may alias x:
// each thread reads its pair before writing it.
#include "common.cuh"

extern "C" __global__ void rope(const float* x, float* out, const int* pos, const float* inv_freq, int tokens, int heads,
                                int head_dim, double sign) {
  int half = head_dim / 2;
  GRID_LOOP(i, (long long)tokens * heads * half) {
    long long d = i % half;
    long long th = i / half;  // t*heads + h
    long long t = th / heads;
    double s, c;
    sincos((double)pos[t] * (double)inv_freq[d], &s, &c);
    float cs = (float)c, sn = (float)(sign * s);
    long long base = th * head_dim;
    float a = x[base + d], b = x[base + d + half];
    out[base + d] = a * cs - b * sn;
    out[base + d + half] = b * cs + a * sn;
  }
}
