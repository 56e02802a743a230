// Package export turns what llamatune trains into files other tools load
// unchanged: merged Hugging Face weights (safetensors, sharded, with config and
// tokenizer), PEFT LoRA adapters, GGUF for llama.cpp and Ollama, and LoRA
// adapters as GGUF for llama.cpp's --lora.
//
// A Source names the base model and what was trained on top of it: a PEFT
// adapter (LoRA) or a directory of full fine-tuned weights. ResolveSource
// finds those from a training checkpoint or run directory.
package export

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/tensor"
)

// Source is what to export.
type Source struct {
	// BaseDir is the base model's HF directory (config.json, weights,
	// tokenizer), or a GGUF file (a path ending in .gguf: config, weights
	// and tokenizer come from the file; see llama.ConfigFromGGUF). Required
	// with AdapterDir; with WeightsDir it supplies the tokenizer when
	// WeightsDir has none.
	BaseDir string
	// AdapterDir is a PEFT LoRA adapter directory (adapter_config.json +
	// adapter_model.safetensors), merged into the base weights.
	AdapterDir string
	// WeightsDir holds full fine-tuned weights: an HF directory (config.json +
	// model*.safetensors), used instead of the base weights, or a llamatune
	// checkpoint directory whose trainable.safetensors (HF keys) replaces
	// those tensors of the base model.
	WeightsDir string
}

// Dirs says where Open found the pieces of a source.
type Dirs struct {
	ConfigDir    string // holds the config.json of the exported weights
	TokenizerDir string // holds tokenizer.json / tokenizer.model; "" when none was found
	Adapter      *checkpoint.AdapterConfig
}

var tokenizerFiles = []string{"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"}

func hasTokenizer(dir string) bool {
	if isGGUFFile(dir) {
		return true // tokenizer.ggml.*: a file without them fails when the vocabulary is read
	}
	return dir != "" && (isFile(filepath.Join(dir, "tokenizer.json")) || isFile(filepath.Join(dir, "tokenizer.model")))
}

// isGGUFFile reports whether p is a .gguf file (a base model).
func isGGUFFile(p string) bool { return checkpoint.IsGGUF(p) && isFile(p) }

// isBase reports whether p can be a base model: a directory or a GGUF file.
func isBase(p string) bool { return isDir(p) || isGGUFFile(p) }

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func (s Source) validate() error {
	if s.AdapterDir != "" && s.WeightsDir != "" {
		return errors.New("export: a source has either an adapter (LoRA) or full weights, not both")
	}
	if s.WeightsDir == "" && s.BaseDir == "" {
		return errors.New("export: no base model directory given (pass --base DIR)")
	}
	if s.BaseDir != "" && !isBase(s.BaseDir) {
		return fmt.Errorf("export: base model %s is neither a directory nor a .gguf file", s.BaseDir)
	}
	for _, d := range []struct{ what, dir string }{{"adapter", s.AdapterDir}, {"weights", s.WeightsDir}} {
		if d.dir != "" && !isDir(d.dir) {
			return fmt.Errorf("export: %s directory %s does not exist or is not a directory", d.what, d.dir)
		}
	}
	return nil
}

// Open loads the weights to export into memory as float32 on the CPU, for
// evaluation: the base model with the LoRA adapter merged in (W +=
// scaling·B·A, lora.AddLowRank per module as lora.Set.Merge does), or the
// full fine-tuned weights. The files are read one tensor at a time, exactly
// as HF and GGUF stream them (those never hold the model in memory).
func Open(src Source) (*llama.Model, Dirs, error) {
	w, err := openWeights(src)
	if err != nil {
		return nil, Dirs{}, err
	}
	defer w.Close()
	be := w.be
	params := make(map[string]*tensor.Tensor, len(w.names))
	for _, n := range w.names {
		v, err := w.F32(n)
		if err != nil {
			return nil, Dirs{}, err
		}
		params[n] = tensor.Wrap(be, cpu.WrapF32(v), w.shapes[n]...)
	}
	m, err := llama.New(w.cfg, be, params)
	if err != nil {
		return nil, Dirs{}, fmt.Errorf("export: load %s: %w", w.dirs.ConfigDir, err)
	}
	return m, w.dirs, nil
}

// CheckpointState is the part of a training checkpoint's state.json export needs.
type CheckpointState struct {
	Format    string `json:"format"`
	Step      int64  `json:"step"`
	Method    string `json:"method"` // "lora" or "full"
	BaseModel string `json:"base_model"`
	// ModelHash is llama.Fingerprint of the base model trained on.
	ModelHash string `json:"model_hash"`
	// BaseWeights is llama.WeightsFingerprint of that base model.
	BaseWeights string `json:"base_weights"`
}

// ResolveSource finds what to export from dir, which may be:
//   - a training checkpoint directory (state.json; method "lora" with a PEFT
//     adapter in it, or "full" with config.json + model*.safetensors);
//   - a run directory (its newest complete checkpoints/step-NNNNNN/);
//   - a PEFT adapter directory (adapter_config.json), with base or the
//     adapter's base_model_name_or_path as the base model;
//   - an HF model directory of full weights.
//
// base, when not empty, overrides the base model recorded in the checkpoint.
// A base whose llama.Fingerprint differs from the one the checkpoint records
// is refused (see ResolveOptions.AllowOtherBase).
func ResolveSource(dir, base string) (Source, error) {
	return ResolveSourceWith(dir, base, ResolveOptions{})
}

// ResolveOptions adjust ResolveSource.
type ResolveOptions struct {
	// AllowOtherBase merges into a base model other than the one the
	// checkpoint was trained on (its fingerprint differs).
	AllowOtherBase bool
}

// ResolveSourceWith is ResolveSource with options.
func ResolveSourceWith(dir, base string, o ResolveOptions) (Source, error) {
	return resolve(dir, base, 0, o)
}

func resolve(dir, base string, depth int, o ResolveOptions) (Source, error) {
	if !isDir(dir) {
		return Source{}, fmt.Errorf("export: %s does not exist or is not a directory; --from takes a checkpoint, run, adapter or model directory", dir)
	}
	if base != "" && !isBase(base) {
		return Source{}, fmt.Errorf("export: base model %s does not exist (a model directory or a .gguf file)", base)
	}
	statePath := filepath.Join(dir, checkpoint.StateFile)
	if isFile(statePath) {
		return fromState(dir, statePath, base, o)
	}
	if isFile(filepath.Join(dir, checkpoint.PEFTConfigFile)) {
		return fromAdapter(dir, base)
	}
	if depth == 0 && checkpoint.IsRun(dir) {
		step, err := checkpoint.Run{Dir: dir}.Latest()
		if err != nil {
			return Source{}, fmt.Errorf("export: %w", err)
		}
		return resolve(step, base, depth+1, o)
	}
	if isFile(filepath.Join(dir, "config.json")) && hasWeights(dir) {
		if base == "" {
			base = dir
		}
		return Source{BaseDir: base, WeightsDir: dir}, nil
	}
	return Source{}, fmt.Errorf("export: %s is not something to export: expected a checkpoint (%s), a PEFT adapter (%s), a run directory (checkpoints/step-N/), or an HF model directory (config.json + model.safetensors)", dir, checkpoint.StateFile, checkpoint.PEFTConfigFile)
}

func hasWeights(dir string) bool {
	return isFile(filepath.Join(dir, checkpoint.SingleFileName)) || isFile(filepath.Join(dir, checkpoint.IndexFileName))
}

func fromState(dir, statePath, base string, o ResolveOptions) (Source, error) {
	raw, err := os.ReadFile(statePath)
	if err != nil {
		return Source{}, fmt.Errorf("export: read %s: %w", statePath, err)
	}
	var st CheckpointState
	if err := json.Unmarshal(raw, &st); err != nil {
		return Source{}, fmt.Errorf("export: %s: not valid JSON: %v", statePath, err)
	}
	if !strings.HasPrefix(st.Format, "llamatune-checkpoint/") {
		return Source{}, fmt.Errorf("export: %s: format %q is not a llamatune checkpoint (want %q)", statePath, st.Format, checkpoint.StateFormat)
	}
	if st.Format != checkpoint.StateFormat {
		return Source{}, fmt.Errorf("export: %s: format %q is newer than this llamatune understands (%q); upgrade llamatune", statePath, st.Format, checkpoint.StateFormat)
	}
	if base == "" && st.BaseModel != "" {
		base = st.BaseModel
		if !filepath.IsAbs(base) && !isBase(base) {
			base = filepath.Join(dir, base)
		}
	}
	switch st.Method {
	case "lora":
		if base == "" || !isBase(base) {
			return Source{}, fmt.Errorf("export: %s: base model %q (key base_model) is not a directory or .gguf file here; pass --base DIR", statePath, st.BaseModel)
		}
		if !isFile(filepath.Join(dir, checkpoint.PEFTConfigFile)) {
			return Source{}, fmt.Errorf("export: %s says method lora but %s has no %s; the checkpoint is incomplete", statePath, dir, checkpoint.PEFTConfigFile)
		}
		if err := checkBase(statePath, st, base, o); err != nil {
			return Source{}, err
		}
		return Source{BaseDir: base, AdapterDir: dir}, nil
	case "full":
		hfDir := isFile(filepath.Join(dir, "config.json")) && hasWeights(dir)
		if !hfDir {
			if !isFile(filepath.Join(dir, checkpoint.TrainableFile)) {
				return Source{}, fmt.Errorf("export: %s says method full but %s has neither %s nor config.json + model.safetensors; the checkpoint is incomplete", statePath, dir, checkpoint.TrainableFile)
			}
			if base == "" || !isBase(base) {
				return Source{}, fmt.Errorf("export: %s: base model %q (key base_model) is not a directory or .gguf file here; pass --base DIR", statePath, st.BaseModel)
			}
			if err := checkBase(statePath, st, base, o); err != nil {
				return Source{}, err
			}
			return Source{BaseDir: base, WeightsDir: dir}, nil
		}
		if base != "" && !isBase(base) {
			if !hasTokenizer(dir) {
				return Source{}, fmt.Errorf("export: %s: base model %q (key base_model) is not a directory here and the checkpoint has no tokenizer; pass --base DIR", statePath, st.BaseModel)
			}
			base = ""
		}
		if base == "" {
			base = dir
		}
		return Source{BaseDir: base, WeightsDir: dir}, nil
	}
	return Source{}, fmt.Errorf("export: %s: method %q is not lora or full", statePath, st.Method)
}

// checkBase refuses a base model other than the one the checkpoint was
// trained on: same shapes merge without complaint, but into the wrong
// weights. Checkpoints without model_hash are not checked.
func checkBase(statePath string, st CheckpointState, base string, o ResolveOptions) error {
	if (st.ModelHash == "" && st.BaseWeights == "") || o.AllowOtherBase {
		return nil
	}
	recorded, fingerprint := st.ModelHash, llama.Fingerprint
	if st.BaseWeights != "" { // by content: catches another base of the same shape
		recorded, fingerprint = st.BaseWeights, llama.WeightsFingerprint
	}
	fp, err := fingerprint(base)
	if err != nil {
		return fmt.Errorf("export: fingerprint of base model %s: %w", base, err)
	}
	if fp == recorded {
		return nil
	}
	st.ModelHash = recorded
	if sameDir(base, st.BaseModel) {
		return fmt.Errorf("export: base model %s has changed since training: fingerprint %s now, %s recorded in %s (config.json or weight files differ); restore the base it was trained on, or pass --allow-other-base to merge anyway", base, fp, st.ModelHash, statePath)
	}
	return fmt.Errorf("export: %s was trained on base model %s (fingerprint %s) but --base is %s (fingerprint %s); merging into another base gives wrong weights: pass the base it was trained on, or --allow-other-base to merge anyway", statePath, st.BaseModel, st.ModelHash, base, fp)
}

func fromAdapter(dir, base string) (Source, error) {
	if base == "" {
		p := filepath.Join(dir, checkpoint.PEFTConfigFile)
		raw, err := os.ReadFile(p)
		if err != nil {
			return Source{}, fmt.Errorf("export: read %s: %w", p, err)
		}
		cfg, err := checkpoint.ParseAdapterConfig(raw, p)
		if err != nil {
			return Source{}, fmt.Errorf("export: %w", err)
		}
		if cfg.BaseModelNameOrPath == "" || !isBase(cfg.BaseModelNameOrPath) {
			return Source{}, fmt.Errorf("export: %s: base_model_name_or_path %q is not a local directory; pass --base DIR with the base model", p, cfg.BaseModelNameOrPath)
		}
		base = cfg.BaseModelNameOrPath
	}
	return Source{BaseDir: base, AdapterDir: dir}, nil
}

// sameDir reports whether a and b name the same directory.
func sameDir(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	if err1 == nil && err2 == nil {
		return os.SameFile(sa, sb)
	}
	aa, _ := filepath.Abs(a)
	bb, _ := filepath.Abs(b)
	return aa == bb
}

func (s Source) overlaps(out string) error {
	for _, d := range []string{s.BaseDir, s.AdapterDir, s.WeightsDir} {
		if sameDir(d, out) {
			return fmt.Errorf("export: output directory %s is one of the source directories; choose a new --out", out)
		}
	}
	return nil
}
