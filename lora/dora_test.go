package lora_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/tensor"
)

func doraConfig(dropout float64) lora.Config {
	return lora.Config{R: 4, Alpha: 8, Dropout: dropout, UseDoRA: true, TargetModules: []string{"all-linear"}}
}

func randVec(r *rand.Rand, n int, mean, std float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(mean + std*r.NormFloat64())
	}
	return v
}

// trainDoRA gives every adapter random B and magnitudes off the row norms,
// so that DoRA changes the model.
func trainDoRA(be kernels.Backend, s *lora.Set, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 5))
	for _, l := range s.Linears {
		be.Copy(l.B.Buf, be.FromF32(kernels.F32, randVec(r, l.B.Numel(), 0, 0.1)))
		m := l.M.F32()
		for j := range m {
			m[j] *= float32(1 + 0.2*r.NormFloat64())
		}
		be.Copy(l.M.Buf, be.FromF32(kernels.F32, m))
	}
}

// doraRef is the DoRA layer in float64 from the definition: with
// V = W + s·B·A and g = m/n (n = ‖V‖_row, given: the detached norm),
// y = x·Wᵀ + (g − 1)⊙(d·Wᵀ) + g⊙(s·d·(BA)ᵀ) with d = x⊙mask (mask nil: no
// dropout, and then y = g⊙(x·Vᵀ)).
type doraRef struct {
	w, a, b, m, x, mask []float64
	n                   []float64 // nil: computed from w, a, b
	out, in, r, rows    int
	s                   float64
}

func f64(v []float32) []float64 {
	o := make([]float64, len(v))
	for i, x := range v {
		o[i] = float64(x)
	}
	return o
}

// v is W + s·B·A [out, in].
func (f *doraRef) v() []float64 {
	v := make([]float64, f.out*f.in)
	for j := 0; j < f.out; j++ {
		for i := 0; i < f.in; i++ {
			acc := f.w[j*f.in+i]
			for k := 0; k < f.r; k++ {
				acc += f.s * f.b[j*f.r+k] * f.a[k*f.in+i]
			}
			v[j*f.in+i] = acc
		}
	}
	return v
}

func (f *doraRef) norms() []float64 {
	if f.n != nil {
		return f.n
	}
	v := f.v()
	n := make([]float64, f.out)
	for j := range n {
		for i := 0; i < f.in; i++ {
			n[j] += v[j*f.in+i] * v[j*f.in+i]
		}
		n[j] = math.Sqrt(n[j])
	}
	return n
}

func (f *doraRef) forward() []float64 {
	v, n := f.v(), f.norms()
	y := make([]float64, f.rows*f.out)
	for t := 0; t < f.rows; t++ {
		for j := 0; j < f.out; j++ {
			g := f.m[j] / n[j]
			var base, dw, dv float64
			for i := 0; i < f.in; i++ {
				x := f.x[t*f.in+i]
				d := x
				if f.mask != nil {
					d *= f.mask[t*f.in+i]
				}
				base += x * f.w[j*f.in+i]
				dw += d * f.w[j*f.in+i]
				dv += d * v[j*f.in+i]
			}
			if f.mask == nil {
				y[t*f.out+j] = g * dv
			} else {
				y[t*f.out+j] = base + (g-1)*dw + g*(dv-dw)
			}
		}
	}
	return y
}

func dot(a []float64, b []float32) float64 {
	var s float64
	for i := range a {
		s += a[i] * float64(b[i])
	}
	return s
}

// The DoRA layer's output (fused AddTo and Forward) equals the definition
// computed independently in float64, without and with dropout; its
// gradients for A, B, the magnitude and the input equal central differences
// of the same function with the row norm held constant, as PEFT detaches it.
func TestDoRALayerMatchesDefinition(t *testing.T) {
	for _, p := range []float64{0, 0.3} {
		be := cpu.New()
		c := randmodel.TinyConfig(53)
		c.InitializerRange = 0.2
		m, err := llama.NewRandom(c, be, kernels.F32, 1)
		if err != nil {
			t.Fatal(err)
		}
		s, err := lora.Attach(m, lora.Config{R: 3, Alpha: 6, Dropout: p, UseDoRA: true, TargetModules: []string{"gate_proj"}}, 7)
		if err != nil {
			t.Fatal(err)
		}
		trainDoRA(be, s, 2)
		l := s.Linears[0]
		out, in, rank, rows := l.W.Shape[0], l.W.Shape[1], 3, 3
		r := rand.New(rand.NewPCG(9, 9))
		x0, c0 := randVec(r, rows*in, 0, 1), randVec(r, rows*out, 0, 1)
		ref := &doraRef{w: f64(l.W.F32()), a: f64(l.A.F32()), b: f64(l.B.F32()), m: f64(l.M.F32()), x: f64(x0),
			out: out, in: in, r: rank, rows: rows, s: float64(l.Scaling)}
		if p > 0 {
			ones := make([]float32, rows*in)
			for i := range ones {
				ones[i] = 1
			}
			tp := tensor.NewTape(be)
			ref.mask = f64(tp.Dropout(tensor.FromF32(be, kernels.F32, ones, rows, in), p, lora.DropoutSeed(l)).F32())
		}
		// The tape's norms against the definition's.
		norm := l.RowNorms()
		for j, n := range ref.norms() {
			if math.Abs(float64(norm[j])-n) > 1e-5*n {
				t.Fatalf("p=%v: row norm %d = %v, definition %v", p, j, norm[j], n)
			}
		}
		want := ref.forward()
		for _, fused := range []bool{true, false} {
			x := tensor.FromF32(be, kernels.F32, x0, rows, in).SetRequiresGrad(true)
			for _, q := range s.Params() {
				q.ZeroGrad()
			}
			tp := tensor.NewTape(be)
			var y *tensor.Tensor
			if fused {
				y = l.AddTo(tp, tp.Linear(x, l.W), x)
			} else {
				y = tp.Add(tp.Linear(x, l.W), l.Forward(tp, x))
			}
			got := y.F32()
			for i := range want {
				if math.Abs(float64(got[i])-want[i]) > 1e-5*(1+math.Abs(want[i])) {
					t.Fatalf("p=%v fused=%v: y[%d] = %v, definition %v", p, fused, i, got[i], want[i])
				}
			}
			loss := tp.Linear(tensor.FromF32(be, kernels.F32, c0, 1, rows*out), tp.Reshape(y, 1, rows*out))
			tp.Backward(loss)
			// Central differences of Σ c·y with the norm held at its value.
			ref.n = ref.norms()
			for _, v := range []struct {
				name string
				p    []float64
				g    []float32
			}{{"A", ref.a, l.A.GradF32()}, {"B", ref.b, l.B.GradF32()}, {"magnitude", ref.m, l.M.GradF32()}, {"x", ref.x, x.GradF32()}} {
				const eps = 1e-4
				for k := range v.p {
					old := v.p[k]
					v.p[k] = old + eps
					lp := dot(ref.forward(), c0)
					v.p[k] = old - eps
					lm := dot(ref.forward(), c0)
					v.p[k] = old
					num := (lp - lm) / (2 * eps)
					if math.Abs(float64(v.g[k])-num) > 1e-3*(1+math.Abs(num)) {
						t.Fatalf("p=%v fused=%v: d%s[%d] = %v, central difference %v", p, fused, v.name, k, v.g[k], num)
					}
				}
			}
			ref.n = nil
			tp.Release()
		}
	}
}

// At initialization (B = 0, magnitude = row norms of W) a DoRA model's
// logits are the base model's, bit for bit, with and without dropout, in
// f32 and with bf16 base weights.
func TestDoRAInitIsBaseModel(t *testing.T) {
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		for _, p := range []float64{0, 0.1} {
			be := cpu.New()
			c := randmodel.TinyConfig(53)
			m, err := llama.NewRandom(c, be, dt, 1)
			if err != nil {
				t.Fatal(err)
			}
			in := &llama.Input{Rows: 2, SeqLen: 7, InputIDs: make([]int32, 14)}
			for i := range in.InputIDs {
				in.InputIDs[i] = int32(i * 5 % 53)
			}
			logits := func() []float32 {
				l, err := m.Logits(llama.NewInferenceTape(be), in)
				if err != nil {
					t.Fatal(err)
				}
				return l.F32()
			}
			base := logits()
			s, err := lora.Attach(m, doraConfig(p), 3)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range s.Linears {
				w, mag := l.W.F32(), l.M.F32()
				in := l.W.Shape[1]
				for j := range mag {
					var sq float64
					for _, x := range w[j*in : (j+1)*in] {
						sq += float64(x) * float64(x)
					}
					if mag[j] != float32(math.Sqrt(sq)) {
						t.Fatalf("%s: magnitude[%d] = %v, row norm %v", l.Module, j, mag[j], math.Sqrt(sq))
					}
				}
			}
			got := logits()
			for i := range base {
				if got[i] != base[i] {
					t.Fatalf("%v p=%v: logit %d: DoRA at init %v, base %v", dt, p, i, got[i], base[i])
				}
			}
		}
	}
}

// The magnitudes' gradients of the whole model's loss equal central
// differences (the detached norm does not depend on them).
func TestDoRAMagnitudeGradientsNumeric(t *testing.T) {
	m, s, in, labels := setup(t, doraConfig(0), kernels.F32)
	be := m.Backend()
	trainDoRA(be, s, 4)
	tp := tensor.NewTape(be)
	loss, _, err := m.Loss(tp, in, labels, 0)
	if err != nil {
		t.Fatal(err)
	}
	tp.Backward(loss)
	r := rand.New(rand.NewPCG(2, 3))
	for _, l := range s.Linears {
		checkDirectional(t, m, in, labels, l.M, randVec(r, l.M.Numel(), 0, 1))
	}
	if got := s.Linears[0].M.Name; got != "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector" {
		t.Fatalf("magnitude key %q", got)
	}
	if n := len(s.Params()); n != 3*len(s.Linears) {
		t.Fatalf("%d trainable tensors for %d DoRA adapters, want A, B and magnitude each", n, len(s.Linears))
	}
}

// Merge gives W' = m/‖W + s·B·A‖_row ⊙ (W + s·B·A) (the paper's definition,
// in float64), and the merged model's logits equal base + DoRA's.
func TestDoRAMerge(t *testing.T) {
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		m, s, in, _ := setup(t, doraConfig(0), dt)
		be := m.Backend()
		trainDoRA(be, s, 6)
		var want [][]float64
		for _, l := range s.Linears {
			ref := &doraRef{w: f64(l.W.F32()), a: f64(l.A.F32()), b: f64(l.B.F32()), m: f64(l.M.F32()),
				out: l.W.Shape[0], in: l.W.Shape[1], r: 4, s: float64(l.Scaling)}
			v, n := ref.v(), ref.norms()
			// The forward pass's norms (‖W‖² cached, W·Aᵀ over W as stored).
			for j, got := range l.RowNorms() {
				if math.Abs(float64(got)-n[j]) > 1e-5*n[j] {
					t.Fatalf("%v: %s: row norm %d = %v, definition %v", dt, l.Module, j, got, n[j])
				}
			}
			for j := 0; j < ref.out; j++ {
				for i := 0; i < ref.in; i++ {
					v[j*ref.in+i] *= ref.m[j] / n[j]
				}
			}
			want = append(want, v)
		}
		logits := func() []float32 {
			l, err := m.Logits(llama.NewInferenceTape(be), in)
			if err != nil {
				t.Fatal(err)
			}
			return l.F32()
		}
		before := logits()
		ws := make([]*tensor.Tensor, len(s.Linears))
		for i, l := range s.Linears {
			ws[i] = l.W
		}
		s.Merge(m)
		if len(m.Adapters) != 0 {
			t.Fatal("adapters still attached after merge")
		}
		tol := map[kernels.DType]float64{kernels.F32: 1e-6, kernels.BF16: 4e-3}[dt]
		for i, w := range ws {
			got := w.F32()
			for k := range got {
				if math.Abs(float64(got[k])-want[i][k]) > tol*(1e-2+math.Abs(want[i][k])) {
					t.Fatalf("%v: %s: merged W'[%d] = %v, definition %v", dt, s.Linears[i].Module, k, got[k], want[i][k])
				}
			}
		}
		if dt != kernels.F32 {
			continue // bf16 weights round the merge: the logits move by more than f32 noise
		}
		after := logits()
		for i := range before {
			if math.Abs(float64(before[i]-after[i])) > 1e-4*(1+math.Abs(float64(before[i]))) {
				t.Fatalf("logit %d: DoRA %v merged %v", i, before[i], after[i])
			}
		}
	}
}

func TestDoRARefusesLMHead(t *testing.T) {
	c := lora.Config{R: 4, Alpha: 8, UseDoRA: true, TargetModules: []string{"q_proj", "lm_head"}}
	if err := c.Validate(); err == nil {
		t.Fatal("DoRA on lm_head accepted")
	}
}

// DoRA under activation recomputation (each layer re-run in backward, the
// row norms with it) gives the same gradients, with dropout, and in bf16
// compute the model still trains every DoRA tensor.
func TestDoRAWithRecomputeAndBF16(t *testing.T) {
	grads := func(recompute bool, compute kernels.DType) [][]float32 {
		m, s, in, labels := setup(t, doraConfig(0.3), kernels.BF16)
		m.Recompute, m.Compute = recompute, compute
		trainDoRA(m.Backend(), s, 8)
		s.SetStep(5)
		tp := tensor.NewTape(m.Backend())
		loss, _, err := m.Loss(tp, in, labels, 0)
		if err != nil {
			t.Fatal(err)
		}
		tp.Backward(loss)
		var out [][]float32
		for _, p := range s.Params() {
			out = append(out, p.GradF32())
		}
		return out
	}
	a, b := grads(false, kernels.F32), grads(true, kernels.F32)
	for i := range a {
		for j := range a[i] {
			if math.Abs(float64(a[i][j]-b[i][j])) > 1e-5 {
				t.Fatalf("param %d elem %d: %v vs %v", i, j, a[i][j], b[i][j])
			}
		}
	}
	for i, g := range grads(false, kernels.BF16) {
		var n float64
		for _, v := range g {
			n += float64(v) * float64(v)
		}
		if !(n > 0) || math.IsInf(n, 0) {
			t.Fatalf("bf16 compute: param %d gradient norm² %v", i, n)
		}
	}
}
