package export

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/model/llama"
)

// GGUFLoRA writes the LoRA adapter of src as one GGUF v3 adapter file, the
// file llama.cpp loads with --lora on top of the base model's GGUF (from
// --format gguf of the base, or llama.cpp's convert_hf_to_gguf.py), so the
// adapter runs without merging. It mirrors llama.cpp's
// convert_lora_to_gguf.py:
//
//   - metadata: general.architecture "llama", general.type "adapter",
//     adapter.type "lora" and adapter.lora.alpha (float32);
//   - tensors: for each adapted weight W (llama.GGUFTensorName: blk.N.attn_q.weight
//     ..., output.weight) a pair W.lora_a = PEFT lora_A [r, in] and W.lora_b =
//     PEFT lora_B [out, r], so that in ggml's order (ne) lora_a is [in, r] and
//     lora_b is [r, out]: llama.cpp checks a.ne[0] == W.ne[0], b.ne[1] ==
//     W.ne[1] and a.ne[1] == b.ne[0];
//   - for q_proj and k_proj the rows of lora_b are permuted as the base
//     weight's rows are (PermuteQK), and lora_a is left as it is: B·A then
//     has its rows permuted exactly like W.
//
// llama.cpp scales B·A by adapter.lora.alpha / r (r = lora_b's ne[0]), so
// alpha is written as scaling·r: lora_alpha for plain LoRA, lora_alpha·√r
// for rsLoRA (whose scaling is lora_alpha/√r).
//
// typ is F32 (default, as convert_lora_to_gguf.py), F16 or BF16, for every
// tensor. Only a LoRA source exports this way. An adapter on lm_head of a
// model with tied embeddings is refused: the base GGUF of such a model has
// no output.weight for llama.cpp to attach it to (export the merged model
// with --format gguf instead). The file is written atomically (temporary
// file, rename), one tensor at a time.
func GGUFLoRA(src Source, outPath string, typ string) error {
	if src.AdapterDir == "" {
		return errors.New("export: gguf-lora writes a LoRA adapter, but this source is full fine-tuned weights; export them with --format gguf (one merged GGUF) or --format hf")
	}
	if typ == "" {
		typ = "F32"
	}
	gt, err := checkpoint.ParseGGMLType(typ)
	if err != nil || (gt != checkpoint.GGMLTypeF32 && gt != checkpoint.GGMLTypeF16 && gt != checkpoint.GGMLTypeBF16) {
		return fmt.Errorf("export: --dtype %q is not a type for GGUF LoRA adapter tensors; use F32 (default), F16 or BF16", typ)
	}
	for _, d := range []string{src.BaseDir, src.AdapterDir} {
		if sameDir(d, outPath) {
			return fmt.Errorf("export: GGUF output %s is a source directory; --out takes a file path such as adapter.gguf", outPath)
		}
	}
	if isDir(outPath) {
		return fmt.Errorf("export: GGUF output %s is a directory; --out takes a file path such as %s", outPath, filepath.Join(outPath, "adapter.gguf"))
	}
	// openWeights checks the adapter against the base model (modules, shapes,
	// dtypes) with the errors every other export gives.
	w, err := openWeights(src)
	if err != nil {
		return err
	}
	defer w.Close()
	cfg := *w.dirs.Adapter
	if cfg.UseDoRA {
		return fmt.Errorf("export: %s is a DoRA adapter (use_dora true); llama.cpp's LoRA adapters have no DoRA magnitude, so it cannot be written as gguf-lora: export the merged model with --format gguf (or hf) instead", src.AdapterDir)
	}
	var tensors []checkpoint.GGUFTensor
	for _, name := range w.names {
		s := w.srcs[name]
		u := s.lora
		if u == nil || u.r == nil {
			continue // not adapted, or adapted by pattern with B = 0: no update
		}
		if name == "lm_head.weight" && s.key != name {
			return fmt.Errorf("export: %s adapts lm_head, but the base model %s ties lm_head to the embeddings (no lm_head.weight): its GGUF has no output.weight for llama.cpp to attach the adapter to; export the merged model with --format gguf instead", src.AdapterDir, src.BaseDir)
		}
		gname := llama.GGUFTensorName(name)
		if gname == "" {
			return fmt.Errorf("export: %s: module %s has no llama.cpp tensor name", src.AdapterDir, strings.TrimSuffix(name, ".weight"))
		}
		var heads int
		switch {
		case strings.HasSuffix(name, "self_attn.q_proj.weight"):
			heads = w.cfg.NumAttentionHeads
		case strings.HasSuffix(name, "self_attn.k_proj.weight"):
			heads = w.cfg.NumKeyValueHeads
		}
		shape := w.shapes[name] // [out, in]
		r, aKey, bKey := u.r, u.aKey, u.bKey
		tensors = append(tensors,
			checkpoint.GGUFTensor{Name: gname + ".lora_a", Shape: []int{u.rank, shape[1]}, Type: gt,
				Encode: func() ([]byte, error) { return encodeLoRA(r, aKey, gname+".lora_a", gt, 0) }},
			checkpoint.GGUFTensor{Name: gname + ".lora_b", Shape: []int{shape[0], u.rank}, Type: gt,
				Encode: func() ([]byte, error) { return encodeLoRA(r, bKey, gname+".lora_b", gt, heads) }})
	}
	if len(tensors) == 0 {
		return fmt.Errorf("export: %s holds no LoRA tensors to export", src.AdapterDir)
	}
	kvs := []checkpoint.GGUFKV{
		{Key: "general.architecture", Value: "llama"},
		{Key: "general.type", Value: "adapter"},
		{Key: "general.name", Value: adapterName(src.AdapterDir)},
		{Key: "general.file_type", Value: ggufFileTypes[gt]},
		{Key: "general.quantization_version", Value: uint32(ggmlQuantVersion)},
		{Key: "adapter.type", Value: "lora"},
		{Key: "adapter.lora.alpha", Value: float32(cfg.Scaling() * float64(cfg.R))},
	}
	return checkpoint.WriteGGUF(outPath, kvs, tensors)
}

// encodeLoRA reads the adapter tensor key of r as float32 and encodes it as
// t, its rows permuted for ggml's RoPE (PermuteQK) when heads > 0.
func encodeLoRA(r *checkpoint.Reader, key, name string, t checkpoint.GGMLType, heads int) ([]byte, error) {
	if err := checkFailHook(name); err != nil {
		return nil, err
	}
	v, err := r.F32(key)
	if err != nil {
		return nil, err
	}
	info, _ := r.Info(key)
	cols := info.Shape[len(info.Shape)-1]
	if heads > 0 {
		v = PermuteQK(v, heads, cols)
	}
	return checkpoint.EncodeGGUFData(v, t, cols)
}

var runSubdirRE = regexp.MustCompile(`^(step-[0-9]+|checkpoints)$`)

// adapterName is general.name: the adapter directory's name, or the run's
// for a run's checkpoints/step-N/.
func adapterName(dir string) string {
	d := filepath.Clean(dir)
	if abs, err := filepath.Abs(d); err == nil {
		d = abs
	}
	for runSubdirRE.MatchString(filepath.Base(d)) && filepath.Dir(d) != d {
		d = filepath.Dir(d)
	}
	return filepath.Base(d)
}
