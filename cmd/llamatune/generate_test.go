package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/internal/randmodel"
)

func TestGenerateCommand(t *testing.T) {
	dir := t.TempDir()
	if _, err := randmodel.WriteTinyModel(filepath.Join(dir, "tiny"), randmodel.TinyOptions{Tokenizer: "llama2", Hidden: 32, Shards: 1}); err != nil {
		t.Fatal(err)
	}
	var prompts strings.Builder
	for i := range 8 {
		fmt.Fprintf(&prompts, `{"prompt": "Question %d?"}`+"\n", i%6)
	}
	os.WriteFile(filepath.Join(dir, "prompts.jsonl"), []byte(prompts.String()), 0o644)
	job := filepath.Join(dir, "job.yaml")
	os.WriteFile(job, []byte(`
model: tiny
data:
  datasets: [{path: prompts.jsonl}]
  seq_len: 64
  template: llama2
distill:
  teacher: {model: tiny, concurrency: 2}
  generate: {max_new_tokens: 4, temperature: 0.8}
`), 0o644)
	out := filepath.Join(dir, "synthetic")
	got, err := runCLI(t, "generate", job, "--out", out, "--keep-truncated", "--set", "distill.generate.top_p=0.9")
	if err != nil {
		t.Fatalf("%v\n%s", err, got)
	}
	for _, want := range []string{"wrote " + out + ": 6 conversation(s) in 1 shard(s) from 8 prompt(s); 2 duplicate prompt(s)",
		"temperature 0.8, top_p 0.9, seed ", "2 in flight", "type: messages"} {
		if !strings.Contains(got, want) {
			t.Fatalf("output lacks %q:\n%s", want, got)
		}
	}
	// The output is a job's dataset.
	os.WriteFile(filepath.Join(dir, "job2.yaml"), []byte("model: tiny\ndata:\n  datasets: [{path: synthetic, type: messages}]\n  seq_len: 64\n  template: llama2\n  shuffle_buffer: 0\n"), 0o644)
	got, err = runCLI(t, "data", "inspect", filepath.Join(dir, "job2.yaml"), "-n", "1", "--color", "never")
	if err != nil || !strings.Contains(got, "examples          6") {
		t.Fatalf("inspect generated data: %v\n%s", err, got)
	}
	// No teacher: a clear error.
	os.WriteFile(filepath.Join(dir, "job3.yaml"), []byte("model: tiny\ndata:\n  datasets: [{path: prompts.jsonl}]\n  seq_len: 64\n"), 0o644)
	err = runGenerate(t.Context(), filepath.Join(dir, "job3.yaml"), nil, generateFlags{out: filepath.Join(dir, "x")}, os.Stdout, os.Stderr)
	if err == nil || !strings.Contains(err.Error(), "no teacher") {
		t.Fatalf("want a no-teacher error, got %v", err)
	}
}
