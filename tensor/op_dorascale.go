package tensor

import (
	"fmt"

	"github.com/llamatune/llamatune/kernels"
)

// DoRAScale scales each output column of z by DoRA's magnitude over a
// detached row norm: out[i, j] = z[i, j] · m[j] / norm[j].
//
//	z [N, out], m [out] (trainable), norm [out] (a constant: no gradient)
//	dz[i, j] += dout[i, j] · m[j] / norm[j]
//	dm[j]    += Σ_i dout[i, j] · z[i, j] / norm[j]
//
// norm is ‖W + s·B·A‖ per output row of the adapted weight, computed by the
// caller without the tape: DoRA (Liu et al. 2024, §4.3) and PEFT treat it as
// a constant in backward. The factor m/norm is formed once per column (on the
// host, [out] values), so m == norm scales by exactly 1. The broadcast over
// rows is a rank-1 GEMM (ones[N,1]·g[1,out]) and the column sums a GEMM with
// ones, so every backend runs it with the kernels it already has.
func (tp *Tape) DoRAScale(z, m *Tensor, norm []float32) *Tensor {
	if len(z.Shape) != 2 || m.Numel() != z.Shape[1] || len(norm) != z.Shape[1] {
		panic(fmt.Sprintf("tensor.DoRAScale: z %v, m %v, norm [%d] (want z [N,out], m [out], norm [out])", z.Shape, m.Shape, len(norm)))
	}
	n, out := z.Shape[0], z.Shape[1]
	mv := m.F32()
	g, inv := make([]float32, out), make([]float32, out)
	for j := range g {
		g[j] = mv[j] / norm[j]
		inv[j] = 1 / norm[j]
	}
	be := tp.be
	gb := be.FromF32(kernels.F32, g)
	ones := make([]float32, n)
	for i := range ones {
		ones[i] = 1
	}
	ob := be.FromF32(kernels.F32, ones)
	tp.owned = append(tp.owned, gb, ob)
	// broadcast writes ones[N,1]·g[1,out] into a new [N, out] buffer.
	broadcast := func() kernels.Buffer {
		b := be.Alloc(kernels.F32, n*out)
		be.MatMul(ob, gb, b, kernels.MatMulArgs{M: n, N: out, K: 1, Alpha: 1, Compute: kernels.F32})
		return b
	}
	y := tp.result(tp.alloc(n*out), z.Shape, z, m)
	gg := broadcast()
	be.Copy(y.Buf, z.Buf)
	be.Mul(y.Buf, gg)
	be.Free(gg)
	if y.requiresGrad {
		tp.record(func() {
			if z.requiresGrad {
				gg := broadcast()
				tmp := be.Alloc(kernels.F32, n*out)
				be.Copy(tmp, y.Grad)
				be.Mul(tmp, gg)
				be.AddScaled(z.grad(), tmp, 1)
				be.Free(tmp)
				be.Free(gg)
			}
			if m.requiresGrad {
				tmp := be.Alloc(kernels.F32, n*out)
				be.Copy(tmp, y.Grad)
				be.Mul(tmp, z.Buf)
				cs := be.Alloc(kernels.F32, out)
				be.MatMul(ob, tmp, cs, kernels.MatMulArgs{M: 1, N: out, K: n, Alpha: 1, Compute: kernels.F32})
				ib := be.FromF32(kernels.F32, inv)
				be.Mul(cs, ib)
				be.AddScaled(m.grad(), cs, 1)
				for _, b := range []kernels.Buffer{tmp, cs, ib} {
					be.Free(b)
				}
			}
		}, y)
	}
	return y
}
