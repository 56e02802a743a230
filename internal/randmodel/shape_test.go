package randmodel

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/model/llama"
)

// The config.json of every shape, read back, has Meta's numbers.
func TestShapeConfigJSON(t *testing.T) {
	type want struct {
		hidden, layers, heads, kv, inter int
		tied                             bool
		factor                           float64
		params                           int64
	}
	wants := map[string]want{
		"llama3.2-1b": {2048, 16, 32, 8, 8192, true, 32, 1_235_814_400},
		"llama3.2-3b": {3072, 28, 24, 8, 8192, true, 32, 3_212_749_824},
		"llama3.1-8b": {4096, 32, 32, 8, 14336, false, 8, 8_030_261_248},
	}
	if got := ShapeNames(); !reflect.DeepEqual(got, []string{"llama3.1-8b", "llama3.2-1b", "llama3.2-3b"}) {
		t.Fatalf("shapes %v", got)
	}
	for name, w := range wants {
		c, err := ShapeConfig(name)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if err := WriteShapeConfig(dir, c); err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(filepath.Join(dir, "config.json"))
		if err != nil {
			t.Fatal(err)
		}
		var j struct {
			Hidden      int     `json:"hidden_size"`
			Layers      int     `json:"num_hidden_layers"`
			Heads       int     `json:"num_attention_heads"`
			KV          int     `json:"num_key_value_heads"`
			Inter       int     `json:"intermediate_size"`
			Vocab       int     `json:"vocab_size"`
			Tied        bool    `json:"tie_word_embeddings"`
			Theta       float64 `json:"rope_theta"`
			MaxPos      int     `json:"max_position_embeddings"`
			Eps         float64 `json:"rms_norm_eps"`
			Act         string  `json:"hidden_act"`
			RopeScaling struct {
				Type   string  `json:"rope_type"`
				Factor float64 `json:"factor"`
				Low    float64 `json:"low_freq_factor"`
				High   float64 `json:"high_freq_factor"`
				Orig   int     `json:"original_max_position_embeddings"`
			} `json:"rope_scaling"`
		}
		if err := json.Unmarshal(raw, &j); err != nil {
			t.Fatal(err)
		}
		rs := j.RopeScaling
		if j.Hidden != w.hidden || j.Layers != w.layers || j.Heads != w.heads || j.KV != w.kv || j.Inter != w.inter ||
			j.Vocab != 128256 || j.Tied != w.tied || j.Theta != 500000 || j.MaxPos != 131072 || j.Eps != 1e-5 || j.Act != "silu" ||
			rs.Type != "llama3" || rs.Factor != w.factor || rs.Low != 1 || rs.High != 4 || rs.Orig != 8192 {
			t.Errorf("%s: config.json %+v, want %+v", name, j, w)
		}
		c2, err := llama.LoadConfig(dir)
		if err != nil {
			t.Fatal(err)
		}
		if got := ParamCount(c2); got != w.params {
			t.Errorf("%s: %d parameters, want %d", name, got, w.params)
		}
	}
	if _, err := ShapeConfig("llama3-70b"); err == nil {
		t.Error("unknown shape accepted")
	}
}

// A scaled-down 8B-like model (untied, llama3 rope) written with small
// shards: it loads, is sharded with an index, has unit norms and N(0, 0.02)
// weights, and its bytes depend on the seed alone.
func TestWriteShapeModelScaledDown(t *testing.T) {
	c, _ := ShapeConfig("llama3.1-8b")
	c.HiddenSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads, c.IntermediateSize = 64, 2, 4, 2, 128
	write := func(seed uint64) string {
		dir := t.TempDir()
		if _, err := WriteShapeModel(dir, ShapeOptions{Config: &c, Seed: seed, MaxShardBytes: 8 << 20}); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	a, b, other := write(7), write(7), write(8)
	ix, err := os.ReadFile(filepath.Join(a, checkpoint.IndexFileName))
	if err != nil {
		t.Fatalf("no index: %v", err)
	}
	var index checkpoint.IndexJSON
	if err := json.Unmarshal(ix, &index); err != nil {
		t.Fatal(err)
	}
	if want := 2 * ParamCount(c); index.Metadata.TotalSize != want {
		t.Errorf("index total_size %d, want %d (bf16)", index.Metadata.TotalSize, want)
	}
	shards, _ := filepath.Glob(filepath.Join(a, "model-*-of-*.safetensors"))
	if len(shards) < 2 {
		t.Errorf("%d shards, want several", len(shards))
	}
	for _, s := range shards {
		x, _ := os.ReadFile(s)
		y, _ := os.ReadFile(filepath.Join(b, filepath.Base(s)))
		z, _ := os.ReadFile(filepath.Join(other, filepath.Base(s)))
		if !bytes.Equal(x, y) {
			t.Errorf("%s differs between two writes with the same seed", filepath.Base(s))
		}
		if bytes.Equal(x, z) {
			t.Errorf("%s is the same for seeds 7 and 8", filepath.Base(s))
		}
	}
	for _, f := range []string{"tokenizer.json", "tokenizer_config.json", "generation_config.json"} {
		if _, err := os.Stat(filepath.Join(a, f)); err != nil {
			t.Error(err)
		}
	}
	m, err := llama.Load(a, cpu.New(), kernels.BF16)
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.TieWordEmbeddings || m.LMHead == m.EmbedTokens {
		t.Error("8B shape must have its own lm_head")
	}
	for _, v := range m.Layers[1].PostAttentionLayernorm.F32() {
		if v != 1 {
			t.Fatalf("norm weight %v, want 1", v)
		}
	}
	v := m.EmbedTokens.F32()
	var sum, sq float64
	for _, x := range v {
		sum += float64(x)
		sq += float64(x) * float64(x)
	}
	mean := sum / float64(len(v))
	std := math.Sqrt(sq/float64(len(v)) - mean*mean)
	if math.Abs(mean) > 1e-4 || math.Abs(std-0.02) > 2e-4 {
		t.Errorf("embedding mean %.3g std %.4g, want 0 and 0.02", mean, std)
	}
}
