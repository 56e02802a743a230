// Package testutil makes tiny random Llama models for tests and the quickstart.
package testutil

import "github.com/llamatune/llamatune/model/llama"

// TinyConfig is a 2-layer, hidden-64 Llama with grouped-query attention and
// Llama 3.1 rope scaling, over the given vocabulary size.
func TinyConfig(vocab int) llama.Config {
	return llama.Config{
		Architectures:         []string{"LlamaForCausalLM"},
		ModelType:             "llama",
		VocabSize:             vocab,
		HiddenSize:            64,
		IntermediateSize:      128,
		NumHiddenLayers:       2,
		NumAttentionHeads:     4,
		NumKeyValueHeads:      2,
		MaxPositionEmbeddings: 2048,
		RMSNormEps:            1e-5,
		RopeTheta:             500000,
		RopeScaling: &llama.RopeScaling{RopeType: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4,
			OriginalMaxPositionEmbeddings: 64},
		HiddenAct:        "silu",
		InitializerRange: 0.02,
		TorchDtype:       "float32",
	}
}
