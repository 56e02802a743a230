package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	gguf "github.com/gpustack/gguf-parser-go"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
)

// exportArgs are the export flags, every one given: cobra keeps a flag's
// value from one Execute to the next in the same process.
func exportArgs(from, format, dtype, out string) []string {
	return []string{"export", "--from", from, "--format", format, "--dtype", dtype, "--out", out, "--base", "", "--allow-other-base=false"}
}

// export --format gguf-lora writes a llama.cpp adapter from a LoRA run (into
// a file, or adapter-<dtype>.gguf in a directory) and refuses a full
// fine-tuning run with a pointer to --format gguf.
func TestExportGGUFLoRA(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base")
	if _, err := randmodel.WriteTinyModel(base, randmodel.TinyOptions{Tokenizer: "llama2", Seed: 1, Shards: 1}); err != nil {
		t.Fatal(err)
	}
	m, err := llama.Load(base, cpu.New(), kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	set, err := lora.Attach(m, lora.Config{R: 4, Alpha: 16, TargetModules: []string{"q_proj", "v_proj"}}, 1)
	if err != nil {
		t.Fatal(err)
	}
	var ts []checkpoint.WriteTensor
	for _, l := range set.Linears {
		ts = append(ts,
			checkpoint.WriteTensor{Name: l.A.Name, DType: "F32", Shape: l.A.Shape, Data: checkpoint.EncodeF32(l.A.F32())},
			checkpoint.WriteTensor{Name: l.B.Name, DType: "F32", Shape: l.B.Shape, Data: checkpoint.EncodeF32(l.B.F32())})
	}
	final := filepath.Join(dir, "lora-run", "checkpoints", "step-000003")
	if err := checkpoint.WritePEFT(final, checkpoint.NewAdapterConfig(base, 4, 16, 0, set.ModuleNames(), false), ts); err != nil {
		t.Fatal(err)
	}
	state := `{"format":"` + checkpoint.StateFormat + `","step":3,"method":"%s","base_model":"` + base + `"}`
	if err := os.WriteFile(filepath.Join(final, checkpoint.StateFile), []byte(strings.Replace(state, "%s", "lora", 1)), 0o644); err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(dir, "adapter.gguf")
	if log, err := runCLI(t, exportArgs(filepath.Join(dir, "lora-run"), "gguf-lora", "", out)...); err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	f, err := gguf.ParseGGUFFile(out)
	if err != nil {
		t.Fatal(err)
	}
	kv := f.Header.MetadataKV
	if a, _ := kv.Get("adapter.lora.alpha"); a.ValueFloat32() != 16 {
		t.Errorf("adapter.lora.alpha %v", a.Value)
	}
	if g, _ := kv.Get("general.type"); g.ValueString() != "adapter" {
		t.Errorf("general.type %v", g.Value)
	}
	if n, _ := kv.Get("general.name"); n.ValueString() != "lora-run" {
		t.Errorf("general.name %v", n.Value)
	}
	if len(f.TensorInfos) != 8 { // 2 layers × (q, v) × (a, b)
		t.Errorf("%d tensors", len(f.TensorInfos))
	}
	for _, ti := range f.TensorInfos {
		if ti.Type != gguf.GGMLTypeF32 {
			t.Errorf("%s: %v, want F32 (the default)", ti.Name, ti.Type)
		}
	}

	// A directory as --out gets adapter-<dtype>.gguf.
	outDir := t.TempDir()
	if log, err := runCLI(t, exportArgs(final, "gguf-lora", "f16", outDir)...); err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	f, err = gguf.ParseGGUFFile(filepath.Join(outDir, "adapter-f16.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	if ti, _ := f.TensorInfos.Get("blk.1.attn_v.weight.lora_b"); ti.Type != gguf.GGMLTypeF16 {
		t.Errorf("blk.1.attn_v.weight.lora_b: %v, want F16", ti.Type)
	}

	if _, err := runCLI(t, exportArgs(final, "gguf-lora", "Q8_0", filepath.Join(dir, "q8.gguf"))...); err == nil || !strings.Contains(err.Error(), "F32 (default), F16 or BF16") {
		t.Errorf("--dtype Q8_0: %v", err)
	}

	// A full fine-tuning run has no adapter to export.
	full := filepath.Join(dir, "full-run", "checkpoints", "step-000003")
	if err := os.MkdirAll(full, 0o755); err != nil {
		t.Fatal(err)
	}
	norm := m.Param("model.norm.weight")
	if err := checkpoint.WriteFile(filepath.Join(full, checkpoint.TrainableFile),
		[]checkpoint.WriteTensor{{Name: "model.norm.weight", DType: "F32", Shape: norm.Shape, Data: checkpoint.EncodeF32(norm.F32())}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(full, checkpoint.StateFile), []byte(strings.Replace(state, "%s", "full", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	fullOut := filepath.Join(dir, "full.gguf")
	_, err = runCLI(t, exportArgs(filepath.Join(dir, "full-run"), "gguf-lora", "", fullOut)...)
	if err == nil || !strings.Contains(err.Error(), "full fine-tuned") || !strings.Contains(err.Error(), "--format gguf") {
		t.Fatalf("gguf-lora of a full fine-tuning run: %v", err)
	}
	if _, err := os.Stat(fullOut); !os.IsNotExist(err) {
		t.Errorf("a refused export wrote %s", fullOut)
	}
}

// writeTextRows writes the first chars characters of the War and Peace
// sample to path as JSONL text rows of 400 characters, and returns the
// whole sample.
func writeTextRows(t *testing.T, path string, chars int) []byte {
	t.Helper()
	raw, err := os.ReadFile("../../testdata/war-and-peace-60k.txt")
	if err != nil {
		t.Fatal(err)
	}
	var lines strings.Builder
	for i := 0; i < chars; i += 400 {
		b, _ := json.Marshal(map[string]string{"text": string(raw[i : i+400])})
		lines.Write(append(b, '\n'))
	}
	if err := os.WriteFile(path, []byte(lines.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return raw
}

// writeTinyJob writes DIR/job.yaml: LoRA (loraLine) on DIR/model over
// DIR/data.jsonl, seq 64, micro-batches of 2, maxSteps steps, into DIR/run.
func writeTinyJob(t *testing.T, dir, loraLine string, maxSteps int) string {
	t.Helper()
	path := filepath.Join(dir, "job.yaml")
	job := fmt.Sprintf(`model: model
method: lora
%s
data:
  datasets: [{path: data.jsonl, type: text}]
  seq_len: 64
  shuffle_buffer: 0
optimizer: {lr: 0.01}
batch: {micro_batch_size: 2}
max_steps: %d
device: cpu
output_dir: %s
`, loraLine, maxSteps, filepath.Join(dir, "run"))
	if err := os.WriteFile(path, []byte(job), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
