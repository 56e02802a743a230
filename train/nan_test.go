package train_test

import (
	"context"
	"errors"
	"math"
	"os"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/internal/testutil"
	"github.com/llamatune/llamatune/tensor"
	"github.com/llamatune/llamatune/train"
)

// A non-finite loss stops the run with a clear error (on_nan: stop), or the
// step is dropped without touching the weights (on_nan: skip).
func TestNaNPolicy(t *testing.T) {
	modelDir := testutil.MustTinyModel(t, testutil.TinyOptions{Tokenizer: "llama2"})
	raw, _ := os.ReadFile("../testdata/war-and-peace-60k.txt")
	dataPath := writeText(t, t.TempDir(), string(raw[:6000]), 500)
	for _, policy := range []string{"stop", "skip"} {
		t.Run(policy, func(t *testing.T) {
			s := newSetup(t, modelDir, dataPath, t.TempDir(), "lora", data.SplitTrain)
			s.opts.MaxSteps, s.opts.OpenEval, s.opts.OnNaN = 3, nil, policy
			ce := train.CrossEntropy(s.model)
			calls := 0
			var snaps [][]float32
			s.opts.AfterStep = func(train.StepMetrics) { snaps = append(snaps, s.lora.Params()[1].F32()) }
			s.opts.Loss = func(tp *tensor.Tape, b *data.Batch, n float64) (*tensor.Tensor, error) {
				calls++
				loss, err := ce(tp, b, n)
				if calls == 3 || calls == 4 { // both micro-batches of step 2
					return tp.Scale(loss, float32(math.NaN())), err
				}
				return loss, err
			}
			res, err := train.Run(context.Background(), s.opts)
			if policy == "stop" {
				if !errors.Is(err, train.ErrNaN) || !strings.Contains(err.Error(), "step 2") {
					t.Fatalf("want a NaN error at step 2, got %v", err)
				}
				return
			}
			if err != nil || res.Steps != 3 {
				t.Fatalf("skip policy: %v, %d steps", err, res.Steps)
			}
			if !math.IsNaN(res.Losses[1]) || math.IsNaN(res.Losses[2]) {
				t.Fatalf("losses %v", res.Losses)
			}
			for i, v := range snaps[1] { // step 2 was dropped: B unchanged since step 1
				if v != snaps[0][i] {
					t.Fatalf("skipped step changed lora_B[%d]: %v -> %v", i, snaps[0][i], v)
				}
			}
			changed := false
			for i, v := range snaps[2] {
				changed = changed || v != snaps[1][i]
			}
			if !changed {
				t.Fatal("step 3 did not update the weights")
			}
		})
	}
}
