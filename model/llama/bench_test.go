package llama

import (
	"fmt"
	"testing"

	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/tensor"
)

// BenchmarkLayer is one decoder layer of the Llama 3.2 1B shape (hidden
// 2048, 32 heads of 64, 8 kv heads, intermediate 8192) over 512 tokens,
// forward and backward to its input, frozen bf16 weights, in f32 and bf16
// compute: the per-layer cost of a LoRA step without the adapters.
//
//	go test -run - -bench Layer -benchtime 3x ./model/llama/
func BenchmarkLayer(b *testing.B) {
	c := Config{Architectures: []string{"LlamaForCausalLM"}, ModelType: "llama", VocabSize: 256,
		HiddenSize: 2048, IntermediateSize: 8192, NumHiddenLayers: 1, NumAttentionHeads: 32, NumKeyValueHeads: 8,
		MaxPositionEmbeddings: 2048, RMSNormEps: 1e-5, RopeTheta: 500000, HiddenAct: "silu", InitializerRange: 0.02}
	be := cpu.New()
	m, err := NewRandom(c, be, kernels.BF16, 1)
	if err != nil {
		b.Fatal(err)
	}
	const T = 512
	in := &Input{Rows: 1, SeqLen: T}
	hd := c.HeadDimension()
	args := kernels.AttnArgs{Batch: 1, Tq: T, Tk: T, Heads: c.NumAttentionHeads, KVHeads: c.NumKeyValueHeads,
		HeadDim: hd, Scale: 0.125}
	x0 := make([]float32, T*c.HiddenSize)
	for i := range x0 {
		x0[i] = float32(i%97)/97 - 0.5
	}
	for _, compute := range []kernels.DType{kernels.F32, kernels.BF16} {
		b.Run(fmt.Sprint(compute), func(b *testing.B) {
			for range b.N {
				tp := tensor.NewTape(be)
				tp.Compute = compute
				x := tensor.FromF32(be, kernels.F32, x0, T, c.HiddenSize).SetRequiresGrad(true)
				y := m.layer(tp, 0, x, in.positions(), args, nil)
				s := tp.Scale(y, 1) // a scalar loss would need a reduction op; seed dy = 1 instead
				grad := be.FromF32(kernels.F32, ones(s.Numel()))
				tp.BackwardFrom(s, grad)
				tp.Release()
			}
			b.ReportMetric(float64(T*b.N)/b.Elapsed().Seconds(), "tokens/s")
		})
	}
}

func ones(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = 1
	}
	return v
}
