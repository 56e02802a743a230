package randmodel

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/model/llama"
)

// TinyOptions shape a tiny model directory.
type TinyOptions struct {
	Tokenizer string // "llama3" (default) or "llama2"
	Layers    int    // default 2
	Hidden    int    // default 64 (intermediate = 2×hidden, head dim 16, GQA 2:1)
	Seed      uint64
	// Shards: how many safetensors shards to write (default 2, with an index).
	Shards int
}

// WriteTinyModel writes a complete HF model directory — config.json,
// generation_config.json, sharded model-0000x-of-0000N.safetensors with
// model.safetensors.index.json, and the tokenizer files — holding a tiny
// random Llama over the real Llama 3 (or Llama 2) vocabulary.
func WriteTinyModel(dir string, o TinyOptions) (llama.Config, error) {
	if o.Tokenizer == "" {
		o.Tokenizer = "llama3"
	}
	if o.Layers <= 0 {
		o.Layers = 2
	}
	if o.Hidden <= 0 {
		o.Hidden = 64
	}
	if o.Hidden%16 != 0 {
		return llama.Config{}, fmt.Errorf("tiny model: hidden %d must be a multiple of 16 (head dim 16)", o.Hidden)
	}
	if o.Shards <= 0 {
		o.Shards = 2
	}
	if err := tokenizer.WriteFiles(dir, o.Tokenizer); err != nil {
		return llama.Config{}, err
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		return llama.Config{}, err
	}
	c := TinyConfig(tok.VocabSize())
	c.NumHiddenLayers, c.HiddenSize, c.IntermediateSize = o.Layers, o.Hidden, 2*o.Hidden
	c.NumAttentionHeads, c.NumKeyValueHeads = o.Hidden/16, max(o.Hidden/32, 1)
	c.TieWordEmbeddings = true // as Llama 3.2 1B/3B: keeps the tiny model small
	if o.Tokenizer == "llama2" {
		c.RopeScaling, c.RopeTheta = nil, 10000 // as Llama 2
	}
	c.BosTokenID = json.RawMessage(fmt.Sprint(tok.BOS()))
	eos := []int{tok.EOS()}
	if e := tok.EOT(); e >= 0 && e != tok.EOS() {
		eos = append(eos, e)
	}
	eosJSON, _ := json.Marshal(eos)
	c.EosTokenID = eosJSON
	m, err := llama.NewRandom(c, cpu.New(), kernels.F32, o.Seed)
	if err != nil {
		return llama.Config{}, err
	}
	var total int64
	for _, n := range m.Names() {
		total += int64(m.Param(n).Numel()) * 4
	}
	if err := m.Save(dir, llama.SaveOptions{DType: "F32", MaxShardBytes: total/int64(o.Shards) + 1}); err != nil {
		return llama.Config{}, err
	}
	gen, _ := json.MarshalIndent(map[string]any{"bos_token_id": tok.BOS(), "eos_token_id": eos,
		"do_sample": true, "temperature": 0.6, "top_p": 0.9}, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "generation_config.json"), append(gen, '\n'), 0o644); err != nil {
		return llama.Config{}, fmt.Errorf("tiny model: %w", err)
	}
	return m.Config, nil
}

// MustTinyModel writes a tiny model into a fresh temp dir of t, failing the test on error.
func MustTinyModel(t interface {
	TempDir() string
	Fatal(...any)
}, o TinyOptions) string {
	dir := t.TempDir()
	if _, err := WriteTinyModel(dir, o); err != nil {
		t.Fatal(err)
	}
	return dir
}
