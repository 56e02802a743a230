package cpu

import (
	"fmt"
	"math"

	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu/gemm"
)

// LinearCrossEntropy fuses lm_head and cross-entropy, Chunk tokens at a time,
// so [Tokens, Vocab] logits never live at once. For each counted token t:
//
//	z    = h_t·Wᵀ + hr_t·WRᵀ           (one chunk of logits; WR term if Rank > 0)
//	loss = logsumexp(z) − z[label_t]
//	dz   = (softmax(z) − onehot(label_t)) · GradScale
//	dh_t += dz·W ;  dW += dzᵀ·h_t ;  dhr_t += dz·WR ;  dWR += dzᵀ·hr_t
//
// The gradients are produced in the same pass as the loss (the logits chunk is
// gone afterwards); the tape scales them by the upstream gradient later.
func (*Backend) LinearCrossEntropy(bufs kernels.CEBuffers, labels []int32, a kernels.CEArgs) (float64, int) {
	T, H, V, R := a.Tokens, a.Hidden, a.Vocab, a.Rank
	h, w, dh, dw := bufs.H, bufs.W, bufs.DH, bufs.DW
	if h.Len() != T*H || w.Len() != V*H || len(labels) != T || (R > 0 && (bufs.HR.Len() != T*R || bufs.WR.Len() != V*R)) {
		panic(fmt.Sprintf("cpu.LinearCrossEntropy: operands do not match %+v", a))
	}
	var hrv, dhrv, dwrv []float32
	var wrv gemm.Operand
	if R > 0 {
		hrv, wrv = F32(bufs.HR), operand(bufs.WR)
		if bufs.DHR != nil {
			dhrv = F32(bufs.DHR)
		}
		if bufs.DWR != nil {
			dwrv = F32(bufs.DWR)
		}
	}
	chunk := a.Chunk
	if chunk <= 0 {
		chunk = autoChunk(V)
	}
	hv, wv := F32(h), operand(w)
	pr := precision(a.Compute)
	var dhv, dwv []float32
	if dh != nil {
		dhv = F32(dh)
	}
	if dw != nil {
		dwv = F32(dw)
	}
	logits := make([]float32, min(chunk, T)*V)
	rowLoss := make([]float64, min(chunk, T))
	var sum float64
	count := 0
	for c0 := 0; c0 < T; c0 += chunk {
		c1 := min(c0+chunk, T)
		n := c1 - c0
		any := false
		for t := c0; t < c1; t++ {
			if l := labels[t]; l != kernels.IgnoreIndex {
				if l < 0 || int(l) >= V {
					panic(fmt.Sprintf("cpu.LinearCrossEntropy: label %d at token %d outside vocab %d", l, t, V))
				}
				any = true
			}
		}
		if !any {
			continue
		}
		z := logits[:n*V]
		gemm.Gemm(pr, false, true, n, V, H, 1, f32Op(hv[c0*H:]), H, wv, H, 0, z, V)
		if R > 0 {
			gemm.Gemm(pr, false, true, n, V, R, 1, f32Op(hrv[c0*R:]), R, wrv, R, 1, z, V)
		}
		parallelFor(n, 1, func(lo, hi int) {
			for r := lo; r < hi; r++ {
				rowLoss[r] = ceRow(z[r*V:(r+1)*V], labels[c0+r], a.GradScale)
			}
		})
		for r := 0; r < n; r++ {
			if labels[c0+r] != kernels.IgnoreIndex {
				sum += rowLoss[r]
				count++
			}
		}
		if dhv != nil {
			gemm.Gemm(pr, false, false, n, H, V, 1, f32Op(z), V, wv, H, 1, dhv[c0*H:], H)
		}
		if dwv != nil {
			gemm.Gemm(pr, true, false, V, H, n, 1, f32Op(z), V, f32Op(hv[c0*H:]), H, 1, dwv, H)
		}
		if dhrv != nil {
			gemm.Gemm(pr, false, false, n, R, V, 1, f32Op(z), V, wrv, R, 1, dhrv[c0*R:], R)
		}
		if dwrv != nil {
			gemm.Gemm(pr, true, false, V, R, n, 1, f32Op(z), V, f32Op(hrv[c0*R:]), R, 1, dwrv, R)
		}
	}
	return sum, count
}

// logitsBudget is how many logits (floats) one chunk of the fused losses may
// hold when the caller leaves the chunk size to the backend: 64 MiB.
const logitsBudget = 1 << 24

// autoChunk is the positions per chunk for a vocabulary of V: 128 for Llama 3's
// 128,256 tokens, 512 for Llama 2's 32,000; at least 16.
func autoChunk(V int) int { return max(16, min(1024, logitsBudget/max(V, 1))) }

// ceRow turns one row of logits into (softmax − onehot(label))·scale in place
// and returns −log softmax[label]; an ignored row becomes zeros and costs 0.
func ceRow(row []float32, label int32, scale float32) float64 {
	if label == kernels.IgnoreIndex {
		clear(row)
		return 0
	}
	target := float64(row[label])
	m := maxOf(row)
	sum := expSum(row, row, m, 1) // row = exp(z − max)
	k := scale / float32(sum)
	for j := range row {
		row[j] *= k // softmax · scale
	}
	row[label] -= scale
	return float64(m) + math.Log(sum) - target
}

// CrossEntropy is the unfused loss over materialized logits [rows, vocab]:
// the sum of −log softmax(logits)[label] over counted rows, with
// dlogits += (softmax − onehot)·gradScale. It is LinearCrossEntropy's twin
// for LLAMATUNE_NO_FUSED=1 (logits from a separate Linear).
func (*Backend) CrossEntropy(logits, dlogits kernels.Buffer, labels []int32, rows, vocab int, gradScale float32) (float64, int) {
	lv := F32(logits)
	if len(lv) != rows*vocab || len(labels) != rows {
		panic(fmt.Sprintf("cpu.CrossEntropy: %d logits, %d labels for %d×%d", len(lv), len(labels), rows, vocab))
	}
	for t, l := range labels {
		if l != kernels.IgnoreIndex && (l < 0 || int(l) >= vocab) {
			panic(fmt.Sprintf("cpu.CrossEntropy: label %d at row %d outside vocab %d", l, t, vocab))
		}
	}
	var dv []float32
	if dlogits != nil {
		dv = F32(dlogits)
	}
	losses := make([]float64, rows)
	parallelFor(rows, 1, func(lo, hi int) {
		row := make([]float32, vocab)
		for r := lo; r < hi; r++ {
			copy(row, lv[r*vocab:(r+1)*vocab])
			losses[r] = ceRow(row, labels[r], gradScale)
			if dv != nil {
				axpy(dv[r*vocab:(r+1)*vocab], row, 1)
			}
		}
	})
	var sum float64
	count := 0
	for r, l := range labels {
		if l != kernels.IgnoreIndex {
			sum += losses[r]
			count++
		}
	}
	return sum, count
}
