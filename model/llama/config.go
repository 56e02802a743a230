// Package llama is the Llama-architecture causal LM (Llama 2, 3, 3.1, 3.2 and
// look-alikes): HF config.json, parameters named exactly as HF keys, forward to
// logits and loss on the tape, and KV-cache generation.
package llama

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// RopeScaling is config.json's rope_scaling.
type RopeScaling struct {
	RopeType                      string  `json:"rope_type,omitempty"`
	Type                          string  `json:"type,omitempty"` // older key for the same thing
	Factor                        float64 `json:"factor"`
	LowFreqFactor                 float64 `json:"low_freq_factor,omitempty"`
	HighFreqFactor                float64 `json:"high_freq_factor,omitempty"`
	OriginalMaxPositionEmbeddings int     `json:"original_max_position_embeddings,omitempty"`
}

// Kind is rope_type, or the legacy type.
func (r *RopeScaling) Kind() string {
	if r.RopeType != "" {
		return r.RopeType
	}
	return r.Type
}

// Config is the subset of HF LlamaConfig that defines the computation.
type Config struct {
	Architectures         []string        `json:"architectures,omitempty"`
	ModelType             string          `json:"model_type"`
	VocabSize             int             `json:"vocab_size"`
	HiddenSize            int             `json:"hidden_size"`
	IntermediateSize      int             `json:"intermediate_size"`
	NumHiddenLayers       int             `json:"num_hidden_layers"`
	NumAttentionHeads     int             `json:"num_attention_heads"`
	NumKeyValueHeads      int             `json:"num_key_value_heads"`
	HeadDim               int             `json:"head_dim,omitempty"`
	MaxPositionEmbeddings int             `json:"max_position_embeddings"`
	RMSNormEps            float64         `json:"rms_norm_eps"`
	RopeTheta             float64         `json:"rope_theta"`
	RopeScaling           *RopeScaling    `json:"rope_scaling"`
	TieWordEmbeddings     bool            `json:"tie_word_embeddings"`
	HiddenAct             string          `json:"hidden_act"`
	AttentionBias         bool            `json:"attention_bias"`
	MLPBias               bool            `json:"mlp_bias"`
	InitializerRange      float64         `json:"initializer_range"`
	BosTokenID            json.RawMessage `json:"bos_token_id,omitempty"`
	EosTokenID            json.RawMessage `json:"eos_token_id,omitempty"`
	TorchDtype            string          `json:"torch_dtype,omitempty"`
}

// LoadConfig reads dir/config.json (or a path to the file itself), or the
// config of a GGUF file (a path ending in .gguf, see ConfigFromGGUF).
func LoadConfig(path string) (Config, error) {
	if IsGGUF(path) {
		return loadGGUFConfig(path)
	}
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, "config.json")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("reading model config: %w (a model directory needs the HF config.json)", err)
	}
	var c Config
	// Defaults as in transformers' LlamaConfig.
	c.RMSNormEps, c.RopeTheta, c.HiddenAct, c.InitializerRange = 1e-6, 10000, "silu", 0.02
	if err := json.Unmarshal(raw, &c); err != nil {
		return Config{}, fmt.Errorf("%s: invalid JSON: %v", path, err)
	}
	if c.NumKeyValueHeads == 0 {
		c.NumKeyValueHeads = c.NumAttentionHeads
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Validate checks that the config describes a model this package can run.
func (c Config) Validate() error {
	var errs []string
	bad := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }
	if c.ModelType != "" && c.ModelType != "llama" {
		bad("model_type %q is not llama", c.ModelType)
	}
	for k, v := range map[string]int{"vocab_size": c.VocabSize, "hidden_size": c.HiddenSize,
		"intermediate_size": c.IntermediateSize, "num_hidden_layers": c.NumHiddenLayers,
		"num_attention_heads": c.NumAttentionHeads, "num_key_value_heads": c.NumKeyValueHeads} {
		if v <= 0 {
			bad("%s must be > 0 (is %d)", k, v)
		}
	}
	if c.NumAttentionHeads > 0 && c.NumKeyValueHeads > 0 && c.NumAttentionHeads%c.NumKeyValueHeads != 0 {
		bad("num_attention_heads %d is not a multiple of num_key_value_heads %d", c.NumAttentionHeads, c.NumKeyValueHeads)
	}
	if c.HeadDim == 0 && c.NumAttentionHeads > 0 && c.HiddenSize%c.NumAttentionHeads != 0 {
		bad("hidden_size %d is not a multiple of num_attention_heads %d", c.HiddenSize, c.NumAttentionHeads)
	}
	if c.HeadDimension()%2 != 0 {
		bad("head dim %d must be even for RoPE", c.HeadDimension())
	}
	if c.HiddenAct != "silu" {
		bad("hidden_act %q is not supported (only silu)", c.HiddenAct)
	}
	if c.AttentionBias || c.MLPBias {
		bad("attention_bias/mlp_bias are not supported")
	}
	if c.RMSNormEps <= 0 || c.RopeTheta <= 0 {
		bad("rms_norm_eps and rope_theta must be > 0")
	}
	if rs := c.RopeScaling; rs != nil {
		switch rs.Kind() {
		case "llama3":
			if rs.Factor <= 0 || rs.LowFreqFactor <= 0 || rs.HighFreqFactor <= rs.LowFreqFactor || rs.OriginalMaxPositionEmbeddings <= 0 {
				bad("rope_scaling llama3 needs factor, low_freq_factor < high_freq_factor and original_max_position_embeddings")
			}
		case "linear":
			if rs.Factor <= 0 {
				bad("rope_scaling linear needs factor > 0")
			}
		case "default", "":
		default:
			bad("rope_scaling type %q is not supported (llama3, linear, default)", rs.Kind())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("unsupported config: %s", strings.Join(errs, "; "))
	}
	return nil
}

// HeadDimension is head_dim, or hidden_size/num_attention_heads.
func (c Config) HeadDimension() int {
	if c.HeadDim > 0 {
		return c.HeadDim
	}
	if c.NumAttentionHeads == 0 {
		return 0
	}
	return c.HiddenSize / c.NumAttentionHeads
}

// EOSIDs returns eos_token_id as a list (Llama 3.1 gives several).
func (c Config) EOSIDs() []int { return intList(c.EosTokenID) }

// BOSID returns bos_token_id, or -1.
func (c Config) BOSID() int {
	if l := intList(c.BosTokenID); len(l) > 0 {
		return l[0]
	}
	return -1
}

func intList(raw json.RawMessage) []int {
	var one int
	if json.Unmarshal(raw, &one) == nil && len(raw) > 0 {
		return []int{one}
	}
	var many []int
	json.Unmarshal(raw, &many)
	return many
}

// InvFreq returns RoPE's inverse frequencies (head_dim/2 of them), with
// rope_scaling applied as transformers does (llama3: smooth interpolation
// between low- and high-frequency bands; linear: divide by factor).
func (c Config) InvFreq() []float32 {
	hd := c.HeadDimension()
	out := make([]float32, hd/2)
	for i := range out {
		f := 1 / math.Pow(c.RopeTheta, float64(2*i)/float64(hd))
		if rs := c.RopeScaling; rs != nil {
			switch rs.Kind() {
			case "linear":
				f /= rs.Factor
			case "llama3":
				old := float64(rs.OriginalMaxPositionEmbeddings)
				lowWavelen := old / rs.LowFreqFactor
				highWavelen := old / rs.HighFreqFactor
				wavelen := 2 * math.Pi / f
				switch {
				case wavelen < highWavelen: // high frequency: unchanged
				case wavelen > lowWavelen: // low frequency: scaled
					f /= rs.Factor
				default: // in between: smooth blend
					smooth := (old/wavelen - rs.LowFreqFactor) / (rs.HighFreqFactor - rs.LowFreqFactor)
					f = (1-smooth)*f/rs.Factor + smooth*f
				}
			}
		}
		out[i] = float32(f)
	}
	return out
}
