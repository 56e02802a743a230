package optim

import (
	"math"
	"testing"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/tensor"
)

func TestScheduleMatchesTransformers(t *testing.T) {
	// get_cosine_schedule_with_warmup(warmup=2, total=10) lambdas at steps 0..10.
	cos := Schedule{Kind: "cosine", WarmupSteps: 2, TotalSteps: 10}
	want := []float64{0, 0.5, 1, 0.9619397662556434, 0.8535533905932737, 0.6913417161825449, 0.5,
		0.3086582838174551, 0.14644660940672627, 0.038060233744356624, 0}
	for i, w := range want {
		if got := cos.Factor(i); math.Abs(got-w) > 1e-12 {
			t.Errorf("cosine step %d: %v want %v", i, got, w)
		}
	}
	lin := Schedule{Kind: "linear", WarmupSteps: 2, TotalSteps: 10}
	for i, w := range []float64{0, 0.5, 1, 0.875, 0.75} {
		if got := lin.Factor(i); math.Abs(got-w) > 1e-12 {
			t.Errorf("linear step %d: %v want %v", i, got, w)
		}
	}
	if f := (Schedule{Kind: "constant", WarmupSteps: 4}).Factor(1); f != 0.25 {
		t.Errorf("constant warmup: %v", f)
	}
	if f := (Schedule{Kind: "cosine", TotalSteps: 10, MinLRRatio: 0.1}).Factor(10); math.Abs(f-0.1) > 1e-12 {
		t.Errorf("min lr ratio: %v", f)
	}
}

func TestClipGradNorm(t *testing.T) {
	be := cpu.New()
	a := tensor.FromF32(be, kernels.F32, []float32{1, 2}, 2).SetRequiresGrad(true)
	b := tensor.FromF32(be, kernels.F32, []float32{0}, 1).SetRequiresGrad(true)
	a.Grad = be.FromF32(kernels.F32, []float32{3, 0})
	b.Grad = be.FromF32(kernels.F32, []float32{4})
	n := ClipGradNorm(be, []*tensor.Tensor{a, b}, 1)
	if math.Abs(n-5) > 1e-6 {
		t.Fatalf("norm %v want 5", n)
	}
	if got := GradNorm(be, []*tensor.Tensor{a, b}); math.Abs(got-1) > 1e-5 {
		t.Fatalf("after clipping norm %v want 1", got)
	}
}

func TestAdamWSkipsDecayOnNorms(t *testing.T) {
	be := cpu.New()
	w := tensor.FromF32(be, kernels.F32, []float32{1, 1, 1, 1}, 2, 2).SetRequiresGrad(true)
	n := tensor.FromF32(be, kernels.F32, []float32{1, 1}, 2).SetRequiresGrad(true)
	w.Name, n.Name = "w", "n"
	w.Grad, n.Grad = be.Alloc(kernels.F32, 4), be.Alloc(kernels.F32, 2)
	o := NewAdamW(be, []*tensor.Tensor{w, n}, AdamWConfig{LR: 0.1, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.5})
	o.Step(0.1)
	if got := w.F32()[0]; math.Abs(float64(got)-0.95) > 1e-6 {
		t.Fatalf("decayed weight %v want 0.95", got)
	}
	if got := n.F32()[0]; got != 1 {
		t.Fatalf("norm weight decayed to %v", got)
	}
}

// The moments are encoded when the checkpoint writer reaches them, one tensor
// at a time, and read back exactly.
func TestStateTensorsEncodeLazily(t *testing.T) {
	be := cpu.New()
	w := tensor.FromF32(be, kernels.F32, []float32{1, -2, 3, 0.5}, 2, 2).SetRequiresGrad(true)
	w.Name = "w"
	w.Grad = be.FromF32(kernels.F32, []float32{0.1, -0.2, 0.3, 0.7})
	o := NewAdamW(be, []*tensor.Tensor{w}, DefaultAdamW())
	o.Step(1e-3)
	ts := o.StateTensors()
	if len(ts) != 2 || ts[0].Name != "w.exp_avg" || ts[1].Name != "w.exp_avg_sq" {
		t.Fatalf("state tensors %+v", ts)
	}
	for i, st := range ts {
		if st.Data != nil || st.Encode == nil {
			t.Fatalf("%s is encoded up front", st.Name)
		}
		b, err := st.Encode()
		if err != nil {
			t.Fatal(err)
		}
		want := []kernels.Buffer{o.m[0], o.v[0]}[i]
		if string(b) != string(checkpoint.EncodeF32(be.ToF32(want))) {
			t.Errorf("%s encodes other values than the moment", st.Name)
		}
	}
}
