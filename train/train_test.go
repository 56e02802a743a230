package train_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/optim"
	"github.com/llamatune/llamatune/tensor"
	"github.com/llamatune/llamatune/train"
)

// writeText writes paragraphs of text as a JSONL dataset.
func writeText(t *testing.T, dir, text string, chunk int) string {
	t.Helper()
	var b strings.Builder
	for len(text) > 0 {
		n := min(chunk, len(text))
		line, _ := json.Marshal(map[string]string{"text": text[:n]})
		b.Write(line)
		b.WriteByte('\n')
		text = text[n:]
	}
	path := filepath.Join(dir, "data.jsonl")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

type setup struct {
	model *llama.Model
	lora  *lora.Set
	opts  train.Options
}

func newSetup(t *testing.T, modelDir, dataPath, outDir string, method string, split data.Split) setup {
	t.Helper()
	m, err := llama.Load(modelDir, cpu.New(), kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	return newSetupWith(t, m, modelDir, dataPath, outDir, method, split)
}

// newSetupWith is newSetup on a model already loaded.
func newSetupWith(t *testing.T, m *llama.Model, modelDir, dataPath, outDir string, method string, split data.Split) setup {
	t.Helper()
	tok, err := tokenizer.Load(modelDir)
	if err != nil {
		t.Fatal(err)
	}
	dopts := func(split data.Split, epochs int) data.Options {
		return data.Options{Datasets: []data.DatasetSpec{{Path: dataPath}}, Tokenizer: tok, SeqLen: 48, BatchRows: 2,
			Packing: true, ShuffleBuffer: 16, Seed: 3, Epochs: epochs, EvalFraction: 0.1, Split: split, Truncation: data.TruncateSplit}
	}
	s := setup{model: m}
	o := train.Options{
		Model:       m,
		GradAccum:   2,
		Optim:       optim.AdamWConfig{LR: 3e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01},
		Schedule:    optim.Schedule{Kind: "cosine", WarmupSteps: 2, TotalSteps: 40},
		MaxGradNorm: 1, OutDir: outDir, Seed: 1,
		Meta: train.Meta{Method: method, BaseModel: modelDir, ModelHash: "m", DataHash: "d"},
		OpenData: func(c *data.Cursor) (train.Batches, error) {
			return data.New(dopts(split, -1), c)
		},
		OpenEval: func() (train.Batches, error) { return data.New(dopts(data.SplitEval, 1), nil) },
	}
	if method == "lora" {
		s.lora, err = lora.Attach(m, lora.Config{R: 8, Alpha: 16, Dropout: 0.1, TargetModules: []string{"all-linear", "lm_head"}}, 1)
		if err != nil {
			t.Fatal(err)
		}
		o.LoRA, o.Trainable = s.lora, s.lora.Params()
	} else {
		for _, n := range m.Names() {
			o.Trainable = append(o.Trainable, m.Param(n).SetRequiresGrad(true))
		}
	}
	s.opts = o
	return s
}

// sameLosses fails unless an interrupted-then-resumed run's losses (got)
// equal the uninterrupted run's (want) bit for bit.
func sameLosses(t *testing.T, got, want []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d losses after resume, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("step %d: resumed loss %v, uninterrupted %v (all: %v vs %v)", i+1, got[i], want[i], got, want)
		}
	}
}

// A run interrupted after step k and resumed from its checkpoint produces a
// loss sequence bit-identical to the uninterrupted run.
func TestResumeBitIdentical(t *testing.T) {
	modelDir := randmodel.MustTinyModel(t, randmodel.TinyOptions{Tokenizer: "llama2"})
	raw, err := os.ReadFile("../testdata/war-and-peace-60k.txt")
	if err != nil {
		t.Fatal(err)
	}
	dataPath := writeText(t, t.TempDir(), string(raw[:12000]), 700)
	for _, method := range []string{"lora", "full"} {
		t.Run(method, func(t *testing.T) {
			const steps = 6
			full := newSetup(t, modelDir, dataPath, t.TempDir(), method, data.SplitTrain)
			full.opts.MaxSteps = steps
			full.opts.OpenEval = nil
			want, err := train.Run(context.Background(), full.opts)
			if err != nil {
				t.Fatal(err)
			}
			out := t.TempDir()
			a := newSetup(t, modelDir, dataPath, out, method, data.SplitTrain)
			a.opts.MaxSteps, a.opts.OpenEval, a.opts.SaveEvery = steps, nil, 100
			ctx, cancel := context.WithCancel(context.Background())
			a.opts.AfterStep = func(m train.StepMetrics) {
				if m.Step == 3 {
					cancel() // as SIGINT would
				}
			}
			first, err := train.Run(ctx, a.opts)
			if err != nil {
				t.Fatal(err)
			}
			if !first.Interrupted || first.Steps != 3 {
				t.Fatalf("interrupted run: %+v", first)
			}
			b := newSetup(t, modelDir, dataPath, out, method, data.SplitTrain)
			b.opts.MaxSteps, b.opts.OpenEval, b.opts.Resume = steps, nil, "latest"
			rest, err := train.Run(context.Background(), b.opts)
			if err != nil {
				t.Fatal(err)
			}
			sameLosses(t, append(first.Losses, rest.Losses...), want.Losses)
			// metrics.jsonl holds each step once.
			lines, _ := os.ReadFile(filepath.Join(out, "metrics.jsonl"))
			if n := strings.Count(string(lines), "\n"); n != steps {
				t.Fatalf("metrics.jsonl has %d lines, want %d", n, steps)
			}
		})
	}
}

// Resuming with another model or data is refused, naming what differs.
func TestResumeRefusesOtherRun(t *testing.T) {
	modelDir := randmodel.MustTinyModel(t, randmodel.TinyOptions{Tokenizer: "llama2"})
	raw, _ := os.ReadFile("../testdata/war-and-peace-60k.txt")
	dataPath := writeText(t, t.TempDir(), string(raw[:4000]), 500)
	out := t.TempDir()
	s := newSetup(t, modelDir, dataPath, out, "lora", data.SplitTrain)
	s.opts.MaxSteps, s.opts.OpenEval = 1, nil
	s.opts.Meta.JobYAML = "data:\n  seq_len: 48\n  seed: 3\n"
	if _, err := train.Run(context.Background(), s.opts); err != nil {
		t.Fatal(err)
	}
	s2 := newSetup(t, modelDir, dataPath, out, "lora", data.SplitTrain)
	s2.opts.MaxSteps, s2.opts.OpenEval, s2.opts.Resume = 2, nil, "latest"
	s2.opts.Meta.DataHash = "other"
	s2.opts.Meta.JobYAML = "data:\n  seq_len: 64\n  seed: 3\n"
	_, err := train.Run(context.Background(), s2.opts)
	if err == nil || !strings.Contains(err.Error(), "data section") || !strings.Contains(err.Error(), "data.seq_len: 48 -> 64") {
		t.Fatalf("resume with other data: %v", err)
	}
}

// k micro-batches of one step give the same gradient as one batch holding
// all their rows: the loss is normalized by the step's trained-token count.
func TestGradAccumEqualsBigBatch(t *testing.T) {
	be := cpu.New()
	m, err := llama.NewRandom(randmodel.TinyConfig(41), be, kernels.F32, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range m.Names() {
		m.Param(n).SetRequiresGrad(true)
	}
	rows := [][]int32{{1, 2, 3, 4, 5, 6}, {7, 8, 9, 10, 11, 12}, {13, 14, 15, 16, 17, 18}}
	labels := [][]int32{{1, 2, 3, 4, 5, 6}, {-100, -100, -100, 10, 11, 12}, {13, -100, 15, 16, 17, 18}}
	grads := func() map[string][]float32 {
		g := map[string][]float32{}
		for _, n := range m.Names() {
			g[n] = m.Param(n).GradF32()
			m.Param(n).ZeroGrad()
		}
		return g
	}
	// One batch of 3 rows.
	big := &llama.Input{Rows: 3, SeqLen: 6}
	var bigLabels []int32
	for i := range rows {
		big.InputIDs = append(big.InputIDs, rows[i]...)
		bigLabels = append(bigLabels, labels[i]...)
	}
	tp := tensor.NewTape(be)
	loss, total, _ := m.Loss(tp, big, bigLabels, 0)
	tp.Backward(loss)
	want := grads()
	// Three micro-batches, each normalized by the total.
	for i := range rows {
		tp := tensor.NewTape(be)
		l, _, _ := m.Loss(tp, &llama.Input{Rows: 1, SeqLen: 6, InputIDs: rows[i]}, labels[i], float64(total))
		tp.Backward(l)
	}
	got := grads()
	for n, w := range want {
		for j := range w {
			if d := got[n][j] - w[j]; d > 1e-6 || d < -1e-6 {
				t.Fatalf("%s[%d]: accumulated %v, big batch %v", n, j, got[n][j], w[j])
			}
		}
	}
}
