package lora_test

import (
	"testing"

	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
)

// Merge into a BF16 Load (weights zero-copy in a PROT_READ MAP_SHARED map).
func TestMergeBF16Mapped(t *testing.T) {
	be := cpu.New()
	ref, err := llama.NewRandom(randmodel.TinyConfig(53), be, kernels.F32, 3)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ref.Save(dir, llama.SaveOptions{DType: "BF16"}); err != nil {
		t.Fatal(err)
	}
	m, err := llama.Load(dir, be, kernels.BF16)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	s, err := lora.Attach(m, lora.Config{R: 4, Alpha: 8, TargetModules: []string{"q_proj"}}, 7)
	if err != nil {
		t.Fatal(err)
	}
	s.Merge(m) // writes into the mapped bf16 weight
	t.Log("merge survived")
}
