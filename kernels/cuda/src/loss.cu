// loss.cu: the row-wise halves of the fused lm_head losses. The host makes a
// chunk of logits z [n, V] with cuBLAS, these kernels turn each row into its
// loss and overwrite it with dz, and cuBLAS then forms dh += dz·W and
// dW += dzᵀ·h. One block per row; per-row losses go to f64 arrays the host
// adds in order (deterministic, as the CPU backend).
//
// ce_rows, as kernels/cpu/crossentropy.go:
//   loss = logsumexp(z) − z[label] ;  dz = (softmax(z) − onehot(label))·grad_scale
//
// kd_rows, as kernels/cpu/kd.go (read its comment for the derivation): with
// q the student softmax at temperature T, P/Q teacher/student bucket
// distributions and G_b = Q_b·∂D/∂Q_b,
//   dz_j = grad_scale·[(1−α)(softmax(z)_j − 1[j=y]) + α·T·((q_j/Q_b(j))·G_b(j) − q_j·ΣG)]
#include "common.cuh"

#define IGNORE_INDEX (-100)
#define KIND_FKL 0
#define KIND_RKL 1
#define KIND_JSD 2

extern "C" __global__ void ce_rows(float* z, int V, const int* labels, float grad_scale, double* row_loss) {
  int r = blockIdx.x;
  float* row = z + (long long)r * V;
  int lab = labels[r];
  if (lab == IGNORE_INDEX) {
    for (int j = threadIdx.x; j < V; j += blockDim.x) row[j] = 0.f;
    if (threadIdx.x == 0) row_loss[r] = 0.0;
    return;
  }
  float target = row[lab];
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, row[j]);
  float m = block_max(mx);
  double s = 0.0;
  for (int j = threadIdx.x; j < V; j += blockDim.x) s += (double)expf(row[j] - m);
  double sum = block_sum_d(s);  // ends with a barrier: every read of row is done
  if (threadIdx.x == 0) row_loss[r] = (double)m + log(sum) - (double)target;
  float k = grad_scale / (float)sum;
  for (int j = threadIdx.x; j < V; j += blockDim.x) row[j] = expf(row[j] - m) * k;
  __syncthreads();
  if (threadIdx.x == 0) row[lab] -= grad_scale;
}

// One block per row. z: student logits [n,V] (overwritten by dz); zt: dense
// teacher logits [n,V] or null; ids/lps: sparse top-k [n,K] or null.
// Dynamic shared for sparse: 3*(K+1) doubles + 2*K floats.
extern "C" __global__ void kd_rows(float* z, const float* zt, const int* ids, const float* lps, const int* labels, int V,
                                   int K, int kind, int renorm, float beta_f, float temperature, float kd_weight,
                                   float grad_scale, double* kd_out, double* ce_out) {
  extern __shared__ double dsm[];
  __shared__ double s_kd, s_sumG, s_tail;
  int r = blockIdx.x;
  float* row = z + (long long)r * V;
  int lab = labels[r];
  if (lab == IGNORE_INDEX) {
    for (int j = threadIdx.x; j < V; j += blockDim.x) row[j] = 0.f;
    if (threadIdx.x == 0) kd_out[r] = ce_out[r] = 0.0;
    return;
  }
  float invT = 1.f / temperature;
  double alpha = kd_weight, beta = beta_f, scale = grad_scale;
  double kdScale = alpha * (double)temperature;
  float target = row[lab];

  // Student softmax at 1 and at T.
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, row[j]);
  float m = block_max(mx);
  double a = 0.0, aT = 0.0;
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    a += (double)expf(row[j] - m);
    if (temperature != 1.f) aT += (double)expf(invT * (row[j] - m));
  }
  double s1 = block_sum_d(a);
  double sT = temperature != 1.f ? block_sum_d(aT) : s1;
  double lse1 = (double)m + log(s1);
  double lseT = temperature != 1.f ? (double)(m * invT) + log(sT) : lse1;
  double ce = lse1 - (double)target;
  // q1_j = exp(z_j − lse1); logq_j = z_j/T − lseT; qT_j = exp(logq_j).
#define Q1(j) exp((double)row[j] - lse1)
#define LOGQ(j) ((double)(row[j] * invT) - lseT)

  if (zt != nullptr) {
    const float* trow = zt + (long long)r * V;
    float tx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) tx = fmaxf(tx, trow[j]);
    float mt = block_max(tx);
    double st = 0.0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) st += (double)expf(invT * (trow[j] - mt));
    double lset = (double)(mt * invT) + log(block_sum_d(st));
#define LOGP(j) ((double)(trow[j] * invT) - lset)
    double kd = 0.0, sg = 0.0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
      double lp = LOGP(j), lq = LOGQ(j), p = exp(lp), q = exp(lq);
      if (kind == KIND_FKL) {
        if (p > 0) kd += p * (lp - lq);
      } else if (kind == KIND_RKL) {
        kd += q * (lq - lp);
        sg += q * (lq - lp + 1);
      } else {
        double lm = log(beta * p + (1 - beta) * q);
        if (p > 0) kd += beta * p * (lp - lm);
        double g = (1 - beta) * q * (lq - lm);
        kd += g;
        sg += g;
      }
    }
    kd = block_sum_d(kd);
    double sumG = block_sum_d(sg);  // barrier: all reads of other rows' elements done
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
      double lp = LOGP(j), lq = LOGQ(j), p = exp(lp), q = exp(lq), dkd;
      if (kind == KIND_FKL) {
        dkd = q - p;
      } else if (kind == KIND_RKL) {
        dkd = q * (lq - lp + 1) - q * sumG;
      } else {
        double lm = log(beta * p + (1 - beta) * q);
        dkd = (1 - beta) * q * (lq - lm) - q * sumG;
      }
      row[j] = (float)(scale * ((1 - alpha) * Q1(j) + kdScale * dkd));
    }
#undef LOGP
    if (threadIdx.x == 0) s_kd = kd;
  } else {
    // Sparse teacher: K ids + a tail bucket (none with renorm).
    double* logP = dsm;
    double* logQ = logP + (K + 1);
    double* gb = logQ + (K + 1);
    float* qid = (float*)(gb + (K + 1));
    float* q1id = qid + K;
    const int* rid = ids + (long long)r * K;
    const float* rlp = lps + (long long)r * K;
    double pk = 0.0, qk = 0.0;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
      int id = rid[i];
      double lq = LOGQ(id);
      pk += exp((double)rlp[i]);
      qk += exp(lq);
      logP[i] = (double)rlp[i] * invT;
      logQ[i] = lq;
      qid[i] = (float)exp(lq);
      q1id[i] = (float)Q1(id);
    }
    pk = block_sum_d(pk);
    qk = block_sum_d(qk);  // barrier: shared arrays complete
    if (threadIdx.x == 0) {
      int nb = K + 1;
      if (renorm) {
        logP[K] = -INFINITY;
        nb = K;
      } else {
        logP[K] = log(fmax(1 - pk, 1e-12)) * invT;
      }
      double mP = -INFINITY;
      for (int i = 0; i <= K; i++) mP = fmax(mP, logP[i]);
      double sP = 0.0;
      for (int i = 0; i <= K; i++) sP += exp(logP[i] - mP);
      double lsP = mP + log(sP);
      for (int i = 0; i <= K; i++) logP[i] -= lsP;
      logQ[K] = log(fmax(1 - qk, 1e-30));
      double kd = 0.0, sumG = 0.0;
      for (int bk = 0; bk < nb; bk++) {
        double lp = logP[bk], lq = logQ[bk], P = exp(lp), Q = exp(lq), g;
        if (kind == KIND_FKL) {
          if (P > 0) kd += P * (lp - lq);
          g = -P;
        } else if (kind == KIND_RKL) {
          kd += Q * (lq - lp);
          g = Q * (lq - lp + 1);
        } else {
          double lm = log(beta * P + (1 - beta) * Q);
          if (P > 0) kd += beta * P * (lp - lm);
          g = (1 - beta) * Q * (lq - lm);
          kd += g;
        }
        gb[bk] = g;
        sumG += g;
      }
      s_kd = kd;
      s_sumG = sumG;
      s_tail = renorm ? 0.0 : gb[K] / exp(logQ[K]);
    }
    __syncthreads();
    double sumG = s_sumG, tail = s_tail;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
      double q = exp(LOGQ(j));
      row[j] = (float)(scale * ((1 - alpha) * Q1(j) + kdScale * (q * (tail - sumG))));
    }
    __syncthreads();
    for (int i = threadIdx.x; i < K; i += blockDim.x)
      row[rid[i]] = (float)(scale * ((1 - alpha) * (double)q1id[i] + kdScale * (gb[i] - (double)qid[i] * sumG)));
  }
#undef Q1
#undef LOGQ
  __syncthreads();
  if (threadIdx.x == 0) {
    row[lab] -= (float)(scale * (1 - alpha));
    kd_out[r] = s_kd;
    ce_out[r] = ce;
  }
}
