package tensor

import (
	"fmt"

	"github.com/llamatune/llamatune/kernels"
)

// Linear: y = x·Wᵀ, as torch.nn.Linear without bias.
//
//	x [N, in], W [out, in] (HF layout), y [N, out]
//	dx += dy·W        ([N,out]·[out,in])
//	dW += dyᵀ·x       ([out,N]·[N,in])
func (tp *Tape) Linear(x, w *Tensor) *Tensor {
	if len(x.Shape) != 2 || len(w.Shape) != 2 || x.Shape[1] != w.Shape[1] {
		panic(fmt.Sprintf("tensor.Linear: x %v, W %v (want x [N,in], W [out,in])", x.Shape, w.Shape))
	}
	n, in, out := x.Shape[0], x.Shape[1], w.Shape[0]
	y := tp.result(tp.alloc(n*out), []int{n, out}, x, w)
	tp.be.MatMul(x.Buf, w.Buf, y.Buf, kernels.MatMulArgs{TransB: true, M: n, N: out, K: in, Alpha: 1, Compute: tp.Compute})
	if y.requiresGrad {
		tp.record(func() {
			if x.requiresGrad {
				tp.be.MatMul(y.Grad, w.Buf, x.grad(), kernels.MatMulArgs{M: n, N: in, K: out, Alpha: 1, Beta: 1, Compute: tp.Compute})
			}
			if w.requiresGrad {
				tp.be.MatMul(y.Grad, x.Buf, w.grad(), kernels.MatMulArgs{TransA: true, M: out, N: in, K: n, Alpha: 1, Beta: 1, Compute: tp.Compute})
			}
		}, y)
	}
	return y
}
