package train_test

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/tensor"
	"github.com/llamatune/llamatune/train"
)

// A non-finite loss stops the run with a clear error (on_nan: stop), or the
// step is dropped without touching the weights (on_nan: skip).
func TestNaNPolicy(t *testing.T) {
	modelDir := randmodel.MustTinyModel(t, randmodel.TinyOptions{Tokenizer: "llama2"})
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
			s.opts.Loss = func(tp *tensor.Tape, b *data.Batch, n float64) (*tensor.Tensor, train.LossParts, error) {
				calls++
				loss, parts, err := ce(tp, b, n)
				if calls == 3 || calls == 4 { // both micro-batches of step 2
					return tp.Scale(loss, float32(math.NaN())), parts, err
				}
				return loss, parts, err
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
			checkSkippedMetrics(t, s.opts.OutDir, 2)
		})
	}
}

// checkSkippedMetrics: every metrics.jsonl line is a JSON object, the skipped
// step's says "skipped": true with a null loss, and the run plots.
func checkSkippedMetrics(t *testing.T, runDir string, skippedStep int) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(runDir, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("metrics.jsonl has %d lines, want 3:\n%s", len(lines), raw)
	}
	for i, line := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("metrics.jsonl line %d %q: %v", i+1, line, err)
		}
		skipped := m["step"] == float64(skippedStep)
		if skipped != (m["skipped"] == true) {
			t.Fatalf("line %d: skipped = %v, want %v: %s", i+1, m["skipped"], skipped, line)
		}
		if loss, ok := m["loss"]; skipped && loss != nil || !skipped && !ok {
			t.Fatalf("line %d: loss %v: %s", i+1, loss, line)
		}
	}
	png, err := train.PlotRun(runDir)
	if err != nil {
		t.Fatalf("plotting a run with a skipped step: %v", err)
	}
	if b, err := os.ReadFile(png); err != nil || len(b) < 8 || string(b[1:4]) != "PNG" {
		t.Fatalf("%s is not a PNG (%d bytes, %v)", png, len(b), err)
	}
}
