package train_test

import (
	"context"
	"math"
	"os"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/export"
	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/train"
)

// doraSetup is newSetup with DoRA adapters (lora.use_dora: true).
func doraSetup(t *testing.T, modelDir, dataPath, outDir string) setup {
	t.Helper()
	m, err := llama.Load(modelDir, cpu.New(), kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	s := newSetupWith(t, m, modelDir, dataPath, outDir, "full", data.SplitTrain)
	for _, n := range m.Names() {
		m.Param(n).SetRequiresGrad(false)
	}
	c := lora.Config{R: 8, Alpha: 16, Dropout: 0.1, UseDoRA: true, TargetModules: []string{"all-linear"}}
	if s.lora, err = lora.Attach(m, c, 1); err != nil {
		t.Fatal(err)
	}
	s.opts.LoRA, s.opts.Trainable = s.lora, s.lora.Params()
	s.opts.Meta.Method, s.opts.Meta.LoRA = "lora", &c
	s.opts.MaxSteps, s.opts.OpenEval = 6, nil
	return s
}

// DoRA trains (the loss goes down, the magnitudes move), a run interrupted
// and resumed gives the uninterrupted losses bit for bit, the checkpoint
// holds a PEFT DoRA adapter, and its merged export computes what the
// trained model does.
func TestDoRATrainResumeExport(t *testing.T) {
	modelDir := randmodel.MustTinyModel(t, randmodel.TinyOptions{Tokenizer: "llama2"})
	raw, err := os.ReadFile("../testdata/war-and-peace-60k.txt")
	if err != nil {
		t.Fatal(err)
	}
	dataPath := writeText(t, t.TempDir(), string(raw[:12000]), 700)

	full := doraSetup(t, modelDir, dataPath, t.TempDir())
	m0 := full.lora.Linears[0].M.F32()
	want, err := train.Run(context.Background(), full.opts)
	if err != nil {
		t.Fatal(err)
	}
	l := want.Losses
	if len(l) != 6 || !(l[4]+l[5] < l[0]+l[1]) {
		t.Fatalf("DoRA loss does not go down: %v", l)
	}
	moved := false
	for j, v := range full.lora.Linears[0].M.F32() {
		moved = moved || v != m0[j]
	}
	if !moved {
		t.Fatal("the magnitude vector did not train")
	}

	out := t.TempDir()
	a := doraSetup(t, modelDir, dataPath, out)
	a.opts.SaveEvery = 100
	ctx, cancel := context.WithCancel(context.Background())
	a.opts.AfterStep = func(m train.StepMetrics) {
		if m.Step == 3 {
			cancel()
		}
	}
	first, err := train.Run(ctx, a.opts)
	if err != nil {
		t.Fatal(err)
	}
	b := doraSetup(t, modelDir, dataPath, out)
	b.opts.Resume = "latest"
	rest, err := train.Run(context.Background(), b.opts)
	if err != nil {
		t.Fatal(err)
	}
	sameLosses(t, append(first.Losses, rest.Losses...), want.Losses)

	// The same run resumed as plain LoRA is refused, naming the key.
	c := newSetup(t, modelDir, dataPath, out, "lora", data.SplitTrain)
	c.opts.Meta.LoRA = &c.lora.Config
	c.opts.MaxSteps, c.opts.OpenEval, c.opts.Resume = 6, nil, "latest"
	if _, err := train.Run(context.Background(), c.opts); err == nil || !strings.Contains(err.Error(), "lora.use_dora") {
		t.Fatalf("resuming a DoRA run without DoRA: %v", err)
	}

	ckpt, err := train.LatestCheckpoint(out)
	if err != nil {
		t.Fatal(err)
	}
	cfg, r, err := checkpoint.ReadPEFT(ckpt)
	if err != nil {
		t.Fatal(err)
	}
	key := "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
	info, ok := r.Info(key)
	r.Close()
	if !cfg.UseDoRA || !ok || len(info.Shape) != 1 {
		t.Fatalf("checkpoint adapter: use_dora %v, %s %v %v", cfg.UseDoRA, key, ok, info.Shape)
	}

	// The merged export's logits equal the trained DoRA model's (no dropout
	// in this comparison: the merge has none).
	src, err := export.ResolveSource(ckpt, modelDir)
	if err != nil {
		t.Fatal(err)
	}
	merged, _, err := export.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range b.lora.Linears {
		l.Dropout = 0
	}
	in := &llama.Input{Rows: 1, SeqLen: 12, InputIDs: []int32{1, 450, 4996, 17354, 1701, 432, 29875, 2, 100, 7, 9, 30}}
	lg := func(m *llama.Model) []float32 {
		v, err := m.Logits(llama.NewInferenceTape(m.Backend()), in)
		if err != nil {
			t.Fatal(err)
		}
		return v.F32()
	}
	got, ref := lg(merged), lg(b.model)
	for i := range ref {
		if math.Abs(float64(got[i]-ref[i])) > 1e-4*(1+math.Abs(float64(ref[i]))) {
			t.Fatalf("logit %d: merged export %v, DoRA model %v", i, got[i], ref[i])
		}
	}
}
