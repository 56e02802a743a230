package main

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/export"
	"github.com/llamatune/llamatune/internal/randmodel"
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
	if _, err := randmodel.WriteTinyModel(hf, randmodel.TinyOptions{Tokenizer: kind, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "tiny-Q8_0.gguf")
	if err := export.GGUF(export.Source{BaseDir: hf}, base, "Q8_0"); err != nil {
		t.Fatal(err)
	}
	raw := writeTextRows(t, filepath.Join(dir, "data.jsonl"), 4000)
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

	// The same run as a llama.cpp LoRA adapter: read back with our GGUF
	// reader, its lora_b rows of q and k put back in HF order by this test's
	// own inverse of llama.cpp's permutation, and attached to the GGUF base,
	// it gives the merged model's logits too.
	src, err := export.ResolveSource(res.LastCkpt, "")
	if err != nil {
		t.Fatal(err)
	}
	adapter := filepath.Join(dir, "adapter.gguf")
	if err := export.GGUFLoRA(src, adapter, "F32"); err != nil {
		t.Fatal(err)
	}
	m2, err := llama.Load(base, be, kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	attachGGUFAdapter(t, m2, adapter, j.LoRA.TargetModules)
	d, err := m2.Logits(llama.NewInferenceTape(be), in)
	if err != nil {
		t.Fatal(err)
	}
	worst = 0
	for i, x := range d.F32() {
		worst = max(worst, math.Abs(float64(x-av[i])))
	}
	if worst > 1e-4 {
		t.Fatalf("merged HF export vs GGUF base + GGUF LoRA adapter: max |Δlogit| %g", worst)
	}
}

// attachGGUFAdapter reads a llama.cpp LoRA adapter with checkpoint's GGUF
// reader and attaches it to m (r and alpha from its shapes and
// adapter.lora.alpha; llama.cpp scales B·A by alpha/r).
func attachGGUFAdapter(t *testing.T, m *llama.Model, path string, targets []string) {
	t.Helper()
	g, err := checkpoint.OpenGGUF(path)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if typ, _, _ := g.String("general.type"); typ != "adapter" {
		t.Fatalf("general.type %q, want adapter", typ)
	}
	alpha, _, err := g.Float("adapter.lora.alpha")
	if err != nil {
		t.Fatal(err)
	}
	ggufName := map[string]string{"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
		"self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
	blk := func(module string) string { // model.layers.N.self_attn.q_proj → blk.N.attn_q.weight
		rest := strings.TrimPrefix(module, "model.layers.")
		n, proj, _ := strings.Cut(rest, ".")
		return "blk." + n + "." + ggufName[proj] + ".weight"
	}
	a0, ok := g.Tensor(blk("model.layers.0.self_attn.q_proj") + ".lora_a")
	if !ok {
		t.Fatalf("%s has no blk.0.attn_q.weight.lora_a", path)
	}
	r := a0.Shape[0]
	set, err := lora.Attach(m, lora.Config{R: r, Alpha: alpha, TargetModules: targets}, 1)
	if err != nil {
		t.Fatal(err)
	}
	var views []checkpoint.GGUFView
	for _, l := range set.Linears {
		views = append(views, checkpoint.GGUFView{Name: l.Module + ".A", Tensor: blk(l.Module) + ".lora_a"},
			checkpoint.GGUFView{Name: l.Module + ".B", Tensor: blk(l.Module) + ".lora_b"})
	}
	rd, err := g.Reader(views)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	c := m.Config
	hd := c.HiddenSize / c.NumAttentionHeads
	for _, l := range set.Linears {
		a, err := rd.F32(l.Module + ".A")
		if err != nil {
			t.Fatal(err)
		}
		b, err := rd.F32(l.Module + ".B")
		if err != nil {
			t.Fatal(err)
		}
		if len(a) != len(l.A.F32()) || len(b) != len(l.B.F32()) {
			t.Fatalf("%s: adapter shapes %d, %d; want %v, %v", l.Module, len(a), len(b), l.A.Shape, l.B.Shape)
		}
		switch {
		case strings.HasSuffix(l.Module, "q_proj"):
			b = unpermuteRows(b, c.NumAttentionHeads, hd, r)
		case strings.HasSuffix(l.Module, "k_proj"):
			b = unpermuteRows(b, c.NumKeyValueHeads, hd, r)
		}
		l.A = tensor.Wrap(m.Backend(), cpu.WrapF32(a), l.A.Shape...)
		l.B = tensor.Wrap(m.Backend(), cpu.WrapF32(b), l.B.Shape...)
	}
}

// unpermuteRows undoes llama.cpp's convert permutation of a [heads·hd, cols]
// matrix: within each head, row 2i+j of the GGUF is row j·hd/2+i of HF.
func unpermuteRows(w []float32, heads, hd, cols int) []float32 {
	out := make([]float32, len(w))
	half := hd / 2
	for h := 0; h < heads; h++ {
		for i := 0; i < half; i++ {
			for j := 0; j < 2; j++ {
				src, dst := h*hd+2*i+j, h*hd+j*half+i
				copy(out[dst*cols:(dst+1)*cols], w[src*cols:(src+1)*cols])
			}
		}
	}
	return out
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
