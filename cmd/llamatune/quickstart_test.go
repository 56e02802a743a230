package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	gguf "github.com/gpustack/gguf-parser-go"

	"github.com/llamatune/llamatune/export"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/model/llama"
)

// The quickstart end to end, shortened: held-out loss falls, and the three
// exports exist and load (HF directory by our loader, GGUF by an independent
// parser, PEFT adapter by our PEFT reader through export.ResolveSource).
func TestQuickstartShort(t *testing.T) {
	out := t.TempDir()
	var log bytes.Buffer
	res, err := runQuickstart(context.Background(), out, []string{"max_steps=12", "eval.every=6", "checkpoint.every=6"}, &log)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if n := len(res.EvalLosses); n < 2 || !(res.EvalLosses[n-1] < res.EvalLosses[0]-1) {
		t.Fatalf("held-out losses %v: want a drop of at least 1 nat\n%s", res.EvalLosses, log.String())
	}
	exp := filepath.Join(out, "run", "export")
	m, err := llama.Load(filepath.Join(exp, "hf"), cpu.New(), kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.NumHiddenLayers != 2 {
		t.Fatalf("exported config: %+v", m.Config)
	}
	if _, err := export.ResolveSource(filepath.Join(exp, "peft"), filepath.Join(out, "model")); err != nil {
		t.Fatal(err)
	}
	f, err := gguf.ParseGGUFFile(filepath.Join(exp, "model-Q8_0.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	if a := f.Architecture(); a.Architecture != "llama" || a.BlockCount != 2 {
		t.Fatalf("gguf architecture %+v", a)
	}
	if _, err := os.Stat(filepath.Join(out, "run", "loss.png")); err != nil {
		t.Fatal(err)
	}
}
