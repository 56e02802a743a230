package distill_test

import (
	"context"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/distill"
	"github.com/llamatune/llamatune/distill/fakeserver"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/tensor"
	"github.com/llamatune/llamatune/train"
)

// sharpen multiplies a model's final norm weight by s: its next-token
// distributions move far from uniform (a random tiny model's are nearly so).
func sharpen(t *testing.T, m *llama.Model, s float32) {
	t.Helper()
	p := m.Param("model.norm.weight")
	v := p.F32()
	for i := range v {
		v[i] *= s
	}
	m.Backend().Copy(p.Buf, m.Backend().FromF32(kernels.F32, v))
}

// textBatch packs each text (BOS + tokens) into its own row of seqLen.
func textBatch(tok tokenizer.Tokenizer, texts []string, seqLen int) *data.Batch {
	b := &data.Batch{Rows: len(texts), SeqLen: seqLen}
	n := b.Rows * seqLen
	b.InputIDs, b.Labels, b.PositionIDs, b.DocStart = make([]int32, n), make([]int32, n), make([]int32, n), make([]int32, n)
	for r, s := range texts {
		ids := append([]int{tok.BOS()}, tok.Encode(s)...)
		ids = ids[:min(len(ids), seqLen)]
		for i := 0; i < seqLen; i++ {
			o := r*seqLen + i
			if i < len(ids) {
				b.InputIDs[o], b.Labels[o], b.PositionIDs[o] = int32(ids[i]), int32(ids[i]), int32(i)
			} else {
				b.Labels[o], b.DocStart[o] = data.IgnoreIndex, int32(i)
			}
		}
		b.Labels[r*seqLen] = data.IgnoreIndex
	}
	return b
}

// The whole ULD loss on the tape — student forward, the chunked and
// recomputed ULD surrogate, the fused cross-entropy, a LoRA on lm_head
// (the hr·wrᵀ term) — against central differences of the loss value along
// random directions of three trained tensors: a layer's LoRA A (through the
// hidden states h), lm_head's LoRA B (wr) and A (hr). Llama 2 student,
// Llama 3 teacher, both sharpened, temperature 2, chunks of 5 positions.
// Also: a server teacher gives the loss the in-process one does, and
// kd_weight 0 is the cross-entropy.
func TestULDLossGradient(t *testing.T) {
	be := cpu.New()
	student, err := llama.Load(tinyModel(t, "llama2", 2), be, kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	teacherDir := tinyModel(t, "llama3", 3)
	tm, err := llama.Load(teacherDir, be, kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	sharpen(t, student, 40)
	sharpen(t, tm, 60)
	set, err := lora.Attach(student, lora.Config{R: 2, Alpha: 4, TargetModules: []string{"q_proj", "lm_head"}}, 5)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, p := range set.Params() { // B = 0 at init: give the low-rank terms a value
		v := p.F32()
		for i := range v {
			v[i] = float32(r.NormFloat64() * 0.3)
		}
		be.Copy(p.Buf, be.FromF32(kernels.F32, v))
	}
	stok, _ := tokenizer.Load(tinyModel(t, "llama2", 2))
	ttok, _ := tokenizer.Load(teacherDir)
	b := textBatch(stok, []string{"Tokenizers disagree: unbelievably, 12345 naïve cafés!", "The cat sat on the mat."}, 24)
	loss := distill.ULDLoss(context.Background(), student, distill.NewInProcessModel(tm, distill.Info{Name: "t"}),
		distill.ULDConfig{Temperature: 2, KDWeight: 0.9, TopK: 16, Chunk: 5, Student: stok, Teacher: ttok})
	value := func(grad bool) float64 {
		tp := tensor.NewTape(be)
		tp.NoGrad = !grad
		defer tp.Release()
		l, parts, err := loss(tp, b, 0)
		if err != nil {
			t.Fatal(err)
		}
		if parts["uld"] <= 0 || parts["ce"] <= 0 {
			t.Fatalf("parts %v", parts)
		}
		if grad {
			tp.Backward(l)
		}
		return float64(l.Item())
	}
	// A server teacher (the fake vLLM over the same model) gives the same
	// loss at temperature 1: its top-k log-probs become the sorted
	// probabilities; at another temperature it is refused.
	srv := fakeserver.New(fakeserver.Options{Model: tm, Name: "t"})
	defer srv.Close()
	st, err := distill.NewServer(distill.ServerOptions{BaseURL: srv.URL(), Model: "t",
		Info: distill.Info{VocabSize: tm.Config.VocabSize, VocabHash: distill.TokenizerHash(ttok)}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var uld [2]float64
	for i, teacher := range []distill.Teacher{distill.NewInProcessModel(tm, distill.Info{Name: "t"}), st} {
		f := distill.ULDLoss(context.Background(), student, teacher, distill.ULDConfig{Temperature: 1, KDWeight: 0.5, TopK: 8, Student: stok, Teacher: ttok})
		tp := tensor.NewTape(be)
		_, parts, err := f(tp, b, 0)
		tp.Release()
		if err != nil {
			t.Fatal(err)
		}
		uld[i] = parts["uld"]
	}
	if uld[0] <= 0 || math.Abs(uld[0]-uld[1]) > 1e-4*uld[0] {
		t.Fatalf("ULD with the in-process teacher %v, with the server %v", uld[0], uld[1])
	}
	f := distill.ULDLoss(context.Background(), student, st, distill.ULDConfig{Temperature: 2, KDWeight: 0.5, TopK: 8, Student: stok, Teacher: ttok})
	tp0 := tensor.NewTape(be)
	if _, _, err := f(tp0, b, 0); err == nil || !strings.Contains(err.Error(), "temperature 1") {
		t.Fatalf("server teacher at T=2: %v", err)
	}
	tp0.Release()

	// kd_weight 0 is the student's cross-entropy, value and part.
	ce0 := distill.ULDLoss(context.Background(), student, nil, distill.ULDConfig{Temperature: 2, KDWeight: 0, Student: stok, Teacher: ttok})
	tp := tensor.NewTape(be)
	l0, parts, err := ce0(tp, b, 0)
	if err != nil {
		t.Fatal(err)
	}
	ref, _, err := student.Loss(tp, train.Input(b), b.Labels, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := float64(l0.Item()), float64(ref.Item()); math.Abs(got-want) > 1e-5*want || parts["uld"] != 0 || math.Abs(parts["ce"]-want) > 1e-5*want {
		t.Fatalf("kd_weight 0: loss %v, parts %v; cross-entropy %v", got, parts, want)
	}
	tp.Release()
	params := set.Params()
	for _, p := range params {
		p.SetRequiresGrad(true)
	}
	value(true)
	for _, p := range params {
		g, orig := p.GradF32(), p.F32()
		dir := make([]float32, len(orig))
		var ana float64
		for i := range dir {
			dir[i] = float32(r.NormFloat64())
			ana += float64(dir[i] * g[i])
		}
		at := func(e float32) float64 {
			v := make([]float32, len(orig))
			for i := range v {
				v[i] = orig[i] + e*dir[i]
			}
			be.Copy(p.Buf, be.FromF32(kernels.F32, v))
			return value(false)
		}
		const eps = 2e-3
		num := (at(eps) - at(-eps)) / (2 * eps)
		at(0)
		t.Logf("%s: analytic %.6g, central difference %.6g", p.Name, ana, num)
		if math.Abs(num-ana) > 2e-3+3e-2*math.Abs(ana) {
			t.Errorf("%s: analytic %.6g, central difference %.6g", p.Name, ana, num)
		}
	}
}
