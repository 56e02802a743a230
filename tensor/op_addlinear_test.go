package tensor

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
)

// AddLinear equals Add(y, Scale(Linear(h, W), s)) — the ops it fuses, each
// checked against gorgonia — in value and in every gradient, in f32 and
// bf16 compute (to f32 rounding: the tiny products' reference loop scales
// each term, the fused GEMM the sum).
func TestAddLinearMatchesComposition(t *testing.T) {
	be := cpu.New()
	r := rand.New(rand.NewPCG(1, 2))
	vec := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return v
	}
	const n, rank, out, s = 5, 3, 7, float32(0.75)
	x0, h0, w0, c := vec(n*out), vec(n*rank), vec(out*rank), vec(n*out)
	for _, comp := range []kernels.DType{kernels.F32, kernels.BF16} {
		run := func(fused bool) (vals []float32, grads [][]float32) {
			y := FromF32(be, kernels.F32, x0, n, out).SetRequiresGrad(true)
			h := FromF32(be, kernels.F32, h0, n, rank).SetRequiresGrad(true)
			w := FromF32(be, kernels.F32, w0, out, rank).SetRequiresGrad(true)
			tp := NewTape(be)
			tp.Compute = comp
			var o *Tensor
			if fused {
				o = tp.AddLinear(y, h, w, s)
			} else {
				o = tp.Add(y, tp.Scale(tp.Linear(h, w), s))
			}
			vals = o.F32()
			// loss = Σ c·o, so d loss/d o = c.
			cw := FromF32(be, kernels.F32, c, 1, n*out)
			loss := tp.Linear(cw, tp.Reshape(o, 1, n*out))
			tp.Backward(loss)
			return vals, [][]float32{y.GradF32(), h.GradF32(), w.GradF32()}
		}
		v1, g1 := run(true)
		v2, g2 := run(false)
		for i := range v1 {
			if math.Abs(float64(v1[i]-v2[i])) > 1e-6*(1+math.Abs(float64(v2[i]))) {
				t.Fatalf("compute %v: value %d: fused %v, composed %v", comp, i, v1[i], v2[i])
			}
		}
		// In bf16 the composition rounds s·dout to bf16, the fused op dout.
		tol := map[kernels.DType]float64{kernels.F32: 1e-5, kernels.BF16: 1e-2}[comp]
		for k, name := range []string{"dy", "dh", "dW"} {
			for i := range g1[k] {
				if d := math.Abs(float64(g1[k][i] - g2[k][i])); d > tol*(1+math.Abs(float64(g2[k][i]))) {
					t.Fatalf("compute %v: %s[%d]: fused %v, composed %v", comp, name, i, g1[k][i], g2[k][i])
				}
			}
		}
	}
}
