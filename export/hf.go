package export

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/model/llama"
)

// DefaultMaxShardBytes is transformers' default max_shard_size (5GB).
const DefaultMaxShardBytes = 5_000_000_000

var torchDTypes = map[string]string{"F32": "float32", "BF16": "bfloat16", "F16": "float16"}

// HF writes the merged weights as a Hugging Face model directory outDir:
// model.safetensors (or model-0000i-of-0000N.safetensors shards of at most
// maxShardBytes plus model.safetensors.index.json; ≤ 0 means one file) in
// dtype (F32, BF16 or F16), config.json (the source's, with torch_dtype set),
// generation_config.json and the tokenizer files (tokenizer.json,
// tokenizer.model, tokenizer_config.json, special_tokens_map.json, whichever
// exist). Every file is written atomically.
func HF(src Source, outDir string, dtype string, maxShardBytes int64) error {
	if dtype == "" {
		dtype = "BF16"
	}
	if _, ok := torchDTypes[dtype]; !ok {
		return fmt.Errorf("export: HF weights dtype %q is not one of F32, BF16, F16", dtype)
	}
	if err := src.overlaps(outDir); err != nil {
		return err
	}
	w, err := openWeights(src)
	if err != nil {
		return err
	}
	defer w.Close()
	if w.dirs.TokenizerDir == "" {
		return fmt.Errorf("export: no tokenizer.json or tokenizer.model in %s; the exported model would not load with AutoTokenizer (copy the base model's tokenizer files there)", describeDirs(src))
	}
	// Each tensor is read, merged and encoded when the writer reaches it.
	enc := hfEncoding(dtype)
	ts := make([]checkpoint.WriteTensor, 0, len(w.names))
	for _, n := range w.names {
		ts = append(ts, checkpoint.WriteTensor{Name: n, DType: dtype, Shape: w.shapes[n],
			Encode: func() ([]byte, error) { return w.encode(n, enc, 0) }})
	}
	// Written into a temporary directory next to outDir and moved into
	// place at the end: a failed export leaves no half a model.
	return writeDirAtomic(outDir, func(tmp string) error {
		if err := checkpoint.WriteSharded(tmp, ts, maxShardBytes, map[string]string{checkpoint.FormatKey: checkpoint.FormatPyTorch}); err != nil {
			return fmt.Errorf("export: %w", err)
		}
		if err := writeConfig(w.dirs.ConfigDir, tmp, w.cfg, torchDTypes[dtype]); err != nil {
			return err
		}
		return copyAux(src, w.dirs, tmp, w.cfg)
	})
}

func describeDirs(src Source) string {
	s := src.BaseDir
	if src.WeightsDir != "" && src.WeightsDir != src.BaseDir {
		s = src.WeightsDir + " or " + s
	}
	return s
}

// writeConfig writes outDir/config.json: the source config.json with every
// key kept (transformers' own keys included), torch_dtype set and
// tie_word_embeddings matching the weights written. Keys are sorted and
// indented as transformers' save_pretrained writes them.
//
// For a GGUF base (srcDir a .gguf file) the config is the one built from
// its llama.* keys.
func writeConfig(srcDir, outDir string, cfg llama.Config, torchDType string) error {
	p := filepath.Join(srcDir, "config.json")
	var raw []byte
	var err error
	if isGGUFFile(srcDir) {
		p = srcDir + " (llama.* keys)"
		raw, err = json.Marshal(cfg)
	} else {
		raw, err = os.ReadFile(p)
	}
	if err != nil {
		return fmt.Errorf("export: read %s: %w", p, err)
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return fmt.Errorf("export: %s: not valid JSON: %v", p, err)
	}
	m["torch_dtype"] = torchDType
	if _, ok := m["dtype"]; ok { // transformers ≥ 4.56 names it dtype
		m["dtype"] = torchDType
	}
	m["tie_word_embeddings"] = cfg.TieWordEmbeddings
	delete(m, "quantization_config") // the weights written are plain floats
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(m); err != nil { // map keys come out sorted
		return fmt.Errorf("export: encode config.json: %w", err)
	}
	return writeBytes(filepath.Join(outDir, "config.json"), b.Bytes())
}

func writeBytes(path string, data []byte) error {
	return checkpoint.WriteAtomic(path, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// copyAux copies the tokenizer files and generation_config.json. Files next
// to the exported weights win over the base model's.
func copyAux(src Source, dirs Dirs, outDir string, cfg llama.Config) error {
	if isGGUFFile(dirs.TokenizerDir) {
		if err := writeGGUFTokenizer(dirs.TokenizerDir, outDir); err != nil {
			return err
		}
	}
	for _, name := range tokenizerFiles {
		p := filepath.Join(dirs.TokenizerDir, name)
		if !isFile(p) {
			continue
		}
		if err := copyFile(p, filepath.Join(outDir, name)); err != nil {
			return err
		}
	}
	for _, d := range []string{src.WeightsDir, src.BaseDir} {
		if p := filepath.Join(d, "generation_config.json"); d != "" && isFile(p) {
			return copyFile(p, filepath.Join(outDir, "generation_config.json"))
		}
	}
	// None anywhere: write what transformers derives from config.json.
	gen := map[string]any{}
	if bos := cfg.BOSID(); bos >= 0 {
		gen["bos_token_id"] = bos
	}
	if eos := cfg.EOSIDs(); len(eos) == 1 {
		gen["eos_token_id"] = eos[0]
	} else if len(eos) > 1 {
		gen["eos_token_id"] = eos
	}
	b, _ := json.MarshalIndent(gen, "", "  ")
	return writeBytes(filepath.Join(outDir, "generation_config.json"), append(b, '\n'))
}

// writeGGUFTokenizer writes the HF tokenizer files of the tokenizer in a
// GGUF file's metadata (tokenizer.Vocab.HFFiles).
func writeGGUFTokenizer(path, outDir string) error {
	g, err := checkpoint.OpenGGUF(path)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer g.Close()
	v, err := tokenizer.VocabFromGGUF(g)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	files, err := v.HFFiles()
	if err != nil {
		return fmt.Errorf("export: %s: %w", path, err)
	}
	for name, b := range files {
		if err := writeBytes(filepath.Join(outDir, name), b); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(from, to string) error {
	f, err := os.Open(from)
	if err != nil {
		return fmt.Errorf("export: open %s: %w", from, err)
	}
	defer f.Close()
	return checkpoint.WriteAtomic(to, func(w io.Writer) error {
		_, err := io.Copy(w, f)
		return err
	})
}

// PEFT writes the LoRA adapter of src to outDir exactly as PEFT's
// save_pretrained does (adapter_model.safetensors with lora_A [r, in] and
// lora_B [out, r] under base_model.model.<module> keys, for DoRA also
// lora_magnitude_vector [out], and adapter_config.json with inference_mode
// true). The tensors keep their
// dtype. base_model_name_or_path keeps the adapter's value, or is set to the
// base directory when the adapter has none. Each A/B pair is checked against
// the base model's shapes first.
func PEFT(src Source, outDir string) error {
	if src.AdapterDir == "" {
		return errors.New("export: PEFT export needs a LoRA checkpoint; this source is full fine-tuned weights (export them with format hf or gguf)")
	}
	if err := src.validate(); err != nil {
		return err
	}
	if err := src.overlaps(outDir); err != nil {
		return err
	}
	cfg, r, err := checkpoint.ReadPEFT(src.AdapterDir)
	if err != nil {
		return err
	}
	defer r.Close()
	base, err := llama.LoadConfig(src.BaseDir)
	if err != nil {
		return fmt.Errorf("export: base model: %w", err)
	}
	// lm_head is absent from a tied checkpoint even when config.json omits
	// tie_word_embeddings (llama.Load reads it as tied too).
	if rr, err := checkpoint.Open(src.BaseDir); err == nil {
		if _, ok := rr.Info("lm_head.weight"); !ok {
			base.TieWordEmbeddings = true
		}
		rr.Close()
	}
	_, shapes := llama.ParamShapes(base)
	keys := r.Keys()
	sort.Strings(keys)
	adapterShapes := map[string][]int{}
	for _, k := range keys {
		info, _ := r.Info(k)
		adapterShapes[k] = info.Shape
	}
	pairs, err := checkpoint.PEFTPairs(r.Path(), adapterShapes)
	if err != nil {
		return err
	}
	var tensors []checkpoint.WriteTensor
	for _, p := range pairs {
		w, ok := shapes[p.Module+".weight"]
		if p.Module == "lm_head" && base.TieWordEmbeddings {
			w, ok = shapes["model.embed_tokens.weight"] // lm_head shares the embeddings
		}
		if !ok {
			return fmt.Errorf("export: %s: tensor %q adapts %s, which the base model in %s does not have", r.Path(), p.AKey, p.Module+".weight", src.BaseDir)
		}
		if w[0] != p.Out || w[1] != p.In {
			return fmt.Errorf("export: %s: %q/%q give a [%d, %d] update but the base weight %s is %v; the adapter does not match the base model in %s", r.Path(), p.AKey, p.BKey, p.Out, p.In, p.Module+".weight", w, src.BaseDir)
		}
		parts := []struct{ key, name string }{{p.AKey, "lora_A.weight"}, {p.BKey, "lora_B.weight"}}
		if p.MKey != "" {
			parts = append(parts, struct{ key, name string }{p.MKey, "lora_magnitude_vector"})
		}
		for _, ab := range parts {
			info, _ := r.Info(ab.key)
			data, err := r.Raw(ab.key)
			if err != nil {
				return err
			}
			name := "base_model.model." + p.Module + "." + ab.name
			tensors = append(tensors, checkpoint.WriteTensor{
				Name: name, DType: info.DType, Shape: info.Shape,
				Encode: func() ([]byte, error) { return data, checkFailHook(name) },
			})
		}
	}
	cfg.InferenceMode = true
	if cfg.BaseModelNameOrPath == "" {
		if abs, err := filepath.Abs(src.BaseDir); err == nil {
			cfg.BaseModelNameOrPath = abs
		} else {
			cfg.BaseModelNameOrPath = src.BaseDir
		}
	}
	if cfg.TaskType == "" {
		cfg.TaskType = "CAUSAL_LM"
	}
	return writeDirAtomic(outDir, func(tmp string) error { return checkpoint.WritePEFT(tmp, cfg, tensors) })
}
