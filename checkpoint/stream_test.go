package checkpoint

import (
	"bytes"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"
)

// A tensor widened a block of rows at a time (F32Range) equals F32 of the
// whole tensor, for every float dtype; ranges outside the tensor are refused.
func TestF32RangeAndEvict(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	v := make([]float32, 7*300)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	ts := []WriteTensor{
		{Name: "f32", DType: F32, Shape: []int{7, 300}, Data: EncodeF32(v)},
		{Name: "bf16", DType: BF16, Shape: []int{7, 300}, Data: EncodeF32AsBF16(v)},
		{Name: "f16", DType: F16, Shape: []int{7, 300}, Data: EncodeF32AsF16(v)},
		{Name: "i8", DType: I8, Shape: []int{3}, Data: []byte{1, 2, 3}},
	}
	p := filepath.Join(t.TempDir(), "x.safetensors")
	if err := WriteFile(p, ts, nil); err != nil {
		t.Fatal(err)
	}
	mapped := mustOpen(t, p)
	inMemory, err := FromBytes("mem", encode(t, ts, nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, rd := range []*Reader{mapped, inMemory} {
		for _, name := range []string{"f32", "bf16", "f16"} {
			want, err := rd.F32(name)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]float32, len(want))
			for start := 0; start < len(got); start += 600 {
				n := min(600, len(got)-start)
				if err := rd.F32Range(name, start, got[start:start+n]); err != nil {
					t.Fatal(err)
				}
				rd.Evict(name, start, n) // the data must stay readable
			}
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("%s element %d: %v by range, %v whole", name, i, got[i], want[i])
				}
			}
			rd.Evict(name, 0, len(want))
			again, _ := rd.F32(name)
			if !equalBits(again, want) {
				t.Fatalf("%s changed after Evict", name)
			}
		}
		wantErr(t, rd.F32Range("f32", 2000, make([]float32, 101)), "f32", "out of range")
		wantErr(t, rd.F32Range("f32", -1, make([]float32, 1)), "out of range")
		wantErr(t, rd.F32Range("i8", 0, make([]float32, 3)), "i8", "I8")
		wantErr(t, rd.F32Range("nope", 0, nil), "nope")
		rd.Evict("nope", 0, 1) // harmless
	}
	// Evict must never touch memory that is not a file mapping.
	if raw, _ := inMemory.Raw("f32"); !bytes.Equal(raw, EncodeF32(v)) {
		t.Fatal("Evict changed an in-memory reader's bytes")
	}
}

func equalBits(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

// Appending encodes the same bytes as encoding at once, also row block by
// row block into a reused buffer (Q8_0 included).
func TestAppendEncodersMatchEncode(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	const rows, cols = 9, 64
	v := make([]float32, rows*cols)
	for i := range v {
		v[i] = float32(r.NormFloat64() * 3)
	}
	v[5], v[6], v[7] = float32(math.NaN()), float32(math.Inf(-1)), float32(math.Copysign(0, -1))
	whole := map[string][]byte{
		"F32": EncodeF32(v), "BF16": EncodeF32AsBF16(v), "F16": EncodeF32AsF16(v),
	}
	appendFn := map[string]func([]byte, []float32) []byte{"F32": AppendF32, "BF16": AppendF32AsBF16, "F16": AppendF32AsF16}
	buf := make([]byte, 0, 16)
	for name, want := range whole {
		buf = buf[:0]
		for r0 := 0; r0 < rows; r0 += 2 {
			buf = appendFn[name](buf, v[r0*cols:min(r0+2, rows)*cols])
		}
		if !bytes.Equal(buf, want) {
			t.Errorf("%s: appended bytes differ from the one-shot encoding", name)
		}
	}
	for _, gt := range []GGMLType{GGMLTypeF32, GGMLTypeF16, GGMLTypeBF16, GGMLTypeQ8_0} {
		want, err := EncodeGGUFData(v, gt, cols)
		if err != nil {
			t.Fatal(err)
		}
		buf = buf[:0]
		for r0 := 0; r0 < rows; r0 += 4 {
			if buf, err = AppendGGUFData(buf, v[r0*cols:min(r0+4, rows)*cols], gt, cols); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(buf, want) {
			t.Errorf("%v: appended bytes differ from the one-shot encoding", gt)
		}
	}
	if q := QuantizeQ8_0(v[:64]); len(q) != 2*Q8_0BlockBytes {
		t.Errorf("QuantizeQ8_0 gave %d bytes", len(q))
	}
}
