package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/export"
	"github.com/llamatune/llamatune/internal/testutil"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/tensor"
)

// A tiny model exported as GGUF Q8_0 is the base of a LoRA run
// (configs/examples/gguf_lora.yaml); the run's merged HF export loads with
// llama.Load, tokenizes as the GGUF does, and its logits equal those of the
// GGUF base with the trained adapter attached (unmerged).
func TestGGUFBaseLoRA(t *testing.T) {
	for _, kind := range []string{"llama2", "llama3"} {
		t.Run(kind, func(t *testing.T) { testGGUFBase(t, kind) })
	}
}

func testGGUFBase(t *testing.T, kind string) {
	dir := t.TempDir()
	hf := filepath.Join(dir, "tiny")
	if _, err := testutil.WriteTinyModel(hf, testutil.TinyOptions{Tokenizer: kind, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "tiny-Q8_0.gguf")
	if err := export.GGUF(export.Source{BaseDir: hf}, base, "Q8_0"); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("../../testdata/war-and-peace-60k.txt")
	if err != nil {
		t.Fatal(err)
	}
	var lines strings.Builder
	for i := 0; i < 4000; i += 400 {
		b, _ := json.Marshal(map[string]string{"text": string(raw[i : i+400])})
		lines.Write(append(b, '\n'))
	}
	if err := os.WriteFile(filepath.Join(dir, "data.jsonl"), []byte(lines.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	job, err := os.ReadFile("../../configs/examples/gguf_lora.yaml")
	if err != nil {
		t.Fatal(err)
	}
	jobPath := filepath.Join(dir, "gguf_lora.yaml")
	if err := os.WriteFile(jobPath, job, 0o644); err != nil {
		t.Fatal(err)
	}
	j, err := configs.Load(jobPath, []string{"max_steps=3", "output_dir=" + filepath.Join(dir, "run")})
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	res, err := runTrainWith(context.Background(), j, "", &log, runHooks{})
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if res.LastCkpt == "" {
		t.Fatalf("no checkpoint\n%s", log.String())
	}

	// The merged HF export.
	be := cpu.New()
	merged, err := llama.Load(filepath.Join(dir, "run", "export", "hf"), be, kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	// The GGUF base with the trained adapter, unmerged.
	m, err := llama.Load(base, be, kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	acfg, ar, err := checkpoint.ReadPEFT(filepath.Join(dir, "run", "export", "peft"))
	if err != nil {
		t.Fatal(err)
	}
	defer ar.Close()
	set, err := lora.Attach(m, lora.Config{R: acfg.R, Alpha: acfg.LoraAlpha, TargetModules: j.LoRA.TargetModules}, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range set.Linears {
		for _, ab := range []struct {
			key string
			dst **tensor.Tensor
		}{{lora.PEFTKey(l.Module, "A"), &l.A}, {lora.PEFTKey(l.Module, "B"), &l.B}} {
			v, err := ar.F32(ab.key)
			if err != nil {
				t.Fatal(err)
			}
			*ab.dst = tensor.Wrap(be, cpu.WrapF32(v), (*ab.dst).Shape...)
		}
	}
	tok, err := tokenizer.Load(base)
	if err != nil {
		t.Fatal(err)
	}
	htok, err := tokenizer.Load(filepath.Join(dir, "run", "export", "hf"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw[5000:5600])
	ids := tok.Encode(text)
	if hid := htok.Encode(text); !equalInts(ids, hid) {
		t.Fatalf("exported tokenizer: %v, GGUF's %v", hid[:8], ids[:8])
	}
	if orig, _ := tokenizer.Load(hf); !equalInts(orig.Encode(text), ids) {
		t.Fatal("GGUF tokenizer differs from the original HF tokenizer")
	}
	in := &llama.Input{Rows: 1, SeqLen: 32}
	for i := 0; i < 32; i++ {
		in.InputIDs = append(in.InputIDs, int32(ids[i]))
	}
	a, err := merged.Logits(llama.NewInferenceTape(be), in)
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Logits(llama.NewInferenceTape(be), in)
	if err != nil {
		t.Fatal(err)
	}
	var worst float64
	av, bv := a.F32(), b.F32()
	for i, x := range av {
		worst = max(worst, math.Abs(float64(x-bv[i])))
	}
	if worst > 1e-4 {
		t.Fatalf("merged HF export vs GGUF base + LoRA: max |Δlogit| %g", worst)
	}
	// The adapter did train: the merged model is not the base.
	b0, _ := llama.Load(base, be, kernels.F32)
	c, _ := b0.Logits(llama.NewInferenceTape(be), in)
	var moved float64
	cv := c.F32()
	for i, x := range av {
		moved = max(moved, math.Abs(float64(x-cv[i])))
	}
	if moved < 1e-4 {
		t.Fatalf("the adapter changed no logit (max |Δ| %g)", moved)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
