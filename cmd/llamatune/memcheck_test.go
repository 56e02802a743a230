package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/internal/randmodel"
)

func writeJob(t *testing.T, model, extra string) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "train.jsonl"), []byte(`{"text": "hello"}`+"\n"), 0o644)
	job := filepath.Join(dir, "job.yaml")
	os.WriteFile(job, []byte("model: "+model+"\ndata:\n  datasets: [{path: train.jsonl}]\n  seq_len: 64\nmax_steps: 1\n"+extra), 0o644)
	return job
}

// validate prints the estimate as comments; a rank the tiny model cannot take
// is refused by validate and by train, before anything is loaded.
func TestValidateMemoryAndRank(t *testing.T) {
	model := randmodel.MustTinyModel(t, randmodel.TinyOptions{}) // hidden 64, k_proj 64 → 32
	out, err := runCLI(t, "validate", writeJob(t, model, ""))
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"# memory estimate (lora, data.seq_len 64 × batch.micro_batch_size 1 = 64 tokens", "#   base weights", "#   total", "# available", "\nmodel: "} {
		if !strings.Contains(out, want) {
			t.Errorf("validate output lacks %q:\n%s", want, out)
		}
	}

	bad := writeJob(t, model, "lora: {r: 100000}\n")
	out, err = runCLI(t, "validate", bad)
	if err == nil || !strings.Contains(err.Error(), "1 problem(s)") {
		t.Fatalf("lora.r 100000 accepted: %v\n%s", err, out)
	}
	want := "lora.r: 100000 is larger than k_proj of " + model + " (in 64, out 32): a rank above min(in, out) = 32 adds nothing; use lora.r <= 32"
	if !strings.Contains(out, bad+": "+want) {
		t.Errorf("validate output lacks %q:\n%s", want, out)
	}
	job, err := configs.Load(bad, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runTrain(context.Background(), job, "", io.Discard); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("train: %v", err)
	}

	// A fraction for an integer key is a validate error naming key and line.
	out, err = runCLI(t, "validate", writeJob(t, model, "batch: {micro_batch_size: 2.5}\n"))
	if err == nil || !strings.Contains(out, "batch.micro_batch_size (line 6): 2.5 is not a whole number") {
		t.Errorf("micro_batch_size 2.5: %v\n%s", err, out)
	}

	// A sequence longer than the model's context (max_position_embeddings 2048) is refused
	// too, naming rope scaling as the way to a longer one. (An env override, not --set:
	// cobra keeps a --set from one Execute to the next in this process.)
	t.Setenv("LLAMATUNE_DATA__SEQ_LEN", "100000")
	out, err = runCLI(t, "validate", writeJob(t, model, ""))
	want = "data.seq_len: 100000 is over max_position_embeddings 2048 of " + model + "/config.json; use data.seq_len <= 2048, or give the model a longer context with rope scaling"
	if err == nil || !strings.Contains(out, want) {
		t.Errorf("seq_len 100000: %v; validate output lacks %q:\n%s", err, want, out)
	}
	// Both at once: every problem is listed.
	out, err = runCLI(t, "validate", bad)
	if err == nil || !strings.Contains(err.Error(), "2 problem(s)") || !strings.Contains(out, "lora.r: 100000") || !strings.Contains(out, "data.seq_len: 100000") {
		t.Errorf("lora.r and seq_len both too large: %v\n%s", err, out)
	}
}
