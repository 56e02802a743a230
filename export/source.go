// Package export turns what llamatune trains into files other tools load
// unchanged: merged Hugging Face weights (safetensors, sharded, with config and
// tokenizer), PEFT LoRA adapters, and GGUF for llama.cpp and Ollama.
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
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
)

// Source is what to export.
type Source struct {
	// BaseDir is the base model's HF directory (config.json, weights,
	// tokenizer). Required with AdapterDir; with WeightsDir it supplies the
	// tokenizer when WeightsDir has none.
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
	return dir != "" && (isFile(filepath.Join(dir, "tokenizer.json")) || isFile(filepath.Join(dir, "tokenizer.model")))
}

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
	for _, d := range []struct{ what, dir string }{{"base model", s.BaseDir}, {"adapter", s.AdapterDir}, {"weights", s.WeightsDir}} {
		if d.dir != "" && !isDir(d.dir) {
			return fmt.Errorf("export: %s directory %s does not exist or is not a directory", d.what, d.dir)
		}
	}
	return nil
}

// Open loads the weights to export into memory as float32 on the CPU: the
// base model with the LoRA adapter merged in (W += scaling·B·A, through
// lora.Attach and lora.Set.Merge), or the full fine-tuned weights.
func Open(src Source) (*llama.Model, Dirs, error) {
	if err := src.validate(); err != nil {
		return nil, Dirs{}, err
	}
	be := cpu.New()
	d := Dirs{ConfigDir: src.BaseDir}
	overlay := ""
	if src.WeightsDir != "" {
		if isFile(filepath.Join(src.WeightsDir, "config.json")) && hasWeights(src.WeightsDir) {
			d.ConfigDir = src.WeightsDir
		} else if p := filepath.Join(src.WeightsDir, TrainableFile); isFile(p) {
			if src.BaseDir == "" || sameDir(src.BaseDir, src.WeightsDir) {
				return nil, Dirs{}, fmt.Errorf("export: %s holds only the trained tensors (%s); the base model is needed too (pass --base DIR)", src.WeightsDir, TrainableFile)
			}
			overlay = p
		} else {
			return nil, Dirs{}, fmt.Errorf("export: %s has neither config.json + model.safetensors nor %s; it holds no weights to export", src.WeightsDir, TrainableFile)
		}
	}
	switch {
	case hasTokenizer(src.WeightsDir):
		d.TokenizerDir = src.WeightsDir
	case hasTokenizer(src.BaseDir):
		d.TokenizerDir = src.BaseDir
	}
	m, err := llama.Load(d.ConfigDir, be, kernels.F32)
	if err != nil {
		return nil, Dirs{}, fmt.Errorf("export: load %s: %w", d.ConfigDir, err)
	}
	if overlay != "" {
		if err := overlayTrainable(m, overlay); err != nil {
			return nil, Dirs{}, err
		}
	}
	if src.AdapterDir == "" {
		return m, d, nil
	}
	cfg, err := mergeAdapter(m, src.AdapterDir)
	if err != nil {
		return nil, Dirs{}, err
	}
	d.Adapter = &cfg
	return m, d, nil
}

// TrainableFile is the file of a llamatune checkpoint that holds the trained
// tensors in float32 (HF keys for full fine-tuning, PEFT keys for LoRA).
const TrainableFile = "trainable.safetensors"

// overlayTrainable replaces m's parameters with the tensors of path (HF
// names, as full fine-tuning saves them).
func overlayTrainable(m *llama.Model, path string) error {
	r, err := checkpoint.Open(path)
	if err != nil {
		return err
	}
	defer r.Close()
	be := m.Backend()
	for _, k := range r.Keys() {
		if _, _, ok := checkpoint.ParsePEFTKey(k); ok {
			return fmt.Errorf("export: %s holds LoRA weights (%s); export the checkpoint's PEFT adapter instead (its state.json should say method lora)", path, k)
		}
		if k == "lm_head.weight" && m.Config.TieWordEmbeddings {
			m.Untie() // trained separately from the embeddings
		}
		p := m.Param(k)
		if p == nil {
			return fmt.Errorf("export: %s: tensor %q is not a parameter of the base model; is the checkpoint for another model?", path, k)
		}
		if err := r.Expect(k, p.Shape); err != nil {
			return err
		}
		v, err := r.F32(k)
		if err != nil {
			return err
		}
		be.Copy(p.Buf, be.FromF32(kernels.F32, v))
	}
	return nil
}

var layerRE = regexp.MustCompile(`^model\.layers\.([0-9]+)\.`)

// mergeAdapter folds the PEFT adapter in dir into m.
func mergeAdapter(m *llama.Model, dir string) (checkpoint.AdapterConfig, error) {
	cfg, r, err := checkpoint.ReadPEFT(dir)
	if err != nil {
		return cfg, err
	}
	defer r.Close()
	if len(cfg.RankPattern) > 0 || len(cfg.AlphaPattern) > 0 {
		return cfg, fmt.Errorf("export: %s: rank_pattern/alpha_pattern (per-module ranks or alphas) are not supported; merge this adapter with PEFT's merge_and_unload", filepath.Join(dir, checkpoint.PEFTConfigFile))
	}
	shapes := map[string][]int{}
	for _, k := range r.Keys() {
		info, _ := r.Info(k)
		shapes[k] = info.Shape
	}
	pairs, err := checkpoint.PEFTPairs(r.Path(), shapes)
	if err != nil {
		return cfg, err
	}
	byModule := map[string]checkpoint.PEFTPair{}
	var targets []string
	var layers []int
	for _, p := range pairs {
		byModule[p.Module] = p
		short := p.Module[strings.LastIndex(p.Module, ".")+1:]
		if !slices.Contains(lora.Modules, short) {
			return cfg, fmt.Errorf("export: %s: tensor %q adapts module %s, which is not a Llama linear layer (%s)", r.Path(), p.AKey, p.Module, strings.Join(lora.Modules, ", "))
		}
		if !slices.Contains(targets, short) {
			targets = append(targets, short)
		}
		if mm := layerRE.FindStringSubmatch(p.Module); mm != nil {
			n, _ := strconv.Atoi(mm[1])
			if !slices.Contains(layers, n) {
				layers = append(layers, n)
			}
		}
		w := m.Param(p.Module + ".weight")
		if p.Module == "lm_head" {
			w = m.LMHead // the embeddings when tied; merging unties them
		}
		if w == nil {
			return cfg, fmt.Errorf("export: %s: tensor %q adapts %s, which the base model (%d layers) does not have; is this adapter for a different base model?", r.Path(), p.AKey, p.Module+".weight", m.Config.NumHiddenLayers)
		}
		if w.Shape[0] != p.Out || w.Shape[1] != p.In {
			return cfg, fmt.Errorf("export: %s: %q is [%d, %d] and %q is [%d, %d], but the base weight %s is %v ([out, in]); the adapter does not match this base model", r.Path(), p.AKey, p.Rank, p.In, p.BKey, p.Out, p.Rank, p.Module+".weight", w.Shape)
		}
	}
	sort.Ints(layers)
	set, err := lora.Attach(m, lora.Config{R: cfg.R, Alpha: cfg.LoraAlpha, TargetModules: targets, RSLoRA: cfg.UseRSLoRA, Layers: layers}, 0)
	if err != nil {
		return cfg, fmt.Errorf("export: %s: %w", dir, err)
	}
	be := m.Backend()
	used := 0
	for _, l := range set.Linears {
		p, ok := byModule[l.Module]
		if !ok {
			// Attached by pattern but absent from the file: PEFT would leave
			// B = 0 there too, so the module is unchanged.
			be.Copy(l.B.Buf, be.FromF32(kernels.F32, make([]float32, l.B.Numel())))
			continue
		}
		used++
		for _, x := range []struct {
			key string
			buf kernels.Buffer
		}{{p.AKey, l.A.Buf}, {p.BKey, l.B.Buf}} {
			v, err := r.F32(x.key)
			if err != nil {
				return cfg, err
			}
			be.Copy(x.buf, be.FromF32(kernels.F32, v))
		}
	}
	if used != len(pairs) {
		return cfg, fmt.Errorf("export: %s: only %d of the %d adapted modules could be attached to the base model", r.Path(), used, len(pairs))
	}
	set.Merge(m)
	return cfg, nil
}

// StateFile is the file the trainer writes in every checkpoint directory.
const StateFile = "state.json"

// StateFormat is the format tag of state.json this package reads.
const StateFormat = "llamatune-checkpoint/1"

// CheckpointState is the part of a training checkpoint's state.json export needs.
type CheckpointState struct {
	Format    string `json:"format"`
	Step      int64  `json:"step"`
	Method    string `json:"method"` // "lora" or "full"
	BaseModel string `json:"base_model"`
}

var stepDirRE = regexp.MustCompile(`^step-([0-9]+)$`)

// ResolveSource finds what to export from dir, which may be:
//   - a training checkpoint directory (state.json; method "lora" with a PEFT
//     adapter in it, or "full" with config.json + model*.safetensors);
//   - a run directory holding final/ (preferred) or checkpoints/step-NNNNNN/
//     (the highest step is taken);
//   - a PEFT adapter directory (adapter_config.json), with base or the
//     adapter's base_model_name_or_path as the base model;
//   - an HF model directory of full weights.
//
// base, when not empty, overrides the base model recorded in the checkpoint.
func ResolveSource(dir, base string) (Source, error) {
	return resolve(dir, base, 0)
}

func resolve(dir, base string, depth int) (Source, error) {
	if !isDir(dir) {
		return Source{}, fmt.Errorf("export: %s does not exist or is not a directory; --from takes a checkpoint, run, adapter or model directory", dir)
	}
	if base != "" && !isDir(base) {
		return Source{}, fmt.Errorf("export: base model directory %s does not exist", base)
	}
	statePath := filepath.Join(dir, StateFile)
	if isFile(statePath) {
		return fromState(dir, statePath, base)
	}
	if isFile(filepath.Join(dir, checkpoint.PEFTConfigFile)) {
		return fromAdapter(dir, base)
	}
	if depth == 0 {
		if final := filepath.Join(dir, "final"); isDir(final) {
			return resolve(final, base, depth+1)
		}
		if ck := filepath.Join(dir, "checkpoints"); isDir(ck) {
			step, err := latestStep(ck)
			if err != nil {
				return Source{}, err
			}
			return resolve(step, base, depth+1)
		}
	}
	if isFile(filepath.Join(dir, "config.json")) && hasWeights(dir) {
		if base == "" {
			base = dir
		}
		return Source{BaseDir: base, WeightsDir: dir}, nil
	}
	return Source{}, fmt.Errorf("export: %s is not something to export: expected a checkpoint (%s), a PEFT adapter (%s), a run directory (final/ or checkpoints/step-N/), or an HF model directory (config.json + model.safetensors)", dir, StateFile, checkpoint.PEFTConfigFile)
}

func hasWeights(dir string) bool {
	return isFile(filepath.Join(dir, checkpoint.SingleFileName)) || isFile(filepath.Join(dir, checkpoint.IndexFileName))
}

// latestStep returns the checkpoints/step-N directory with the highest N.
func latestStep(ck string) (string, error) {
	ents, err := os.ReadDir(ck)
	if err != nil {
		return "", fmt.Errorf("export: list %s: %w", ck, err)
	}
	best, bestStep := "", int64(-1)
	for _, e := range ents {
		m := stepDirRE.FindStringSubmatch(e.Name())
		if m == nil || !e.IsDir() {
			continue
		}
		n, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil {
			continue
		}
		p := filepath.Join(ck, e.Name())
		if !isFile(filepath.Join(p, StateFile)) && !isFile(filepath.Join(p, checkpoint.PEFTConfigFile)) {
			continue // not finished writing
		}
		if n > bestStep {
			best, bestStep = p, n
		}
	}
	if best == "" {
		return "", fmt.Errorf("export: %s holds no complete step-NNNNNN checkpoint (a directory with %s)", ck, StateFile)
	}
	return best, nil
}

func fromState(dir, statePath, base string) (Source, error) {
	raw, err := os.ReadFile(statePath)
	if err != nil {
		return Source{}, fmt.Errorf("export: read %s: %w", statePath, err)
	}
	var st CheckpointState
	if err := json.Unmarshal(raw, &st); err != nil {
		return Source{}, fmt.Errorf("export: %s: not valid JSON: %v", statePath, err)
	}
	if !strings.HasPrefix(st.Format, "llamatune-checkpoint/") {
		return Source{}, fmt.Errorf("export: %s: format %q is not a llamatune checkpoint (want %q)", statePath, st.Format, StateFormat)
	}
	if st.Format != StateFormat {
		return Source{}, fmt.Errorf("export: %s: format %q is newer than this llamatune understands (%q); upgrade llamatune", statePath, st.Format, StateFormat)
	}
	if base == "" && st.BaseModel != "" {
		base = st.BaseModel
		if !filepath.IsAbs(base) && !isDir(base) {
			base = filepath.Join(dir, base)
		}
	}
	switch st.Method {
	case "lora":
		if base == "" || !isDir(base) {
			return Source{}, fmt.Errorf("export: %s: base model %q (key base_model) is not a directory here; pass --base DIR", statePath, st.BaseModel)
		}
		if !isFile(filepath.Join(dir, checkpoint.PEFTConfigFile)) {
			return Source{}, fmt.Errorf("export: %s says method lora but %s has no %s; the checkpoint is incomplete", statePath, dir, checkpoint.PEFTConfigFile)
		}
		return Source{BaseDir: base, AdapterDir: dir}, nil
	case "full":
		hfDir := isFile(filepath.Join(dir, "config.json")) && hasWeights(dir)
		if !hfDir {
			if !isFile(filepath.Join(dir, TrainableFile)) {
				return Source{}, fmt.Errorf("export: %s says method full but %s has neither %s nor config.json + model.safetensors; the checkpoint is incomplete", statePath, dir, TrainableFile)
			}
			if base == "" || !isDir(base) {
				return Source{}, fmt.Errorf("export: %s: base model %q (key base_model) is not a directory here; pass --base DIR", statePath, st.BaseModel)
			}
			return Source{BaseDir: base, WeightsDir: dir}, nil
		}
		if base != "" && !isDir(base) {
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
		if cfg.BaseModelNameOrPath == "" || !isDir(cfg.BaseModelNameOrPath) {
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
