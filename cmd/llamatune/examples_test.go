package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/configs"
)

// llamatune examples lists every embedded job with its first comment line;
// copy writes one byte for byte, keeps an existing file unless --force, and
// names the examples when asked for one that does not exist.
func TestExamplesCommand(t *testing.T) {
	var out bytes.Buffer
	if err := listExamples(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "quickstart") || !strings.Contains(out.String(), "Quickstart: a tiny LoRA fine-tune") {
		t.Fatalf("list:\n%s", out.String())
	}
	if n := strings.Count(out.String(), "\n"); n != len(exampleNames()) || n < 5 {
		t.Fatalf("%d lines for %d examples", n, len(exampleNames()))
	}
	dir := t.TempDir()
	p, err := copyExample("quickstart.yaml", dir, false)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	want, _ := configs.Examples.ReadFile("examples/quickstart.yaml")
	if p != filepath.Join(dir, "quickstart.yaml") || !bytes.Equal(got, want) {
		t.Fatalf("copied %s (%d bytes, want %d)", p, len(got), len(want))
	}
	if _, err := copyExample("quickstart", dir, false); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("overwrite without --force: %v", err)
	}
	if _, err := copyExample("quickstart", filepath.Join(dir, "mine.yaml"), false); err != nil {
		t.Fatal(err)
	}
	if _, err := copyExample("nope", dir, false); err == nil || !strings.Contains(err.Error(), "quickstart") {
		t.Fatalf("unknown example: %v", err)
	}
}
