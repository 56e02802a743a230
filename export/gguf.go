package export

import (
	"fmt"
	"math"
	"path/filepath"
	"strings"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/model/llama"
)

// llama.cpp's LlamaFileType (general.file_type) for the types GGUF writes.
var ggufFileTypes = map[checkpoint.GGMLType]uint32{
	checkpoint.GGMLTypeF32:  0,  // ALL_F32
	checkpoint.GGMLTypeF16:  1,  // MOSTLY_F16
	checkpoint.GGMLTypeQ8_0: 7,  // MOSTLY_Q8_0
	checkpoint.GGMLTypeBF16: 32, // MOSTLY_BF16
}

// ggmlQuantVersion is general.quantization_version (GGML_QNT_VERSION).
const ggmlQuantVersion = 2

// GGUF writes the merged weights as one GGUF v3 file for llama.cpp and
// Ollama, mirroring convert_hf_to_gguf.py's LlamaModel: general.* and llama.*
// hyper-parameters, the tokenizer as tokenizer.ggml.*, tensors renamed
// (token_embd, blk.N.attn_q, ..., output_norm, output), the rows of Q and K
// permuted from HF's rotate-half layout to ggml's interleaved RoPE layout,
// and for rope_scaling llama3 the rope_freqs.weight factors tensor.
//
// typ is F32, F16, BF16 or Q8_0. Norm weights and other 1-D tensors stay
// F32; with Q8_0 a matrix whose row length is not a multiple of 32 falls back
// to F16, as llama.cpp does.
func GGUF(src Source, outPath string, typ string) error {
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
	w, err := openWeights(src)
	if err != nil {
		return err
	}
	defer w.Close()
	if w.dirs.TokenizerDir == "" {
		return fmt.Errorf("export: no tokenizer.json or tokenizer.model in %s; GGUF files carry the tokenizer, copy the base model's tokenizer files there", describeDirs(src))
	}
	vocab, err := tokenizer.ExportVocab(w.dirs.TokenizerDir, w.cfg.VocabSize)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	name := filepath.Base(filepath.Clean(src.BaseDir))
	if src.WeightsDir != "" && src.WeightsDir != src.BaseDir {
		name = filepath.Base(filepath.Clean(src.WeightsDir))
	}
	kvs := GGUFMetadata(w.cfg, vocab, name, gt)
	// Each tensor is read, merged and encoded when the writer reaches it.
	tensors := ggufTensors(w.cfg, gt, func(hf string) []int { return w.shapes[hf] },
		func(hf string, t checkpoint.GGMLType, heads, cols int) ([]byte, error) {
			return w.encode(hf, ggufEncoding(t, cols), heads)
		})
	return checkpoint.WriteGGUF(outPath, kvs, tensors)
}

// GGUFMetadata returns the metadata convert_hf_to_gguf.py writes for a Llama
// model with this config and vocabulary.
func GGUFMetadata(c llama.Config, v *tokenizer.Vocab, name string, ftype checkpoint.GGMLType) []checkpoint.GGUFKV {
	u32 := func(n int) uint32 { return uint32(n) }
	kv := []checkpoint.GGUFKV{
		{Key: "general.architecture", Value: "llama"},
		{Key: "general.type", Value: "model"},
		{Key: "general.name", Value: name},
		{Key: "general.file_type", Value: ggufFileTypes[ftype]},
		{Key: "general.quantization_version", Value: uint32(ggmlQuantVersion)},
		{Key: "llama.vocab_size", Value: u32(c.VocabSize)},
		{Key: "llama.context_length", Value: u32(c.MaxPositionEmbeddings)},
		{Key: "llama.embedding_length", Value: u32(c.HiddenSize)},
		{Key: "llama.block_count", Value: u32(c.NumHiddenLayers)},
		{Key: "llama.feed_forward_length", Value: u32(c.IntermediateSize)},
		{Key: "llama.rope.dimension_count", Value: u32(c.HeadDimension())},
		{Key: "llama.attention.head_count", Value: u32(c.NumAttentionHeads)},
		{Key: "llama.attention.head_count_kv", Value: u32(c.NumKeyValueHeads)},
		{Key: "llama.attention.layer_norm_rms_epsilon", Value: float32(c.RMSNormEps)},
		{Key: "llama.rope.freq_base", Value: float32(c.RopeTheta)},
	}
	if c.HeadDim > 0 {
		kv = append(kv,
			checkpoint.GGUFKV{Key: "llama.attention.key_length", Value: u32(c.HeadDim)},
			checkpoint.GGUFKV{Key: "llama.attention.value_length", Value: u32(c.HeadDim)})
	}
	if rs := c.RopeScaling; rs != nil && rs.Kind() == "linear" {
		kv = append(kv,
			checkpoint.GGUFKV{Key: "llama.rope.scaling.type", Value: "linear"},
			checkpoint.GGUFKV{Key: "llama.rope.scaling.factor", Value: float32(rs.Factor)})
	}
	// rope_type llama3 is carried by the rope_freqs.weight tensor (GGUFTensors).
	if v == nil {
		return kv
	}
	return append(kv, v.GGUFKVs()...)
}

// PermuteQK reorders the rows of an HF q_proj/k_proj weight [heads·hd, cols]
// from the rotate-half RoPE layout (per head: first all real parts, then all
// imaginary parts) to the interleaved layout ggml's RoPE uses (pairs next to
// each other): new row h·hd + 2i + j = old row h·hd + j·hd/2 + i. This is
// convert_hf_to_gguf.py's LlamaModel.permute (reshape [h, 2, hd/2, cols],
// swap axes 1 and 2).
func PermuteQK(w []float32, heads, cols int) []float32 {
	out := make([]float32, len(w))
	permuteQKInto(out, w, heads, cols)
	return out
}

// permuteQKInto is PermuteQK writing into out (len(w) values).
func permuteQKInto(out, w []float32, heads, cols int) {
	rows := len(w) / cols
	hd := rows / heads
	half := hd / 2
	for h := 0; h < heads; h++ {
		for i := 0; i < half; i++ {
			for j := 0; j < 2; j++ {
				dst := h*hd + 2*i + j
				src := h*hd + j*half + i
				copy(out[dst*cols:(dst+1)*cols], w[src*cols:(src+1)*cols])
			}
		}
	}
}

// UnpermuteQK inverts PermuteQK.
func UnpermuteQK(w []float32, heads, cols int) []float32 {
	rows := len(w) / cols
	hd := rows / heads
	half := hd / 2
	out := make([]float32, len(w))
	for h := 0; h < heads; h++ {
		for i := 0; i < half; i++ {
			for j := 0; j < 2; j++ {
				src := h*hd + 2*i + j
				dst := h*hd + j*half + i
				copy(out[dst*cols:(dst+1)*cols], w[src*cols:(src+1)*cols])
			}
		}
	}
	return out
}

// RopeFreqFactors returns llama.cpp's rope_freqs.weight for rope_scaling
// llama3 (one factor per frequency: 1 for high frequencies, factor for low
// ones, a smooth blend between), or nil for any other scaling.
func RopeFreqFactors(c llama.Config) []float32 {
	rs := c.RopeScaling
	if rs == nil || rs.Kind() != "llama3" {
		return nil
	}
	dim := c.HeadDimension()
	factor, lo, hi := rs.Factor, rs.LowFreqFactor, rs.HighFreqFactor
	old := float64(rs.OriginalMaxPositionEmbeddings)
	if old == 0 {
		old = 8192
	}
	lowWavelen, highWavelen := old/lo, old/hi
	out := make([]float32, dim/2)
	for i := range out {
		// as torch: base ** (arange(0, dim, 2, float32) / dim) in float32
		freq := float32(1 / math.Pow(c.RopeTheta, float64(float32(2*i)/float32(dim))))
		wavelen := 2 * math.Pi / float64(freq)
		switch {
		case wavelen < highWavelen:
			out[i] = 1
		case wavelen > lowWavelen:
			out[i] = float32(factor)
		default:
			smooth := (old/wavelen - lo) / (hi - lo)
			out[i] = float32(1 / ((1-smooth)/factor + smooth))
		}
	}
	return out
}

// GGUFTensors lists the model's tensors in llama.cpp naming, each encoded
// lazily (on write) as typ, or F32 for 1-D tensors and F16 where Q8_0 does not
// fit the row length.
func GGUFTensors(m *llama.Model, typ checkpoint.GGMLType) []checkpoint.GGUFTensor {
	return ggufTensors(m.Config, typ, func(hf string) []int { return m.Param(hf).Shape },
		func(hf string, t checkpoint.GGMLType, heads, cols int) ([]byte, error) {
			v := m.Param(hf).F32()
			if heads > 0 {
				v = PermuteQK(v, heads, cols)
			}
			return checkpoint.EncodeGGUFData(v, t, cols)
		})
}

// ggufTensors lists the tensors of a model with config c as GGUFTensors
// does; shape gives an HF tensor's shape and encode its bytes as type t with
// cols values per row, the rows of each of heads heads permuted (PermuteQK)
// when heads > 0.
func ggufTensors(c llama.Config, typ checkpoint.GGMLType, shapeOf func(hf string) []int,
	encode func(hf string, t checkpoint.GGMLType, heads, cols int) ([]byte, error)) []checkpoint.GGUFTensor {
	var out []checkpoint.GGUFTensor
	add := func(hf string) {
		shape := append([]int(nil), shapeOf(hf)...)
		t := typ
		cols := shape[len(shape)-1]
		if len(shape) < 2 {
			t = checkpoint.GGMLTypeF32
		} else if t == checkpoint.GGMLTypeQ8_0 && cols%checkpoint.Q8_0BlockSize != 0 {
			t = checkpoint.GGMLTypeF16
		}
		var heads int
		switch {
		case strings.HasSuffix(hf, "self_attn.q_proj.weight"):
			heads = c.NumAttentionHeads
		case strings.HasSuffix(hf, "self_attn.k_proj.weight"):
			heads = c.NumKeyValueHeads
		}
		out = append(out, checkpoint.GGUFTensor{
			Name: llama.GGUFTensorName(hf), Shape: shape, Type: t,
			Encode: func() ([]byte, error) { return encode(hf, t, heads, cols) },
		})
	}
	add("model.embed_tokens.weight")
	if f := RopeFreqFactors(c); f != nil {
		out = append(out, checkpoint.GGUFTensor{Name: "rope_freqs.weight", Shape: []int{len(f)},
			Type: checkpoint.GGMLTypeF32, Data: checkpoint.EncodeF32(f)})
	}
	for i := 0; i < c.NumHiddenLayers; i++ {
		for _, s := range []string{"input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
			"self_attn.o_proj", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"} {
			add(fmt.Sprintf("model.layers.%d.%s.weight", i, s))
		}
	}
	add("model.norm.weight")
	if !c.TieWordEmbeddings {
		add("lm_head.weight")
	}
	return out
}
