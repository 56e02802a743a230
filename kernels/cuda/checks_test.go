package cuda

import (
	"fmt"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
)

// Misuse is caught on the host, before any device work, wherever the CPU
// backend panics for it: each case panics on the CPU backend, and on a CUDA
// backend with no device behind it panics with a "cuda.Op:" message (a
// device call would have crashed on the nil library table instead).
func TestHostChecksMatchCPU(t *testing.T) {
	fake := &Backend{}
	type mk func(dt kernels.DType, n int) kernels.Buffer
	f32, bf := kernels.F32, kernels.BF16
	cases := []struct {
		name string
		run  func(be kernels.Backend, m mk)
	}{
		{"MatMul C too small", func(be kernels.Backend, m mk) {
			be.MatMul(m(f32, 6), m(f32, 6), m(f32, 3), kernels.MatMulArgs{M: 2, N: 2, K: 3, Alpha: 1})
		}},
		{"MatMul C not F32", func(be kernels.Backend, m mk) {
			be.MatMul(m(f32, 6), m(f32, 6), m(bf, 4), kernels.MatMulArgs{M: 2, N: 2, K: 3, Alpha: 1})
		}},
		{"Embedding id outside vocab", func(be kernels.Backend, m mk) {
			be.Embedding(m(f32, 12), []int32{0, 4}, m(f32, 6), 3)
		}},
		{"Add lengths", func(be kernels.Backend, m mk) { be.Add(m(f32, 3), m(f32, 4), m(f32, 3)) }},
		{"AddScaled lengths", func(be kernels.Backend, m mk) { be.AddScaled(m(f32, 3), m(f32, 4), 1) }},
		{"Mul lengths", func(be kernels.Backend, m mk) { be.Mul(m(f32, 3), m(bf, 4)) }},
		{"Scale BF16", func(be kernels.Backend, m mk) { be.Scale(m(bf, 3), 2) }},
		{"Copy lengths", func(be kernels.Backend, m mk) { be.Copy(m(f32, 3), m(bf, 4)) }},
		{"AdamW grad BF16", func(be kernels.Backend, m mk) {
			be.AdamW(m(f32, 4), m(bf, 4), m(f32, 4), m(f32, 4), kernels.AdamWArgs{LR: 1, Beta1: .9, Beta2: .99, Step: 1})
		}},
		{"RMSNorm x BF16", func(be kernels.Backend, m mk) { be.RMSNorm(m(bf, 8), m(f32, 4), m(f32, 8), m(f32, 2), 2, 4, 1e-5) }},
		{"Attention heads not a multiple of kv heads", func(be kernels.Backend, m mk) {
			a := kernels.AttnArgs{Batch: 1, Tq: 2, Tk: 2, Heads: 3, KVHeads: 2, HeadDim: 4}
			be.Attention(m(f32, 24), m(f32, 16), m(f32, 16), m(f32, 24), nil, a)
		}},
		{"Attention q size", func(be kernels.Backend, m mk) {
			a := kernels.AttnArgs{Batch: 1, Tq: 2, Tk: 2, Heads: 2, KVHeads: 1, HeadDim: 4}
			be.Attention(m(f32, 15), m(f32, 8), m(f32, 8), m(f32, 16), nil, a)
		}},
		{"Attention DocStart length", func(be kernels.Backend, m mk) {
			a := kernels.AttnArgs{Batch: 1, Tq: 2, Tk: 2, Heads: 2, KVHeads: 1, HeadDim: 4, DocStart: []int32{0}}
			be.Attention(m(f32, 16), m(f32, 8), m(f32, 8), m(f32, 16), nil, a)
		}},
		{"Attention Tq+QOffset > Tk", func(be kernels.Backend, m mk) {
			a := kernels.AttnArgs{Batch: 1, Tq: 2, Tk: 2, Heads: 2, KVHeads: 1, HeadDim: 4, QOffset: 1}
			be.Attention(m(f32, 16), m(f32, 8), m(f32, 8), m(f32, 16), nil, a)
		}},
		{"CE operand sizes", func(be kernels.Backend, m mk) {
			be.LinearCrossEntropy(kernels.CEBuffers{H: m(f32, 6), W: m(f32, 10)}, []int32{0, 1},
				kernels.CEArgs{Tokens: 2, Hidden: 3, Vocab: 4})
		}},
		{"CE label outside vocab", func(be kernels.Backend, m mk) {
			be.LinearCrossEntropy(kernels.CEBuffers{H: m(f32, 6), W: m(bf, 12)}, []int32{0, 4},
				kernels.CEArgs{Tokens: 2, Hidden: 3, Vocab: 4})
		}},
		{"KD dense and sparse", func(be kernels.Backend, m mk) {
			be.LinearKD(kernels.KDBuffers{Student: kernels.CEBuffers{H: m(f32, 6), W: m(f32, 12)}, TH: m(f32, 6), TW: m(f32, 12),
				TopKIDs: []int32{0, 1}, TopKLogProbs: []float32{-1, -1}}, []int32{0, 1},
				kernels.KDArgs{Tokens: 2, Hidden: 3, Vocab: 4, TeacherHidden: 3, K: 1, Temperature: 1})
		}},
		{"KD temperature", func(be kernels.Backend, m mk) {
			be.LinearKD(kernels.KDBuffers{Student: kernels.CEBuffers{H: m(f32, 6), W: m(f32, 12)},
				TopKIDs: []int32{0, 1}, TopKLogProbs: []float32{-1, -1}}, []int32{0, 1},
				kernels.KDArgs{Tokens: 2, Hidden: 3, Vocab: 4, K: 1, Temperature: 0})
		}},
		{"KD JSD beta", func(be kernels.Backend, m mk) {
			be.LinearKD(kernels.KDBuffers{Student: kernels.CEBuffers{H: m(f32, 6), W: m(f32, 12)},
				TopKIDs: []int32{0, 1}, TopKLogProbs: []float32{-1, -1}}, []int32{0, 1},
				kernels.KDArgs{Tokens: 2, Hidden: 3, Vocab: 4, K: 1, Temperature: 1, Kind: kernels.JSD, Beta: 1})
		}},
		{"KD renorm with reverse KL", func(be kernels.Backend, m mk) {
			be.LinearKD(kernels.KDBuffers{Student: kernels.CEBuffers{H: m(f32, 6), W: m(f32, 12)},
				TopKIDs: []int32{0, 1}, TopKLogProbs: []float32{-1, -1}}, []int32{0, 1},
				kernels.KDArgs{Tokens: 2, Hidden: 3, Vocab: 4, K: 1, Temperature: 1, Kind: kernels.ReverseKL, Renorm: true})
		}},
		{"KD top-k sizes", func(be kernels.Backend, m mk) {
			be.LinearKD(kernels.KDBuffers{Student: kernels.CEBuffers{H: m(f32, 6), W: m(f32, 12)},
				TopKIDs: []int32{0}, TopKLogProbs: []float32{-1}}, []int32{0, 1},
				kernels.KDArgs{Tokens: 2, Hidden: 3, Vocab: 4, K: 1, Temperature: 1})
		}},
	}
	panics := func(f func()) (v any) {
		defer func() { v = recover() }()
		f()
		return nil
	}
	cb := cpu.New()
	for _, c := range cases {
		if v := panics(func() { c.run(cb, cb.Alloc) }); v == nil {
			t.Errorf("%s: the CPU backend does not panic (the case is wrong)", c.name)
		}
		v := panics(func() {
			c.run(fake, func(dt kernels.DType, n int) kernels.Buffer { return &Buffer{be: fake, n: n, dt: dt} })
		})
		msg, ok := v.(string)
		if !ok || !strings.HasPrefix(msg, "cuda.") {
			t.Errorf("%s: want a cuda.Op panic before any device work, have %v", c.name, fmt.Sprint(v))
		}
	}
}
