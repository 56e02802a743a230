package checkpoint

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	gguf "github.com/gpustack/gguf-parser-go"
)

// ---- a small independent GGUF reader, written from the spec ----

type rdTensor struct {
	name  string
	ne    []uint64
	typ   uint32
	off   uint64
	bytes []byte
}

type rdFile struct {
	version  uint32
	kv       map[string]any
	keys     []string
	tensors  []rdTensor
	dataOff  int64
	fileSize int64
}

type rd struct {
	b   []byte
	pos int
	err error
}

func (r *rd) need(n int) []byte {
	if r.err != nil || r.pos+n > len(r.b) {
		if r.err == nil {
			r.err = io.ErrUnexpectedEOF
		}
		return make([]byte, n)
	}
	s := r.b[r.pos : r.pos+n]
	r.pos += n
	return s
}
func (r *rd) u32() uint32 { return binary.LittleEndian.Uint32(r.need(4)) }
func (r *rd) u64() uint64 { return binary.LittleEndian.Uint64(r.need(8)) }
func (r *rd) str() string { return string(r.need(int(r.u64()))) }

func (r *rd) value(t uint32) any {
	switch t {
	case 0:
		return r.need(1)[0]
	case 1:
		return int8(r.need(1)[0])
	case 2:
		return binary.LittleEndian.Uint16(r.need(2))
	case 3:
		return int16(binary.LittleEndian.Uint16(r.need(2)))
	case 4:
		return r.u32()
	case 5:
		return int32(r.u32())
	case 6:
		return math.Float32frombits(r.u32())
	case 7:
		return r.need(1)[0] != 0
	case 8:
		return r.str()
	case 9:
		et := r.u32()
		n := r.u64()
		out := make([]any, n)
		for i := range out {
			out[i] = r.value(et)
		}
		return out
	case 10:
		return r.u64()
	case 11:
		return int64(r.u64())
	case 12:
		return math.Float64frombits(r.u64())
	}
	r.err = fmt.Errorf("bad value type %d", t)
	return nil
}

func readGGUF(t *testing.T, path string) *rdFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r := &rd{b: b}
	if string(r.need(4)) != "GGUF" {
		t.Fatalf("%s: bad magic", path)
	}
	f := &rdFile{kv: map[string]any{}, fileSize: int64(len(b))}
	f.version = r.u32()
	nt, nkv := r.u64(), r.u64()
	for i := uint64(0); i < nkv; i++ {
		k := r.str()
		f.kv[k] = r.value(r.u32())
		f.keys = append(f.keys, k)
	}
	for i := uint64(0); i < nt; i++ {
		var ti rdTensor
		ti.name = r.str()
		nd := r.u32()
		for j := uint32(0); j < nd; j++ {
			ti.ne = append(ti.ne, r.u64())
		}
		ti.typ = r.u32()
		ti.off = r.u64()
		f.tensors = append(f.tensors, ti)
	}
	if r.err != nil {
		t.Fatalf("%s: %v", path, r.err)
	}
	align := int64(32)
	if a, ok := f.kv["general.alignment"].(uint32); ok {
		align = int64(a)
	}
	f.dataOff = (int64(r.pos) + align - 1) / align * align
	for i := range f.tensors {
		ti := &f.tensors[i]
		n := uint64(1)
		for _, d := range ti.ne {
			n *= d
		}
		var size uint64
		switch ti.typ {
		case 0:
			size = 4 * n
		case 1, 30:
			size = 2 * n
		case 8:
			size = n / 32 * 34
		default:
			t.Fatalf("tensor %s: unexpected type %d", ti.name, ti.typ)
		}
		if ti.off%uint64(align) != 0 {
			t.Errorf("tensor %s offset %d is not %d-aligned", ti.name, ti.off, align)
		}
		start := uint64(f.dataOff) + ti.off
		if start+size > uint64(len(b)) {
			t.Fatalf("tensor %s data [%d, %d) runs past the file (%d bytes)", ti.name, start, start+size, len(b))
		}
		ti.bytes = b[start : start+size]
	}
	return f
}

// dequantQ8 is an independent Q8_0 decoder: per 34-byte block an f16 scale and 32 int8.
func dequantQ8(b []byte) []float32 {
	var out []float32
	for len(b) >= 34 {
		h := binary.LittleEndian.Uint16(b)
		d := halfToFloat(h)
		for j := 0; j < 32; j++ {
			out = append(out, d*float32(int8(b[2+j])))
		}
		b = b[34:]
	}
	return out
}

// halfToFloat decodes IEEE half precision bits by hand (independent of x448/float16).
func halfToFloat(h uint16) float32 {
	sign := float32(1)
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1f
	frac := float64(h & 0x3ff)
	switch exp {
	case 0:
		return sign * float32(frac/1024*math.Pow(2, -14))
	case 31:
		if frac == 0 {
			return sign * float32(math.Inf(1))
		}
		return float32(math.NaN())
	}
	return sign * float32((1+frac/1024)*math.Pow(2, float64(exp-15)))
}

func randVals(n int, seed uint64, scale float64) []float32 {
	r := rand.New(rand.NewPCG(seed, 3))
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64() * scale)
	}
	return v
}

func TestGGUFAllValueTypesAndTensors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "all.gguf")
	kvs := []GGUFKV{
		{"general.architecture", "llama"},
		{"t.u8", uint8(200)}, {"t.i8", int8(-5)}, {"t.u16", uint16(60000)}, {"t.i16", int16(-300)},
		{"t.u32", uint32(4000000000)}, {"t.i32", int32(-70000)}, {"t.f32", float32(1.5)}, {"t.bool", true},
		{"t.str", "héllo"}, {"t.u64", uint64(1) << 40}, {"t.i64", int64(-1) << 40}, {"t.f64", 2.25},
		{"t.strs", []string{"a", "", "▁b"}}, {"t.i32s", []int32{1, -2, 3}}, {"t.f32s", []float32{0.5, -1}},
		{"t.u32s", []uint32{7, 8}}, {"t.bools", []bool{true, false}},
	}
	f32 := randVals(3*5, 1, 1)
	f16 := randVals(4*6, 2, 1)
	q8 := randVals(3*64, 3, 0.05)
	bf := randVals(7, 4, 1)
	tensors := []GGUFTensor{
		{Name: "a.f32", Shape: []int{3, 5}, Type: GGMLTypeF32, Data: EncodeF32(f32)},
		{Name: "b.f16", Shape: []int{4, 6}, Type: GGMLTypeF16, Encode: func() ([]byte, error) { return EncodeGGUFData(f16, GGMLTypeF16, 6) }},
		{Name: "c.q8", Shape: []int{3, 64}, Type: GGMLTypeQ8_0, Encode: func() ([]byte, error) { return EncodeGGUFData(q8, GGMLTypeQ8_0, 64) }},
		{Name: "d.bf16", Shape: []int{7}, Type: GGMLTypeBF16, Data: EncodeF32AsBF16(bf)},
	}
	if err := WriteGGUF(path, kvs, tensors); err != nil {
		t.Fatal(err)
	}

	// Independent reader.
	f := readGGUF(t, path)
	if f.version != 3 {
		t.Errorf("version %d", f.version)
	}
	if f.kv["general.alignment"] != uint32(32) {
		t.Errorf("general.alignment = %v", f.kv["general.alignment"])
	}
	for _, kv := range kvs {
		got := f.kv[kv.Key]
		want := any(kv.Value)
		if rv := reflect.ValueOf(kv.Value); rv.Kind() == reflect.Slice {
			w := make([]any, rv.Len())
			for i := range w {
				w[i] = rv.Index(i).Interface()
			}
			want = w
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %#v, want %#v", kv.Key, got, want)
		}
	}
	wantNE := map[string][]uint64{"a.f32": {5, 3}, "b.f16": {6, 4}, "c.q8": {64, 3}, "d.bf16": {7}}
	for _, ti := range f.tensors {
		if !reflect.DeepEqual(ti.ne, wantNE[ti.name]) {
			t.Errorf("%s ne = %v, want %v (reversed shape)", ti.name, ti.ne, wantNE[ti.name])
		}
	}
	for i, x := range f.tensors[0].bytes {
		if x != EncodeF32(f32)[i] {
			t.Fatal("F32 data differs")
		}
	}
	for i := range f16 {
		got := halfToFloat(binary.LittleEndian.Uint16(f.tensors[1].bytes[2*i:]))
		if math.Abs(float64(got-f16[i])) > 1e-3*math.Abs(float64(f16[i]))+1e-7 {
			t.Fatalf("F16 value %d: %g vs %g", i, got, f16[i])
		}
	}
	checkQ8(t, q8, f.tensors[2].bytes)
	for i := range bf {
		got := math.Float32frombits(uint32(binary.LittleEndian.Uint16(f.tensors[3].bytes[2*i:])) << 16)
		if math.Abs(float64(got-bf[i])) > 1e-2*math.Abs(float64(bf[i])) {
			t.Fatalf("BF16 value %d: %g vs %g", i, got, bf[i])
		}
	}
	if f.fileSize%32 != 0 {
		t.Errorf("file size %d is not padded to the alignment", f.fileSize)
	}

	// gguf-parser-go.
	gf, err := gguf.ParseGGUFFile(path)
	if err != nil {
		t.Fatalf("gguf-parser-go: %v", err)
	}
	if gf.Header.Version != gguf.GGUFVersionV3 || gf.Header.TensorCount != 4 || gf.Header.MetadataKVCount != uint64(len(kvs)+1) {
		t.Errorf("header %+v", gf.Header)
	}
	md := gf.Header.MetadataKV
	get := func(k string) gguf.GGUFMetadataKV {
		kv, ok := md.Get(k)
		if !ok {
			t.Fatalf("gguf-parser-go: no key %s", k)
		}
		return kv
	}
	if get("t.u8").ValueUint8() != 200 || get("t.i8").ValueInt8() != -5 || get("t.u16").ValueUint16() != 60000 ||
		get("t.i16").ValueInt16() != -300 || get("t.u32").ValueUint32() != 4000000000 || get("t.i32").ValueInt32() != -70000 ||
		get("t.f32").ValueFloat32() != 1.5 || !get("t.bool").ValueBool() || get("t.str").ValueString() != "héllo" ||
		get("t.u64").ValueUint64() != 1<<40 || get("t.i64").ValueInt64() != -1<<40 || get("t.f64").ValueFloat64() != 2.25 {
		t.Error("gguf-parser-go reads different scalar values")
	}
	if s := get("t.strs").ValueArray().ValuesString(); !reflect.DeepEqual(s, []string{"a", "", "▁b"}) {
		t.Errorf("strings %q", s)
	}
	if s := get("t.i32s").ValueArray().ValuesInt32(); !reflect.DeepEqual(s, []int32{1, -2, 3}) {
		t.Errorf("int32s %v", s)
	}
	if s := get("t.f32s").ValueArray().ValuesFloat32(); !reflect.DeepEqual(s, []float32{0.5, -1}) {
		t.Errorf("float32s %v", s)
	}
	types := map[string]gguf.GGMLType{"a.f32": gguf.GGMLTypeF32, "b.f16": gguf.GGMLTypeF16, "c.q8": gguf.GGMLTypeQ8_0, "d.bf16": gguf.GGMLTypeBF16}
	for _, ti := range gf.TensorInfos {
		if ti.Type != types[ti.Name] || !reflect.DeepEqual(ti.Dimensions, wantNE[ti.Name]) {
			t.Errorf("gguf-parser-go: %s type %v dims %v", ti.Name, ti.Type, ti.Dimensions)
		}
	}
	if gf.TensorDataStartOffset != f.dataOff {
		t.Errorf("data offset: gguf-parser-go %d, ours %d", gf.TensorDataStartOffset, f.dataOff)
	}
}

// checkQ8 checks Q8_0 data against the values it encodes: every value within
// half a quantization step (plus what rounding the scale to f16 adds), the
// block maximum exact up to the f16 scale, and the scale itself max|x|/127.
func checkQ8(t *testing.T, want []float32, data []byte) {
	t.Helper()
	if len(data) != len(want)/32*34 {
		t.Fatalf("Q8_0 data is %d bytes for %d values", len(data), len(want))
	}
	got := dequantQ8(data)
	for b := 0; b < len(want)/32; b++ {
		var amax float64
		for _, x := range want[b*32 : (b+1)*32] {
			amax = math.Max(amax, math.Abs(float64(x)))
		}
		d := amax / 127
		dStored := float64(halfToFloat(binary.LittleEndian.Uint16(data[b*34:])))
		if math.Abs(dStored-d) > d/1024 {
			t.Fatalf("block %d: scale %g, want max|x|/127 = %g", b, dStored, d)
		}
		bound := d*(0.5+127.0/2048) + 1e-12
		for i := b * 32; i < (b+1)*32; i++ {
			if e := math.Abs(float64(got[i] - want[i])); e > bound {
				t.Fatalf("value %d: dequantized %g, original %g, error %g over bound %g", i, got[i], want[i], e, bound)
			}
		}
	}
}

func TestQ8_0ZeroBlockAndRounding(t *testing.T) {
	v := make([]float32, 64)
	v[32] = 1.27 // second block: d = 0.01
	v[33] = -0.005
	v[34] = 0.015 // 1.5 steps: rounds away from zero to 2
	b := QuantizeQ8_0(v)
	if binary.LittleEndian.Uint16(b) != 0 {
		t.Errorf("all-zero block has scale bits %#x", binary.LittleEndian.Uint16(b))
	}
	q := b[34+2:]
	if int8(q[0]) != 127 || int8(q[1]) != -1 || int8(q[2]) != 2 {
		t.Errorf("quants %d %d %d, want 127 -1 2", int8(q[0]), int8(q[1]), int8(q[2]))
	}
	if _, err := EncodeGGUFData(make([]float32, 40), GGMLTypeQ8_0, 40); err == nil {
		t.Error("Q8_0 of rows of 40 accepted")
	}
}

func TestGGUFErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name    string
		kvs     []GGUFKV
		tensors []GGUFTensor
		want    string
	}{
		{"int value", []GGUFKV{{"a", 3}}, nil, `"a"`},
		{"dup key", []GGUFKV{{"a", uint32(1)}, {"a", uint32(2)}}, nil, "twice"},
		{"bad alignment", []GGUFKV{{"general.alignment", uint32(3)}}, nil, "general.alignment"},
		{"short data", nil, []GGUFTensor{{Name: "w", Shape: []int{2, 2}, Type: GGMLTypeF32, Data: make([]byte, 8)}}, `"w"`},
		{"q8 rows", nil, []GGUFTensor{{Name: "w", Shape: []int{2, 48}, Type: GGMLTypeQ8_0, Data: nil}}, "multiple of 32"},
		{"dup tensor", nil, []GGUFTensor{{Name: "w", Shape: []int{1}, Type: GGMLTypeF32, Data: make([]byte, 4)}, {Name: "w", Shape: []int{1}, Type: GGMLTypeF32, Data: make([]byte, 4)}}, "twice"},
		{"5 dims", nil, []GGUFTensor{{Name: "w", Shape: []int{1, 1, 1, 1, 1}, Type: GGMLTypeF32, Data: make([]byte, 4)}}, "1 to 4"},
	}
	for _, c := range cases {
		p := filepath.Join(dir, c.name+".gguf")
		err := WriteGGUF(p, c.kvs, c.tensors)
		wantErr(t, err, c.want)
		if _, statErr := os.Stat(p); statErr == nil {
			t.Errorf("%s: a file was left behind", c.name)
		}
	}
	// An encoder that fails leaves no file and no temporary.
	p := filepath.Join(dir, "enc.gguf")
	err := WriteGGUF(p, nil, []GGUFTensor{{Name: "w", Shape: []int{1}, Type: GGMLTypeF32, Encode: func() ([]byte, error) { return nil, fmt.Errorf("boom") }}})
	wantErr(t, err, "boom", `"w"`)
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
	var buf bytes.Buffer
	if err := EncodeGGUF(&buf, nil, nil); err != nil || buf.Len() == 0 {
		t.Errorf("empty file: %v", err)
	}
}
