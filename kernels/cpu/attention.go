package cpu

import (
	"fmt"
	"math"

	"github.com/llamatune/llamatune/kernels"
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
func (*Backend) Attention(q, k, v, out, lse kernels.Buffer, a kernels.AttnArgs) {
	checkAttn(a, q, k, v)
	qv, kv, vv, ov := F32(q), F32(k), F32(v), F32(out)
	var lv []float32
	if lse != nil {
		lv = F32(lse)
	}
	group := a.Heads / a.KVHeads
	hd := a.HeadDim
	parallelFor(a.Batch*a.KVHeads, 1, func(lo, hi int) {
		scores := make([]float32, a.Tk)
		for bk := lo; bk < hi; bk++ {
			b, kh := bk/a.KVHeads, bk%a.KVHeads
			for h := kh * group; h < (kh+1)*group; h++ {
				for i := 0; i < a.Tq; i++ {
					qi := qv[((b*a.Tq+i)*a.Heads+h)*hd:][:hd]
					first, last := a.KeyRange(b, i)
					m := float32(math.Inf(-1))
					for j := first; j <= last; j++ {
						kj := kv[((b*a.Tk+j)*a.KVHeads+kh)*hd:][:hd]
						s := dot(qi, kj) * a.Scale
						scores[j] = s
						if s > m {
							m = s
						}
					}
					var l float32
					for j := first; j <= last; j++ {
						p := float32(math.Exp(float64(scores[j] - m)))
						scores[j] = p
						l += p
					}
					oi := ov[((b*a.Tq+i)*a.Heads+h)*hd:][:hd]
					clear(oi)
					inv := 1 / l
					for j := first; j <= last; j++ {
						axpy(oi, vv[((b*a.Tk+j)*a.KVHeads+kh)*hd:][:hd], scores[j]*inv)
					}
					if lv != nil {
						lv[(b*a.Heads+h)*a.Tq+i] = m + float32(math.Log(float64(l)))
					}
				}
			}
		}
	})
}

func (*Backend) AttentionBackward(q, k, v, out, lse, dout, dq, dk, dv kernels.Buffer, a kernels.AttnArgs) {
	checkAttn(a, q, k, v)
	qv, kv, vv, ov, lv, dov := F32(q), F32(k), F32(v), F32(out), F32(lse), F32(dout)
	dqv, dkv, dvv := F32(dq), F32(dk), F32(dv)
	group := a.Heads / a.KVHeads
	hd := a.HeadDim
	parallelFor(a.Batch*a.KVHeads, 1, func(lo, hi int) {
		for bk := lo; bk < hi; bk++ {
			b, kh := bk/a.KVHeads, bk%a.KVHeads
			for h := kh * group; h < (kh+1)*group; h++ {
				for i := 0; i < a.Tq; i++ {
					off := ((b*a.Tq+i)*a.Heads + h) * hd
					qi, oi, doi := qv[off:off+hd], ov[off:off+hd], dov[off:off+hd]
					l := lv[(b*a.Heads+h)*a.Tq+i]
					D := dot(doi, oi)
					first, last := a.KeyRange(b, i)
					for j := first; j <= last; j++ {
						koff := ((b*a.Tk+j)*a.KVHeads + kh) * hd
						kj, vj := kv[koff:koff+hd], vv[koff:koff+hd]
						p := float32(math.Exp(float64(dot(qi, kj)*a.Scale - l)))
						ds := p * (dot(doi, vj) - D) * a.Scale
						if dvv != nil {
							axpy(dvv[koff:koff+hd], doi, p)
						}
						if dkv != nil {
							axpy(dkv[koff:koff+hd], qi, ds)
						}
						if dqv != nil {
							axpy(dqv[off:off+hd], kj, ds)
						}
					}
				}
			}
		}
	})
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
