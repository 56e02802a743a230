package checkpoint

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

func loraTensors(r, in, out int, modules ...string) []WriteTensor {
	var ts []WriteTensor
	for _, m := range modules {
		a := make([]float32, r*in)
		b := make([]float32, out*r)
		for i := range a {
			a[i] = float32(i) * 0.01
		}
		for i := range b {
			b[i] = -float32(i) * 0.02
		}
		ts = append(ts,
			WriteTensor{Name: "base_model.model." + m + ".lora_A.weight", DType: F32, Shape: []int{r, in}, Data: EncodeF32(a)},
			WriteTensor{Name: "base_model.model." + m + ".lora_B.weight", DType: F32, Shape: []int{out, r}, Data: EncodeF32(b)})
	}
	return ts
}

// The keys PEFT 0.10/0.11 writes for a LoRA adapter_config.json.
var peftKeys = []string{"alpha_pattern", "auto_mapping", "base_model_name_or_path", "bias", "fan_in_fan_out",
	"inference_mode", "init_lora_weights", "layer_replication", "layers_pattern", "layers_to_transform",
	"loftq_config", "lora_alpha", "lora_dropout", "megatron_config", "megatron_core", "modules_to_save",
	"peft_type", "r", "rank_pattern", "revision", "target_modules", "task_type", "use_dora", "use_rslora"}

func TestWritePEFTLayoutMatchesPEFT(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "adapter")
	cfg := NewAdapterConfig("/models/base", 4, 8, 0.05, []string{"q_proj", "v_proj"}, false)
	ts := loraTensors(4, 64, 32, "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.q_proj")
	if err := WritePEFT(dir, cfg, ts); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, PEFTConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("adapter_config.json is not JSON: %v\n%s", err, raw)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if !reflect.DeepEqual(keys, peftKeys) {
		t.Errorf("keys\n%v\nwant\n%v", keys, peftKeys)
	}
	want := map[string]string{
		"peft_type": `"LORA"`, "task_type": `"CAUSAL_LM"`, "r": "4", "lora_alpha": "8", "lora_dropout": "0.05",
		"bias": `"none"`, "fan_in_fan_out": "false", "inference_mode": "true", "init_lora_weights": "true",
		"modules_to_save": "null", "layers_to_transform": "null", "revision": "null", "use_rslora": "false",
		"use_dora": "false", "base_model_name_or_path": `"/models/base"`, "rank_pattern": "{}", "alpha_pattern": "{}",
		"loftq_config": "{}", "megatron_core": `"megatron.core"`, "auto_mapping": "null", "layer_replication": "null",
	}
	for k, v := range want {
		if got := string(m[k]); got != v {
			t.Errorf("%s = %s, want %s", k, got, v)
		}
	}
	// Laid out as Python's json.dumps(sort_keys=True, indent=2).
	s := string(raw)
	if !strings.HasPrefix(s, "{\n  \"alpha_pattern\": {},\n  \"auto_mapping\": null,\n") ||
		!strings.Contains(s, "  \"target_modules\": [\n    \"q_proj\",\n    \"v_proj\"\n  ],\n") ||
		!strings.HasSuffix(s, "  \"use_rslora\": false\n}\n") {
		t.Errorf("layout differs from PEFT's:\n%s", s)
	}

	r := mustOpen(t, filepath.Join(dir, PEFTWeightsFile))
	if md := r.Metadata(); md["format"] != "pt" || len(md) != 1 {
		t.Errorf("metadata %v, want {format: pt}", md)
	}
	// Data laid out by name, as Python's safetensors.save_file does.
	var prev int64 = -1
	for _, k := range []string{"q_proj.lora_A", "q_proj.lora_B", "v_proj.lora_A", "v_proj.lora_B"} {
		info, ok := r.Info("base_model.model.model.layers.0.self_attn." + k + ".weight")
		if !ok || info.Offsets[0] <= prev {
			t.Errorf("%s at %v, not after offset %d", k, info.Offsets, prev)
		}
		prev = info.Offsets[0]
	}
	if err := r.Expect("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", []int{4, 64}); err != nil {
		t.Error(err)
	}
	if err := r.Expect("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight", []int{32, 4}); err != nil {
		t.Error(err)
	}

	got, rr, err := ReadPEFT(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer rr.Close()
	if got.R != 4 || got.LoraAlpha != 8 || got.LoraDropout != 0.05 || !reflect.DeepEqual(got.TargetModules, cfg.TargetModules) ||
		got.BaseModelNameOrPath != "/models/base" || got.Scaling() != 2 || !got.InferenceMode {
		t.Errorf("read back %+v", got)
	}
	if len(rr.Keys()) != 4 {
		t.Errorf("keys %v", rr.Keys())
	}
	// Round trip keeps the file byte for byte.
	if again := got.ToJSON(); string(again) != s {
		t.Errorf("re-rendered config differs:\n%s\nvs\n%s", again, s)
	}
}

func TestParseAdapterConfigFromNewerPEFT(t *testing.T) {
	// As PEFT 0.15 writes it: more keys, float alpha, a string init scheme.
	js := `{"alpha_pattern": {}, "auto_mapping": null, "base_model_name_or_path": "meta-llama/Llama-3.2-1B",
	  "bias": "none", "corda_config": null, "eva_config": null, "exclude_modules": null, "fan_in_fan_out": false,
	  "inference_mode": true, "init_lora_weights": "gaussian", "layer_replication": null, "layers_pattern": null,
	  "layers_to_transform": null, "loftq_config": {}, "lora_alpha": 32.0, "lora_bias": false, "lora_dropout": 0.0,
	  "megatron_config": null, "megatron_core": "megatron.core", "modules_to_save": null, "peft_type": "LORA",
	  "r": 16, "rank_pattern": {}, "revision": null, "target_modules": ["k_proj", "q_proj"], "task_type": "CAUSAL_LM",
	  "trainable_token_indices": null, "use_dora": false, "use_rslora": true}`
	c, err := ParseAdapterConfig([]byte(js), "adapter_config.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.R != 16 || c.LoraAlpha != 32 || !c.UseRSLoRA || c.Scaling() != 8 || c.BaseModelNameOrPath != "meta-llama/Llama-3.2-1B" {
		t.Errorf("%+v", c)
	}
	out := string(c.ToJSON())
	for _, k := range []string{`"eva_config": null`, `"init_lora_weights": "gaussian"`, `"lora_bias": false`, `"trainable_token_indices": null`} {
		if !strings.Contains(out, k) {
			t.Errorf("re-rendered config lost %s:\n%s", k, out)
		}
	}
}

func TestPEFTErrors(t *testing.T) {
	good := func() AdapterConfig { return NewAdapterConfig("", 4, 8, 0, []string{"q_proj"}, false) }
	q := "model.layers.0.self_attn.q_proj"

	t.Run("missing config", func(t *testing.T) {
		_, _, err := ReadPEFT(t.TempDir())
		wantErr(t, err, "adapter_config.json", "not found")
	})
	t.Run("missing weights", func(t *testing.T) {
		dir := t.TempDir()
		writeBytes(t, dir, PEFTConfigFile, good().ToJSON())
		_, _, err := ReadPEFT(dir)
		wantErr(t, err, "adapter_model.safetensors", "not found")
	})
	t.Run("bin only", func(t *testing.T) {
		dir := t.TempDir()
		writeBytes(t, dir, PEFTConfigFile, good().ToJSON())
		writeBytes(t, dir, "adapter_model.bin", []byte("pickle"))
		_, _, err := ReadPEFT(dir)
		wantErr(t, err, "adapter_model.bin", "safe_serialization")
	})
	t.Run("not lora key", func(t *testing.T) {
		dir := t.TempDir()
		ts := append(loraTensors(4, 8, 8, q), WriteTensor{Name: "base_model.model.model.embed_tokens.weight", DType: F32, Shape: []int{2}, Data: make([]byte, 8)})
		err := WritePEFT(dir, good(), ts)
		wantErr(t, err, "model.embed_tokens.weight", "not a LoRA weight")
		// The same file written by someone else is refused on read.
		writeBytes(t, dir, PEFTConfigFile, good().ToJSON())
		if err := WriteFile(filepath.Join(dir, PEFTWeightsFile), ts, nil); err != nil {
			t.Fatal(err)
		}
		_, _, err = ReadPEFT(dir)
		wantErr(t, err, "base_model.model.model.embed_tokens.weight", "not a LoRA weight")
	})
	t.Run("rank mismatch", func(t *testing.T) {
		dir := t.TempDir()
		ts := loraTensors(4, 8, 8, q)
		ts[1] = WriteTensor{Name: ts[1].Name, DType: F32, Shape: []int{8, 3}, Data: make([]byte, 8*3*4)}
		writeBytes(t, dir, PEFTConfigFile, good().ToJSON())
		if err := WriteFile(filepath.Join(dir, PEFTWeightsFile), ts, nil); err != nil {
			t.Fatal(err)
		}
		_, _, err := ReadPEFT(dir)
		wantErr(t, err, q+".lora_A.weight", q+".lora_B.weight", "[4 8]", "[8 3]")
	})
	t.Run("config r differs", func(t *testing.T) {
		c := good()
		c.R = 8
		err := WritePEFT(t.TempDir(), c, loraTensors(4, 8, 8, q))
		wantErr(t, err, "rank 4", "r=8")
	})
	t.Run("missing B", func(t *testing.T) {
		err := WritePEFT(t.TempDir(), good(), loraTensors(4, 8, 8, q)[:1])
		wantErr(t, err, "lora_A.weight", "no matching lora_B")
	})
	t.Run("dora without magnitude", func(t *testing.T) {
		c := good()
		c.UseDoRA = true
		err := WritePEFT(t.TempDir(), c, loraTensors(4, 8, 8, q))
		wantErr(t, err, "use_dora true", q, "lora_magnitude_vector")
	})
	t.Run("magnitude without use_dora", func(t *testing.T) {
		dir := t.TempDir()
		ts := doraTensors(4, 8, 8, q)
		writeBytes(t, dir, PEFTConfigFile, good().ToJSON())
		if err := WriteFile(filepath.Join(dir, PEFTWeightsFile), ts, nil); err != nil {
			t.Fatal(err)
		}
		_, _, err := ReadPEFT(dir)
		wantErr(t, err, q+".lora_magnitude_vector", "use_dora false")
	})
	t.Run("magnitude shape", func(t *testing.T) {
		c := good()
		c.UseDoRA = true
		ts := doraTensors(4, 8, 8, q)
		ts[2].Shape, ts[2].Data = []int{7}, make([]byte, 7*4)
		wantErr(t, WritePEFT(t.TempDir(), c, ts), "lora_magnitude_vector", "[7]", "8 output rows")
		ts[2].Shape, ts[2].Data = []int{8, 1}, make([]byte, 8*4)
		wantErr(t, WritePEFT(t.TempDir(), c, ts), "lora_magnitude_vector", "1-D")
	})
	t.Run("magnitude alone", func(t *testing.T) {
		c := good()
		c.UseDoRA = true
		ts := doraTensors(4, 8, 8, q)[2:]
		wantErr(t, WritePEFT(t.TempDir(), c, ts), "lora_magnitude_vector", "no lora_A and lora_B")
	})
	t.Run("bad json", func(t *testing.T) {
		dir := t.TempDir()
		writeBytes(t, dir, PEFTConfigFile, []byte(`{"r": "four"}`))
		_, _, err := ReadPEFT(dir)
		wantErr(t, err, "adapter_config.json", `"r"`)
	})
	t.Run("not lora", func(t *testing.T) {
		dir := t.TempDir()
		writeBytes(t, dir, PEFTConfigFile, []byte(`{"peft_type": "PREFIX_TUNING", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}`))
		_, _, err := ReadPEFT(dir)
		wantErr(t, err, "PREFIX_TUNING", "only LORA")
	})
}

// doraTensors is loraTensors with PEFT's DoRA magnitude vector [out] after
// each module's A and B.
func doraTensors(r, in, out int, modules ...string) []WriteTensor {
	var ts []WriteTensor
	for _, m := range modules {
		mag := make([]float32, out)
		for i := range mag {
			mag[i] = 1 + float32(i)*0.5
		}
		ts = append(ts, loraTensors(r, in, out, m)...)
		ts = append(ts, WriteTensor{Name: "base_model.model." + m + ".lora_magnitude_vector", DType: F32, Shape: []int{out}, Data: EncodeF32(mag)})
	}
	return ts
}

// A DoRA adapter is written with use_dora true and one
// base_model.model.<module>.lora_magnitude_vector [out] per module, exactly
// PEFT's keys, and reads back with its pairs and magnitudes.
func TestPEFTDoRARoundTrip(t *testing.T) {
	dir := t.TempDir()
	q, v := "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"
	cfg := NewAdapterConfig("/models/base", 4, 8, 0, []string{"q_proj", "v_proj"}, false)
	cfg.UseDoRA = true
	if err := WritePEFT(dir, cfg, doraTensors(4, 8, 16, q, v)); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, PEFTConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), `"use_dora": true`) {
		t.Errorf("adapter_config.json lacks \"use_dora\": true:\n%s", raw)
	}
	got, r, err := ReadPEFT(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !got.UseDoRA {
		t.Error("use_dora read back false")
	}
	for _, m := range []string{q, v} {
		key := "base_model.model." + m + ".lora_magnitude_vector"
		if err := r.Expect(key, []int{16}); err != nil {
			t.Error(err)
		}
		mag, err := r.F32(key)
		if err != nil || mag[3] != 2.5 {
			t.Errorf("%s: %v, %v", key, mag, err)
		}
	}
	shapes := map[string][]int{}
	for _, k := range r.Keys() {
		info, _ := r.Info(k)
		shapes[k] = info.Shape
	}
	pairs, err := PEFTPairs(r.Path(), shapes)
	if err != nil {
		t.Fatal(err)
	}
	if len(pairs) != 2 || pairs[0].MKey != "base_model.model."+q+".lora_magnitude_vector" || pairs[0].Out != 16 {
		t.Errorf("pairs %+v", pairs)
	}
	// A live model's state-dict spelling is accepted too.
	if mod, ok := ParsePEFTMagnitudeKey("base_model.model." + q + ".lora_magnitude_vector.default.weight"); !ok || mod != q {
		t.Errorf("ParsePEFTMagnitudeKey: %q %v", mod, ok)
	}
}
