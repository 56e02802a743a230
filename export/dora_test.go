package export

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
)

// A DoRA adapter (use_dora true, lora_magnitude_vector per module) merges in
// the streaming export exactly as lora.Set.Merge does in memory (the same
// bits), gives the unmerged model's logits, is re-exported as PEFT with its
// magnitudes, and is refused as a GGUF LoRA adapter.
func TestDoRAExport(t *testing.T) {
	f := loraFixture(t, "llama2")
	be := cpu.New()
	m, err := llama.Load(f.base, be, kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	set, err := lora.Attach(m, lora.Config{R: 2, Alpha: 4, UseDoRA: true, TargetModules: []string{"q_proj", "v_proj", "down_proj"}}, 3)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(4, 5))
	var ts []checkpoint.WriteTensor
	for _, l := range set.Linears {
		v := make([]float32, l.B.Numel())
		for i := range v {
			v[i] = float32(r.NormFloat64() * 0.05)
		}
		be.Copy(l.B.Buf, be.FromF32(kernels.F32, v))
		mag := l.M.F32()
		for i := range mag {
			mag[i] *= float32(1 + 0.1*r.NormFloat64())
		}
		be.Copy(l.M.Buf, be.FromF32(kernels.F32, mag))
		ts = append(ts,
			checkpoint.WriteTensor{Name: l.A.Name, DType: "F32", Shape: l.A.Shape, Data: checkpoint.EncodeF32(l.A.F32())},
			checkpoint.WriteTensor{Name: l.B.Name, DType: "F32", Shape: l.B.Shape, Data: checkpoint.EncodeF32(l.B.F32())},
			checkpoint.WriteTensor{Name: l.M.Name, DType: "F32", Shape: l.M.Shape, Data: checkpoint.EncodeF32(mag)})
	}
	want := logits(t, m, f.ids)
	adapter := filepath.Join(t.TempDir(), "adapter")
	ac := checkpoint.NewAdapterConfig(f.base, 2, 4, 0, set.ModuleNames(), false)
	ac.UseDoRA = true
	if err := checkpoint.WritePEFT(adapter, ac, ts); err != nil {
		t.Fatal(err)
	}
	src := Source{BaseDir: f.base, AdapterDir: adapter}

	// In memory: the same bits as Set.Merge.
	merged, _, err := Open(src)
	if err != nil {
		t.Fatal(err)
	}
	ws := map[string][]float32{}
	for _, l := range set.Linears {
		ws[l.Module] = nil
	}
	set.Merge(m)
	for mod := range ws {
		a, b := merged.Param(mod+".weight").F32(), m.Param(mod+".weight").F32()
		for i := range a {
			if a[i] != b[i] {
				t.Fatalf("%s[%d]: export merge %v, Set.Merge %v", mod, i, a[i], b[i])
			}
		}
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
		t.Errorf("merged logits differ from base + DoRA by %g (scale %g)", diff, scale)
	}

	if err := GGUF(src, filepath.Join(t.TempDir(), "m.gguf"), "F32"); err != nil {
		t.Fatal(err)
	}

	peft := filepath.Join(t.TempDir(), "peft")
	if err := PEFT(src, peft); err != nil {
		t.Fatal(err)
	}
	cfg, rd, err := checkpoint.ReadPEFT(peft)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if !cfg.UseDoRA {
		t.Error("PEFT export lost use_dora")
	}
	key := "base_model.model.model.layers.1.mlp.down_proj.lora_magnitude_vector"
	if err := rd.Expect(key, []int{f.cfg.HiddenSize}); err != nil {
		t.Error(err)
	}

	err = GGUFLoRA(src, filepath.Join(t.TempDir(), "a.gguf"), "F32")
	wantErr(t, err, "DoRA", "--format gguf")
}
