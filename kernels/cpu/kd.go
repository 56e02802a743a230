package cpu

import (
	"fmt"
	"math"

	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu/gemm"
)

// LinearKD is the fused lm_head + distillation loss (see kernels.KDArgs),
// chunk by chunk like LinearCrossEntropy: student logits z (and, for a dense
// teacher, teacher logits) for Chunk positions, the per-position loss, dz, and
// then dh, dW (and the low-rank terms) by GEMMs.
//
// The divergence is taken between bucket distributions P (teacher) and Q
// (student) at temperature T: buckets are single tokens for a dense teacher,
// the K ids plus a tail for a sparse one. With G_b = Q_b·∂D/∂Q_b,
//
//	∂D/∂(z_j/T) = (q_j/Q_b(j))·G_b(j) − q_j·Σ_b G_b
//
// where q is the student softmax at T. G per divergence:
//
//	forward KL  D = Σ P log(P/Q)                      G = −P
//	reverse KL  D = Σ Q log(Q/P)                      G = Q (log(Q/P) + 1)
//	JSD(β)      D = β Σ P log(P/M) + (1−β) Σ Q log(Q/M),  M = βP + (1−β)Q
//	                                                  G = (1−β) Q log(Q/M)
//
// and ∂(KDWeight·T²·D)/∂z = KDWeight·T·∂D/∂(z/T). The CE part adds
// (1−KDWeight)·(softmax(z) − onehot(label)).
func (*Backend) LinearKD(b kernels.KDBuffers, labels []int32, a kernels.KDArgs) (float64, float64, int) {
	T, H, V, R := a.Tokens, a.Hidden, a.Vocab, a.Rank
	s := b.Student
	if s.H.Len() != T*H || s.W.Len() != V*H || len(labels) != T || (R > 0 && (s.HR.Len() != T*R || s.WR.Len() != V*R)) {
		panic(fmt.Sprintf("cpu.LinearKD: student operands do not match %+v", a))
	}
	dense := a.TeacherHidden > 0
	if dense == (a.K > 0) {
		panic(fmt.Sprintf("cpu.LinearKD: need exactly one of a dense teacher or top-k (%+v)", a))
	}
	if dense && (b.TH.Len() != T*a.TeacherHidden || b.TW.Len() != V*a.TeacherHidden) {
		panic(fmt.Sprintf("cpu.LinearKD: teacher operands do not match %+v", a))
	}
	if !dense && (len(b.TopKIDs) != T*a.K || len(b.TopKLogProbs) != T*a.K) {
		panic(fmt.Sprintf("cpu.LinearKD: top-k has %d ids, %d log-probs for %+v", len(b.TopKIDs), len(b.TopKLogProbs), a))
	}
	if a.Temperature <= 0 || (a.Kind == kernels.JSD && (a.Beta <= 0 || a.Beta >= 1)) || (a.Renorm && a.Kind != kernels.ForwardKL) {
		panic(fmt.Sprintf("cpu.LinearKD: invalid temperature, beta or kind for %+v", a))
	}
	chunk := a.Chunk
	if chunk <= 0 {
		chunk = 512
	}
	hv, wv := F32(s.H), asF32(s.W)
	var hrv, wrv, thv, twv []float32
	if R > 0 {
		hrv, wrv = F32(s.HR), asF32(s.WR)
	}
	if dense {
		thv, twv = F32(b.TH), asF32(b.TW)
	}
	n0 := min(chunk, T)
	z := make([]float32, n0*V)
	var zt []float32
	if dense {
		zt = make([]float32, n0*V)
	}
	kdRow, ceRow := make([]float64, n0), make([]float64, n0)
	var kdSum, ceSum float64
	count := 0
	for c0 := 0; c0 < T; c0 += chunk {
		c1 := min(c0+chunk, T)
		n := c1 - c0
		counted := 0
		for t := c0; t < c1; t++ {
			if l := labels[t]; l != kernels.IgnoreIndex {
				if l < 0 || int(l) >= V {
					panic(fmt.Sprintf("cpu.LinearKD: label %d at token %d outside vocab %d", l, t, V))
				}
				counted++
			}
		}
		if counted == 0 {
			continue
		}
		zc := z[:n*V]
		gemm.Sgemm(false, true, n, V, H, 1, hv[c0*H:], H, wv, H, 0, zc, V)
		if R > 0 {
			gemm.Sgemm(false, true, n, V, R, 1, hrv[c0*R:], R, wrv, R, 1, zc, V)
		}
		if dense {
			TH := a.TeacherHidden
			gemm.Sgemm(false, true, n, V, TH, 1, thv[c0*TH:], TH, twv, TH, 0, zt[:n*V], V)
		}
		parallelFor(n, 1, func(lo, hi int) {
			var w kdWork
			for r := lo; r < hi; r++ {
				t := c0 + r
				row := zc[r*V : (r+1)*V]
				if labels[t] == kernels.IgnoreIndex {
					clear(row)
					kdRow[r], ceRow[r] = 0, 0
					continue
				}
				var trow []float32
				var ids []int32
				var lps []float32
				if dense {
					trow = zt[r*V : (r+1)*V]
				} else {
					ids, lps = b.TopKIDs[t*a.K:(t+1)*a.K], b.TopKLogProbs[t*a.K:(t+1)*a.K]
				}
				kdRow[r], ceRow[r] = w.row(row, trow, ids, lps, int(labels[t]), a)
			}
		})
		for r := 0; r < n; r++ {
			if labels[c0+r] != kernels.IgnoreIndex {
				kdSum += kdRow[r]
				ceSum += ceRow[r]
				count++
			}
		}
		if s.DH != nil {
			gemm.Sgemm(false, false, n, H, V, 1, zc, V, wv, H, 1, F32(s.DH)[c0*H:], H)
		}
		if s.DW != nil {
			gemm.Sgemm(true, false, V, H, n, 1, zc, V, hv[c0*H:], H, 1, F32(s.DW), H)
		}
		if R > 0 && s.DHR != nil {
			gemm.Sgemm(false, false, n, R, V, 1, zc, V, wrv, R, 1, F32(s.DHR)[c0*R:], R)
		}
		if R > 0 && s.DWR != nil {
			gemm.Sgemm(true, false, V, R, n, 1, zc, V, hrv[c0*R:], R, 1, F32(s.DWR), R)
		}
	}
	return kdSum, ceSum, count
}

// kdWork holds per-goroutine scratch for one position.
type kdWork struct {
	q    []float64 // student softmax at T
	logP []float64 // teacher bucket log-probs
	logQ []float64 // student bucket log-probs
	g    []float64 // G per bucket
	d    []float64 // ∂D/∂(z/T) per token
}

func grow(s []float64, n int) []float64 {
	if cap(s) < n {
		return make([]float64, n)
	}
	return s[:n]
}

// row computes one position's KD and CE values and overwrites z (student
// logits) with dz. trow is the dense teacher's logits, or ids/lps the top-k.
func (w *kdWork) row(z, trow []float32, ids []int32, lps []float32, label int, a kernels.KDArgs) (kd, ce float64) {
	V := len(z)
	invT := 1 / float64(a.Temperature)
	alpha := float64(a.KDWeight)
	// Student at T=1 (CE) and at T (KD).
	m := float64(z[0])
	for _, x := range z {
		m = math.Max(m, float64(x))
	}
	var s1, sT float64
	for _, x := range z {
		s1 += math.Exp(float64(x) - m)
		sT += math.Exp((float64(x) - m) * invT)
	}
	lse1 := m + math.Log(s1)
	lseT := m*invT + math.Log(sT)
	ce = lse1 - float64(z[label])
	w.q = grow(w.q, V)
	for j, x := range z {
		w.q[j] = math.Exp(float64(x)*invT - lseT)
	}

	// Buckets: token j (dense); top-k ids then the tail (sparse).
	var nb int
	if trow != nil {
		nb = V
		w.logP, w.logQ = grow(w.logP, nb), grow(w.logQ, nb)
		mt := float64(trow[0])
		for _, x := range trow {
			mt = math.Max(mt, float64(x))
		}
		var st float64
		for _, x := range trow {
			st += math.Exp((float64(x) - mt) * invT)
		}
		lset := mt*invT + math.Log(st)
		for j := range trow {
			w.logP[j] = float64(trow[j])*invT - lset
			w.logQ[j] = float64(z[j])*invT - lseT
		}
	} else {
		K := len(ids)
		nb = K + 1
		w.logP, w.logQ = grow(w.logP, nb), grow(w.logQ, nb)
		var pk, qk float64
		for i := 0; i < K; i++ {
			pk += math.Exp(float64(lps[i]))
			qk += w.q[ids[i]]
			w.logQ[i] = float64(z[ids[i]])*invT - lseT
		}
		tail := 1 - pk
		for i := 0; i < K; i++ {
			w.logP[i] = float64(lps[i]) * invT
		}
		if a.Renorm {
			w.logP[K] = math.Inf(-1)
		} else {
			w.logP[K] = math.Log(math.Max(tail, 1e-12)) * invT
		}
		lsP := logSumExp(w.logP)
		for i := range w.logP {
			w.logP[i] -= lsP
		}
		w.logQ[K] = math.Log(math.Max(1-qk, 1e-30))
		if a.Renorm {
			nb = K // no tail bucket: forward KL against the renormalized top-k
		}
	}

	// D and G per bucket.
	w.g = grow(w.g, nb)
	beta := float64(a.Beta)
	var sumG float64
	for b := 0; b < nb; b++ {
		lp, lq := w.logP[b], w.logQ[b]
		P, Q := math.Exp(lp), math.Exp(lq)
		var g float64
		switch a.Kind {
		case kernels.ForwardKL:
			if P > 0 {
				kd += P * (lp - lq)
			}
			g = -P
		case kernels.ReverseKL:
			kd += Q * (lq - lp)
			g = Q * (lq - lp + 1)
		case kernels.JSD:
			M := beta*P + (1-beta)*Q
			lm := math.Log(M)
			if P > 0 {
				kd += beta * P * (lp - lm)
			}
			kd += (1 - beta) * Q * (lq - lm)
			g = (1 - beta) * Q * (lq - lm)
		}
		w.g[b] = g
		sumG += g
	}

	// ∂D/∂(z_j/T) per token, then
	// dz_j = GradScale·[(1−α)(softmax(z)_j − 1[j=y]) + α·T·∂D/∂(z_j/T)].
	w.d = grow(w.d, V)
	if trow != nil {
		for j := range w.d {
			w.d[j] = w.g[j] - w.q[j]*sumG
		}
	} else {
		tailRatio := 0.0 // tokens outside the top-k share the tail bucket (renorm: no bucket)
		if !a.Renorm {
			tailRatio = w.g[len(ids)] / math.Exp(w.logQ[len(ids)])
		}
		for j := range w.d {
			w.d[j] = w.q[j] * (tailRatio - sumG)
		}
		for i, id := range ids {
			w.d[id] = w.g[i] - w.q[id]*sumG
		}
	}
	scale := float64(a.GradScale)
	kdScale := alpha * float64(a.Temperature)
	for j := range z {
		z[j] = float32(scale * ((1-alpha)*math.Exp(float64(z[j])-lse1) + kdScale*w.d[j]))
	}
	z[label] -= float32(scale * (1 - alpha))
	return kd, ce
}

func logSumExp(v []float64) float64 {
	m := math.Inf(-1)
	for _, x := range v {
		m = math.Max(m, x)
	}
	if math.IsInf(m, -1) {
		return m
	}
	var s float64
	for _, x := range v {
		s += math.Exp(x - m)
	}
	return m + math.Log(s)
}
