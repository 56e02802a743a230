package nf4

import (
	"math/rand"
	"testing"
)

// BenchmarkQuantizeBF16: quantization speed (MB/s of bf16 input).
func BenchmarkQuantizeBF16(b *testing.B) {
	r := rand.New(rand.NewSource(1))
	v := make([]uint16, 1<<24)
	for i := range v {
		v[i] = F32ToBF16(float32(r.NormFloat64() * 0.02))
	}
	b.SetBytes(2 << 24)
	for i := 0; i < b.N; i++ {
		QuantizeBF16(v)
	}
}

// BenchmarkDequantizeBF16: dequantization speed in 32-value runs (the
// GEMM's dy·W packing) and 512-value runs (x·Wᵀ), MB/s of bf16 output.
func BenchmarkDequantizeBF16(b *testing.B) {
	r := rand.New(rand.NewSource(1))
	v := make([]float32, 1<<20)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	t := Quantize(v)
	for _, run := range []int{32, 512} {
		b.Run(map[int]string{32: "run32", 512: "run512"}[run], func(b *testing.B) {
			dst := make([]uint16, run)
			b.SetBytes(2 << 20)
			for i := 0; i < b.N; i++ {
				for off := 0; off+run <= len(v); off += run {
					t.DequantizeBF16(dst, off)
				}
			}
		})
	}
}
