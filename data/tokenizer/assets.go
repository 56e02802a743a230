package tokenizer

import (
	"bytes"
	"compress/gzip"
	"embed"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// The embedded tokenizers are gzip'ed copies of public Llama tokenizer files; see
// assets/SOURCES.md for where they come from and their licenses.
//
//go:embed assets/*.gz
var assets embed.FS

// llama2Config is our own tokenizer_config.json for the Llama 2 tokenizer.model.
const llama2Config = `{
  "add_bos_token": true,
  "add_eos_token": false,
  "bos_token": "<s>",
  "eos_token": "</s>",
  "unk_token": "<unk>",
  "pad_token": null,
  "legacy": true,
  "model_max_length": 4096,
  "tokenizer_class": "LlamaTokenizer",
  "added_tokens_decoder": {
    "0": {"content": "<unk>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true},
    "1": {"content": "<s>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true},
    "2": {"content": "</s>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true}
  }
}
`

// Asset returns the decompressed bytes of an embedded tokenizer file:
// "llama3-tokenizer.json", "llama3-tokenizer_config.json" or "llama2-tokenizer.model".
func Asset(name string) ([]byte, error) {
	gz, err := assets.ReadFile("assets/" + name + ".gz")
	if err != nil {
		return nil, fmt.Errorf("tokenizer: no embedded asset %q", name)
	}
	r, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// WriteFiles writes a complete tokenizer into dir (created if needed): for kind "llama3"
// tokenizer.json + tokenizer_config.json, for "llama2" tokenizer.model + tokenizer_config.json.
// Load(dir) reads them back.
func WriteFiles(dir, kind string) error {
	var files map[string]func() ([]byte, error)
	switch kind {
	case "llama3":
		files = map[string]func() ([]byte, error){
			"tokenizer.json":        func() ([]byte, error) { return Asset("llama3-tokenizer.json") },
			"tokenizer_config.json": func() ([]byte, error) { return Asset("llama3-tokenizer_config.json") },
		}
	case "llama2":
		files = map[string]func() ([]byte, error){
			"tokenizer.model":       func() ([]byte, error) { return Asset("llama2-tokenizer.model") },
			"tokenizer_config.json": func() ([]byte, error) { return []byte(llama2Config), nil },
		}
	default:
		return fmt.Errorf("tokenizer: unknown tokenizer kind %q (want llama3 or llama2)", kind)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, get := range files {
		data, err := get()
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
