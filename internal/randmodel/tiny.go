// Package randmodel writes random Llama models: tiny ones (for the tests, the quickstart and
// `llamatune init-tiny`) and ones of published shapes (Llama 3.2 1B/3B, 3.1 8B, for
// `init-tiny --shape` and `llamatune bench`), as complete HF directories.
package randmodel

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
