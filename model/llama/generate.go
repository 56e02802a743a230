package llama

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"

	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/tensor"
)

// KVCache holds the rotated keys and the values of every layer for one
// sequence: K[l] and V[l] are [Len, KVHeads·headDim].
type KVCache struct {
	K, V [][]float32
	Len  int
}

// NewKVCache makes an empty cache for m.
func (m *Model) NewKVCache() *KVCache {
	n := m.Config.NumHiddenLayers
	return &KVCache{K: make([][]float32, n), V: make([][]float32, n)}
}

// Step feeds tokens (the prompt, or the last sampled token) at positions
// cache.Len.. and returns the logits of the last one. Nothing is recorded.
func (m *Model) Step(cache *KVCache, tokens []int32) ([]float32, error) {
	c := m.Config
	for i, id := range tokens {
		if id < 0 || int(id) >= c.VocabSize {
			return nil, fmt.Errorf("llama: token id %d at %d outside the vocabulary (size %d)", id, i, c.VocabSize)
		}
	}
	n, off := len(tokens), cache.Len
	tp := NewInferenceTape(m.be)
	tp.Compute = m.Compute
	defer tp.Release()
	pos := make([]int32, n)
	for i := range pos {
		pos[i] = int32(off + i)
	}
	hd := c.HeadDimension()
	args := kernels.AttnArgs{Batch: 1, Tq: n, Tk: off + n, Heads: c.NumAttentionHeads, KVHeads: c.NumKeyValueHeads,
		HeadDim: hd, QOffset: off, Scale: float32(1 / math.Sqrt(float64(hd)))}
	eps := float32(c.RMSNormEps)
	x := tp.Embedding(m.EmbedTokens, tokens)
	for i := range m.Layers {
		// One layer at a time: its intermediates are freed before the next
		// (a non-recording Recompute keeps only the output), so a long prompt
		// costs one layer's activations, as Hidden's inference path does.
		x = tp.Recompute(x, func(sub *tensor.Tape, x *tensor.Tensor) *tensor.Tensor {
			return m.layer(sub, i, x, pos, args, cache)
		})
	}
	cache.Len += n
	H := c.HiddenSize
	last := tensor.FromF32(m.be, kernels.F32, x.F32()[(n-1)*H:], 1, H)
	logits := m.linear(tp, "lm_head", tp.RMSNorm(last, m.Norm, eps), m.LMHead)
	return logits.F32(), nil
}

// NewInferenceTape returns a tape that records nothing and runs the model as
// in eval mode (no dropout).
func NewInferenceTape(be kernels.Backend) *tensor.Tape {
	tp := tensor.NewTape(be)
	tp.NoGrad, tp.Inference = true, true
	return tp
}

// GenerateOptions control sampling. Temperature 0 is greedy decoding.
type GenerateOptions struct {
	MaxNewTokens int
	Temperature  float64
	TopP         float64 // nucleus sampling; 0 or ≥ 1 disables it
	Seed         uint64
	StopIDs      []int // defaults to config eos_token_id
}

// Generate continues prompt and returns the new tokens (without the prompt),
// stopping after a stop id (included) or MaxNewTokens.
func (m *Model) Generate(prompt []int32, o GenerateOptions) ([]int32, error) {
	if len(prompt) == 0 {
		return nil, fmt.Errorf("llama: empty prompt")
	}
	stops := o.StopIDs
	if stops == nil {
		stops = m.Config.EOSIDs()
	}
	r := rand.New(rand.NewPCG(o.Seed, 0x5eed))
	cache := m.NewKVCache()
	logits, err := m.Step(cache, prompt)
	if err != nil {
		return nil, err
	}
	var out []int32
	for len(out) < o.MaxNewTokens {
		next := Sample(logits, o.Temperature, o.TopP, r)
		out = append(out, int32(next))
		if slices.Contains(stops, next) {
			break
		}
		if logits, err = m.Step(cache, []int32{int32(next)}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Sample picks a token: argmax when temperature ≤ 0, else from
// softmax(logits/temperature) restricted to the smallest set of tokens whose
// probability reaches topP.
func Sample(logits []float32, temperature, topP float64, r *rand.Rand) int {
	best := 0
	for i, v := range logits {
		if v > logits[best] {
			best = i
		}
	}
	if temperature <= 0 {
		return best
	}
	probs := make([]float64, len(logits))
	var z float64
	for i, v := range logits {
		probs[i] = math.Exp((float64(v) - float64(logits[best])) / temperature)
		z += probs[i]
	}
	idx := make([]int, len(probs))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return probs[idx[a]] > probs[idx[b]] })
	keep := len(idx)
	if topP > 0 && topP < 1 {
		var cum float64
		for i, j := range idx {
			cum += probs[j] / z
			if cum >= topP {
				keep = i + 1
				break
			}
		}
	}
	var mass float64
	for _, j := range idx[:keep] {
		mass += probs[j]
	}
	u := r.Float64() * mass
	for _, j := range idx[:keep] {
		u -= probs[j]
		if u <= 0 {
			return j
		}
	}
	return idx[keep-1]
}
