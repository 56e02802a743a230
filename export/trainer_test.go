package export

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	gguf "github.com/gpustack/gguf-parser-go"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
)

// LoRA on lm_head of a model with tied embeddings (as the trainer allows):
// merging unties them, so the export has its own lm_head / output.weight.
func TestLoRAOnTiedLMHead(t *testing.T) {
	f := loraFixture(t, "llama2")
	be := cpu.New()
	m, err := llama.Load(f.base, be, kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	set, err := lora.Attach(m, lora.Config{R: 2, Alpha: 4, TargetModules: []string{"q_proj", "lm_head"}}, 3)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(4, 4))
	var ts []checkpoint.WriteTensor
	for _, l := range set.Linears {
		v := make([]float32, l.B.Numel())
		for i := range v {
			v[i] = float32(r.NormFloat64() * 0.05)
		}
		be.Copy(l.B.Buf, be.FromF32(kernels.F32, v))
		ts = append(ts,
			checkpoint.WriteTensor{Name: l.A.Name, DType: "F32", Shape: l.A.Shape, Data: checkpoint.EncodeF32(l.A.F32())},
			checkpoint.WriteTensor{Name: l.B.Name, DType: "F32", Shape: l.B.Shape, Data: checkpoint.EncodeF32(l.B.F32())})
	}
	want := logits(t, m, f.ids)
	adapter := filepath.Join(t.TempDir(), "adapter")
	if err := checkpoint.WritePEFT(adapter, checkpoint.NewAdapterConfig(f.base, 2, 4, 0, set.ModuleNames(), false), ts); err != nil {
		t.Fatal(err)
	}
	src := Source{BaseDir: f.base, AdapterDir: adapter}

	out := filepath.Join(t.TempDir(), "hf")
	if err := HF(src, out, "F32", 0); err != nil {
		t.Fatal(err)
	}
	got, err := llama.Load(out, be, kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	if got.Config.TieWordEmbeddings {
		t.Error("export still ties lm_head to the embeddings")
	}
	diff, scale := maxDiff(t, logits(t, got, f.ids), want)
	if diff > 1e-4*scale {
		t.Errorf("logits differ by %g (scale %g)", diff, scale)
	}
	if err := PEFT(src, filepath.Join(t.TempDir(), "peft")); err != nil {
		t.Fatal(err)
	}
	g := filepath.Join(t.TempDir(), "m.gguf")
	if err := GGUF(src, g, "F16"); err != nil {
		t.Fatal(err)
	}
	gf, err := gguf.ParseGGUFFile(g)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := gf.TensorInfos.Get("output.weight"); !ok {
		t.Error("GGUF of the untied merge has no output.weight")
	}
}

// A full fine-tuning checkpoint as the trainer writes it: state.json and
// trainable.safetensors (HF keys), no config.json.
func TestFullFineTuneCheckpoint(t *testing.T) {
	f := loraFixture(t, "llama2")
	be := cpu.New()
	m, err := llama.Load(f.base, be, kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(8, 8))
	var ts []checkpoint.WriteTensor
	for _, n := range []string{"model.layers.1.mlp.up_proj.weight", "model.embed_tokens.weight", "model.norm.weight"} {
		p := m.Param(n)
		v := p.F32()
		for i := range v {
			v[i] += float32(r.NormFloat64() * 0.05)
		}
		be.Copy(p.Buf, be.FromF32(kernels.F32, v))
		ts = append(ts, checkpoint.WriteTensor{Name: n, DType: "F32", Shape: p.Shape, Data: checkpoint.EncodeF32(v)})
	}
	want := logits(t, m, f.ids)
	run := t.TempDir()
	ck := filepath.Join(run, "checkpoints", "step-000042")
	if err := os.MkdirAll(ck, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := checkpoint.WriteFile(filepath.Join(ck, checkpoint.TrainableFile), ts, nil); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(ck, checkpoint.StateFile), `{"format":"llamatune-checkpoint/1","step":42,"method":"full","base_model":"`+f.base+`"}`)
	src, err := ResolveSource(run, "")
	if err != nil {
		t.Fatal(err)
	}
	if src.WeightsDir != ck || src.BaseDir != f.base {
		t.Fatalf("resolved %+v", src)
	}
	out := filepath.Join(t.TempDir(), "hf")
	if err := HF(src, out, "F32", 0); err != nil {
		t.Fatal(err)
	}
	got, err := llama.Load(out, be, kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	diff, scale := maxDiff(t, logits(t, got, f.ids), want)
	if diff > 1e-4*scale {
		t.Errorf("logits differ by %g (scale %g)", diff, scale)
	}
	wantErr(t, PEFT(src, t.TempDir()), "LoRA")
	// Without a reachable base model the error says what to pass.
	writeFile(t, filepath.Join(ck, checkpoint.StateFile), `{"format":"llamatune-checkpoint/1","step":42,"method":"full","base_model":"/gone"}`)
	_, err = ResolveSource(ck, "")
	wantErr(t, err, "/gone", "--base")
}
