package cuda

import (
	"math"
	"testing"

	"github.com/llamatune/llamatune/kernels"
)

// Benchmarks at Llama-8B-like shapes; they skip without a GPU. Run on the
// device: ./cuda.test -test.run '^$' -test.bench . -test.benchtime 20x

func benchBackend(b *testing.B) *Backend {
	if ok, why := Available(); !ok {
		b.Skip("no usable CUDA GPU: " + why)
	}
	be, err := New()
	if err != nil {
		b.Fatal(err)
	}
	return be
}

func fill(n int, s float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = s * float32(math.Sin(float64(i)*0.37))
	}
	return v
}

func BenchmarkMatMulBF16(b *testing.B) {
	be := benchBackend(b)
	M, N, K := 4096, 4096, 4096
	x := be.FromF32(kernels.BF16, fill(M*K, 1))
	w := be.FromF32(kernels.BF16, fill(N*K, 1))
	c := be.Alloc(kernels.F32, M*N)
	args := kernels.MatMulArgs{TransB: true, M: M, N: N, K: K, Batch: 1, Alpha: 1}
	be.MatMul(x, w, c, args)
	be.Sync()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		be.MatMul(x, w, c, args)
	}
	be.Sync()
	b.ReportMetric(2*float64(M*N*K)*float64(b.N)/b.Elapsed().Seconds()/1e12, "TFLOP/s")
}

func BenchmarkAttention(b *testing.B) {
	be := benchBackend(b)
	a := kernels.AttnArgs{Batch: 1, Tq: 4096, Tk: 4096, Heads: 32, KVHeads: 8, HeadDim: 128, Scale: 1 / float32(math.Sqrt(128))}
	q := be.FromF32(kernels.F32, fill(a.Batch*a.Tq*a.Heads*a.HeadDim, 1))
	k := be.FromF32(kernels.F32, fill(a.Batch*a.Tk*a.KVHeads*a.HeadDim, 1))
	v := be.FromF32(kernels.F32, fill(a.Batch*a.Tk*a.KVHeads*a.HeadDim, 1))
	out := be.Alloc(kernels.F32, q.Len())
	lse := be.Alloc(kernels.F32, a.Batch*a.Heads*a.Tq)
	dq, dk, dv := be.Alloc(kernels.F32, q.Len()), be.Alloc(kernels.F32, k.Len()), be.Alloc(kernels.F32, v.Len())
	be.Attention(q, k, v, out, lse, a)
	be.Sync()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		be.Attention(q, k, v, out, lse, a)
		be.AttentionBackward(q, k, v, out, lse, out, dq, dk, dv, a)
	}
	be.Sync()
}

func BenchmarkLinearCrossEntropy(b *testing.B) {
	be := benchBackend(b)
	T, H, V := 4096, 4096, 128256
	h := be.FromF32(kernels.F32, fill(T*H, 0.05))
	w := be.FromF32(kernels.BF16, fill(V*H, 0.05))
	dh, dw := be.Alloc(kernels.F32, T*H), be.Alloc(kernels.F32, V*H)
	labels := make([]int32, T)
	for i := range labels {
		labels[i] = int32(i * 31 % V)
	}
	args := kernels.CEArgs{Tokens: T, Hidden: H, Vocab: V, Chunk: 1024, GradScale: 1.0 / float32(T)}
	bufs := kernels.CEBuffers{H: h, W: w, DH: dh, DW: dw}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		be.LinearCrossEntropy(bufs, labels, args)
	}
}
