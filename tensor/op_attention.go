package tensor

import (
	"fmt"

	"github.com/llamatune/llamatune/kernels"
)

// Attention: causal grouped-query softmax attention with packed-document
// boundaries (see kernels.AttnArgs).
//
//	q [B·Tq, Heads·hd], k, v [B·Tk, KVHeads·hd] → out [B·Tq, Heads·hd]
//
// The VJP (kernels.AttentionBackward) recomputes probabilities from the saved
// log-sum-exp, so no [T×T] matrix is kept between the passes.
func (tp *Tape) Attention(q, k, v *Tensor, a kernels.AttnArgs) *Tensor {
	if q.Numel() != a.Batch*a.Tq*a.Heads*a.HeadDim || k.Numel() != a.Batch*a.Tk*a.KVHeads*a.HeadDim || v.Numel() != k.Numel() {
		panic(fmt.Sprintf("tensor.Attention: q %v k %v v %v for %+v", q.Shape, k.Shape, v.Shape, a))
	}
	a.Compute = tp.Compute
	out := tp.result(tp.alloc(q.Numel()), q.Shape, q, k, v)
	var lse kernels.Buffer
	if out.requiresGrad {
		lse = tp.alloc(a.Batch * a.Heads * a.Tq)
	}
	tp.be.Attention(q.Buf, k.Buf, v.Buf, out.Buf, lse, a)
	if out.requiresGrad {
		tp.record(func() {
			var dq, dk, dv kernels.Buffer
			if q.requiresGrad {
				dq = q.grad()
			}
			if k.requiresGrad {
				dk = k.grad()
			}
			if v.requiresGrad {
				dv = v.grad()
			}
			tp.be.AttentionBackward(q.Buf, k.Buf, v.Buf, out.Buf, lse, out.Grad, dq, dk, dv, a)
		}, out)
	}
	return out
}
