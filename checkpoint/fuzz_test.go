package checkpoint

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseHeader feeds arbitrary file bytes to the parser. It must never
// panic; an error must name the file; an accepted file must have every
// tensor in bounds, convert without panicking, and survive a write/read
// round trip unchanged.
func FuzzParseHeader(f *testing.F) {
	for _, c := range corruptCases() {
		f.Add(c.file)
	}
	f.Add(encode(f, nil, nil))
	f.Add(encode(f, []WriteTensor{
		{Name: "a", DType: F32, Shape: []int{2}, Data: EncodeF32([]float32{1, 2})},
		{Name: "b", DType: BF16, Shape: []int{1, 2}, Data: EncodeBF16([]uint16{0x3f80, 0x7fc0})},
		{Name: "c", DType: F16, Shape: []int{}, Data: EncodeF16([]uint16{0x3c00})},
		{Name: "d", DType: I64, Shape: []int{0}, Data: nil},
	}, map[string]string{"k": "v"}))
	f.Add(rawFile(`{"x":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}}`, []byte{0, 0, 0, 1, 2, 9}))
	for _, p := range []string{"ref_overall.safetensors", "handmade.safetensors", "sharded/model-00001-of-00002.safetensors"} {
		if b, err := os.ReadFile(filepath.Join("testdata", p)); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const name = "fuzz.safetensors"
		r, err := FromBytes(name, data)
		if err != nil {
			if !strings.Contains(err.Error(), name) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		checkAccepted(t, r, data)
	})
}

func checkAccepted(t *testing.T, r *Reader, data []byte) {
	keys := r.Keys()
	if !sort.StringsAreSorted(keys) {
		t.Fatal("keys not sorted")
	}
	var infos []TensorInfo
	for _, k := range keys {
		info, ok := r.Info(k)
		if !ok {
			t.Fatalf("Info(%q) missing", k)
		}
		raw, err := r.Raw(k)
		if err != nil {
			t.Fatal(err)
		}
		size, _ := DTypeSize(info.DType)
		if int64(len(raw)) != info.NumBytes() || info.NumBytes() != info.NumElements()*int64(size) {
			t.Fatalf("%q: raw %d bytes, info %+v", k, len(raw), info)
		}
		if err := r.Expect(k, info.Shape); err != nil {
			t.Fatal(err)
		}
		switch info.DType {
		case F32, BF16, F16:
			if _, err := r.F32(k); err != nil {
				t.Fatal(err)
			}
			if _, err := r.BF16(k); err != nil {
				t.Fatal(err)
			}
		}
		infos = append(infos, info)
	}
	// Round trip: rewrite in data order and compare.
	sort.SliceStable(infos, func(a, b int) bool { return infos[a].Offsets[0] < infos[b].Offsets[0] })
	var ws []WriteTensor
	for _, info := range infos {
		if info.Name == "" {
			return // the writer refuses empty names on purpose
		}
		raw, _ := r.Raw(info.Name)
		ws = append(ws, WriteTensor{Name: info.Name, DType: info.DType, Shape: info.Shape, Data: raw})
	}
	var buf bytes.Buffer
	if err := Write(&buf, ws, r.Metadata()); err != nil {
		t.Fatalf("rewrite of an accepted file failed: %v", err)
	}
	r2, err := FromBytes("again", buf.Bytes())
	if err != nil {
		t.Fatalf("re-read failed: %v", err)
	}
	if !slices.Equal(r2.Keys(), keys) {
		t.Fatalf("keys changed: %q -> %q", keys, r2.Keys())
	}
	for _, w := range ws {
		info, _ := r2.Info(w.Name)
		raw, _ := r2.Raw(w.Name)
		if info.DType != w.DType || !slices.Equal(info.Shape, w.Shape) || !bytes.Equal(raw, w.Data) {
			t.Fatalf("%q changed in round trip", w.Name)
		}
	}
	md, md2 := r.Metadata(), r2.Metadata()
	if _, ok := md[FormatKey]; !ok {
		md[FormatKey] = FormatPyTorch
	}
	if len(md) != len(md2) {
		t.Fatalf("metadata changed: %v -> %v", md, md2)
	}
	for k, v := range md {
		if md2[k] != v {
			t.Fatalf("metadata %q changed: %q -> %q", k, v, md2[k])
		}
	}
	pf, _ := parseHeader("again", buf.Bytes(), int64(buf.Len()))
	if !fullyCovered(pf.tensors, int64(buf.Len())-pf.dataStart) {
		t.Fatal("rewritten file is not fully covered")
	}
	_ = data
}

// FuzzTensorEntry builds syntactically valid headers from fuzzed fields, so
// the fuzzer reaches the semantic checks (dtype, shape, offsets, overlap)
// that random bytes rarely get past the JSON parser to.
func FuzzTensorEntry(f *testing.F) {
	f.Add("w", "F32", int64(2), int64(3), int64(0), int64(24), "v", int64(24), int64(26), uint16(26))
	f.Add("w", "BF16", int64(-1), int64(3), int64(0), int64(6), "w", int64(0), int64(0), uint16(6))
	f.Add("a", "U8", int64(0), int64(1<<40), int64(4), int64(4), "b", int64(3), int64(5), uint16(5))
	f.Add("__metadata__", "I64", int64(1), int64(1), int64(0), int64(8), "x", int64(-8), int64(0), uint16(8))
	f.Fuzz(func(t *testing.T, k1, dtype string, d0, d1, b1, e1 int64, k2 string, b2, e2 int64, dataLen uint16) {
		q := func(s string) string { return string(jsonString(s)) }
		hdr := "{" + q(k1) + `:{"dtype":` + q(dtype) + `,"shape":[` + itoa(d0) + "," + itoa(d1) + `],"data_offsets":[` + itoa(b1) + "," + itoa(e1) + "]}," +
			q(k2) + `:{"dtype":"U8","shape":[` + itoa(e2-b2) + `],"data_offsets":[` + itoa(b2) + "," + itoa(e2) + "]}}"
		data := rawFile(hdr, make([]byte, dataLen))
		const name = "entry.safetensors"
		r, err := FromBytes(name, data)
		if err != nil {
			if !strings.Contains(err.Error(), name) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		checkAccepted(t, r, data)
	})
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }
