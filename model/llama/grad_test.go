package llama_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/tensor"
)

// packedBatch is 2 rows of 12 tokens; row 0 packs three documents.
func packedBatch(vocab int) (*llama.Input, []int32) {
	r := rand.New(rand.NewPCG(3, 4))
	in := &llama.Input{Rows: 2, SeqLen: 12}
	docs := [][]int{{0, 5, 9}, {0}}
	for row := 0; row < 2; row++ {
		start := 0
		for t := 0; t < 12; t++ {
			for _, d := range docs[row] {
				if t == d {
					start = d
				}
			}
			in.InputIDs = append(in.InputIDs, int32(r.IntN(vocab)))
			in.PositionIDs = append(in.PositionIDs, int32(t-start))
			in.DocStart = append(in.DocStart, int32(start))
		}
	}
	labels := append([]int32(nil), in.InputIDs...)
	labels[3], labels[14] = kernels.IgnoreIndex, kernels.IgnoreIndex
	return in, labels
}

func lossValue(t *testing.T, m *llama.Model, in *llama.Input, labels []int32) float64 {
	tp := tensor.NewTape(m.Backend())
	tp.NoGrad = true
	loss, _, err := m.Loss(tp, in, labels, 0)
	if err != nil {
		t.Fatal(err)
	}
	v := float64(loss.Item())
	tp.Release()
	return v
}

// TestModelGradientsNumeric checks d(loss)/d(every parameter) of the whole tiny
// model against central differences of the loss itself: for each parameter
// tensor, the directional derivative along a random direction v,
// (L(θ+εv) − L(θ−εv)) / 2ε, must equal ⟨∇L, v⟩.
func TestModelGradientsNumeric(t *testing.T) {
	for _, recompute := range []bool{false, true} {
		be := cpu.New()
		cfg := randmodel.TinyConfig(97)
		cfg.InitializerRange = 0.2 // larger weights: gradients well above f32 noise
		m, err := llama.NewRandom(cfg, be, kernels.F32, 1)
		if err != nil {
			t.Fatal(err)
		}
		m.Recompute = recompute
		m.CEChunk = 7
		for _, n := range m.Names() {
			m.Param(n).SetRequiresGrad(true)
		}
		in, labels := packedBatch(cfg.VocabSize)
		tp := tensor.NewTape(be)
		loss, count, err := m.Loss(tp, in, labels, 0)
		if err != nil {
			t.Fatal(err)
		}
		if count != 2*11-2-2 { // 22 shifted targets, minus 2 doc boundaries, minus 2 masked labels
			t.Fatalf("trained tokens = %d", count)
		}
		tp.Backward(loss)
		tp.Release()

		r := rand.New(rand.NewPCG(9, 9))
		const eps = 1e-3
		for _, name := range m.Names() {
			p := m.Param(name)
			g := p.GradF32()
			if g == nil {
				t.Fatalf("%s: no gradient", name)
			}
			orig := p.F32()
			dir := make([]float32, len(orig))
			var ana float64
			for i := range dir {
				dir[i] = float32(r.NormFloat64())
				ana += float64(dir[i]) * float64(g[i])
			}
			set := func(s float32) {
				v := make([]float32, len(orig))
				for i := range v {
					v[i] = orig[i] + s*dir[i]
				}
				be.Copy(p.Buf, be.FromF32(kernels.F32, v))
			}
			set(eps)
			lp := lossValue(t, m, in, labels)
			set(-eps)
			lm := lossValue(t, m, in, labels)
			set(0)
			num := (lp - lm) / (2 * eps)
			if math.Abs(num-ana) > 2e-3+2e-2*math.Abs(ana) {
				t.Errorf("recompute=%v %s: directional derivative analytic %.6g, numeric %.6g", recompute, name, ana, num)
			}
		}
	}
}

// TestDocumentsIsolated: changing a token of one packed document leaves the
// logits of every other document unchanged.
func TestDocumentsIsolated(t *testing.T) {
	be := cpu.New()
	cfg := randmodel.TinyConfig(97)
	m, err := llama.NewRandom(cfg, be, kernels.F32, 2)
	if err != nil {
		t.Fatal(err)
	}
	in, _ := packedBatch(cfg.VocabSize)
	logits := func() []float32 {
		tp := tensor.NewTape(be)
		tp.NoGrad = true
		l, err := m.Logits(tp, in)
		if err != nil {
			t.Fatal(err)
		}
		return l.F32()
	}
	before := logits()
	in.InputIDs[6] = (in.InputIDs[6] + 1) % 97 // inside document [5, 9) of row 0
	after := logits()
	V := cfg.VocabSize
	for pos := 0; pos < 24; pos++ {
		changed := false
		for j := 0; j < V; j++ {
			if before[pos*V+j] != after[pos*V+j] {
				changed = true
			}
		}
		inDoc := pos >= 6 && pos < 9
		if changed != inDoc {
			t.Errorf("position %d: logits changed=%v, want %v", pos, changed, inDoc)
		}
	}
}

func TestFrozenWeightsHaveNoGrad(t *testing.T) {
	be := cpu.New()
	m, err := llama.NewRandom(randmodel.TinyConfig(50), be, kernels.BF16, 3)
	if err != nil {
		t.Fatal(err)
	}
	m.Norm.SetRequiresGrad(true)
	in, labels := packedBatch(50)
	tp := tensor.NewTape(be)
	loss, _, err := m.Loss(tp, in, labels, 0)
	if err != nil {
		t.Fatal(err)
	}
	tp.Backward(loss)
	for _, n := range m.Names() {
		if p := m.Param(n); (p.Grad != nil) != (n == "model.norm.weight") {
			t.Errorf("%s: has grad = %v", n, p.Grad != nil)
		}
	}
}
