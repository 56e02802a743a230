package checkpoint

import (
	"bytes"
	"encoding/binary"
	"math"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	gguf "github.com/gpustack/gguf-parser-go"
)

// allTypesGGUF writes a GGUF with every metadata type and one tensor of each
// type the writer encodes; it returns the path, the metadata and the values.
func allTypesGGUF(t testing.TB) (string, []GGUFKV, map[string][]float32) {
	path := filepath.Join(t.TempDir(), "all.gguf")
	kvs := []GGUFKV{
		{"general.architecture", "llama"},
		{"t.u8", uint8(200)}, {"t.i8", int8(-5)}, {"t.u16", uint16(60000)}, {"t.i16", int16(-300)},
		{"t.u32", uint32(4000000000)}, {"t.i32", int32(-70000)}, {"t.f32", float32(1.5)}, {"t.bool", true},
		{"t.str", "héllo"}, {"t.u64", uint64(1) << 40}, {"t.i64", int64(-1) << 40}, {"t.f64", 2.25},
		{"t.strs", []string{"a", "", "▁b"}}, {"t.i32s", []int32{1, -2, 3}}, {"t.f32s", []float32{0.5, -1}},
		{"t.u32s", []uint32{7, 8}}, {"t.bools", []bool{true, false}}, {"t.u8s", []uint8{1, 2, 3}},
		{"t.i8s", []int8{-1}}, {"t.u16s", []uint16{9}}, {"t.i16s", []int16{-9}}, {"t.u64s", []uint64{1 << 50}},
		{"t.i64s", []int64{-1 << 50}}, {"t.f64s", []float64{0.125}}, {"t.empty", []string{}},
	}
	vals := map[string][]float32{
		"a.f32": randVals(3*5, 1, 1), "b.f16": randVals(4*6, 2, 1),
		"c.q8": randVals(4*64, 3, 0.05), "d.bf16": randVals(7, 4, 1),
	}
	enc := func(name string, typ GGMLType, cols int) []byte {
		b, err := EncodeGGUFData(vals[name], typ, cols)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tensors := []GGUFTensor{
		{Name: "a.f32", Shape: []int{3, 5}, Type: GGMLTypeF32, Data: enc("a.f32", GGMLTypeF32, 5)},
		{Name: "b.f16", Shape: []int{4, 6}, Type: GGMLTypeF16, Data: enc("b.f16", GGMLTypeF16, 6)},
		{Name: "c.q8", Shape: []int{4, 64}, Type: GGMLTypeQ8_0, Data: enc("c.q8", GGMLTypeQ8_0, 64)},
		{Name: "d.bf16", Shape: []int{7}, Type: GGMLTypeBF16, Data: enc("d.bf16", GGMLTypeBF16, 7)},
	}
	if err := WriteGGUF(path, kvs, tensors); err != nil {
		t.Fatal(err)
	}
	return path, kvs, vals
}

func TestGGUFReadBack(t *testing.T) {
	path, kvs, vals := allTypesGGUF(t)
	g, err := OpenGGUF(path)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.Version() != 3 {
		t.Errorf("version %d", g.Version())
	}
	for _, kv := range kvs {
		got, ok := g.Get(kv.Key)
		if !ok || !reflect.DeepEqual(got, kv.Value) {
			t.Errorf("%s = %#v (%T), want %#v (%T)", kv.Key, got, got, kv.Value, kv.Value)
		}
	}
	if a, _ := g.Get("general.alignment"); a != uint32(32) {
		t.Errorf("general.alignment %v", a)
	}
	if n, ok, err := g.Uint("t.i32s"); err == nil || !ok || n != 0 {
		t.Errorf("Uint of an array: %v %v %v", n, ok, err)
	}
	if n, _, err := g.Uint("t.u16"); err != nil || n != 60000 {
		t.Errorf("Uint(t.u16) = %d, %v", n, err)
	}
	if _, _, err := g.Uint("t.i8"); err == nil {
		t.Error("negative i8 read as an unsigned integer")
	}
	if f, _, err := g.Float("t.f64"); err != nil || f != 2.25 {
		t.Errorf("Float(t.f64) = %g, %v", f, err)
	}
	if s, _, err := g.String("t.str"); err != nil || s != "héllo" {
		t.Errorf("String = %q, %v", s, err)
	}
	wantShape := map[string][]int{"a.f32": {3, 5}, "b.f16": {4, 6}, "c.q8": {4, 64}, "d.bf16": {7}}
	for _, ti := range g.Tensors() {
		if !reflect.DeepEqual(ti.Shape, wantShape[ti.Name]) {
			t.Errorf("%s shape %v, want %v", ti.Name, ti.Shape, wantShape[ti.Name])
		}
	}
	raw, err := g.Raw("a.f32")
	if err != nil || !bytes.Equal(raw, EncodeF32(vals["a.f32"])) {
		t.Errorf("Raw(a.f32) differs: %v", err)
	}

	// A Reader view: each type widens to what the writer encoded, and a
	// row order reorders the rows.
	order := []int{2, 0, 3, 1}
	r, err := g.Reader([]GGUFView{{Name: "A", Tensor: "a.f32"}, {Name: "B", Tensor: "b.f16", RowOrder: order},
		{Name: "C", Tensor: "c.q8", RowOrder: order}, {Name: "D", Tensor: "d.bf16"}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := g.Close(); err != nil { // the Reader owns the mapping now
		t.Fatal(err)
	}
	decoded := map[string][]float32{}
	for name, typ := range map[string]GGMLType{"a.f32": GGMLTypeF32, "b.f16": GGMLTypeF16, "c.q8": GGMLTypeQ8_0, "d.bf16": GGMLTypeBF16} {
		cols := wantShape[name][len(wantShape[name])-1]
		b, _ := EncodeGGUFData(vals[name], typ, cols)
		switch typ {
		case GGMLTypeQ8_0:
			decoded[name], _ = DequantizeQ8_0(b)
		case GGMLTypeF32:
			decoded[name] = vals[name]
		case GGMLTypeF16:
			decoded[name] = F16sToF32(decodeU16(b))
		case GGMLTypeBF16:
			decoded[name] = BF16sToF32(decodeU16(b))
		}
	}
	reorder := func(v []float32, cols int) []float32 {
		out := make([]float32, len(v))
		for i, o := range order {
			copy(out[i*cols:(i+1)*cols], v[o*cols:(o+1)*cols])
		}
		return out
	}
	want := map[string][]float32{"A": decoded["a.f32"], "B": reorder(decoded["b.f16"], 6), "C": reorder(decoded["c.q8"], 64), "D": decoded["d.bf16"]}
	dtypes := map[string]string{"A": F32, "B": F16, "C": "Q8_0", "D": BF16}
	for name, w := range want {
		info, _ := r.Info(name)
		if info.DType != dtypes[name] {
			t.Errorf("%s dtype %s, want %s", name, info.DType, dtypes[name])
		}
		got, err := r.F32(name)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, w) {
			t.Errorf("%s: F32 = %v, want %v", name, got[:4], w[:4])
		}
		// Ranges that cross rows, one element at a time and in odd pieces.
		for _, step := range []int{1, 5, 7} {
			part := make([]float32, len(w))
			for s := 0; s < len(w); s += step {
				if err := r.F32Range(name, s, part[s:min(s+step, len(w))]); err != nil {
					t.Fatal(err)
				}
				r.Evict(name, s, step)
			}
			if !reflect.DeepEqual(part, w) {
				t.Errorf("%s: F32Range in steps of %d differs", name, step)
			}
		}
		bf, err := r.BF16(name)
		if err != nil {
			t.Fatal(err)
		}
		for i := range bf {
			if bf[i] != F32ToBF16(w[i]) {
				t.Fatalf("%s: BF16[%d] = %#x, want %#x", name, i, bf[i], F32ToBF16(w[i]))
			}
		}
	}
	// Raw of a reordered F16 tensor is the reordered stored bytes.
	rb, _ := r.Raw("B")
	if got := F16sToF32(decodeU16(rb)); !reflect.DeepEqual(got, want["B"]) {
		t.Error("Raw of a reordered tensor differs")
	}
	if err := r.Expect("C", []int{4, 64}); err != nil {
		t.Error(err)
	}
}

func decodeU16(b []byte) []uint16 {
	out := make([]uint16, len(b)/2)
	for i := range out {
		out[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return out
}

// q4kGGUF is a file with one tensor whose type field says Q4_K.
func q4kGGUF(t testing.TB) []byte {
	var buf bytes.Buffer
	v := randVals(256, 9, 1)
	if err := EncodeGGUF(&buf, []GGUFKV{{"general.architecture", "llama"}},
		[]GGUFTensor{{Name: "blk.0.attn_q.weight", Shape: []int{1, 256}, Type: GGMLTypeQ8_0, Data: QuantizeQ8_0(v)}}); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	i := bytes.Index(b, []byte("blk.0.attn_q.weight"))
	typ := i + len("blk.0.attn_q.weight") + 4 + 2*8 // n_dims, ne[2]
	binary.LittleEndian.PutUint32(b[typ:], 12)      // Q4_K
	return b
}

func TestGGUFUnsupportedType(t *testing.T) {
	g, err := ParseGGUF("model.gguf", q4kGGUF(t))
	if err != nil {
		t.Fatal(err)
	}
	ti, _ := g.Tensor("blk.0.attn_q.weight")
	if ti.Type.String() != "Q4_K" || ti.Size != 144 {
		t.Errorf("type %v size %d", ti.Type, ti.Size)
	}
	_, err = g.Reader([]GGUFView{{Name: "q", Tensor: "blk.0.attn_q.weight"}})
	wantErr(t, err, "model.gguf", "blk.0.attn_q.weight", "Q4_K", "llama-quantize", "Q8_0", "HF model")
	_, err = g.Reader([]GGUFView{{Name: "q", Tensor: "missing"}})
	wantErr(t, err, "model.gguf", `"missing"`)
}

// TestGGUFCorrupt: every truncation and a few targeted corruptions give an
// error naming the file, never a panic.
func TestGGUFCorrupt(t *testing.T) {
	path, _, _ := allTypesGGUF(t)
	good := mustRead(t, path)
	lastTensorEnd := len(good) // the file ends right after the padded last tensor
	for n := 0; n < len(good); n++ {
		_, err := ParseGGUF("x.gguf", good[:n])
		if n < lastTensorEnd-32 && err == nil {
			t.Fatalf("truncated to %d of %d bytes: no error", n, len(good))
		}
		if err != nil && !strings.Contains(err.Error(), "x.gguf") {
			t.Fatalf("error does not name the file: %v", err)
		}
	}
	mut := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	cases := []struct {
		name string
		b    []byte
		want string
	}{
		{"magic", mut(func(b []byte) { copy(b, "GGUX") }), "not a GGUF file"},
		{"version", mut(func(b []byte) { b[4] = 9 }), "version 9"},
		{"big-endian", mut(func(b []byte) { binary.BigEndian.PutUint32(b[4:], 3) }), "big-endian"},
		{"tensors", mut(func(b []byte) { binary.LittleEndian.PutUint64(b[8:], math.MaxUint64) }), "tensors"},
		{"kvs", mut(func(b []byte) { binary.LittleEndian.PutUint64(b[16:], 1<<40) }), "metadata entries"},
		{"key length", mut(func(b []byte) { binary.LittleEndian.PutUint64(b[24:], 1<<62) }), "implausible"},
		{"value type", mut(func(b []byte) {
			i := bytes.Index(b, []byte("general.architecture")) + len("general.architecture")
			binary.LittleEndian.PutUint32(b[i:], 99)
		}), "unknown value type 99"},
		{"dims", mut(func(b []byte) {
			i := bytes.Index(b, []byte("a.f32")) + len("a.f32")
			binary.LittleEndian.PutUint32(b[i:], 7)
		}), "7 dimensions"},
		{"ne", mut(func(b []byte) {
			i := bytes.Index(b, []byte("a.f32")) + len("a.f32") + 4
			binary.LittleEndian.PutUint64(b[i:], 1<<40)
		}), "shape"},
		{"offset", mut(func(b []byte) {
			i := bytes.Index(b, []byte("d.bf16")) + len("d.bf16") + 4 + 8 + 4
			binary.LittleEndian.PutUint64(b[i:], 1<<20)
		}), "truncated"},
		{"misaligned", mut(func(b []byte) {
			i := bytes.Index(b, []byte("d.bf16")) + len("d.bf16") + 4 + 8 + 4
			binary.LittleEndian.PutUint64(b[i:], 3)
		}), "alignment"},
	}
	for _, c := range cases {
		_, err := ParseGGUF("x.gguf", c.b)
		wantErr(t, err, "x.gguf", c.want)
	}
	if _, err := OpenGGUF(filepath.Join(t.TempDir(), "none.gguf")); err == nil {
		t.Error("missing file opened")
	}
	short := writeBytes(t, t.TempDir(), "short.gguf", []byte("GGUF"))
	_, err := OpenGGUF(short)
	wantErr(t, err, "short.gguf", "truncated")
}

func mustRead(t testing.TB, path string) []byte {
	t.Helper()
	g, err := OpenGGUF(path)
	if err != nil {
		t.Fatal(err)
	}
	b := bytes.Clone(g.mf.data)
	g.Close()
	return b
}

// FuzzParseGGUF: arbitrary bytes never panic; an accepted file's tensors of
// readable types all convert.
func FuzzParseGGUF(f *testing.F) {
	path, _, _ := allTypesGGUF(f)
	f.Add(mustRead(f, path))
	f.Add(q4kGGUF(f))
	f.Add([]byte("GGUF\x03\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := ParseGGUF("fuzz.gguf", data)
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.gguf") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		var views []GGUFView
		for _, ti := range g.Tensors() {
			if _, ok := ggmlReadable[ti.Type]; ok {
				views = append(views, GGUFView{Name: ti.Name, Tensor: ti.Name})
			}
		}
		r, err := g.Reader(views)
		if err != nil {
			return
		}
		for _, k := range r.Keys() {
			if _, err := r.F32(k); err != nil {
				t.Fatal(err)
			}
			if _, err := r.BF16(k); err != nil {
				t.Fatal(err)
			}
			r.Evict(k, 0, 1<<30)
		}
	})
}

// TestGGUFReaderMatchesParser: an independent reader (gguf-parser-go) finds
// the same keys, tensor types, shapes and data offsets as OpenGGUF.
func TestGGUFReaderMatchesParser(t *testing.T) {
	path, _, _ := allTypesGGUF(t)
	g, err := OpenGGUF(path)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	gf, err := gguf.ParseGGUFFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if gf.TensorDataStartOffset != g.DataOffset() {
		t.Errorf("data section at %d, gguf-parser-go says %d", g.DataOffset(), gf.TensorDataStartOffset)
	}
	if len(gf.Header.MetadataKV) != len(g.KVs()) {
		t.Errorf("%d keys, gguf-parser-go %d", len(g.KVs()), len(gf.Header.MetadataKV))
	}
	for i, kv := range gf.Header.MetadataKV {
		if kv.Key != g.KVs()[i].Key {
			t.Errorf("key %d: %s, gguf-parser-go %s", i, g.KVs()[i].Key, kv.Key)
		}
	}
	for _, ti := range gf.TensorInfos {
		mine, ok := g.Tensor(ti.Name)
		if !ok {
			t.Fatalf("no tensor %s", ti.Name)
		}
		ne := make([]uint64, len(mine.Shape))
		for i, d := range mine.Shape {
			ne[len(ne)-1-i] = uint64(d)
		}
		if uint32(mine.Type) != uint32(ti.Type) || !reflect.DeepEqual(ne, ti.Dimensions) ||
			uint64(mine.Offset) != ti.Offset || uint64(mine.Size) != ti.Bytes() {
			t.Errorf("%s: ours %v %v @%d+%d, gguf-parser-go %v %v @%d+%d", ti.Name, mine.Type, ne, mine.Offset, mine.Size, ti.Type, ti.Dimensions, ti.Offset, ti.Bytes())
		}
	}
}
