package export

// The in-memory export as it was before exports streamed (llama.Load of the
// whole model, lora.Attach + lora.Set.Merge, llama.Model.Save, GGUFTensors
// over the loaded model), kept verbatim as the reference the streaming
// export must match byte for byte (stream_test.go).

import (
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
)

// openInMemory is the old Open.
func openInMemory(src Source) (*llama.Model, Dirs, error) {
	if err := src.validate(); err != nil {
		return nil, Dirs{}, err
	}
	be := cpu.New()
	d := Dirs{ConfigDir: src.BaseDir}
	overlay := ""
	if src.WeightsDir != "" {
		if isFile(filepath.Join(src.WeightsDir, "config.json")) && hasWeights(src.WeightsDir) {
			d.ConfigDir = src.WeightsDir
		} else if p := filepath.Join(src.WeightsDir, checkpoint.TrainableFile); isFile(p) {
			if src.BaseDir == "" || sameDir(src.BaseDir, src.WeightsDir) {
				return nil, Dirs{}, fmt.Errorf("export: %s holds only the trained tensors (%s); the base model is needed too (pass --base DIR)", src.WeightsDir, checkpoint.TrainableFile)
			}
			overlay = p
		} else {
			return nil, Dirs{}, fmt.Errorf("export: %s has neither config.json + model.safetensors nor %s; it holds no weights to export", src.WeightsDir, checkpoint.TrainableFile)
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
		if err := overlayTrainableInMemory(m, overlay); err != nil {
			return nil, Dirs{}, err
		}
	}
	if src.AdapterDir == "" {
		return m, d, nil
	}
	cfg, err := mergeAdapterInMemory(m, src.AdapterDir)
	if err != nil {
		return nil, Dirs{}, err
	}
	d.Adapter = &cfg
	return m, d, nil
}

func overlayTrainableInMemory(m *llama.Model, path string) error {
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

var layerREInMemory = regexp.MustCompile(`^model\.layers\.([0-9]+)\.`)

func mergeAdapterInMemory(m *llama.Model, dir string) (checkpoint.AdapterConfig, error) {
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
		if mm := layerREInMemory.FindStringSubmatch(p.Module); mm != nil {
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

// hfInMemory is the old HF.
func hfInMemory(src Source, outDir string, dtype string, maxShardBytes int64) error {
	if dtype == "" {
		dtype = "BF16"
	}
	if _, ok := torchDTypes[dtype]; !ok {
		return fmt.Errorf("export: HF weights dtype %q is not one of F32, BF16, F16", dtype)
	}
	if err := src.overlaps(outDir); err != nil {
		return err
	}
	m, dirs, err := openInMemory(src)
	if err != nil {
		return err
	}
	if dirs.TokenizerDir == "" {
		return fmt.Errorf("export: no tokenizer.json or tokenizer.model in %s; the exported model would not load with AutoTokenizer (copy the base model's tokenizer files there)", describeDirs(src))
	}
	if err := m.Save(outDir, llama.SaveOptions{DType: dtype, MaxShardBytes: maxShardBytes}); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := writeConfig(dirs.ConfigDir, outDir, m.Config, torchDTypes[dtype]); err != nil {
		return err
	}
	if err := copyAux(src, dirs, outDir, m.Config); err != nil {
		return err
	}
	return nil
}

// ggufInMemory is the old GGUF.
func ggufInMemory(src Source, outPath string, typ string) error {
	if typ == "" {
		typ = "F16"
	}
	gt, err := checkpoint.ParseGGMLType(typ)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	for _, d := range []string{src.BaseDir, src.AdapterDir, src.WeightsDir} {
		if sameDir(d, outPath) {
			return fmt.Errorf("export: GGUF output %s is a source directory; --out takes a file path such as model.gguf", outPath)
		}
	}
	if isDir(outPath) {
		return fmt.Errorf("export: GGUF output %s is a directory; --out takes a file path such as %s", outPath, filepath.Join(outPath, "model.gguf"))
	}
	m, dirs, err := openInMemory(src)
	if err != nil {
		return err
	}
	if dirs.TokenizerDir == "" {
		return fmt.Errorf("export: no tokenizer.json or tokenizer.model in %s; GGUF files carry the tokenizer, copy the base model's tokenizer files there", describeDirs(src))
	}
	vocab, err := tokenizer.ExportVocab(dirs.TokenizerDir, m.Config.VocabSize)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	name := filepath.Base(filepath.Clean(src.BaseDir))
	if src.WeightsDir != "" && src.WeightsDir != src.BaseDir {
		name = filepath.Base(filepath.Clean(src.WeightsDir))
	}
	kvs := GGUFMetadata(m.Config, vocab, name, gt)
	tensors := GGUFTensors(m, gt)
	return checkpoint.WriteGGUF(outPath, kvs, tensors)
}
