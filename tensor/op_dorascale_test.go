package tensor

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
)

// DoRAScale's value is z·m/norm per column, and its gradients (norm held
// constant) match central differences of loss = Σ c·out, computed in
// float64 from the definition.
func TestDoRAScaleValueAndGradients(t *testing.T) {
	be := cpu.New()
	r := rand.New(rand.NewPCG(3, 4))
	const n, out = 5, 7
	vec := func(k int, lo float64) []float32 {
		v := make([]float32, k)
		for i := range v {
			v[i] = float32(lo + r.Float64())
		}
		return v
	}
	z0, m0, norm, c := vec(n*out, -0.5), vec(out, 0.5), vec(out, 0.5), vec(n*out, -0.5)
	z := FromF32(be, kernels.F32, z0, n, out).SetRequiresGrad(true)
	m := FromF32(be, kernels.F32, m0, out).SetRequiresGrad(true)
	tp := NewTape(be)
	y := tp.DoRAScale(z, m, norm)
	got := y.F32()
	loss := tp.Linear(FromF32(be, kernels.F32, c, 1, n*out), tp.Reshape(y, 1, n*out))
	tp.Backward(loss)
	dz, dm := z.GradF32(), m.GradF32()

	ref := func(zv, mv []float64) float64 {
		s := 0.0
		for i := 0; i < n; i++ {
			for j := 0; j < out; j++ {
				s += float64(c[i*out+j]) * zv[i*out+j] * mv[j] / float64(norm[j])
			}
		}
		return s
	}
	zf, mf := make([]float64, n*out), make([]float64, out)
	for i := range zf {
		zf[i] = float64(z0[i])
	}
	for j := range mf {
		mf[j] = float64(m0[j])
	}
	for i := 0; i < n; i++ {
		for j := 0; j < out; j++ {
			want := float64(z0[i*out+j]) * float64(m0[j]) / float64(norm[j])
			if d := math.Abs(float64(got[i*out+j]) - want); d > 1e-6*(1+math.Abs(want)) {
				t.Fatalf("out[%d,%d] = %v, want %v", i, j, got[i*out+j], want)
			}
		}
	}
	const eps = 1e-3
	central := func(v []float64, k int) float64 {
		old := v[k]
		v[k] = old + eps
		p := ref(zf, mf)
		v[k] = old - eps
		q := ref(zf, mf)
		v[k] = old
		return (p - q) / (2 * eps)
	}
	for k := range zf {
		if want := central(zf, k); math.Abs(float64(dz[k])-want) > 1e-4*(1+math.Abs(want)) {
			t.Fatalf("dz[%d] = %v, central difference %v", k, dz[k], want)
		}
	}
	for k := range mf {
		if want := central(mf, k); math.Abs(float64(dm[k])-want) > 1e-4*(1+math.Abs(want)) {
			t.Fatalf("dm[%d] = %v, central difference %v", k, dm[k], want)
		}
	}
	tp.Release()
}

// m equal to norm scales by exactly one: DoRA at initialization leaves the
// layer's output bit for bit.
func TestDoRAScaleIdentityAtInit(t *testing.T) {
	be := cpu.New()
	z0 := []float32{1.1, -2.3, 3.7, 0.3, 1e-3, -7.9}
	norm := []float32{3, 0.1, 7.7}
	tp := NewTape(be)
	y := tp.DoRAScale(FromF32(be, kernels.F32, z0, 2, 3), FromF32(be, kernels.F32, norm, 3), norm).F32()
	for i := range y {
		if y[i] != z0[i] {
			t.Fatalf("out[%d] = %v, want %v exactly", i, y[i], z0[i])
		}
	}
}
