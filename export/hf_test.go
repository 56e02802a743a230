package export

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/model/llama"
)

func TestHFExportMatchesBasePlusAdapter(t *testing.T) {
	f := loraFixture(t, "llama2")
	src := Source{BaseDir: f.base, AdapterDir: f.adapter}
	base, err := llama.Load(f.base, cpu.New(), kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	if diff, scale := maxDiff(t, logits(t, base, f.ids), f.want); diff < 1e-2*scale {
		t.Fatalf("the adapter barely changes the logits (%g of %g); the test would prove nothing", diff, scale)
	}
	for _, c := range []struct {
		dtype string
		tol   float64 // relative to the largest logit
	}{{"F32", 1e-4}, {"BF16", 3e-2}} {
		t.Run(c.dtype, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "hf")
			// Small shards so the index path is exercised.
			if err := HF(src, out, c.dtype, 1<<20); err != nil {
				t.Fatal(err)
			}
			m, err := llama.Load(out, cpu.New(), kernels.F32)
			if err != nil {
				t.Fatal(err)
			}
			got := logits(t, m, f.ids)
			diff, scale := maxDiff(t, got, f.want)
			if diff > c.tol*scale {
				t.Errorf("exported logits differ from base+adapter by %g (largest logit %g)", diff, scale)
			}
			var cfg map[string]any
			raw, err := os.ReadFile(filepath.Join(out, "config.json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(raw, &cfg); err != nil {
				t.Fatal(err)
			}
			want := map[string]string{"F32": "float32", "BF16": "bfloat16"}[c.dtype]
			if cfg["torch_dtype"] != want || cfg["model_type"] != "llama" {
				t.Errorf("config.json torch_dtype %v model_type %v", cfg["torch_dtype"], cfg["model_type"])
			}
			for _, name := range []string{"tokenizer.model", "tokenizer_config.json", "generation_config.json", checkpoint.IndexFileName} {
				if _, err := os.Stat(filepath.Join(out, name)); err != nil {
					t.Errorf("missing %s: %v", name, err)
				}
			}
			r, err := checkpoint.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if len(r.Files()) < 2 {
				t.Errorf("expected several shards, got %v", r.Files())
			}
			info, _ := r.Info("model.layers.0.self_attn.q_proj.weight")
			if info.DType != c.dtype {
				t.Errorf("weights stored as %s", info.DType)
			}
			if _, ok := r.Info("lm_head.weight"); ok {
				t.Error("tied model exported an lm_head.weight")
			}
		})
	}
}

func TestHFExportOfFullWeights(t *testing.T) {
	f := loraFixture(t, "llama2")
	out := filepath.Join(t.TempDir(), "hf")
	// A full fine-tune directory is an HF model dir; ResolveSource finds it.
	src, err := ResolveSource(f.base, "")
	if err != nil {
		t.Fatal(err)
	}
	if src.WeightsDir != f.base {
		t.Fatalf("source %+v", src)
	}
	if err := HF(src, out, "F16", 0); err != nil {
		t.Fatal(err)
	}
	m, err := llama.Load(out, cpu.New(), kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	base, err := llama.Load(f.base, cpu.New(), kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	diff, scale := maxDiff(t, logits(t, m, f.ids), logits(t, base, f.ids))
	if diff > 1e-2*scale {
		t.Errorf("F16 export of the base differs by %g (scale %g)", diff, scale)
	}
	if _, err := os.Stat(filepath.Join(out, checkpoint.SingleFileName)); err != nil {
		t.Error("maxShardBytes 0 should write one model.safetensors")
	}
	if err := HF(src, f.base, "F32", 0); err == nil {
		t.Error("exporting over the source directory was allowed")
	}
	wantErr(t, HF(src, out, "Q8_0", 0), "Q8_0", "F32, BF16, F16")
}

func TestPEFTExportIsExactlyPEFT(t *testing.T) {
	f := loraFixture(t, "llama2")
	out := filepath.Join(t.TempDir(), "peft")
	if err := PEFT(Source{BaseDir: f.base, AdapterDir: f.adapter}, out); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !reflect.DeepEqual(names, []string{"adapter_config.json", "adapter_model.safetensors"}) {
		t.Errorf("files %v", names)
	}
	cfg, r, err := checkpoint.ReadPEFT(out)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if cfg.PeftType != "LORA" || cfg.TaskType != "CAUSAL_LM" || cfg.R != 4 || cfg.LoraAlpha != 8 || !cfg.InferenceMode ||
		cfg.Bias != "none" || cfg.UseRSLoRA || cfg.BaseModelNameOrPath != f.base || len(cfg.TargetModules) != 7 {
		t.Errorf("config %+v", cfg)
	}
	var wantKeys []string
	for _, l := range f.set.Linears {
		wantKeys = append(wantKeys, l.A.Name, l.B.Name)
		a, _ := r.Info(l.A.Name)
		b, _ := r.Info(l.B.Name)
		w := l.A.Shape
		if !reflect.DeepEqual(a.Shape, []int{4, w[1]}) || a.DType != "F32" {
			t.Errorf("%s: %v %s", l.A.Name, a.Shape, a.DType)
		}
		if !reflect.DeepEqual(b.Shape, []int{l.B.Shape[0], 4}) {
			t.Errorf("%s: %v", l.B.Name, b.Shape)
		}
		got, err := r.F32(l.B.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, l.B.F32()) {
			t.Errorf("%s data changed", l.B.Name)
		}
	}
	sort.Strings(wantKeys)
	keys := r.Keys()
	sort.Strings(keys)
	if !reflect.DeepEqual(keys, wantKeys) {
		t.Errorf("keys %v\nwant %v", keys, wantKeys)
	}
	// Spot-check PEFT's naming and layout for one module.
	k := "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"
	if err := r.Expect(k, []int{4, 2 * 64}); err != nil {
		t.Error(err)
	}
	if err := r.Expect("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight", []int{64, 4}); err != nil {
		t.Error(err)
	}
	if md := r.Metadata(); md["format"] != "pt" {
		t.Errorf("metadata %v", md)
	}

	wantErr(t, PEFT(Source{BaseDir: f.base, WeightsDir: f.base}, t.TempDir()), "LoRA")
}

func TestAdapterForOtherModelIsRefused(t *testing.T) {
	f := loraFixture(t, "llama2")
	src := Source{BaseDir: f.base, AdapterDir: f.adapter}
	if _, _, err := Open(src); err != nil {
		t.Fatal(err)
	}
	bad := t.TempDir()
	cfg, r, err := checkpoint.ReadPEFT(f.adapter)
	if err != nil {
		t.Fatal(err)
	}
	var ts []checkpoint.WriteTensor
	for _, k := range r.Keys() {
		info, _ := r.Info(k)
		raw, _ := r.Raw(k)
		name := k
		if k == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" {
			name = "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight"
		}
		if k == "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight" {
			name = "base_model.model.model.layers.7.self_attn.q_proj.lora_B.weight"
		}
		ts = append(ts, checkpoint.WriteTensor{Name: name, DType: info.DType, Shape: info.Shape, Data: raw})
	}
	err = checkpoint.WritePEFT(bad, cfg, ts)
	r.Close() // ts points into the mapping until written
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = Open(Source{BaseDir: f.base, AdapterDir: bad})
	wantErr(t, err, "model.layers.7.self_attn.q_proj", "does not have")
	wantErr(t, PEFT(Source{BaseDir: f.base, AdapterDir: bad}, t.TempDir()), "model.layers.7.self_attn.q_proj")
}
