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
	"github.com/llamatune/llamatune/optim"
	"github.com/llamatune/llamatune/tensor"
)

// qloraTolerance bounds |loss(NF4 base) − loss(bf16 base)| at every step
// of the run below, relative to the bf16 loss. NF4 moves each base weight
// by up to ~15% of its block's absmax (half the widest code gap): the runs
// start 0.2% apart (5.049 vs 5.040) and drift apart slowly as the adapters
// learn around slightly different bases; observed at most 2.6% over the 20
// steps (5.04 → 2.00), so 5% leaves room for summation-order changes.
// A broken dequantization (wrong nibble order or scales; see
// gemm.TestGemmNF4CatchesNibbleSwap) changes the base by O(1) and the
// losses by far more.
const qloraTolerance = 0.05

// TestQLoRATracksBF16: LoRA (r 8, all linear layers) on the same tiny bf16
// checkpoint, loaded once with bf16 and once with NF4 base weights (bf16
// compute for both), trained 20 AdamW steps on the same batch: the losses
// agree within qloraTolerance at every step, both runs learn, and the NF4
// run really uses NF4 weights.
func TestQLoRATracksBF16(t *testing.T) {
	be := cpu.New()
	c := randmodel.TinyConfig(97)
	c.InitializerRange = 0.1
	ref, err := llama.NewRandom(c, be, kernels.F32, 3)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ref.Save(dir, llama.SaveOptions{DType: "BF16"}); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(4, 4))
	in := &llama.Input{Rows: 2, SeqLen: 32}
	for range in.Rows * in.SeqLen {
		in.InputIDs = append(in.InputIDs, int32(r.IntN(16))) // a small alphabet: learnable
	}
	labels := in.InputIDs // Loss shifts them: next-token prediction
	run := func(dt kernels.DType) []float64 {
		m, err := llama.Load(dir, be, dt)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		m.Compute = kernels.BF16
		if got := m.Param("model.layers.1.mlp.down_proj.weight").DType(); got != dt {
			t.Fatalf("%v load: down_proj stored as %v", dt, got)
		}
		if got := m.Param("model.embed_tokens.weight").DType(); got != kernels.BF16 {
			t.Fatalf("%v load: embeddings stored as %v, want BF16", dt, got)
		}
		s, err := lora.Attach(m, lora.Config{R: 8, Alpha: 16, TargetModules: []string{"all-linear"}}, 7)
		if err != nil {
			t.Fatal(err)
		}
		cfg := optim.DefaultAdamW()
		o := optim.NewAdamW(be, s.Params(), cfg)
		var losses []float64
		for range 20 {
			tp := tensor.NewTape(be)
			loss, _, err := m.Loss(tp, in, labels, 0)
			if err != nil {
				t.Fatal(err)
			}
			losses = append(losses, float64(loss.Item()))
			tp.Backward(loss)
			o.Step(3e-3)
			o.ZeroGrad()
			tp.Release()
		}
		return losses
	}
	want, got := run(kernels.BF16), run(kernels.NF4)
	worst := 0.0
	for i := range want {
		t.Logf("step %2d: bf16 %.4f nf4 %.4f", i, want[i], got[i])
		d := math.Abs(got[i]-want[i]) / want[i]
		worst = max(worst, d)
		if d > qloraTolerance {
			t.Errorf("step %d: QLoRA loss %.4f, bf16 LoRA %.4f (%.1f%% apart, tolerance %.0f%%)", i, got[i], want[i], 100*d, 100*qloraTolerance)
		}
	}
	t.Logf("bf16 LoRA %.4f → %.4f, QLoRA %.4f → %.4f, worst relative difference %.2f%%", want[0], want[len(want)-1], got[0], got[len(got)-1], 100*worst)
	if want[len(want)-1] > 0.7*want[0] || got[len(got)-1] > 0.7*got[0] {
		t.Errorf("the runs do not learn: bf16 %.4f → %.4f, nf4 %.4f → %.4f", want[0], want[len(want)-1], got[0], got[len(got)-1])
	}
	if worst == 0 {
		t.Error("QLoRA gives exactly the bf16 losses: NF4 is not in effect")
	}
}

// Merging adapters into an NF4 base gives bf16 weights holding the
// dequantized base plus B·A: the logits match base + adapters (to bf16
// rounding of the merged weights).
func TestMergeNF4(t *testing.T) {
	be := cpu.New()
	c := randmodel.TinyConfig(53)
	ref, err := llama.NewRandom(c, be, kernels.F32, 3)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ref.Save(dir, llama.SaveOptions{DType: "BF16"}); err != nil {
		t.Fatal(err)
	}
	m, err := llama.Load(dir, be, kernels.NF4)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	s, err := lora.Attach(m, lora.Config{R: 4, Alpha: 8, TargetModules: []string{"all-linear"}}, 7)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 1))
	for _, l := range s.Linears {
		v := make([]float32, l.B.Numel())
		for i := range v {
			v[i] = float32(r.NormFloat64() * 0.1)
		}
		be.Copy(l.B.Buf, be.FromF32(kernels.F32, v))
	}
	in := &llama.Input{Rows: 1, SeqLen: 9, InputIDs: []int32{1, 5, 9, 2, 7, 3, 3, 8, 4}}
	logits := func() []float32 {
		l, err := m.Logits(llama.NewInferenceTape(be), in)
		if err != nil {
			t.Fatal(err)
		}
		return l.F32()
	}
	before := logits()
	s.Merge(m)
	if got := m.Param("model.layers.0.self_attn.q_proj.weight").DType(); got != kernels.BF16 {
		t.Fatalf("merged NF4 weight is %v, want BF16", got)
	}
	after := logits()
	for i := range before {
		if math.Abs(float64(before[i]-after[i])) > 1e-2*(1+math.Abs(float64(before[i]))) {
			t.Fatalf("logit %d: adapters %v merged %v", i, before[i], after[i])
		}
	}
}
