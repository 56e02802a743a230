package cpu

import (
	"fmt"

	"github.com/llamatune/llamatune/kernels"
)

// Add: out = a + b (VJP: da = db = dout).
func (*Backend) Add(a, b, out kernels.Buffer) {
	av, bv, ov := F32(a), F32(b), F32(out)
	if len(av) != len(bv) || len(av) != len(ov) {
		panic(fmt.Sprintf("cpu.Add: lengths %d, %d, %d differ", len(av), len(bv), len(ov)))
	}
	parallelFor(len(ov), 1<<14, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			ov[i] = av[i] + bv[i]
		}
	})
}

// AddScaled: dst += s·src.
func (*Backend) AddScaled(dst, src kernels.Buffer, s float32) {
	d, v := F32(dst), asF32(src)
	if len(d) != len(v) {
		panic(fmt.Sprintf("cpu.AddScaled: lengths %d, %d differ", len(d), len(v)))
	}
	parallelFor(len(d), 1<<14, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			d[i] += s * v[i]
		}
	})
}

// Scale: b *= s.
func (*Backend) Scale(b kernels.Buffer, s float32) {
	v := F32(b)
	parallelFor(len(v), 1<<14, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			v[i] *= s
		}
	})
}

// Mul: dst *= src elementwise.
func (*Backend) Mul(dst, src kernels.Buffer) {
	d, v := F32(dst), asF32(src)
	if len(d) != len(v) {
		panic(fmt.Sprintf("cpu.Mul: lengths %d, %d differ", len(d), len(v)))
	}
	parallelFor(len(d), 1<<14, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			d[i] *= v[i]
		}
	})
}

// SumSquares returns Σ b² in float64 (for the global grad norm).
func (*Backend) SumSquares(b kernels.Buffer) float64 {
	v := asF32(b)
	var s float64
	for _, x := range v {
		s += float64(x) * float64(x)
	}
	return s
}
