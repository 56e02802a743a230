package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/internal/randmodel"
)

// A job with lora.use_dora: true trains DoRA adapters (the magnitudes are
// counted among the trainable parameters), its run exports as a PEFT DoRA
// adapter and as a merged HF model, and gguf-lora refuses it.
func TestTrainDoRAJob(t *testing.T) {
	dir := t.TempDir()
	if _, err := randmodel.WriteTinyModel(filepath.Join(dir, "model"), randmodel.TinyOptions{Tokenizer: "llama2", Layers: 1, Hidden: 32}); err != nil {
		t.Fatal(err)
	}
	writeTextRows(t, filepath.Join(dir, "data.jsonl"), 4000)
	jobPath := writeTinyJob(t, dir, "lora: {r: 4, alpha: 8, target_modules: [q_proj, down_proj], use_dora: true}", 2)
	job, err := configs.Load(jobPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	res, err := runTrain(context.Background(), job, "", &log)
	if err != nil || res.Steps != 2 {
		t.Fatalf("train: %v (%+v)\n%s", err, res, log.String())
	}
	// One layer, q_proj and down_proj: A, B and the magnitude each.
	if !strings.Contains(log.String(), "6 trainable tensors") {
		t.Errorf("the magnitudes are not among the trainable tensors:\n%s", log.String())
	}

	peft := filepath.Join(dir, "peft")
	if out, err := runCLI(t, exportArgs(job.OutputDir, "peft", "", peft)...); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	cfg, r, err := checkpoint.ReadPEFT(peft)
	if err != nil {
		t.Fatal(err)
	}
	_, ok := r.Info("base_model.model.model.layers.0.mlp.down_proj.lora_magnitude_vector")
	r.Close()
	if !cfg.UseDoRA || !ok {
		t.Fatalf("peft export: use_dora %v, down_proj magnitude %v", cfg.UseDoRA, ok)
	}
	if out, err := runCLI(t, exportArgs(job.OutputDir, "hf", "F32", filepath.Join(dir, "hf"))...); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	_, err = runCLI(t, exportArgs(job.OutputDir, "gguf-lora", "", filepath.Join(dir, "a.gguf"))...)
	if err == nil || !strings.Contains(err.Error(), "DoRA") {
		t.Fatalf("gguf-lora of a DoRA run: %v", err)
	}
}
