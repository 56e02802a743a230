package checkpoint

import (
	"path/filepath"
	"testing"
)

const benchN = 1 << 20

func BenchmarkEncodeF32AsBF16(b *testing.B) {
	v := sampleF32(benchN)
	b.SetBytes(4 * benchN)
	for b.Loop() {
		EncodeF32AsBF16(v)
	}
}

func benchReader(b *testing.B, dtype string, data []byte) *Reader {
	b.Helper()
	p := filepath.Join(b.TempDir(), "bench.safetensors")
	if err := WriteFile(p, []WriteTensor{{Name: "w", DType: dtype, Shape: []int{benchN}, Data: data}}, nil); err != nil {
		b.Fatal(err)
	}
	r, err := Open(p)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	return r
}

func BenchmarkReadBF16AsF32(b *testing.B) {
	r := benchReader(b, BF16, EncodeF32AsBF16(sampleF32(benchN)))
	dst := make([]float32, benchN)
	b.SetBytes(2 * benchN)
	for b.Loop() {
		if err := r.F32Into("w", dst); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReadF32AsBF16(b *testing.B) {
	r := benchReader(b, F32, EncodeF32(sampleF32(benchN)))
	dst := make([]uint16, benchN)
	b.SetBytes(4 * benchN)
	for b.Loop() {
		if err := r.BF16Into("w", dst); err != nil {
			b.Fatal(err)
		}
	}
}
