package llama_test

import (
	"math"
	"testing"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/tensor"
)

// TestGoldenPyTorch compares logits, loss and every parameter gradient of a
// tiny random Llama (2 packed rows, GQA, llama3 rope scaling, masked labels)
// with the float64 PyTorch reference in tools/golden/llama_ref.py.
func TestGoldenPyTorch(t *testing.T) {
	dir := "../../testdata/golden/tiny_llama"
	be := cpu.New()
	m, err := llama.Load(dir, be, kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	g, err := checkpoint.Open(dir + "/golden.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ints, floats := goldenReaders(t, g)
	info, _ := g.Info("input_ids")
	in := &llama.Input{Rows: info.Shape[0], SeqLen: info.Shape[1], InputIDs: ints("input_ids"),
		PositionIDs: ints("position_ids"), DocStart: ints("doc_start")}
	labels := ints("labels")

	logits, err := m.Logits(llama.NewInferenceTape(be), in)
	if err != nil {
		t.Fatal(err)
	}
	compare(t, "logits", logits.F32(), floats("logits"), 1e-4)

	for _, n := range m.Names() {
		m.Param(n).SetRequiresGrad(true)
	}
	m.CEChunk = 3
	tp := tensor.NewTape(be)
	loss, _, err := m.Loss(tp, in, labels, 0)
	if err != nil {
		t.Fatal(err)
	}
	compare(t, "loss", []float32{loss.Item()}, floats("loss"), 1e-5)
	tp.Backward(loss)
	for _, n := range m.Names() {
		compare(t, "grad "+n, m.Param(n).GradF32(), floats("grad."+n), 1e-4)
	}
}

func compare(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, golden has %d", what, len(got), len(want))
	}
	var maxAbs float64
	for _, w := range want {
		maxAbs = math.Max(maxAbs, math.Abs(float64(w)))
	}
	for i := range got {
		if d := math.Abs(float64(got[i] - want[i])); d > tol*(1+maxAbs) || math.IsNaN(float64(got[i])) {
			t.Errorf("%s[%d] = %v, golden %v (|Δ| %.3g, scale %.3g)", what, i, got[i], want[i], d, maxAbs)
			return
		}
	}
}

// goldenReaders read a golden file's tensors: int32 ones (ids, labels,
// positions) from their raw little-endian bytes, and float ones as f32.
func goldenReaders(t *testing.T, g *checkpoint.Reader) (ints func(string) []int32, floats func(string) []float32) {
	ints = func(name string) []int32 {
		raw, err := g.Raw(name)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]int32, len(raw)/4)
		for i := range out {
			out[i] = int32(uint32(raw[4*i]) | uint32(raw[4*i+1])<<8 | uint32(raw[4*i+2])<<16 | uint32(raw[4*i+3])<<24)
		}
		return out
	}
	floats = func(name string) []float32 {
		v, err := g.F32(name)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	return ints, floats
}
