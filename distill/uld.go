package distill

import (
	"fmt"
	"math"

	"github.com/llamatune/llamatune/kernels/cpu/vmath"
)

// DefaultULDTopK is how many sorted probabilities the ULD loss compares per
// position when distill.top_k is 0: the tails beyond it carry little mass.
const DefaultULDTopK = 128

// Universal Logit Distillation (Boizard et al. 2024, "Towards Cross-Tokenizer
// Distillation: the Universal Logit Distillation Loss") at one position.
//
// Shapes: z [V] the student's logits at the position (V its vocabulary), q [k]
// the teacher's k largest next-token probabilities at temperature T, in
// descending order (zero-padded when the teacher's vocabulary is smaller),
// dz [V] the gradient.
//
// Forward:
//
//	p = softmax(z/T)                        (over the student's vocabulary)
//	π = the ids of p's k largest, descending (ties: smaller id first)
//	P = 1 − Σ_{i<k} p[π_i],  Q = 1 − Σ_i q_i  (the tails' mass)
//	ULD = Σ_{i<k} |p[π_i] − q_i| + |P − Q|   (ranks past V count as 0)
//
// The sorted probabilities are compared because the vocabularies differ: the
// L1 distance of the two sorted vectors is the closed-form Wasserstein-1
// distance with a uniform transport cost. Only the top k are sorted (the
// tails are tiny); the tails' masses are compared as one bucket, as the
// sparse KD loss does, so the student cannot hide mass past rank k. With k
// at least both vocabularies both tails are empty and this is exact ULD;
// otherwise it is a lower bound of it (|ΣP − ΣQ| ≤ Σ|P − Q|).
//
// Backward (the sort is a fixed permutation almost everywhere, so the
// gradient flows through it): g[π_i] = sign(p[π_i] − q_i) scattered back,
// g_j = sign(P − Q) at every j past rank k, and the softmax's VJP at T:
//
//	dULD/dz_j = (1/T)·p_j·(g_j − Σ_l p_l·g_l)
//
// uldRow returns ULD and, when dz is non-nil, adds scale·dULD/dz into it.
// scratch holds V floats, ids and ps k entries, heap is selectTopK's.
func uldRow(z []float32, invT float32, q []float32, dz []float32, scale float32, scratch []float32, ids []int32, ps []float32, heap *[]topEntry) float64 {
	k, V := len(q), len(z)
	if len(scratch) != V || len(ids) != k || len(ps) != k {
		panic(fmt.Sprintf("distill.uldRow: z [%d], q [%d], scratch [%d], ids [%d], ps [%d]", V, k, len(scratch), len(ids), len(ps)))
	}
	ks := min(k, V) // the student's sorted vector has V entries; the rest are 0
	S := sortedProbs(z, invT, scratch, ids[:ks], ps[:ks], heap)
	// scratch[j]·S⁻¹ = p_j; ps = the top ks of p, descending.
	var loss, dot, P, Q float64 = 0, 0, 1, 1
	for i := 0; i < k; i++ {
		var p float64
		if i < ks {
			p = float64(ps[i])
		}
		P -= p
		Q -= float64(q[i])
		d := p - float64(q[i])
		loss += math.Abs(d)
		if i < ks {
			ps[i] = float32(sign(d)) // reuse: the sign at rank i
			dot += p * sign(d)
		}
	}
	P, Q = max(P, 0), max(Q, 0)
	st := sign(P - Q) // the tail's sign
	if ks == V {      // no student tail: the teacher's is compared with nothing
		P, st = 0, 0
	}
	loss += math.Abs(P - Q)
	dot += P * st
	if dz == nil {
		return loss
	}
	// Every j as if in the tail, (1/T)·p_j·(st − dot); then the top ks corrected.
	c := float64(scale) * float64(invT) / S
	a := float32(c * (st - dot))
	for j, e := range scratch {
		dz[j] += a * e
	}
	for i := 0; i < ks; i++ {
		j := ids[i]
		dz[j] += float32(c * float64(scratch[j]) * (float64(ps[i]) - st))
	}
	return loss
}

// sortedProbs computes e_j = exp((z_j − max z)/T) into e (the softmax's
// numerators) and the k largest probabilities e_j/S, descending, with their
// ids; it returns S = Σ e_j.
func sortedProbs(z []float32, invT float32, e []float32, ids []int32, ps []float32, heap *[]topEntry) float64 {
	S := vmath.ExpSum(e, z, vmath.Max(z), invT)
	selectTopK(e, len(ids), ids, ps, heap)
	for i := range ps {
		ps[i] = float32(float64(ps[i]) / S)
	}
	return S
}

// sign is −1, 0 or 1.
func sign(x float64) float64 {
	switch {
	case x > 0:
		return 1
	case x < 0:
		return -1
	}
	return 0
}

// uldRows is uldRow over rows positions: z [rows, V] logits, q [rows, k]
// sorted teacher probabilities; dz [rows, V] (nil: no gradient) gets
// scale·dULD/dz. It returns the sum of the rows' ULD.
func uldRows(z []float32, rows int, q []float32, k int, invT float32, dz []float32, scale float32) float64 {
	V := len(z) / max(rows, 1)
	if len(z) != rows*V || len(q) != rows*k || (dz != nil && len(dz) != len(z)) {
		panic(fmt.Sprintf("distill.uldRows: z [%d], %d rows, q [%d], k %d, dz [%d]", len(z), rows, len(q), k, len(dz)))
	}
	parts := make([]float64, rows) // summed in order: the same total on every run
	parallelRows(rows, func(lo, hi int) {
		scratch := make([]float32, V)
		ids := make([]int32, k)
		ps := make([]float32, k)
		heap := make([]topEntry, 0, k)
		for r := lo; r < hi; r++ {
			var d []float32
			if dz != nil {
				d = dz[r*V : (r+1)*V]
			}
			parts[r] = uldRow(z[r*V:(r+1)*V], invT, q[r*k:(r+1)*k], d, scale, scratch, ids, ps, &heap)
		}
	})
	var sum float64
	for _, l := range parts {
		sum += l
	}
	return sum
}
