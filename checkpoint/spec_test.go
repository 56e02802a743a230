package checkpoint

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestHandBuiltBytes reads a file spelled out byte by byte from the format
// description: u64 LE header length, JSON header, then data.
func TestHandBuiltBytes(t *testing.T) {
	file := []byte{
		0x6c, 0, 0, 0, 0, 0, 0, 0, // header length 108, little-endian u64
	}
	file = append(file, `{"x":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"y":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`...)
	file = append(file,
		0x80, 0x3f, // bf16 1.0   (0x3f80)
		0x49, 0xc0, // bf16 -3.140625 (0xc049)
		0x00, 0x00, 0x20, 0x41, // f32 10.0 (0x41200000)
	)
	if len(file) != 8+108+8 {
		t.Fatalf("fixture is %d bytes", len(file))
	}
	p := writeBytes(t, t.TempDir(), "hand.safetensors", file)
	r := mustOpen(t, p)
	x, err := r.F32("x")
	if err != nil || !slices.Equal(x, []float32{1, -3.140625}) {
		t.Errorf("x = %v, %v", x, err)
	}
	y, err := r.F32("y")
	if err != nil || !slices.Equal(y, []float32{10}) {
		t.Errorf("y = %v, %v", y, err)
	}
	info, _ := r.Info("y")
	if info.Offsets != [2]int64{4, 8} || info.DType != "F32" || !slices.Equal(info.Shape, []int{1}) {
		t.Errorf("Info(y) = %+v", info)
	}
	if len(r.Metadata()) != 0 {
		t.Errorf("metadata = %v", r.Metadata())
	}
	// And our writer produces exactly these bytes, modulo __metadata__ and
	// header padding: re-encode and compare the data section.
	out := encode(t, []WriteTensor{
		{Name: "x", DType: BF16, Shape: []int{2}, Data: file[116:120]},
		{Name: "y", DType: F32, Shape: []int{1}, Data: file[120:124]},
	}, nil)
	n := binary.LittleEndian.Uint64(out)
	if string(out[8+n:]) != string(file[116:]) {
		t.Errorf("writer data section = % x", out[8+n:])
	}
}

// TestReferenceImplementationFile reads a file written by the reference
// implementation (huggingface/safetensors, see testdata/README.md).
func TestReferenceImplementationFile(t *testing.T) {
	p := filepath.Join("testdata", "ref_overall.safetensors")
	r := mustOpen(t, p)
	if got := r.Keys(); !slices.Equal(got, []string{"B", "H", "I", "b", "d", "e", "f", "h", "i"}) {
		t.Fatalf("keys = %v", got)
	}
	if r.Metadata()["test"] != "a" {
		t.Errorf("metadata = %v", r.Metadata())
	}
	want := []float64{-3, -2, -1, 0, 1, 2}
	// numpy cast -3..2 to the unsigned types by wrapping, so sign-extending
	// every integer recovers -3..2.
	ints := map[string]string{"B": U8, "H": U16, "I": U32, "b": I8, "h": I16, "i": I32}
	for name, dtype := range ints {
		info, _ := r.Info(name)
		if info.DType != dtype || !slices.Equal(info.Shape, []int{6}) {
			t.Errorf("%s: %+v", name, info)
		}
		raw, _ := r.Raw(name)
		size, _ := DTypeSize(dtype)
		for k := range 6 {
			var u uint64
			for j := range size {
				u |= uint64(raw[k*size+j]) << (8 * j)
			}
			shift := 64 - 8*size
			v := int64(u<<shift) >> shift
			if float64(v) != want[k] {
				t.Errorf("%s[%d] = %d, want %v", name, k, v, want[k])
			}
		}
	}
	for _, name := range []string{"d", "e", "f"} {
		got, err := r.F32(name)
		if err != nil {
			t.Fatal(err)
		}
		for k := range want {
			if float64(got[k]) != want[k] {
				t.Errorf("%s = %v, want %v", name, got, want)
				break
			}
		}
	}
	info, _ := r.Info("d")
	if info.DType != F64 {
		t.Errorf("d dtype %s", info.DType)
	}
	// The reference writer tiles the data section exactly (the strict rule).
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	pf, err := parseHeader(p, b, int64(len(b)))
	if err != nil || !fullyCovered(pf.tensors, int64(len(b))-pf.dataStart) {
		t.Errorf("reference file not fully covered: %v", err)
	}
}

// TestPythonFixture reads the file gen_fixtures.py builds with struct+json.
func TestPythonFixture(t *testing.T) {
	r := mustOpen(t, filepath.Join("testdata", "handmade.safetensors"))
	md := r.Metadata()
	if md["format"] != "pt" || md["source"] != "gen_fixtures.py" {
		t.Errorf("metadata = %v", md)
	}
	check := func(name string, shape []int, want []float32) {
		t.Helper()
		if err := r.Expect(name, shape); err != nil {
			t.Error(err)
		}
		got, err := r.F32(name)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%s = %v, %v; want %v", name, got, err, want)
		}
	}
	check("a.f32", []int{2, 3}, []float32{1, -2.5, 3.25, 0, 1e-3, -65504})
	check("b.bf16", []int{4}, []float32{1, -2, 0.5, 3.140625})
	check("c.f16", []int{2, 2}, []float32{1, -0.5, 65504, 0.0009765625})
	check("e.scalar", []int{}, []float32{42})
	check("f.empty", []int{0, 5}, []float32{})
	raw, _ := r.Raw("d.i64")
	if v := int64(binary.LittleEndian.Uint64(raw)); v != -7 {
		t.Errorf("d.i64[0] = %d", v)
	}
	if v := binary.LittleEndian.Uint64(raw[8:]); v != 1<<40 {
		t.Errorf("d.i64[1] = %d", v)
	}
	raw, _ = r.Raw("g.u8")
	if !slices.Equal(raw, []byte{0, 127, 255}) {
		t.Errorf("g.u8 = %v", raw)
	}
	bf, _ := r.BF16("a.f32")
	if bf[5] != F32ToBF16(-65504) || BF16ToF32(bf[5]) != -65536 {
		t.Errorf("BF16(a.f32)[5] = %#x", bf[5])
	}
}

// TestPythonShardedFixture opens the HF-style sharded directory written by
// gen_fixtures.py (unpadded headers, index with sorted keys).
func TestPythonShardedFixture(t *testing.T) {
	dir := filepath.Join("testdata", "sharded")
	r := mustOpen(t, dir)
	if got := r.Keys(); !slices.Equal(got, []string{"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"}) {
		t.Fatalf("keys = %v", got)
	}
	info, _ := r.Info("lm_head.weight")
	if filepath.Base(info.File) != "model-00002-of-00002.safetensors" {
		t.Errorf("lm_head in %s", info.File)
	}
	got, _ := r.F32("lm_head.weight")
	if !slices.Equal(got, []float32{0.25, -0.25, 8, -8}) {
		t.Errorf("lm_head = %v", got)
	}
	got, _ = r.F32("model.norm.weight")
	if !slices.Equal(got, []float32{1, 0.5}) {
		t.Errorf("norm = %v", got)
	}
	if len(r.Files()) != 2 {
		t.Errorf("files = %v", r.Files())
	}
}
