package cpu

import (
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu/vmath"
)

// SwiGLU: out = silu(g)·u with silu(g) = g·σ(g).
// Backward: du += dout·silu(g); dg += dout·u·σ(g)·(1 + g·(1−σ(g))).
// σ uses vmath's vectorized exp (about one f32 rounding from math.Exp).
// gate and up may be BF16 activations (kernels.BF16Activations): they are
// widened a run at a time; out and the gradients are F32.
func (*Backend) SwiGLU(gate, up, out kernels.Buffer, n int) {
	o := F32(out)
	parallelFor(n, 4096, func(lo, hi int) {
		var gs, us, es [elemRun]float32
		for r := lo; r < hi; r += elemRun {
			e := min(r+elemRun, hi)
			g, u := elems(operand(gate), r, e, gs[:]), elems(operand(up), r, e, us[:])
			x := es[:len(g)]
			vmath.ExpSum(x, g, 0, -1) // exp(−g): σ(g) = 1/(1+exp(−g))
			for i := range g {
				o[r+i] = g[i] * u[i] / (1 + x[i])
			}
		}
	})
}

func (*Backend) SwiGLUBackward(dout, gate, up, dgate, dup kernels.Buffer, n int) {
	d := F32(dout)
	dg, du := F32(dgate), F32(dup)
	parallelFor(n, 4096, func(lo, hi int) {
		var gs, us, es [elemRun]float32
		for r := lo; r < hi; r += elemRun {
			e := min(r+elemRun, hi)
			g, u := elems(operand(gate), r, e, gs[:]), elems(operand(up), r, e, us[:])
			x := es[:len(g)]
			vmath.ExpSum(x, g, 0, -1)
			for i := range g {
				j := r + i
				s := 1 / (1 + x[i])
				if du != nil {
					du[j] += d[j] * g[i] * s
				}
				if dg != nil {
					dg[j] += d[j] * u[i] * s * (1 + g[i]*(1-s))
				}
			}
		}
	})
}

// elemRun is how many elements elementwise ops widen from bf16 at a time.
const elemRun = 512
