package tensor

import (
	"math/rand/v2"
	"testing"

	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
)

// KeepBF16 turns a Recompute input into a bf16 checkpoint: its buffer
// becomes bf16, the backward recomputes from the rounded values, and the
// gradients equal those of a run fed the rounded input directly.
func TestKeepBF16Checkpoint(t *testing.T) {
	be := cpu.New()
	r := rand.New(rand.NewPCG(3, 4))
	vec := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return v
	}
	x0, w0 := vec(6*8), vec(5*8)
	block := func(w *Tensor) func(tp *Tape, x *Tensor) *Tensor {
		return func(tp *Tape, x *Tensor) *Tensor { return tp.SwiGLU(tp.Linear(x, w), tp.Linear(x, w)) }
	}
	run := func(keep bool, in []float32) []float32 {
		w := FromF32(be, kernels.F32, w0, 5, 8).SetRequiresGrad(true)
		tp := NewTape(be)
		x := tp.Scale(FromF32(be, kernels.F32, in, 6, 8).SetRequiresGrad(true), 1) // an intermediate the tape owns
		y := tp.Recompute(x, block(w))
		if keep {
			tp.KeepBF16(x)
			if x.DType() != kernels.BF16 {
				t.Fatalf("KeepBF16 left the checkpoint as %v", x.DType())
			}
		}
		ones := make([]float32, 30)
		for i := range ones {
			ones[i] = 1
		}
		loss := tp.Linear(FromF32(be, kernels.F32, ones, 1, 30), tp.Reshape(y, 1, 30))
		tp.Backward(loss)
		g := w.GradF32()
		tp.Release()
		return g
	}
	rounded := make([]float32, len(x0))
	for i, v := range x0 {
		rounded[i] = kernels.BF16ToF32(kernels.F32ToBF16(v))
	}
	got, want, exact := run(true, x0), run(false, rounded), run(false, x0)
	differs := false
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("dW[%d]: bf16 checkpoint %v, rounded input %v", i, got[i], want[i])
		}
		differs = differs || got[i] != exact[i]
	}
	if !differs {
		t.Fatal("the bf16 checkpoint gives exactly the f32 gradients: it was not rounded")
	}
}
