package checkpoint

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
)

func sampleF32(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(i)*0.37 - 5.5
	}
	return v
}

func TestRoundTripF32BF16F16(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rt.safetensors")
	f32 := sampleF32(12)
	f32 = append(f32, float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.Copysign(0, -1)), 1e-40)
	bf := F32sToBF16(f32)
	f16 := F32sToF16(f32)
	tensors := []WriteTensor{
		{Name: "w.f32", DType: F32, Shape: []int{4, 4}, Data: EncodeF32(f32)},
		{Name: "w.bf16", DType: BF16, Shape: []int{2, 8}, Data: EncodeBF16(bf)},
		{Name: "w.f16", DType: F16, Shape: []int{16}, Data: EncodeF16(f16)},
		{Name: "scalar", DType: F32, Shape: []int{}, Data: EncodeF32([]float32{7})},
		{Name: "empty", DType: BF16, Shape: []int{0, 3}, Data: nil},
		{Name: "ids", DType: I64, Shape: []int{2}, Data: binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, 3), math.MaxUint64)},
	}
	md := map[string]string{"step": "10", "note": "<&>"}
	if err := WriteFile(path, tensors, md); err != nil {
		t.Fatal(err)
	}
	r := mustOpen(t, path)
	if got, want := r.Keys(), []string{"empty", "ids", "scalar", "w.bf16", "w.f16", "w.f32"}; !slices.Equal(got, want) {
		t.Fatalf("Keys = %v, want %v", got, want)
	}
	gotMD := r.Metadata()
	if gotMD["step"] != "10" || gotMD["note"] != "<&>" || gotMD["format"] != "pt" || len(gotMD) != 3 {
		t.Errorf("Metadata = %v", gotMD)
	}
	for _, wt := range tensors {
		info, ok := r.Info(wt.Name)
		if !ok || info.DType != wt.DType || !slices.Equal(info.Shape, wt.Shape) || info.File != path {
			t.Errorf("Info(%s) = %+v, %v", wt.Name, info, ok)
		}
		raw, err := r.Raw(wt.Name)
		if err != nil || !bytes.Equal(raw, wt.Data) {
			t.Errorf("Raw(%s) = % x, %v; want % x", wt.Name, raw, err, wt.Data)
		}
		if err := r.Expect(wt.Name, wt.Shape); err != nil {
			t.Error(err)
		}
	}
	got, err := r.F32("w.f32")
	if err != nil || !slices.Equal(got, f32) {
		t.Errorf("F32(w.f32) = %v, %v", got, err)
	}
	// F32 of a BF16 tensor widens exactly.
	got, _ = r.F32("w.bf16")
	if !slices.Equal(got, BF16sToF32(bf)) {
		t.Errorf("F32(w.bf16) = %v", got)
	}
	got, _ = r.F32("w.f16")
	if !slices.Equal(got, F16sToF32(f16)) {
		t.Errorf("F32(w.f16) = %v", got)
	}
	gotBF, err := r.BF16("w.f32")
	if err != nil || !slices.Equal(gotBF, bf) {
		t.Errorf("BF16(w.f32) = %x, %v; want %x", gotBF, err, bf)
	}
	gotBF, _ = r.BF16("w.bf16")
	if !slices.Equal(gotBF, bf) {
		t.Errorf("BF16(w.bf16) = %x", gotBF)
	}
	gotBF, _ = r.BF16("w.f16")
	for i, h := range f16 {
		if gotBF[i] != F16ToBF16(h) {
			t.Errorf("BF16(w.f16)[%d] = %x, want %x", i, gotBF[i], F16ToBF16(h))
		}
	}
	if v, err := r.F32("scalar"); err != nil || len(v) != 1 || v[0] != 7 {
		t.Errorf("F32(scalar) = %v, %v", v, err)
	}
	if v, err := r.BF16("empty"); err != nil || len(v) != 0 {
		t.Errorf("BF16(empty) = %v, %v", v, err)
	}
	_, err = r.F32("ids")
	wantErr(t, err, path, `"ids"`, "I64")
	_, err = r.BF16("ids")
	wantErr(t, err, path, `"ids"`, "I64")
	if err := r.F32Into("w.f32", make([]float32, 3)); err == nil {
		t.Error("F32Into with a short destination should fail")
	}
}

func TestWrittenLayoutMatchesSpec(t *testing.T) {
	b := encode(t, []WriteTensor{
		{Name: "b", DType: BF16, Shape: []int{3}, Data: EncodeBF16([]uint16{1, 2, 3})},
		{Name: "a", DType: F32, Shape: []int{1}, Data: EncodeF32([]float32{1})},
	}, map[string]string{"format": "np"})
	n := binary.LittleEndian.Uint64(b)
	if (8+n)%8 != 0 {
		t.Errorf("data section starts at %d, not 8-byte aligned", 8+n)
	}
	hdr := string(b[8 : 8+n])
	want := `{"__metadata__":{"format":"np"},"b":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]},"a":{"dtype":"F32","shape":[1],"data_offsets":[6,10]}}`
	if trimmed := string(bytes.TrimRight([]byte(hdr), " ")); trimmed != want {
		t.Errorf("header\n got %s\nwant %s", trimmed, want)
	}
	if len(hdr)-len(want) >= 8 {
		t.Errorf("padding is %d bytes", len(hdr)-len(want))
	}
	data := b[8+n:]
	if !bytes.Equal(data, []byte{1, 0, 2, 0, 3, 0, 0, 0, 0x80, 0x3f}) {
		t.Errorf("data = % x", data)
	}
	r, err := FromBytes("mem", b)
	if err != nil {
		t.Fatal(err)
	}
	pf, _ := parseHeader("mem", b, int64(len(b)))
	if !fullyCovered(pf.tensors, int64(len(b))-pf.dataStart) {
		t.Error("writer output does not tile the data section exactly")
	}
	if r.Metadata()["format"] != "np" {
		t.Error("caller's format was overridden")
	}
}

func TestWriteValidation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.safetensors")
	cases := []struct {
		name    string
		tensors []WriteTensor
		parts   []string
	}{
		{"short data", []WriteTensor{{Name: "w", DType: F32, Shape: []int{2}, Data: make([]byte, 7)}}, []string{`"w"`, "8 bytes", "got 7"}},
		{"unknown dtype", []WriteTensor{{Name: "w", DType: "F33", Shape: []int{1}, Data: make([]byte, 4)}}, []string{`"w"`, "F33"}},
		{"negative dim", []WriteTensor{{Name: "w", DType: F32, Shape: []int{-1}, Data: nil}}, []string{`"w"`, "negative"}},
		{"duplicate", []WriteTensor{{Name: "w", DType: U8, Shape: []int{1}, Data: []byte{1}}, {Name: "w", DType: U8, Shape: []int{1}, Data: []byte{1}}}, []string{`"w"`, "twice"}},
		{"reserved", []WriteTensor{{Name: "__metadata__", DType: U8, Shape: []int{1}, Data: []byte{1}}}, []string{"__metadata__", "reserved"}},
		{"empty name", []WriteTensor{{Name: "", DType: U8, Shape: []int{1}, Data: []byte{1}}}, []string{"#0", "empty name"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := WriteFile(path, c.tensors, nil)
			wantErr(t, err, append([]string{path}, c.parts...)...)
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Error("a failed write left a file behind")
			}
			ents, _ := os.ReadDir(dir)
			if len(ents) != 0 {
				t.Errorf("a failed write left %d entries in the directory", len(ents))
			}
		})
	}
}

func TestWriteFileReplacesAtomically(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.safetensors")
	one := []WriteTensor{{Name: "a", DType: U8, Shape: []int{1}, Data: []byte{1}}}
	if err := WriteFile(path, one, nil); err != nil {
		t.Fatal(err)
	}
	r := mustOpen(t, path) // keep the old mapping open across the replace
	two := []WriteTensor{{Name: "b", DType: U8, Shape: []int{2}, Data: []byte{2, 3}}}
	if err := WriteFile(path, two, nil); err != nil {
		t.Fatal(err)
	}
	if raw, err := r.Raw("a"); err != nil || raw[0] != 1 {
		t.Errorf("old reader sees %v, %v after replace", raw, err)
	}
	r2 := mustOpen(t, path)
	if !slices.Equal(r2.Keys(), []string{"b"}) {
		t.Errorf("new file keys = %v", r2.Keys())
	}
	st, _ := os.Stat(path)
	if runtime.GOOS != "windows" && st.Mode().Perm() != 0o644 {
		t.Errorf("mode = %v, want 0644", st.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("directory has %d entries, want 1 (temporary file left?)", len(ents))
	}
	if err := WriteFile(filepath.Join(dir, "nope", "x.safetensors"), one, nil); err == nil {
		t.Error("writing into a missing directory should fail")
	}
}

func TestExpectAndMissing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.safetensors")
	if err := WriteFile(path, []WriteTensor{
		{Name: "model.norm.weight", DType: F32, Shape: []int{4}, Data: make([]byte, 16)},
		{Name: "q", DType: BF16, Shape: []int{2, 3}, Data: make([]byte, 12)},
	}, nil); err != nil {
		t.Fatal(err)
	}
	r := mustOpen(t, path)
	err := r.Expect("q", []int{3, 2})
	wantErr(t, err, path, `"q"`, "[2 3]", "[3 2]")
	err = r.Expect("lm_head.weight", []int{1})
	wantErr(t, err, path, `"lm_head.weight"`)
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("missing key error %v does not wrap ErrNotFound", err)
	}
	_, err = r.Raw("norm.weight")
	wantErr(t, err, path, `"norm.weight"`, `"model.norm.weight"`)
	_, err = r.F32("nope")
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("F32 missing: %v", err)
	}
	if _, ok := r.Info("nope"); ok {
		t.Error("Info(nope) ok")
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = r.Raw("q")
	wantErr(t, err, "closed", `"q"`)
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestRawIsZeroCopyAndCapped(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.safetensors")
	if err := WriteFile(path, []WriteTensor{
		{Name: "a", DType: U8, Shape: []int{2}, Data: []byte{1, 2}},
		{Name: "b", DType: U8, Shape: []int{2}, Data: []byte{3, 4}},
	}, nil); err != nil {
		t.Fatal(err)
	}
	r := mustOpen(t, path)
	a1, _ := r.Raw("a")
	a2, _ := r.Raw("a")
	if &a1[0] != &a2[0] {
		t.Error("Raw copies")
	}
	if cap(a1) != 2 {
		t.Errorf("cap(Raw) = %d, want 2 so append cannot reach the next tensor", cap(a1))
	}
}

func TestOpenMissingPath(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nothing.safetensors")
	_, err := Open(p)
	wantErr(t, err, p, "does not exist")
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%v does not wrap ErrNotExist", err)
	}
}
