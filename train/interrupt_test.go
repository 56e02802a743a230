package train_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/tensor"
	"github.com/llamatune/llamatune/train"
)

// stopInside makes s's loss cancel ctx inside the step after `after`
// completed steps: in the forward pass once the first decoder layer has run,
// or in the backward pass after a few of its nodes. It reports the loss's
// error of that micro-batch.
func stopInside(s *setup, cancel func(), after int, inBackward bool) *error {
	ce := train.CrossEntropy(s.model)
	done, fired := 0, false
	var lossErr error
	s.opts.AfterStep = func(m train.StepMetrics) { done = m.Step }
	s.opts.Loss = func(tp *tensor.Tape, b *data.Batch, n float64) (*tensor.Tensor, train.LossParts, error) {
		if done != after || fired {
			return ce(tp, b, n)
		}
		fired = true
		inner, asks, forwardDone := tp.Cancel, 0, false
		tp.Cancel = func() bool {
			asks++
			// Forward: ask 1 is before layer 0, ask 2 after it. Backward:
			// ask 1 after the forward, then one before each tape node.
			if !inBackward && asks == 2 || inBackward && forwardDone && asks == 4 {
				cancel()
			}
			return inner()
		}
		l, parts, err := ce(tp, b, n)
		lossErr, forwardDone, asks = err, true, 0
		return l, parts, err
	}
	return &lossErr
}

func checkpoints(t *testing.T, runDir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(runDir, "checkpoints"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// A stop asked for inside a step (between decoder layers of the forward
// pass, or inside the backward pass, with and without recomputation) ends
// the run in that step: its partial gradients are dropped, the previous step
// is saved, and resuming from it gives the uninterrupted losses bit for bit.
func TestInterruptMidStep(t *testing.T) {
	modelDir := randmodel.MustTinyModel(t, randmodel.TinyOptions{Tokenizer: "llama2"})
	raw, err := os.ReadFile("../testdata/war-and-peace-60k.txt")
	if err != nil {
		t.Fatal(err)
	}
	dataPath := writeText(t, t.TempDir(), string(raw[:12000]), 700)
	const steps = 4
	for _, tc := range []struct {
		name                  string
		recompute, inBackward bool
	}{{"forward", false, false}, {"backward", false, true}, {"backward-recompute", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			full := newSetup(t, modelDir, dataPath, t.TempDir(), "lora", data.SplitTrain)
			full.model.Recompute = tc.recompute
			full.opts.MaxSteps, full.opts.OpenEval = steps, nil
			want, err := train.Run(context.Background(), full.opts)
			if err != nil {
				t.Fatal(err)
			}
			out := t.TempDir()
			a := newSetup(t, modelDir, dataPath, out, "lora", data.SplitTrain)
			a.model.Recompute = tc.recompute
			a.opts.MaxSteps, a.opts.OpenEval = steps, nil
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			lossErr := stopInside(&a, cancel, 2, tc.inBackward)
			first, err := train.Run(ctx, a.opts)
			if err != nil {
				t.Fatal(err)
			}
			if !first.Interrupted || first.Steps != 2 || len(first.Losses) != 2 {
				t.Fatalf("stopped inside step 3: %+v", first)
			}
			if !tc.inBackward && !errors.Is(*lossErr, tensor.ErrCanceled) {
				t.Fatalf("the forward pass went on after the stop: loss error %v", *lossErr)
			}
			if tc.inBackward && *lossErr != nil {
				t.Fatalf("forward pass: %v", *lossErr)
			}
			for _, p := range a.opts.Trainable {
				for _, g := range p.GradF32() {
					if g != 0 {
						t.Fatalf("%s keeps a partial gradient after the stop", p.Name)
					}
				}
			}
			if got := checkpoints(t, out); len(got) != 1 || got[0] != "step-000002" {
				t.Fatalf("checkpoints after a stop inside step 3: %v, want [step-000002]", got)
			}
			b := newSetup(t, modelDir, dataPath, out, "lora", data.SplitTrain)
			b.model.Recompute = tc.recompute
			b.opts.MaxSteps, b.opts.OpenEval, b.opts.Resume = steps, nil, "latest"
			rest, err := train.Run(context.Background(), b.opts)
			if err != nil {
				t.Fatal(err)
			}
			sameLosses(t, append(first.Losses, rest.Losses...), want.Losses)
		})
	}
}

// A stop inside step 1 saves nothing (no step-0 checkpoint, no metrics
// file), and a fresh run into the same directory then starts without
// complaint.
func TestInterruptBeforeFirstStep(t *testing.T) {
	modelDir := randmodel.MustTinyModel(t, randmodel.TinyOptions{Tokenizer: "llama2"})
	raw, _ := os.ReadFile("../testdata/war-and-peace-60k.txt")
	dataPath := writeText(t, t.TempDir(), string(raw[:6000]), 500)
	out := t.TempDir()
	a := newSetup(t, modelDir, dataPath, out, "lora", data.SplitTrain)
	a.opts.MaxSteps, a.opts.EvalAtStart, a.opts.EvalBatches = 3, true, 1
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopInside(&a, cancel, 0, false)
	res, err := train.Run(ctx, a.opts)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Interrupted || res.Steps != 0 || res.LastCkpt != "" {
		t.Fatalf("stopped inside step 1: %+v", res)
	}
	if got := checkpoints(t, out); len(got) != 0 {
		t.Fatalf("checkpoints after a stop inside step 1: %v, want none", got)
	}
	for _, f := range []string{"metrics.jsonl", "loss.png"} {
		if _, err := os.Stat(filepath.Join(out, f)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s left after a stop inside step 1 (%v)", f, err)
		}
	}
	b := newSetup(t, modelDir, dataPath, out, "lora", data.SplitTrain)
	b.opts.MaxSteps, b.opts.OpenEval = 1, nil
	if res, err := train.Run(context.Background(), b.opts); err != nil || res.Steps != 1 {
		t.Fatalf("a fresh run into the directory: %v (%+v)", err, res)
	}
}

// Options.Rollout replaces micro-batches before their loss: the step is
// normalized by the replaced batches' trained tokens, the replaced share is
// logged as on_policy_share (and kept across a checkpoint), a stop inside
// Rollout is a stop inside the step, and its other errors end the run
// naming the step.
func TestRollout(t *testing.T) {
	modelDir := randmodel.MustTinyModel(t, randmodel.TinyOptions{Tokenizer: "llama2"})
	raw, _ := os.ReadFile("../testdata/war-and-peace-60k.txt")
	dataPath := writeText(t, t.TempDir(), string(raw[:6000]), 500)
	// Every second micro-batch keeps only the labels of its first row.
	firstRow := func(ctx context.Context, step, micro int, b *data.Batch) (*data.Batch, bool, error) {
		if micro != 1 {
			return b, false, nil
		}
		c := *b
		c.Labels = append([]int32(nil), b.Labels...)
		for i := b.SeqLen; i < len(c.Labels); i++ {
			c.Labels[i] = data.IgnoreIndex
		}
		return &c, true, nil
	}
	s := newSetup(t, modelDir, dataPath, t.TempDir(), "lora", data.SplitTrain)
	s.opts.MaxSteps, s.opts.OpenEval, s.opts.Rollout = 2, nil, firstRow
	var ms []train.StepMetrics
	s.opts.AfterStep = func(m train.StepMetrics) { ms = append(ms, m) }
	if _, err := train.Run(context.Background(), s.opts); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.OnPolicyShare == nil || *m.OnPolicyShare != 0.5 || m.TrainedTokens >= 2*2*48 {
			t.Fatalf("step %d: on_policy_share %v, trained tokens %d", m.Step, m.OnPolicyShare, m.TrainedTokens)
		}
	}

	out := t.TempDir()
	a := newSetup(t, modelDir, dataPath, out, "lora", data.SplitTrain)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a.opts.MaxSteps, a.opts.OpenEval = 3, nil
	a.opts.Rollout = func(c context.Context, step, micro int, b *data.Batch) (*data.Batch, bool, error) {
		if step == 2 && micro == 1 {
			cancel() // as SIGINT during sampling
			return nil, false, c.Err()
		}
		return firstRow(c, step, micro, b)
	}
	res, err := train.Run(ctx, a.opts)
	if err != nil || !res.Interrupted || res.Steps != 1 {
		t.Fatalf("stopped inside Rollout of step 2: %v %+v", err, res)
	}
	if got := checkpoints(t, out); len(got) != 1 || got[0] != "step-000001" {
		t.Fatalf("checkpoints: %v, want [step-000001]", got)
	}
	b := newSetup(t, modelDir, dataPath, out, "lora", data.SplitTrain)
	b.opts.MaxSteps, b.opts.OpenEval, b.opts.Resume = 3, nil, "latest"
	b.opts.Rollout = func(context.Context, int, int, *data.Batch) (*data.Batch, bool, error) {
		return nil, false, errors.New("sampler broke")
	}
	if _, err := train.Run(context.Background(), b.opts); err == nil || !strings.Contains(err.Error(), "step 2: sampler broke") {
		t.Fatalf("a failing Rollout: %v", err)
	}
	st, err := train.ReadState(filepath.Join(out, "checkpoints", "step-000001"))
	if err != nil || st.OnPolicy != 1 || st.Micro != 2 {
		t.Fatalf("state.json: %+v %v", st, err)
	}
}
