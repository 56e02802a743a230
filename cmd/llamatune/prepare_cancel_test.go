package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// data prepare cancelled (Ctrl-C) after its first batch leaves no shard, no
// 0-byte file and no directory it created; a finished one leaves whole
// shards only (no .tmp).
func TestDataPrepareCancelLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	var rows strings.Builder
	for i := 0; i < 40; i++ {
		rows.WriteString(`{"input_ids": [1, 5, 6, 7, 8, 9, 10, 2]}` + "\n")
	}
	os.WriteFile(filepath.Join(dir, "tok.jsonl"), []byte(rows.String()), 0o644)
	os.WriteFile(filepath.Join(dir, "job.yaml"), []byte("data:\n  datasets: [{path: tok.jsonl}]\n  seq_len: 16\n  shuffle_buffer: 0\n"), 0o644)
	job, err := loadDataJob(filepath.Join(dir, "job.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel() // Ctrl-C arrives while the first batch is written

	out := filepath.Join(dir, "prep")
	var stdout, stderr bytes.Buffer
	err = runPrepare(cancelled, job, "job.yaml", out, false, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("cancelled prepare: %v", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		ents, _ := os.ReadDir(out)
		t.Fatalf("cancelled prepare left %s: %v", out, ents)
	}
	// An --out that existed keeps its other files and gets no shard.
	mine := filepath.Join(dir, "mine")
	os.MkdirAll(mine, 0o755)
	os.WriteFile(filepath.Join(mine, "README"), []byte("x"), 0o644)
	if err := runPrepare(cancelled, job, "job.yaml", mine, false, &stdout, &stderr); err == nil {
		t.Fatal("cancelled prepare succeeded")
	}
	if ents, _ := os.ReadDir(mine); len(ents) != 1 || ents[0].Name() != "README" {
		t.Fatalf("cancelled prepare into an existing dir left %v", ents)
	}
	// Not cancelled: whole shards and the manifest, nothing else.
	if err := runPrepare(context.Background(), job, "job.yaml", out, false, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(out)
	for _, e := range ents {
		info, _ := e.Info()
		if strings.HasSuffix(e.Name(), ".tmp") || info.Size() == 0 {
			t.Fatalf("prepare left %s (%d bytes)", e.Name(), info.Size())
		}
	}
	if len(ents) < 2 {
		t.Fatalf("prepare wrote %v", ents)
	}
}
