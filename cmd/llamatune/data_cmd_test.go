package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	rootCmd.SetOut(&out)
	rootCmd.SetErr(&out)
	rootCmd.SetArgs(args)
	err := rootCmd.Execute()
	return out.String(), err
}

func TestDataInspectAndPrepare(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "tok.jsonl"), []byte(
		`{"input_ids": [1, 5, 6, 7, 2], "labels": [-100, -100, 6, 7, 2]}`+"\n"+
			`{"input_ids": [1, 8, 9, 2]}`+"\n"+
			`{"input_ids": [1, 8, 9, 2], "labels": [1, 8]}`+"\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "job.yaml"), []byte(`
data:
  datasets: [{path: tok.jsonl}]
  seq_len: 16
  shuffle_buffer: 0
  bad_rows: skip
optimizer: {lr: 1e-4}   # parsed like every section, checked only by train
`), 0o644)
	out, err := runCLI(t, "data", "inspect", filepath.Join(dir, "job.yaml"), "-n", "2", "--color", "never")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"«1 5 »6 7 2", "«1 »8 9 2", "examples          2", "bad rows skipped  1", "trained tokens    6", "packing efficiency 56.2%", "tok.jsonl:3"} {
		if !strings.Contains(out, want) {
			t.Fatalf("inspect output lacks %q:\n%s", want, out)
		}
	}
	prep := filepath.Join(dir, "prep")
	out, err = runCLI(t, "data", "prepare", filepath.Join(dir, "job.yaml"), "--out", prep)
	if err != nil || !strings.Contains(out, "1 rows of 16 tokens") {
		t.Fatalf("prepare: %v\n%s", err, out)
	}
	// The prepared directory is a dataset.
	os.WriteFile(filepath.Join(dir, "job2.yaml"), []byte("data:\n  datasets: [{path: prep}]\n  seq_len: 16\n  shuffle_buffer: 0\n"), 0o644)
	out, err = runCLI(t, "data", "inspect", filepath.Join(dir, "job2.yaml"), "-n", "1", "--color", "never")
	if err != nil || !strings.Contains(out, "trained tokens    6") || !strings.Contains(out, "packing efficiency 56.2%") {
		t.Fatalf("inspect prepared: %v\n%s", err, out)
	}
	// truncation: drop says how many documents it dropped.
	os.WriteFile(filepath.Join(dir, "long.jsonl"), []byte(`{"input_ids": [1, 5, 6, 7, 2]}`+"\n"+
		`{"input_ids": [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 2]}`+"\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "job3.yaml"), []byte("data:\n  datasets: [{path: long.jsonl}]\n  seq_len: 16\n  shuffle_buffer: 0\n  truncation: drop\n"), 0o644)
	out, err = runCLI(t, "data", "inspect", filepath.Join(dir, "job3.yaml"), "-n", "0", "--color", "never")
	if err != nil || !strings.Contains(out, "dropped (long)    1 (longer than seq_len 16; truncation: drop)") || !strings.Contains(out, "examples          2") {
		t.Fatalf("inspect drop: %v\n%s", err, out)
	}
	// Strict keys in the data section.
	os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte("data:\n  datasets: [{path: tok.jsonl}]\n  seq_len: 16\n  pakcing: true\n"), 0o644)
	_, err = runCLI(t, "data", "inspect", filepath.Join(dir, "bad.yaml"))
	if err == nil || !strings.Contains(err.Error(), `data.pakcing (line 4): unknown key; did you mean "packing"?`) {
		t.Fatalf("strict: %v", err)
	}
	// One job loader: what validate refuses, the data commands refuse too.
	os.WriteFile(filepath.Join(dir, "model-map.yaml"), []byte("model: {path: m}\ndata:\n  datasets: [{path: tok.jsonl}]\n  seq_len: 16\noptimzer: {lr: 1}\n"), 0o644)
	_, err = runCLI(t, "data", "inspect", filepath.Join(dir, "model-map.yaml"))
	if err == nil || !strings.Contains(err.Error(), "model (line 1)") || !strings.Contains(err.Error(), `did you mean "optimizer"`) {
		t.Fatalf("model: {path: m} and a typo outside data: should be refused as validate does: %v", err)
	}
}
