package tensor

import (
	"fmt"

	"github.com/llamatune/llamatune/kernels"
)

// SwiGLU: y = silu(gate)·up, elementwise (Llama's MLP activation).
// dgate += dy·up·σ(g)(1+g(1−σ(g))) ; dup += dy·silu(g).
func (tp *Tape) SwiGLU(gate, up *Tensor) *Tensor {
	if gate.Numel() != up.Numel() {
		panic(fmt.Sprintf("tensor.SwiGLU: gate %v, up %v", gate.Shape, up.Shape))
	}
	n := gate.Numel()
	y := tp.result(tp.alloc(n), gate.Shape, gate, up)
	tp.be.SwiGLU(gate.Buf, up.Buf, y.Buf, n)
	if y.requiresGrad {
		tp.record(func() {
			var dg, du kernels.Buffer
			if gate.requiresGrad {
				dg = gate.grad()
			}
			if up.requiresGrad {
				du = up.grad()
			}
			tp.be.SwiGLUBackward(y.Grad, gate.Buf, up.Buf, dg, du, n)
		}, y)
	}
	return y
}
