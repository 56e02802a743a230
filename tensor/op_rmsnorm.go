package tensor

import (
	"fmt"

	"github.com/llamatune/llamatune/kernels"
)

// RMSNorm over the last dim: y = x / sqrt(mean(x²)+eps) · w.
// x [..., dim], w [dim]. The VJP (in kernels) reuses the saved 1/rms per row.
func (tp *Tape) RMSNorm(x, w *Tensor, eps float32) *Tensor {
	dim := x.Shape[len(x.Shape)-1]
	if w.Numel() != dim {
		panic(fmt.Sprintf("tensor.RMSNorm: x %v, w %v", x.Shape, w.Shape))
	}
	rows := x.Numel() / dim
	y := tp.result(tp.alloc(x.Numel()), x.Shape, x, w)
	var rstd kernels.Buffer
	if y.requiresGrad {
		rstd = tp.alloc(rows)
	}
	tp.be.RMSNorm(x.Buf, w.Buf, y.Buf, rstd, rows, dim, eps)
	if y.requiresGrad {
		tp.record(func() {
			var dx, dw kernels.Buffer
			if x.requiresGrad {
				dx = x.grad()
			}
			if w.requiresGrad {
				dw = w.grad()
			}
			tp.be.RMSNormBackward(y.Grad, x.Buf, w.Buf, rstd, dx, dw, rows, dim)
		}, y)
	}
	return y
}
