package train_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/train"
)

// smallRun is a LoRA setup on a tiny model and a few KB of text.
func smallRun(t *testing.T, out string) func() setup {
	t.Helper()
	modelDir := randmodel.MustTinyModel(t, randmodel.TinyOptions{Tokenizer: "llama2"})
	raw, err := os.ReadFile("../testdata/war-and-peace-60k.txt")
	if err != nil {
		t.Fatal(err)
	}
	dataPath := writeText(t, t.TempDir(), string(raw[:4000]), 500)
	return func() setup {
		s := newSetup(t, modelDir, dataPath, out, "lora", data.SplitTrain)
		s.opts.OpenEval = nil
		return s
	}
}

// A .tmp-step-* directory left by a save killed mid-way is removed when a
// run starts and when it resumes, and the log says so.
func TestStartRemovesUnfinishedCheckpoints(t *testing.T) {
	out := t.TempDir()
	mk := smallRun(t, out)
	leftover := func(name string) string {
		p := filepath.Join(out, "checkpoints", name)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "trainable.safetensors"), make([]byte, 1024), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, resume := range []string{"", "latest"} {
		p := leftover(".tmp-step-000007-12345")
		s := mk()
		var log bytes.Buffer
		s.opts.MaxSteps, s.opts.Resume, s.opts.Log = 1, resume, &log
		if resume != "" {
			s.opts.MaxSteps = 2
		}
		if _, err := train.Run(context.Background(), s.opts); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("resume %q: %s still there (%v)", resume, p, err)
		}
		if !strings.Contains(log.String(), "removed 1 unfinished checkpoint(s)") || !strings.Contains(log.String(), ".tmp-step-000007-12345") {
			t.Fatalf("resume %q: log does not say what was removed:\n%s", resume, log.String())
		}
	}
	ents, _ := os.ReadDir(filepath.Join(out, "checkpoints"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp") {
			t.Fatalf("leftover %s", e.Name())
		}
	}
}

// Resuming with changed keys prints each change and says whether the run
// is still exact.
func TestResumeReportsChangedKeys(t *testing.T) {
	out := t.TempDir()
	mk := smallRun(t, out)
	job := func(lr string, every int) string {
		return "optimizer:\n  lr: " + lr + "\ncheckpoint:\n  every: " + string(rune('0'+every)) + "\nmax_steps: 4\n"
	}
	s := mk()
	s.opts.MaxSteps, s.opts.Meta.JobYAML = 1, job("0.001", 1)
	if _, err := train.Run(context.Background(), s.opts); err != nil {
		t.Fatal(err)
	}
	// Bookkeeping only: still exact.
	s = mk()
	var log bytes.Buffer
	s.opts.MaxSteps, s.opts.Resume, s.opts.Log, s.opts.Meta.JobYAML = 2, "latest", &log, job("0.001", 2)
	if _, err := train.Run(context.Background(), s.opts); err != nil {
		t.Fatal(err)
	}
	if l := log.String(); !strings.Contains(l, "checkpoint.every: 1 -> 2") || !strings.Contains(l, "still exact") || strings.Contains(l, "NOT exact") {
		t.Fatalf("bookkeeping change:\n%s", l)
	}
	// A new learning rate: named, old -> new, and not exact.
	s = mk()
	log.Reset()
	s.opts.MaxSteps, s.opts.Resume, s.opts.Log, s.opts.Meta.JobYAML = 3, "latest", &log, job("0.0005", 2)
	if _, err := train.Run(context.Background(), s.opts); err != nil {
		t.Fatal(err)
	}
	if l := log.String(); !strings.Contains(l, "optimizer.lr: 0.001 -> 0.0005") || !strings.Contains(l, "NOT exact") || !strings.Contains(l, "steps 1-2 stay as trained") {
		t.Fatalf("lr change:\n%s", l)
	}
}

// A corrupt newest checkpoint is refused with the previous good one named;
// resuming from that one works.
func TestResumeCorruptNewestNamesPrevious(t *testing.T) {
	out := t.TempDir()
	mk := smallRun(t, out)
	s := mk()
	s.opts.MaxSteps, s.opts.SaveEvery = 2, 1
	if _, err := train.Run(context.Background(), s.opts); err != nil {
		t.Fatal(err)
	}
	newest := filepath.Join(out, "checkpoints", "step-000002")
	prev := filepath.Join(out, "checkpoints", "step-000001")
	f := filepath.Join(newest, "trainable.safetensors")
	fi, err := os.Stat(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(f, fi.Size()/2); err != nil {
		t.Fatal(err)
	}
	s = mk()
	s.opts.MaxSteps, s.opts.Resume = 3, "latest"
	_, err = train.Run(context.Background(), s.opts)
	if err == nil || !strings.Contains(err.Error(), newest+" is corrupt") || !strings.Contains(err.Error(), "--resume "+prev) {
		t.Fatalf("resume from a corrupt newest checkpoint: %v", err)
	}
	s = mk()
	s.opts.MaxSteps, s.opts.Resume = 3, prev
	res, err := train.Run(context.Background(), s.opts)
	if err != nil || res.Steps != 3 {
		t.Fatalf("resume from the previous good one: %+v %v", res, err)
	}
}

// elapsed_sec is stored in the checkpoint and goes on across a resume.
func TestElapsedContinuesAcrossResume(t *testing.T) {
	out := t.TempDir()
	mk := smallRun(t, out)
	s := mk()
	s.opts.MaxSteps = 1
	if _, err := train.Run(context.Background(), s.opts); err != nil {
		t.Fatal(err)
	}
	// Pretend the first process trained for 1000 s.
	sp := filepath.Join(out, "checkpoints", "step-000001", "state.json")
	raw, err := os.ReadFile(sp)
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}
	if v, ok := st["elapsed_sec"].(float64); !ok || v <= 0 {
		t.Fatalf("state.json has no elapsed_sec: %s", raw)
	}
	if v, _ := st["base_weights"].(string); v == "" {
		t.Fatalf("state.json has no base_weights: %s", raw)
	}
	st["elapsed_sec"] = 1000.0
	raw, _ = json.Marshal(st)
	if err := os.WriteFile(sp, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	s = mk()
	s.opts.MaxSteps, s.opts.Resume = 2, "latest"
	if _, err := train.Run(context.Background(), s.opts); err != nil {
		t.Fatal(err)
	}
	ms, err := train.ReadMetrics(out)
	if err != nil {
		t.Fatal(err)
	}
	last := ms[len(ms)-1]
	if last.Step != 2 || last.ElapsedSec < 1000 {
		t.Fatalf("step 2 after resume: elapsed_sec %v, want ≥ 1000 (%+v)", last.ElapsedSec, last)
	}
	st2, err := train.ReadState(filepath.Join(out, "checkpoints", "step-000002"))
	if err != nil {
		t.Fatal(err)
	}
	if st2.ElapsedSec < 1000 {
		t.Fatalf("step-000002 elapsed_sec %v, want ≥ 1000", st2.ElapsedSec)
	}
}

// plot on a metrics.jsonl without steps writes no loss.png (not even an
// empty one) and says why.
func TestPlotEmptyMetricsWritesNothing(t *testing.T) {
	run := t.TempDir()
	if err := os.WriteFile(filepath.Join(run, "metrics.jsonl"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := train.PlotRun(run)
	if err == nil || !strings.Contains(err.Error(), "no steps") || !strings.Contains(err.Error(), "metrics.jsonl") {
		t.Fatalf("plot on empty metrics: %v", err)
	}
	if _, err := os.Stat(filepath.Join(run, "loss.png")); !os.IsNotExist(err) {
		t.Fatalf("loss.png exists after a failed plot (%v)", err)
	}
	ents, _ := os.ReadDir(run)
	if len(ents) != 1 {
		t.Fatalf("plot left files behind: %v", ents)
	}
}
