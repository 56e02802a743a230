package train_test

import (
	"context"
	"math"
	"os"
	"testing"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/train"
)

// bf16Tolerance is how far (in nats) a LoRA run with bf16 base weights and
// bf16 compute may stray from the f32 run, step by step, on the tiny model:
// bf16 keeps 8 significant bits, so each GEMM carries ~2e-3 relative error
// and the loss a few thousandths of a nat of it.
const bf16Tolerance = 0.01

// A LoRA run in bf16 (weights, compute and activation checkpoints) tracks
// the f32 run's loss curve within bf16Tolerance at every step, and both
// learn.
func TestBF16TracksF32(t *testing.T) {
	modelDir := randmodel.MustTinyModel(t, randmodel.TinyOptions{Tokenizer: "llama2"})
	raw, err := os.ReadFile("../testdata/war-and-peace-60k.txt")
	if err != nil {
		t.Fatal(err)
	}
	dataPath := writeText(t, t.TempDir(), string(raw[:12000]), 400)
	run := func(dt kernels.DType) []float64 {
		s := newSetup(t, modelDir, dataPath, t.TempDir(), "lora", data.SplitTrain)
		if dt == kernels.BF16 {
			m, err := llama.Load(modelDir, cpu.New(), kernels.BF16)
			if err != nil {
				t.Fatal(err)
			}
			m.Compute = kernels.BF16
			m.Recompute = true // with bf16 activation checkpoints (tensor.Tape.KeepBF16)
			s = newSetupWith(t, m, modelDir, dataPath, t.TempDir(), "lora", data.SplitTrain)
		}
		s.opts.MaxSteps, s.opts.OpenEval = 12, nil
		res, err := train.Run(context.Background(), s.opts)
		if err != nil {
			t.Fatal(err)
		}
		return res.Losses
	}
	f32, bf16 := run(kernels.F32), run(kernels.BF16)
	worst := 0.0
	for i := range f32 {
		worst = max(worst, math.Abs(f32[i]-bf16[i]))
	}
	t.Logf("loss f32 %.4f -> %.4f, bf16 %.4f -> %.4f; worst step difference %.4f nats", f32[0], f32[len(f32)-1], bf16[0], bf16[len(bf16)-1], worst)
	if worst > bf16Tolerance {
		t.Fatalf("bf16 loss curve strays %.4f nats from f32 (tolerance %g):\nf32  %.4f\nbf16 %.4f", worst, bf16Tolerance, f32, bf16)
	}
	if worst == 0 {
		t.Fatal("bf16 and f32 runs are identical: bf16 compute is not in effect")
	}
	if f32[0]-f32[len(f32)-1] < 0.5 || bf16[0]-bf16[len(bf16)-1] < 0.5 {
		t.Fatalf("runs did not learn: f32 %.3f -> %.3f, bf16 %.3f -> %.3f", f32[0], f32[len(f32)-1], bf16[0], bf16[len(bf16)-1])
	}
}

// A bf16-compute LoRA run interrupted after step 2 and resumed gives the
// loss sequence of the uninterrupted bf16 run bit for bit (bf16 compute is
// as deterministic as f32).
func TestResumeBitIdenticalBF16(t *testing.T) {
	modelDir := randmodel.MustTinyModel(t, randmodel.TinyOptions{Tokenizer: "llama2"})
	raw, err := os.ReadFile("../testdata/war-and-peace-60k.txt")
	if err != nil {
		t.Fatal(err)
	}
	dataPath := writeText(t, t.TempDir(), string(raw[:8000]), 700)
	const steps = 4
	setup := func(out string) setup {
		s := newSetup(t, modelDir, dataPath, out, "lora", data.SplitTrain)
		s.model.Compute, s.model.Recompute = kernels.BF16, true
		s.opts.MaxSteps, s.opts.OpenEval, s.opts.SaveEvery = steps, nil, 100
		return s
	}
	want, err := train.Run(context.Background(), setup(t.TempDir()).opts)
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	a := setup(out)
	ctx, cancel := context.WithCancel(context.Background())
	a.opts.AfterStep = func(m train.StepMetrics) {
		if m.Step == 2 {
			cancel()
		}
	}
	first, err := train.Run(ctx, a.opts)
	if err != nil {
		t.Fatal(err)
	}
	b := setup(out)
	b.opts.Resume = "latest"
	rest, err := train.Run(context.Background(), b.opts)
	if err != nil {
		t.Fatal(err)
	}
	sameLosses(t, append(first.Losses, rest.Losses...), want.Losses)
}
