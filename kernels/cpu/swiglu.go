package cpu

import (
	"math"

	"github.com/llamatune/llamatune/kernels"
)

// SwiGLU: out = silu(g)·u with silu(g) = g·σ(g).
// Backward: du += dout·silu(g); dg += dout·u·σ(g)·(1 + g·(1−σ(g))).
func (*Backend) SwiGLU(gate, up, out kernels.Buffer, n int) {
	g, u, o := F32(gate), F32(up), F32(out)
	parallelFor(n, 4096, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			s := 1 / (1 + float32(math.Exp(float64(-g[i]))))
			o[i] = g[i] * s * u[i]
		}
	})
}

func (*Backend) SwiGLUBackward(dout, gate, up, dgate, dup kernels.Buffer, n int) {
	d, g, u := F32(dout), F32(gate), F32(up)
	dg, du := F32(dgate), F32(dup)
	parallelFor(n, 4096, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			s := 1 / (1 + float32(math.Exp(float64(-g[i]))))
			if du != nil {
				du[i] += d[i] * g[i] * s
			}
			if dg != nil {
				dg[i] += d[i] * u[i] * s * (1 + g[i]*(1-s))
			}
		}
	})
}
