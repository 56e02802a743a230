package train_test

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"testing"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/train"
)

// Learning is real: training the tiny model on a War and Peace chunk lowers
// the held-out loss (rows set aside by the data split, never trained on) by
// a stated margin, for full fine-tuning and for LoRA.
func TestHeldOutLossDrops(t *testing.T) {
	modelDir := randmodel.MustTinyModel(t, randmodel.TinyOptions{Tokenizer: "llama2"})
	raw, err := os.ReadFile("../testdata/war-and-peace-60k.txt")
	if err != nil {
		t.Fatal(err)
	}
	dataPath := writeText(t, t.TempDir(), string(raw[:30000]), 400)
	for _, tc := range []struct {
		method string
		lr     float64
		margin float64 // nats the held-out loss must drop by
	}{
		{"full", 1e-2, 2.5},
		{"lora", 2e-2, 2.0},
	} {
		t.Run(tc.method, func(t *testing.T) {
			out := t.TempDir()
			s := newSetup(t, modelDir, dataPath, out, tc.method, data.SplitTrain)
			s.opts.MaxSteps, s.opts.Optim.LR = 30, tc.lr
			s.opts.Schedule.TotalSteps = 30
			before, err := train.Evaluate(s.model, s.opts.OpenEval, 0)
			if err != nil {
				t.Fatal(err)
			}
			res, err := train.Run(context.Background(), s.opts)
			if err != nil {
				t.Fatal(err)
			}
			after := res.EvalLosses[len(res.EvalLosses)-1]
			t.Logf("%s: held-out loss %.3f -> %.3f (train loss %.3f -> %.3f)", tc.method, before, after, res.Losses[0], res.Losses[len(res.Losses)-1])
			if before-after < tc.margin {
				t.Fatalf("%s: held-out loss %.3f -> %.3f, want a drop of at least %.1f nats", tc.method, before, after, tc.margin)
			}
			path, err := train.PlotRun(out)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(path)
			if _, err := png.Decode(bytes.NewReader(b)); err != nil {
				t.Fatalf("loss.png: %v", err)
			}
		})
	}
}
