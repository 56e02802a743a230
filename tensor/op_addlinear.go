package tensor

import (
	"fmt"

	"github.com/llamatune/llamatune/kernels"
)

// AddLinear: out = y + s·h·Wᵀ in one GEMM (C = y, beta 1) — a LoRA update
// added to its base layer's output without making h·Wᵀ, s·h·Wᵀ and the sum
// as three tensors. Values equal Add(y, Scale(Linear(h, W), s)).
//
//	y [N, out], h [N, r], W [out, r]
//	dy += dout ;  dh += s·dout·W ;  dW += s·doutᵀ·h
func (tp *Tape) AddLinear(y, h, w *Tensor, s float32) *Tensor {
	if len(h.Shape) != 2 || len(w.Shape) != 2 || h.Shape[1] != w.Shape[1] || y.Numel() != h.Shape[0]*w.Shape[0] {
		panic(fmt.Sprintf("tensor.AddLinear: y %v, h %v, W %v (want y [N,out], h [N,r], W [out,r])", y.Shape, h.Shape, w.Shape))
	}
	n, r, o := h.Shape[0], h.Shape[1], w.Shape[0]
	out := tp.result(tp.alloc(y.Numel()), y.Shape, y, h, w)
	tp.be.Copy(out.Buf, y.Buf)
	tp.be.MatMul(h.Buf, w.Buf, out.Buf, kernels.MatMulArgs{TransB: true, M: n, N: o, K: r, Alpha: s, Beta: 1, Compute: tp.Compute})
	if out.requiresGrad {
		tp.record(func() {
			if y.requiresGrad {
				tp.be.AddScaled(y.grad(), out.Grad, 1)
			}
			if h.requiresGrad {
				tp.be.MatMul(out.Grad, w.Buf, h.grad(), kernels.MatMulArgs{M: n, N: r, K: o, Alpha: s, Beta: 1, Compute: tp.Compute})
			}
			if w.requiresGrad {
				tp.be.MatMul(out.Grad, h.Buf, w.grad(), kernels.MatMulArgs{TransA: true, M: o, N: r, K: n, Alpha: s, Beta: 1, Compute: tp.Compute})
			}
		}, out)
	}
	return out
}
