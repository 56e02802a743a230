package cpu

import (
	"fmt"
	"math"

	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu/gemm"
	"github.com/llamatune/llamatune/kernels/cpu/vmath"
)

// Attention: causal grouped-query attention with document boundaries
// (see kernels.AttnArgs for layouts). For query i of head h (kv head
// h/(Heads/KVHeads)), over the allowed keys j ∈ [lo_i, QOffset+i]:
//
//	s_j = Scale·q_i·k_j ;  p_j = exp(s_j − lse_i) ;  out_i = Σ_j p_j·v_j
//	lse_i = log Σ_j exp(s_j)                        (saved for backward)
//
// Backward (probabilities recomputed from lse, as flash attention does):
//
//	D_i   = dout_i·out_i
//	dp_j  = dout_i·v_j ;  ds_j = p_j·(dp_j − D_i)
//	dq_i += Scale·Σ_j ds_j·k_j ;  dk_j += Scale·ds_j·q_i ;  dv_j += p_j·dout_i
//
// Work is split over (batch, kv head) so the heads that share a kv head never
// write the same dk/dv rows concurrently.
//
// q, k and v (and out, in backward) may be BF16 activations
// (kernels.BF16Activations): the GEMMs read them in place, as any bf16
// operand; out itself is written in F32.
func (*Backend) Attention(q, k, v, out, lse kernels.Buffer, a kernels.AttnArgs) {
	checkAttn(a, q, k, v)
	qv, kv, vv, ov := operand(q), operand(k), operand(v), F32(out)
	var lv []float32
	if lse != nil {
		lv = F32(lse)
	}
	group := a.Heads / a.KVHeads
	parallelFor(a.Batch*a.KVHeads, 1, func(lo, hi int) {
		w := newAttnWork(a)
		for bk := lo; bk < hi; bk++ {
			b, kh := bk/a.KVHeads, bk%a.KVHeads
			for h := kh * group; h < (kh+1)*group; h++ {
				for i0 := 0; i0 < a.Tq; i0 += attnBlock {
					n, keys := w.probs(a, qv, kv, lv, b, h, kh, i0, false)
					// O_blk = P · V
					mm(a, false, false, n, a.HeadDim, keys, 1, f32Op(w.p), keys,
						sliceOp(vv, (b*a.Tk*a.KVHeads+kh)*a.HeadDim), a.KVHeads*a.HeadDim, 0,
						ov[((b*a.Tq+i0)*a.Heads+h)*a.HeadDim:], a.Heads*a.HeadDim)
				}
			}
		}
	})
}

func (*Backend) AttentionBackward(q, k, v, out, lse, dout, dq, dk, dv kernels.Buffer, a kernels.AttnArgs) {
	checkAttn(a, q, k, v)
	qv, kv, vv, ov := operand(q), operand(k), operand(v), operand(out)
	lv, dov := F32(lse), F32(dout)
	dqv, dkv, dvv := F32(dq), F32(dk), F32(dv)
	group := a.Heads / a.KVHeads
	hd := a.HeadDim
	qs, ks := a.Heads*hd, a.KVHeads*hd // row strides
	parallelFor(a.Batch*a.KVHeads, 1, func(lo, hi int) {
		w := newAttnWork(a)
		for bk := lo; bk < hi; bk++ {
			b, kh := bk/a.KVHeads, bk%a.KVHeads
			kb, vb := sliceOp(kv, (b*a.Tk*a.KVHeads+kh)*hd), sliceOp(vv, (b*a.Tk*a.KVHeads+kh)*hd)
			for h := kh * group; h < (kh+1)*group; h++ {
				for i0 := 0; i0 < a.Tq; i0 += attnBlock {
					n, keys := w.probs(a, qv, kv, lv, b, h, kh, i0, true)
					off := ((b*a.Tq+i0)*a.Heads + h) * hd
					// dP = dO · Vᵀ
					mm(a, false, true, n, keys, hd, 1, f32Op(dov[off:]), qs, vb, ks, 0, w.dp, keys)
					if dvv != nil { // dV += Pᵀ · dO
						mm(a, true, false, keys, hd, n, 1, f32Op(w.p), keys, f32Op(dov[off:]), qs, 1,
							dvv[(b*a.Tk*a.KVHeads+kh)*hd:], ks)
					}
					// dS = P ∘ (dP − D) · Scale, D_i = dO_i · O_i
					for r := 0; r < n; r++ {
						o := off + r*qs
						D := dot(dov[o:o+hd], elems(ov, o, o+hd, w.tmp))
						p, dp := w.p[r*keys:(r+1)*keys], w.dp[r*keys:(r+1)*keys]
						for j := range p {
							dp[j] = p[j] * (dp[j] - D) * a.Scale
						}
					}
					if dqv != nil { // dQ += dS · K
						mm(a, false, false, n, hd, keys, 1, f32Op(w.dp), keys, kb, ks, 1, dqv[off:], qs)
					}
					if dkv != nil { // dK += dSᵀ · Q
						mm(a, true, false, keys, hd, n, 1, f32Op(w.dp), keys, sliceOp(qv, off), qs, 1,
							dkv[(b*a.Tk*a.KVHeads+kh)*hd:], ks)
					}
				}
			}
		}
	})
}

// attnBlock is how many queries are processed together (one GEMM each).
const attnBlock = 64

type attnWork struct{ p, dp, tmp []float32 }

func newAttnWork(a kernels.AttnArgs) *attnWork {
	n := min(attnBlock, a.Tq) * a.Tk
	return &attnWork{p: make([]float32, n), dp: make([]float32, n), tmp: make([]float32, a.HeadDim)}
}

// probs fills w.p with the attention probabilities of queries [i0, i0+n) of
// head h against keys [0, keys): S = Scale·Q·Kᵀ by one GEMM, then a masked
// softmax per row (masked entries are 0). When lse is being written (forward)
// it stores each row's log-sum-exp; with saved (backward) it reuses lv.
func (w *attnWork) probs(a kernels.AttnArgs, qv, kv gemm.Operand, lv []float32, b, h, kh, i0 int, saved bool) (n, keys int) {
	n = min(attnBlock, a.Tq-i0)
	_, lastKey := a.KeyRange(b, i0+n-1)
	keys = lastKey + 1
	hd := a.HeadDim
	mm(a, false, true, n, keys, hd, a.Scale,
		sliceOp(qv, ((b*a.Tq+i0)*a.Heads+h)*hd), a.Heads*hd,
		sliceOp(kv, (b*a.Tk*a.KVHeads+kh)*hd), a.KVHeads*hd, 0, w.p, keys)
	for r := 0; r < n; r++ {
		row := w.p[r*keys : (r+1)*keys]
		first, last := a.KeyRange(b, i0+r)
		li := (b*a.Heads+h)*a.Tq + i0 + r
		allowed := row[first : last+1]
		var l float32
		if saved {
			l = lv[li]
		} else {
			m := vmath.Max(allowed)
			l = m + float32(math.Log(vmath.SumExp(allowed, m, 1)))
			if lv != nil {
				lv[li] = l
			}
		}
		clear(row[:first])
		clear(row[last+1:])
		vmath.ExpSum(allowed, allowed, l, 1) // p = exp(s − lse)
	}
	return n, keys
}

func checkAttn(a kernels.AttnArgs, q, k, v kernels.Buffer) {
	if a.KVHeads <= 0 || a.Heads%a.KVHeads != 0 || a.Tq+a.QOffset > a.Tk {
		panic(fmt.Sprintf("cpu.Attention: bad args %+v", a))
	}
	if q.Len() != a.Batch*a.Tq*a.Heads*a.HeadDim || k.Len() != a.Batch*a.Tk*a.KVHeads*a.HeadDim || v.Len() != k.Len() {
		panic(fmt.Sprintf("cpu.Attention: q=%d k=%d v=%d elements do not match %+v", q.Len(), k.Len(), v.Len(), a))
	}
	if a.DocStart != nil && len(a.DocStart) != a.Batch*a.Tk {
		panic(fmt.Sprintf("cpu.Attention: DocStart has %d entries, want Batch*Tk=%d", len(a.DocStart), a.Batch*a.Tk))
	}
}

func dot(a, b []float32) float32 {
	var s0, s1, s2, s3 float32
	n := len(a)
	b = b[:n]
	i := 0
	for ; i+4 <= n; i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < n; i++ {
		s0 += a[i] * b[i]
	}
	return s0 + s1 + s2 + s3
}

// axpy: y += s·x.
func axpy(y, x []float32, s float32) {
	x = x[:len(y)]
	for i := range y {
		y[i] += s * x[i]
	}
}

// mm is one of attention's GEMMs in the args' precision.
func mm(a kernels.AttnArgs, transA, transB bool, m, n, k int, alpha float32, x gemm.Operand, ldx int, y gemm.Operand, ldy int, beta float32, c []float32, ldc int) {
	gemm.Gemm(precision(a.Compute), transA, transB, m, n, k, alpha, x, ldx, y, ldy, beta, c, ldc)
}
