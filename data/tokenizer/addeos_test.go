package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/llamatune/llamatune/checkpoint"
)

// A GGUF that sets only tokenizer.ggml.add_eos_token (no add_bos_token):
// llama.cpp keeps its default add_bos=true for both SPM and llama-bpe.
func TestAddEOSOnlyKeepsBOS(t *testing.T) {
	dir := t.TempDir()
	if err := WriteFiles(dir, "llama2"); err != nil {
		t.Fatal(err)
	}
	v, err := ExportVocab(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	v.AddBOSSet = false
	kvs := append(vocabKVs(v), checkpoint.GGUFKV{Key: "tokenizer.ggml.add_eos_token", Value: false})
	path := filepath.Join(t.TempDir(), "tok.gguf")
	if err := checkpoint.WriteGGUF(path, kvs, nil); err != nil {
		t.Fatal(err)
	}
	g, err := checkpoint.OpenGGUF(path)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	gv, err := VocabFromGGUF(g)
	if err != nil {
		t.Fatal(err)
	}
	if !gv.AddBOS || gv.AddEOS {
		t.Errorf("AddBOS %v, AddEOS %v with BOS %d: add_eos_token alone must leave llama.cpp's default add_bos=true", gv.AddBOS, gv.AddEOS, gv.BOS)
	}
}

// The HF side (ExportVocab, feeding export's GGUF tokenizer.ggml.add_bos_token):
// a tokenizer_config.json with add_eos_token but no add_bos_token.
func TestExportVocabAddEOSOnly(t *testing.T) {
	dir := t.TempDir()
	if err := WriteFiles(dir, "llama2"); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "tokenizer_config.json")
	b, _ := os.ReadFile(p)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "add_bos_token")
	m["add_eos_token"] = false
	b, _ = json.Marshal(m)
	os.WriteFile(p, b, 0o644)
	v, err := ExportVocab(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	// transformers' LlamaTokenizer defaults add_bos_token to true, and so
	// does llama.cpp when the GGUF leaves tokenizer.ggml.add_bos_token out:
	// it must not be written as false.
	for _, kv := range vocabKVs(v) {
		if kv.Key == "tokenizer.ggml.add_bos_token" && kv.Value == false {
			t.Errorf("the GGUF would say add_bos_token false (AddBOS %v, set %v): add_eos_token alone must not turn BOS off", v.AddBOS, v.AddBOSSet)
		}
	}
}
