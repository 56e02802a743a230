package llama

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"

	"github.com/llamatune/llamatune/checkpoint"
)

// A GGUF file (llama.cpp's format, general.architecture "llama") can stand
// in for an HF model directory wherever this package takes one: LoadConfig
// builds the Config from the llama.* keys, OpenChecked maps the tensors to
// their HF names (token_embd.weight → model.embed_tokens.weight, ...) with
// the rows of Q and K put back from ggml's interleaved RoPE layout, and F16,
// BF16, F32 and Q8_0 data are widened tensor by tensor as they are read.

// IsGGUF reports whether path names a GGUF file (by its .gguf extension)
// rather than an HF model directory.
func IsGGUF(path string) bool { return checkpoint.IsGGUF(path) }

// GGUFTensorName maps an HF parameter name to its llama.cpp name, or "" when
// llama.cpp has no such tensor (the inverse of what convert_hf_to_gguf.py
// does for Llama).
func GGUFTensorName(hf string) string {
	switch hf {
	case "model.embed_tokens.weight":
		return "token_embd.weight"
	case "model.norm.weight":
		return "output_norm.weight"
	case "lm_head.weight":
		return "output.weight"
	}
	rest, ok := strings.CutPrefix(hf, "model.layers.")
	if !ok {
		return ""
	}
	n, sub, ok := strings.Cut(rest, ".")
	if !ok {
		return ""
	}
	m := map[string]string{
		"self_attn.q_proj.weight":         "attn_q.weight",
		"self_attn.k_proj.weight":         "attn_k.weight",
		"self_attn.v_proj.weight":         "attn_v.weight",
		"self_attn.o_proj.weight":         "attn_output.weight",
		"mlp.gate_proj.weight":            "ffn_gate.weight",
		"mlp.up_proj.weight":              "ffn_up.weight",
		"mlp.down_proj.weight":            "ffn_down.weight",
		"input_layernorm.weight":          "attn_norm.weight",
		"post_attention_layernorm.weight": "ffn_norm.weight",
	}[sub]
	if m == "" {
		return ""
	}
	return "blk." + n + "." + m
}

// UnpermuteQKOrder is the row order (checkpoint.GGUFView.RowOrder) that
// takes a GGUF attn_q/attn_k weight of rows rows in heads heads back to HF's
// rotate-half layout: HF row h·hd + j·hd/2 + i is GGUF row h·hd + 2i + j
// (the inverse of convert_hf_to_gguf.py's permute).
func UnpermuteQKOrder(rows, heads int) []int {
	hd := rows / heads
	half := hd / 2
	order := make([]int, rows)
	for h := 0; h < heads; h++ {
		for i := 0; i < half; i++ {
			for j := 0; j < 2; j++ {
				order[h*hd+j*half+i] = h*hd + 2*i + j
			}
		}
	}
	return order
}

// ConfigFromGGUF builds the HF config of the Llama model in g from its
// llama.* keys (and rope_freqs.weight for Llama 3.1 rope scaling); whether
// the embeddings are tied is read from the presence of output.weight.
// Errors name the file and key.
func ConfigFromGGUF(g *checkpoint.GGUFFile) (Config, error) {
	path := g.Path()
	arch, _, err := g.String("general.architecture")
	if err != nil {
		return Config{}, err
	}
	if arch != "llama" {
		return Config{}, fmt.Errorf("%s: general.architecture is %q; llamatune trains Llama-architecture models (llama); use an HF directory of a Llama model", path, arch)
	}
	if n, ok, _ := g.Uint("llama.expert_count"); ok && n > 0 {
		return Config{}, fmt.Errorf("%s: llama.expert_count is %d: mixture-of-experts models are not supported", path, n)
	}
	c := Config{Architectures: []string{"LlamaForCausalLM"}, ModelType: "llama", HiddenAct: "silu",
		InitializerRange: 0.02, RMSNormEps: 1e-5, RopeTheta: 10000}
	var errs []string
	uint := func(key string, dst *int, required bool) {
		v, ok, err := g.Uint(key)
		switch {
		case err != nil:
			errs = append(errs, err.Error())
		case !ok && required:
			errs = append(errs, fmt.Sprintf("key %s is missing", key))
		case ok && v > math.MaxInt32:
			errs = append(errs, fmt.Sprintf("key %s is %d, implausibly large", key, v))
		case ok:
			*dst = int(v)
		}
	}
	float := func(key string, dst *float64) {
		v, ok, err := g.Float(key)
		if err != nil {
			errs = append(errs, err.Error())
		} else if ok {
			*dst = v
		}
	}
	uint("llama.block_count", &c.NumHiddenLayers, true)
	uint("llama.embedding_length", &c.HiddenSize, true)
	uint("llama.feed_forward_length", &c.IntermediateSize, true)
	uint("llama.attention.head_count", &c.NumAttentionHeads, true)
	uint("llama.context_length", &c.MaxPositionEmbeddings, false)
	c.NumKeyValueHeads = c.NumAttentionHeads
	uint("llama.attention.head_count_kv", &c.NumKeyValueHeads, false)
	uint("llama.attention.key_length", &c.HeadDim, false)
	float("llama.attention.layer_norm_rms_epsilon", &c.RMSNormEps)
	float("llama.rope.freq_base", &c.RopeTheta)
	if emb, ok := g.Tensor("token_embd.weight"); ok && len(emb.Shape) == 2 {
		c.VocabSize = emb.Shape[0]
	} else {
		errs = append(errs, "tensor token_embd.weight is missing or not a matrix")
	}
	if len(errs) > 0 {
		return Config{}, fmt.Errorf("%s: %s", path, strings.Join(errs, "; "))
	}
	if c.HeadDim > 0 && c.NumAttentionHeads > 0 && c.HeadDim == c.HiddenSize/c.NumAttentionHeads {
		c.HeadDim = 0 // written only when it differs, as HF configs do
	}
	if vl, ok, _ := g.Uint("llama.attention.value_length"); ok && int(vl) != c.HeadDimension() {
		return Config{}, fmt.Errorf("%s: llama.attention.value_length %d differs from the key length %d; Llama attention has one head size", path, vl, c.HeadDimension())
	}
	if rd, ok, _ := g.Uint("llama.rope.dimension_count"); ok && int(rd) != c.HeadDimension() {
		return Config{}, fmt.Errorf("%s: llama.rope.dimension_count %d differs from the head size %d; partial rotary embeddings are not supported", path, rd, c.HeadDimension())
	}
	if _, ok := g.Tensor("output.weight"); !ok {
		c.TieWordEmbeddings = true
	}
	if typ, ok, _ := g.String("llama.rope.scaling.type"); ok && typ != "none" {
		if typ != "linear" {
			return Config{}, fmt.Errorf("%s: llama.rope.scaling.type %q is not supported (linear, or Llama 3.1's rope_freqs.weight)", path, typ)
		}
		f, _, err := g.Float("llama.rope.scaling.factor")
		if err != nil {
			return Config{}, err
		}
		if f != 1 {
			c.RopeScaling = &RopeScaling{RopeType: "linear", Factor: f}
		}
	}
	if _, ok := g.Tensor("rope_freqs.weight"); ok {
		if c.RopeScaling != nil {
			return Config{}, fmt.Errorf("%s: both llama.rope.scaling.type and rope_freqs.weight are set; the file is inconsistent", path)
		}
		rs, err := llama3ScalingFromGGUF(g, c)
		if err != nil {
			return Config{}, err
		}
		c.RopeScaling = rs
	}
	for _, s := range []struct {
		key string
		dst *json.RawMessage
	}{{"tokenizer.ggml.bos_token_id", &c.BosTokenID}, {"tokenizer.ggml.eos_token_id", &c.EosTokenID}} {
		if id, ok, _ := g.Uint(s.key); ok {
			*s.dst = json.RawMessage(fmt.Sprint(id))
		}
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// llama3ScalingFromGGUF recovers rope_scaling llama3 from rope_freqs.weight
// (one factor per frequency: 1 for high frequencies, factor for low ones, a
// blend between). Every Llama 3.x uses low_freq_factor 1 and
// high_freq_factor 4; original_max_position_embeddings is solved from a
// blended frequency (or chosen between the bands when none is blended),
// and the result is checked against every factor.
func llama3ScalingFromGGUF(g *checkpoint.GGUFFile, c Config) (*RopeScaling, error) {
	path := g.Path()
	t, _ := g.Tensor("rope_freqs.weight")
	hd := c.HeadDimension()
	if t.Type != checkpoint.GGMLTypeF32 || len(t.Shape) != 1 || t.Shape[0] != hd/2 {
		return nil, fmt.Errorf("%s: rope_freqs.weight is %v %v, want F32 [%d]", path, t.Type, t.Shape, hd/2)
	}
	raw, err := g.Raw("rope_freqs.weight")
	if err != nil {
		return nil, err
	}
	ff := make([]float64, hd/2)
	for i := range ff {
		ff[i] = float64(math.Float32frombits(uint32(raw[4*i]) | uint32(raw[4*i+1])<<8 | uint32(raw[4*i+2])<<16 | uint32(raw[4*i+3])<<24))
	}
	factor := 1.0
	for _, f := range ff {
		factor = max(factor, f)
	}
	const lo, hi = 1.0, 4.0
	wavelen := func(i int) float64 { return 2 * math.Pi * math.Pow(c.RopeTheta, float64(2*i)/float64(hd)) }
	old := 0.0
	maxHigh, minLow := 0.0, math.Inf(1)
	for i, f := range ff {
		switch {
		case math.Abs(f-1) < 1e-6:
			maxHigh = max(maxHigh, wavelen(i))
		case math.Abs(f-factor) < 1e-6*factor:
			minLow = min(minLow, wavelen(i))
		case old == 0:
			s := (1/f - 1/factor) / (1 - 1/factor)
			old = wavelen(i) * (s*(hi-lo) + lo)
		}
	}
	if old == 0 { // no blended frequency: any old with old/hi > maxHigh and old/lo < minLow
		old = math.Ceil(maxHigh * hi * 1.0001)
		if math.IsInf(minLow, 1) {
			old = max(old, 8192)
		}
	}
	if r := math.Round(old); math.Abs(r-old) < 1e-3*old {
		old = r
	}
	rs := &RopeScaling{RopeType: "llama3", Factor: factor, LowFreqFactor: lo, HighFreqFactor: hi, OriginalMaxPositionEmbeddings: int(math.Round(old))}
	plain := c
	plain.RopeScaling = nil
	scaled := c
	scaled.RopeScaling = rs
	base, got := plain.InvFreq(), scaled.InvFreq()
	for i, f := range ff {
		if want := float64(base[i]) / f; math.Abs(float64(got[i])-want) > 1e-5*want {
			return nil, fmt.Errorf("%s: rope_freqs.weight[%d] = %g does not fit Llama 3 rope scaling (low_freq_factor 1, high_freq_factor 4); use the HF model directory", path, i, f)
		}
	}
	return rs, nil
}

// openGGUF is OpenChecked for a GGUF file.
func openGGUF(path string) (Config, *checkpoint.Reader, []string, map[string][]int, error) {
	g, err := checkpoint.OpenGGUF(path)
	if err != nil {
		return Config{}, nil, nil, nil, err
	}
	defer g.Close() // a no-op once the Reader has the mapping
	cfg, err := ConfigFromGGUF(g)
	if err != nil {
		return cfg, nil, nil, nil, err
	}
	if n := len(g.Tensors()); cfg.NumHiddenLayers > n/9 {
		return cfg, nil, nil, nil, fmt.Errorf("%s: llama.block_count is %d, but the file has %d tensors (a layer has 9); the file is corrupt or incomplete", path, cfg.NumHiddenLayers, n)
	}
	names, shapes := ParamShapes(cfg)
	views := make([]checkpoint.GGUFView, len(names))
	for i, n := range names {
		v := checkpoint.GGUFView{Name: n, Tensor: GGUFTensorName(n)}
		// Shapes first: a corrupt file's config must not size anything.
		t, ok := g.Tensor(v.Tensor)
		if ok && !slices.Equal(t.Shape, shapes[n]) {
			return cfg, nil, nil, nil, fmt.Errorf("%s: tensor %s (%s) has shape %v, want %v from the llama.* keys; the file is inconsistent", path, v.Tensor, n, t.Shape, shapes[n])
		}
		if !ok && (strings.HasSuffix(n, "self_attn.q_proj.weight") || strings.HasSuffix(n, "self_attn.k_proj.weight")) {
			return cfg, nil, nil, nil, fmt.Errorf("%s: tensor %s (%s) is missing; the file is corrupt or not a llama model", path, v.Tensor, n)
		}
		switch {
		case strings.HasSuffix(n, "self_attn.q_proj.weight"):
			v.RowOrder = UnpermuteQKOrder(shapes[n][0], cfg.NumAttentionHeads)
		case strings.HasSuffix(n, "self_attn.k_proj.weight"):
			v.RowOrder = UnpermuteQKOrder(shapes[n][0], cfg.NumKeyValueHeads)
		}
		views[i] = v
	}
	r, err := g.Reader(views)
	if err != nil {
		return cfg, nil, nil, nil, err
	}
	for _, n := range names {
		if err := r.Expect(n, shapes[n]); err != nil {
			r.Close()
			return cfg, nil, nil, nil, fmt.Errorf("%w (GGUF tensor %s; config from the llama.* keys of %s)", err, GGUFTensorName(n), path)
		}
	}
	return cfg, r, names, shapes, nil
}

// loadGGUFConfig is LoadConfig for a GGUF file.
func loadGGUFConfig(path string) (Config, error) {
	g, err := checkpoint.OpenGGUF(path)
	if err != nil {
		return Config{}, fmt.Errorf("reading model config: %w", err)
	}
	defer g.Close()
	return ConfigFromGGUF(g)
}

// ggufFingerprint hashes the file's size and everything before its tensor
// data (metadata and tensor infos).
func ggufFingerprint(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	g, err := checkpoint.OpenGGUF(path)
	if err != nil {
		return "", err
	}
	head := g.DataOffset()
	g.Close()
	h := sha256.New()
	fmt.Fprintf(h, "gguf:%d\n", st.Size())
	buf := make([]byte, 1<<20)
	for off := int64(0); off < head; {
		n, err := f.ReadAt(buf[:min(int64(len(buf)), head-off)], off)
		h.Write(buf[:n])
		off += int64(n)
		if err != nil && off < head {
			return "", fmt.Errorf("reading %s: %w", path, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}
