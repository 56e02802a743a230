package checkpoint

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

// GGUF v3 reader: the inverse of the writer in gguf.go. OpenGGUF parses the
// header, every metadata entry (arrays included) and every tensor info, and
// checks each against the file's size, so a truncated or corrupt file is an
// error naming the file and what is wrong, never a panic. Tensor data stays
// in the memory map until asked for (GGUFFile.Raw, or a Reader made with
// GGUFFile.Reader).

// ggmlTypeInfo is the block layout of a ggml tensor type: blockSize values
// are stored in typeSize bytes (ggml's type_traits).
type ggmlTypeInfo struct {
	name                string
	blockSize, typeSize int64
}

// ggmlTypes lists the ggml tensor types llama.cpp files may hold, so that a
// file using any of them parses (and a tensor of a type llamatune cannot
// convert is refused by name when it is read).
var ggmlTypes = map[GGMLType]ggmlTypeInfo{
	0: {"F32", 1, 4}, 1: {"F16", 1, 2}, 2: {"Q4_0", 32, 18}, 3: {"Q4_1", 32, 20},
	6: {"Q5_0", 32, 22}, 7: {"Q5_1", 32, 24}, 8: {"Q8_0", 32, 34}, 9: {"Q8_1", 32, 36},
	10: {"Q2_K", 256, 84}, 11: {"Q3_K", 256, 110}, 12: {"Q4_K", 256, 144}, 13: {"Q5_K", 256, 176},
	14: {"Q6_K", 256, 210}, 15: {"Q8_K", 256, 292}, 16: {"IQ2_XXS", 256, 66}, 17: {"IQ2_XS", 256, 74},
	18: {"IQ3_XXS", 256, 98}, 19: {"IQ1_S", 256, 50}, 20: {"IQ4_NL", 32, 18}, 21: {"IQ3_S", 256, 110},
	22: {"IQ2_S", 256, 82}, 23: {"IQ4_XS", 256, 136}, 24: {"I8", 1, 1}, 25: {"I16", 1, 2},
	26: {"I32", 1, 4}, 27: {"I64", 1, 8}, 28: {"F64", 1, 8}, 29: {"IQ1_M", 256, 56},
	30: {"BF16", 1, 2}, 34: {"TQ1_0", 256, 54}, 35: {"TQ2_0", 256, 66}, 39: {"MXFP4", 32, 17},
}

// ggmlReadable are the tensor types a Reader over a GGUF file converts to
// float32, with the safetensors dtype name its TensorInfo reports.
var ggmlReadable = map[GGMLType]string{
	GGMLTypeF32: F32, GGMLTypeF16: F16, GGMLTypeBF16: BF16, GGMLTypeQ8_0: "Q8_0",
}

// GGUFTensorInfo describes one tensor of a GGUF file.
type GGUFTensorInfo struct {
	Name   string
	Shape  []int // row-major, as safetensors: the reverse of GGUF's ne
	Type   GGMLType
	Offset int64 // of the data, relative to the data section
	Size   int64 // bytes
}

// NumElements returns the product of Shape.
func (t GGUFTensorInfo) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= int64(d)
	}
	return n
}

// GGUFFile is an open GGUF file: its metadata, decoded, and its tensors,
// memory-mapped. It is safe for concurrent reads; Close must not run
// concurrently with them.
type GGUFFile struct {
	path      string
	version   uint32
	kvs       []GGUFKV
	byKey     map[string]int
	tensors   []GGUFTensorInfo
	byName    map[string]int
	alignment int64
	headerEnd int64 // bytes before the padding that precedes the data
	mf        *mappedFile
	handedOff bool // the mapping belongs to a Reader (GGUFFile.Reader)
}

// ggufMinSize is the smallest GGUF file: magic, version and two counts.
const ggufMinSize = 4 + 4 + 8 + 8

// IsGGUF reports whether path names a GGUF file by its extension (.gguf,
// any case).
func IsGGUF(path string) bool { return strings.EqualFold(fileExt(path), ".gguf") }

func fileExt(p string) string {
	i := strings.LastIndexAny(p, "./\\")
	if i < 0 || p[i] != '.' {
		return ""
	}
	return p[i:]
}

// OpenGGUF opens and validates a GGUF file (version 2 or 3, little-endian).
// Metadata values decode to the Go types GGUFKV accepts (uint32, float32,
// string, []string, []int32, ...). Errors name the file and the key, tensor
// or byte offset that is wrong.
func OpenGGUF(path string) (*GGUFFile, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	if st.IsDir() {
		return nil, fmt.Errorf("checkpoint: %s is a directory, not a GGUF file", path)
	}
	if st.Size() < ggufMinSize {
		return nil, fmt.Errorf("checkpoint: %s: file is %d bytes, shorter than a GGUF header (%d); the file is truncated or not GGUF", path, st.Size(), ggufMinSize)
	}
	mf, err := mapFile(path)
	if err != nil {
		return nil, err
	}
	g, err := parseGGUF(path, mf.data)
	if err != nil {
		mf.release()
		return nil, err
	}
	g.mf = mf
	mf.dataStart = g.dataStart(mf.data)
	return g, nil
}

// ParseGGUF parses an in-memory GGUF file (name is used in errors). The
// GGUFFile aliases b.
func ParseGGUF(name string, b []byte) (*GGUFFile, error) {
	g, err := parseGGUF(name, b)
	if err != nil {
		return nil, err
	}
	g.mf = &mappedFile{path: name, data: b}
	g.mf.dataStart = g.dataStart(b)
	return g, nil
}

// ggufDec reads little-endian values from b, remembering the first error.
type ggufDec struct {
	b   []byte
	pos int64
	err error
	// what is being read, for errors
	what string
}

func (d *ggufDec) need(n int64) bool {
	if d.err != nil {
		return false
	}
	if n < 0 || n > int64(len(d.b))-d.pos {
		d.err = fmt.Errorf("%s: needs %d bytes at offset %d, but the file ends at %d; the file is truncated or corrupt", d.what, n, d.pos, len(d.b))
		return false
	}
	return true
}

func (d *ggufDec) bytes(n int64) []byte {
	if !d.need(n) {
		return nil
	}
	b := d.b[d.pos : d.pos+n]
	d.pos += n
	return b
}

func (d *ggufDec) u8() uint8 {
	if b := d.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (d *ggufDec) u16() uint16 {
	if b := d.bytes(2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (d *ggufDec) u32() uint32 {
	if b := d.bytes(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (d *ggufDec) u64() uint64 {
	if b := d.bytes(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

// ggufMaxString bounds a key or string value (llama.cpp's chat templates and
// merges are far below it); a larger length is corruption.
const ggufMaxString = 1 << 30

func (d *ggufDec) str() string {
	n := d.u64()
	if d.err != nil {
		return ""
	}
	if n > ggufMaxString {
		d.err = fmt.Errorf("%s: string length %d at offset %d is implausible; the file is corrupt", d.what, n, d.pos-8)
		return ""
	}
	return string(d.bytes(int64(n)))
}

// scalarSize is the byte size of a GGUF scalar type, 0 for string/array.
func scalarSize(t uint32) int64 {
	switch t {
	case ggufU8, ggufI8, ggufBool:
		return 1
	case ggufU16, ggufI16:
		return 2
	case ggufU32, ggufI32, ggufF32:
		return 4
	case ggufU64, ggufI64, ggufF64:
		return 8
	}
	return 0
}

var ggufTypeNames = []string{"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"}

func (d *ggufDec) scalar(t uint32) any {
	switch t {
	case ggufU8:
		return d.u8()
	case ggufI8:
		return int8(d.u8())
	case ggufU16:
		return d.u16()
	case ggufI16:
		return int16(d.u16())
	case ggufU32:
		return d.u32()
	case ggufI32:
		return int32(d.u32())
	case ggufF32:
		return math.Float32frombits(d.u32())
	case ggufBool:
		return d.u8() != 0
	case ggufString:
		return d.str()
	case ggufU64:
		return d.u64()
	case ggufI64:
		return int64(d.u64())
	case ggufF64:
		return math.Float64frombits(d.u64())
	}
	d.err = fmt.Errorf("%s: unknown value type %d", d.what, t)
	return nil
}

// readArray decodes an array into the slice type the writer takes.
func (d *ggufDec) readArray() any {
	elem := d.u32()
	n := d.u64()
	if d.err != nil {
		return nil
	}
	if elem == ggufArray {
		d.err = fmt.Errorf("%s: arrays of arrays are not supported (llama.cpp does not write them)", d.what)
		return nil
	}
	if elem > ggufF64 {
		d.err = fmt.Errorf("%s: array of unknown value type %d", d.what, elem)
		return nil
	}
	// Each element takes at least one byte (a string at least eight).
	minSize := max(scalarSize(elem), 1)
	if elem == ggufString {
		minSize = 8
	}
	if n > uint64(int64(len(d.b))-d.pos)/uint64(minSize) {
		d.err = fmt.Errorf("%s: array of %d %s values at offset %d does not fit in the file; the file is truncated or corrupt", d.what, n, ggufTypeNames[elem], d.pos)
		return nil
	}
	count := int(n)
	switch elem {
	case ggufU8:
		return slices.Clone(d.bytes(int64(count)))
	case ggufString:
		out := make([]string, count)
		for i := range out {
			out[i] = d.str()
		}
		return out
	}
	raw := d.bytes(int64(count) * minSize)
	if d.err != nil {
		return nil
	}
	sub := &ggufDec{b: raw, what: d.what}
	switch elem {
	case ggufI8:
		return fill(count, func() int8 { return int8(sub.u8()) })
	case ggufU16:
		return fill(count, sub.u16)
	case ggufI16:
		return fill(count, func() int16 { return int16(sub.u16()) })
	case ggufU32:
		return fill(count, sub.u32)
	case ggufI32:
		return fill(count, func() int32 { return int32(sub.u32()) })
	case ggufF32:
		return fill(count, func() float32 { return math.Float32frombits(sub.u32()) })
	case ggufBool:
		return fill(count, func() bool { return sub.u8() != 0 })
	case ggufU64:
		return fill(count, sub.u64)
	case ggufI64:
		return fill(count, func() int64 { return int64(sub.u64()) })
	case ggufF64:
		return fill(count, func() float64 { return math.Float64frombits(sub.u64()) })
	}
	return nil
}

func fill[T any](n int, next func() T) []T {
	out := make([]T, n)
	for i := range out {
		out[i] = next()
	}
	return out
}

func parseGGUF(path string, b []byte) (*GGUFFile, error) {
	fail := func(f string, a ...any) error {
		return fmt.Errorf("checkpoint: %s: %s", path, fmt.Sprintf(f, a...))
	}
	if len(b) < ggufMinSize {
		return nil, fail("file is %d bytes, shorter than a GGUF header (%d); the file is truncated or not GGUF", len(b), ggufMinSize)
	}
	if string(b[:4]) != ggufMagic {
		return nil, fail("not a GGUF file (magic %q, want %q)", b[:4], ggufMagic)
	}
	d := &ggufDec{b: b, pos: 4, what: "header"}
	g := &GGUFFile{path: path, version: d.u32(), byKey: map[string]int{}, byName: map[string]int{}, alignment: GGUFDefaultAlignment}
	if v := g.version; v&0xffff == 0 && (v>>24 == 2 || v>>24 == 3) {
		return nil, fail("big-endian GGUF (version %d byte-swapped) is not supported; use a little-endian file", v>>24)
	}
	if g.version != 2 && g.version != 3 {
		return nil, fail("GGUF version %d is not supported (2 and 3 are)", g.version)
	}
	nt, nkv := d.u64(), d.u64()
	// A metadata entry needs at least 8+1+4 bytes, a tensor info 8+1+4+4+8.
	rest := uint64(len(b)) - uint64(d.pos)
	if nkv > rest/13 {
		return nil, fail("header claims %d metadata entries, more than the file can hold; the file is corrupt", nkv)
	}
	if nt > rest/25 {
		return nil, fail("header claims %d tensors, more than the file can hold; the file is corrupt", nt)
	}
	for i := 0; i < int(nkv); i++ {
		d.what = fmt.Sprintf("metadata entry #%d", i)
		key := d.str()
		if d.err == nil {
			d.what = fmt.Sprintf("metadata key %q", key)
		}
		typ := d.u32()
		if d.err != nil {
			return nil, fail("%v", d.err)
		}
		var v any
		switch {
		case typ == ggufArray:
			v = d.readArray()
		case typ <= ggufF64:
			v = d.scalar(typ)
		default:
			return nil, fail("metadata key %q has unknown value type %d", key, typ)
		}
		if d.err != nil {
			return nil, fail("%v", d.err)
		}
		if key == "" {
			return nil, fail("metadata entry #%d has an empty key", i)
		}
		if _, dup := g.byKey[key]; dup {
			return nil, fail("metadata key %q appears twice", key)
		}
		g.byKey[key] = len(g.kvs)
		g.kvs = append(g.kvs, GGUFKV{Key: key, Value: v})
	}
	if v, ok := g.Get("general.alignment"); ok {
		a, ok := v.(uint32)
		if !ok || a == 0 || a&(a-1) != 0 {
			return nil, fail("metadata key general.alignment is %v (%T); it must be a power-of-two uint32", v, v)
		}
		g.alignment = int64(a)
	}
	for i := 0; i < int(nt); i++ {
		t, err := g.readTensorInfo(d, i)
		if err != nil {
			return nil, fail("%v", err)
		}
		g.byName[t.Name] = len(g.tensors)
		g.tensors = append(g.tensors, t)
	}
	g.headerEnd = d.pos
	start := g.dataStart(b)
	if start > int64(len(b)) && len(g.tensors) > 0 {
		return nil, fail("the data section would start at byte %d, past the end of the %d-byte file; the file is truncated", start, len(b))
	}
	dataLen := int64(len(b)) - start
	for _, t := range g.tensors {
		if t.Size >= 0 && (t.Offset > dataLen || t.Size > dataLen-t.Offset) {
			return nil, fail("tensor %q (%v, shape %v) needs bytes [%d, %d) of the data section, which has %d bytes; the file is truncated", t.Name, t.Type, t.Shape, t.Offset, t.Offset+t.Size, dataLen)
		}
	}
	return g, nil
}

// readTensorInfo reads tensor info #i: name, ne, type and data offset,
// checked for plausibility (dimensions, size, alignment, whole blocks).
func (g *GGUFFile) readTensorInfo(d *ggufDec, i int) (GGUFTensorInfo, error) {
	d.what = fmt.Sprintf("tensor info #%d", i)
	name := d.str()
	if d.err == nil {
		d.what = fmt.Sprintf("tensor %q", name)
	}
	nd := d.u32()
	if d.err == nil && (nd == 0 || nd > 4) {
		return GGUFTensorInfo{}, fmt.Errorf("tensor %q has %d dimensions (GGUF allows 1 to 4); the file is corrupt", name, nd)
	}
	ne := make([]uint64, nd)
	for j := range ne {
		ne[j] = d.u64()
	}
	typ := GGMLType(d.u32())
	off := d.u64()
	if d.err != nil {
		return GGUFTensorInfo{}, d.err
	}
	if _, dup := g.byName[name]; dup {
		return GGUFTensorInfo{}, fmt.Errorf("tensor %q appears twice", name)
	}
	t := GGUFTensorInfo{Name: name, Type: typ, Shape: make([]int, nd), Size: -1}
	n := int64(1)
	for j, e := range ne {
		if e > math.MaxInt32 || (e > 0 && n > math.MaxInt64/int64(e)/8) {
			return GGUFTensorInfo{}, fmt.Errorf("tensor %q has an implausible shape (ne %v); the file is corrupt", name, ne)
		}
		n *= int64(e)
		t.Shape[int(nd)-1-j] = int(e) // ne[0] is innermost
	}
	if off > math.MaxInt64/2 || int64(off)%g.alignment != 0 {
		return GGUFTensorInfo{}, fmt.Errorf("tensor %q: data offset %d is not a multiple of the alignment %d; the file is corrupt", name, off, g.alignment)
	}
	t.Offset = int64(off)
	if ti, ok := ggmlTypes[typ]; ok {
		if len(ne) > 0 && int64(ne[0])%ti.blockSize != 0 {
			return GGUFTensorInfo{}, fmt.Errorf("tensor %q: type %s stores blocks of %d values, but its rows have %d; the file is corrupt", name, ti.name, ti.blockSize, ne[0])
		}
		t.Size = n / ti.blockSize * ti.typeSize
	}
	return t, nil
}

// dataStart is where the data section begins: the header padded to the
// alignment.
func (g *GGUFFile) dataStart(b []byte) int64 {
	return padTo(g.headerEnd, g.alignment)
}

// DataOffset is the byte offset of the data section in the file (the
// metadata and tensor infos come before it).
func (g *GGUFFile) DataOffset() int64 { return padTo(g.headerEnd, g.alignment) }

// Path returns the file's path.
func (g *GGUFFile) Path() string { return g.path }

// Version returns the GGUF version (2 or 3).
func (g *GGUFFile) Version() uint32 { return g.version }

// KVs returns the metadata in file order (a copy of the list; array values
// are shared, do not modify them).
func (g *GGUFFile) KVs() []GGUFKV { return slices.Clone(g.kvs) }

// Get returns the value of metadata key.
func (g *GGUFFile) Get(key string) (any, bool) {
	i, ok := g.byKey[key]
	if !ok {
		return nil, false
	}
	return g.kvs[i].Value, true
}

// Uint returns key as an unsigned integer; any integer type that holds a
// value ≥ 0 is accepted (writers differ: u32, i32, u64). ok is false when
// the key is absent; err says when it has another type.
func (g *GGUFFile) Uint(key string) (v uint64, ok bool, err error) {
	x, ok := g.Get(key)
	if !ok {
		return 0, false, nil
	}
	var s int64
	switch n := x.(type) {
	case uint8:
		return uint64(n), true, nil
	case uint16:
		return uint64(n), true, nil
	case uint32:
		return uint64(n), true, nil
	case uint64:
		return n, true, nil
	case int8:
		s = int64(n)
	case int16:
		s = int64(n)
	case int32:
		s = int64(n)
	case int64:
		s = n
	default:
		return 0, true, fmt.Errorf("checkpoint: %s: metadata key %s is %T, want an integer", g.path, key, x)
	}
	if s < 0 {
		return 0, true, fmt.Errorf("checkpoint: %s: metadata key %s is %d, want ≥ 0", g.path, key, s)
	}
	return uint64(s), true, nil
}

// Float returns key as a float64 (f32, f64 or an integer type). An f32 is
// widened through its shortest decimal form, so 1e-5 stored as f32 reads
// as 1e-5 rather than 9.999999747378752e-06.
func (g *GGUFFile) Float(key string) (v float64, ok bool, err error) {
	x, ok := g.Get(key)
	if !ok {
		return 0, false, nil
	}
	switch n := x.(type) {
	case float32:
		f, _ := strconv.ParseFloat(strconv.FormatFloat(float64(n), 'g', -1, 32), 64)
		return f, true, nil
	case float64:
		return n, true, nil
	}
	u, _, err := g.Uint(key)
	if err != nil {
		return 0, true, fmt.Errorf("checkpoint: %s: metadata key %s is %T, want a number", g.path, key, x)
	}
	return float64(u), true, nil
}

// String returns key as a string.
func (g *GGUFFile) String(key string) (v string, ok bool, err error) {
	x, ok := g.Get(key)
	if !ok {
		return "", false, nil
	}
	s, isStr := x.(string)
	if !isStr {
		return "", true, fmt.Errorf("checkpoint: %s: metadata key %s is %T, want a string", g.path, key, x)
	}
	return s, true, nil
}

// Tensors returns the tensor infos in file order (shapes are shared; do not
// modify them).
func (g *GGUFFile) Tensors() []GGUFTensorInfo { return slices.Clone(g.tensors) }

// Tensor returns the info of tensor name.
func (g *GGUFFile) Tensor(name string) (GGUFTensorInfo, bool) {
	i, ok := g.byName[name]
	if !ok {
		return GGUFTensorInfo{}, false
	}
	t := g.tensors[i]
	t.Shape = slices.Clone(t.Shape)
	return t, true
}

// Raw returns the stored bytes of tensor name (read-only, zero-copy from the
// mapping; valid until Close). A tensor of a type this package does not
// know the layout of is an error.
func (g *GGUFFile) Raw(name string) ([]byte, error) {
	if g.mf == nil || g.handedOff {
		return nil, fmt.Errorf("checkpoint: %s: file is closed (tensor %q)", g.path, name)
	}
	t, ok := g.Tensor(name)
	if !ok {
		return nil, fmt.Errorf("checkpoint: %s has no tensor %q: %w", g.path, name, ErrNotFound)
	}
	if t.Size < 0 {
		return nil, fmt.Errorf("checkpoint: %s: tensor %q has ggml type %v, whose layout llamatune does not know", g.path, name, t.Type)
	}
	a := g.mf.dataStart + t.Offset
	return g.mf.data[a : a+t.Size : a+t.Size], nil
}

// Close unmaps the file (unless a Reader took the mapping over). Calling it
// twice is harmless.
func (g *GGUFFile) Close() error {
	if g.mf == nil || g.handedOff {
		g.mf = nil
		return nil
	}
	mf := g.mf
	g.mf = nil
	if mf.release != nil {
		if err := mf.release(); err != nil {
			return fmt.Errorf("checkpoint: unmap %s: %w", g.path, err)
		}
	}
	return nil
}

// GGUFView names one tensor of a GGUF file the way a Reader shows it.
type GGUFView struct {
	Name   string // name in the Reader (an HF key, say)
	Tensor string // the GGUF tensor
	// RowOrder, when not nil, reorders the rows of a matrix: row i of the
	// view is stored row RowOrder[i] (a permutation of 0..rows-1).
	RowOrder []int
}

// Reader returns a Reader over the tensors views name, converting F32, F16,
// BF16 and Q8_0 data to float32 or bfloat16 as a safetensors Reader does
// (TensorInfo.DType is "F32", "F16", "BF16" or "Q8_0"). Raw gives the stored
// bytes zero-copy for a tensor without RowOrder and a reordered copy with
// one. A tensor of any other ggml type is an error naming it, its type and
// how to convert the file.
//
// The Reader takes the file's mapping over: closing the Reader unmaps it,
// and g gives metadata only from then on (Close on it does nothing).
func (g *GGUFFile) Reader(views []GGUFView) (*Reader, error) {
	if g.mf == nil || g.handedOff {
		return nil, fmt.Errorf("checkpoint: %s: file is closed", g.path)
	}
	r := &Reader{path: g.path, entries: map[string]*entry{}}
	for _, v := range views {
		t, ok := g.Tensor(v.Tensor)
		if !ok {
			return nil, fmt.Errorf("checkpoint: %s has no tensor %q (for %s); the file is incomplete or not a Llama model: %w", g.path, v.Tensor, v.Name, ErrNotFound)
		}
		dt, ok := ggmlReadable[t.Type]
		if !ok {
			return nil, UnsupportedGGMLError(g.path, t.Name, t.Type)
		}
		if _, dup := r.entries[v.Name]; dup {
			return nil, fmt.Errorf("checkpoint: GGUF view of %s names %q twice", g.path, v.Name)
		}
		cols := t.Shape[len(t.Shape)-1]
		rows := int(t.NumElements()) / max(cols, 1)
		if v.RowOrder != nil {
			if len(v.RowOrder) != rows {
				return nil, fmt.Errorf("checkpoint: %s: tensor %q has %d rows, the row order %d", g.path, t.Name, rows, len(v.RowOrder))
			}
			seen := make([]bool, rows)
			for _, o := range v.RowOrder {
				if o < 0 || o >= rows || seen[o] {
					return nil, fmt.Errorf("checkpoint: %s: row order for tensor %q is not a permutation of its %d rows", g.path, t.Name, rows)
				}
				seen[o] = true
			}
		}
		r.entries[v.Name] = &entry{
			info: TensorInfo{Name: v.Name, DType: dt, Shape: slices.Clone(t.Shape), Offsets: [2]int64{t.Offset, t.Offset + t.Size}, File: g.path},
			file: g.mf,
			gguf: &ggufEntry{typ: t.Type, cols: cols, rows: rows, rowOrder: slices.Clone(v.RowOrder), tensor: t.Name},
		}
	}
	r.files = []*mappedFile{g.mf}
	g.handedOff = true
	r.finish()
	return r, nil
}

// UnsupportedGGMLError is the error for a GGUF tensor of a type llamatune
// cannot read.
func UnsupportedGGMLError(file, tensor string, t GGMLType) error {
	return fmt.Errorf("%s: tensor %s has type %v; llamatune reads F32, F16, BF16 and Q8_0 GGUF tensors — convert with llama.cpp's `llama-quantize --allow-requantize %s out-q8_0.gguf Q8_0` (requantizing loses precision; the original F16/BF16 GGUF or HF model is better) or use the HF model", file, tensor, t, file)
}

// ggufEntry is how a Reader entry over a GGUF tensor is stored.
type ggufEntry struct {
	typ        GGMLType
	rows, cols int
	rowOrder   []int // nil: as stored
	tensor     string
}

func (g *ggufEntry) rowBytes() int64 {
	b, _ := GGMLTypeBytes(g.typ, int64(g.cols), int64(g.cols))
	return b
}

// srcRow is the stored row of view row i.
func (g *ggufEntry) srcRow(i int) int {
	if g.rowOrder == nil {
		return i
	}
	return g.rowOrder[i]
}

// decodeGGMLRow widens values [from, from+len(dst)) of one stored row.
func decodeGGMLRow(dst []float32, row []byte, t GGMLType, from int) {
	switch t {
	case GGMLTypeQ8_0:
		for i := range dst {
			e := from + i
			blk := row[e/Q8_0BlockSize*Q8_0BlockBytes:]
			d := F16ToF32(binary.LittleEndian.Uint16(blk))
			dst[i] = d * float32(int8(blk[2+e%Q8_0BlockSize]))
		}
	default:
		size := int(ggmlTypes[t].typeSize)
		decodeToF32(dst, row[from*size:(from+len(dst))*size], ggmlReadable[t])
	}
}

// ggufRange is F32Range for a GGUF entry: row by row, through RowOrder.
func (e *entry) ggufRange(start int, dst []float32) {
	g := e.gguf
	rb := g.rowBytes()
	base := e.file.dataStart + e.info.Offsets[0]
	for len(dst) > 0 {
		r, c := start/g.cols, start%g.cols
		n := min(len(dst), g.cols-c)
		off := base + int64(g.srcRow(r))*rb
		decodeGGMLRow(dst[:n], e.file.data[off:off+rb], g.typ, c)
		dst, start = dst[n:], start+n
	}
}

// ggufRaw returns the stored bytes with the rows in view order (a copy when
// the rows are reordered).
func (e *entry) ggufRaw() []byte {
	g := e.gguf
	a := e.file.dataStart + e.info.Offsets[0]
	b := e.file.dataStart + e.info.Offsets[1]
	raw := e.file.data[a:b:b]
	if g.rowOrder == nil {
		return raw
	}
	rb := g.rowBytes()
	out := make([]byte, len(raw))
	for i := 0; i < g.rows; i++ {
		s := int64(g.srcRow(i)) * rb
		copy(out[int64(i)*rb:], raw[s:s+rb])
	}
	return out
}

// ggufEvictSpan returns the byte span [a, b) (relative to the file) holding
// view elements [start, end).
func (e *entry) ggufEvictSpan(start, end int64) (int64, int64) {
	g := e.gguf
	r0, r1 := int(start)/g.cols, int((end+int64(g.cols)-1)/int64(g.cols))
	lo, hi := g.srcRow(r0), g.srcRow(r0)
	for r := r0; r < r1; r++ {
		s := g.srcRow(r)
		lo, hi = min(lo, s), max(hi, s)
	}
	rb := g.rowBytes()
	base := e.file.dataStart + e.info.Offsets[0]
	return base + int64(lo)*rb, base + int64(hi+1)*rb
}
