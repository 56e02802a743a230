package checkpoint

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// GGUF v3 writer (the file format of llama.cpp / ggml).
//
// Layout, all little-endian:
//
//	magic "GGUF" | version u32 = 3 | tensor_count u64 | kv_count u64
//	kv_count × (key: gguf string | value_type u32 | value)
//	tensor_count × (name: gguf string | n_dims u32 | ne[n_dims] u64 | ggml_type u32 | offset u64)
//	padding to general.alignment (default 32)
//	tensor data, each tensor starting at a multiple of the alignment
//
// A gguf string is a u64 byte length and the bytes (no terminator). An array
// value is element type u32, count u64, the elements. ne[0] is the length of
// the innermost (contiguous) dimension, so a row-major [rows, cols] matrix has
// ne = [cols, rows]: GGUF lists the dimensions in the reverse order of a
// PyTorch/safetensors shape. Offsets are relative to the start of the data
// section.

// GGMLType is a ggml tensor type (enum ggml_type).
type GGMLType uint32

// The tensor types the writer encodes.
const (
	GGMLTypeF32  GGMLType = 0
	GGMLTypeF16  GGMLType = 1
	GGMLTypeQ8_0 GGMLType = 8
	GGMLTypeBF16 GGMLType = 30
)

// Q8_0 block: an f16 scale d followed by 32 int8 quants; x ≈ d·q.
const (
	Q8_0BlockSize  = 32
	Q8_0BlockBytes = 2 + Q8_0BlockSize
)

func (t GGMLType) String() string {
	switch t {
	case GGMLTypeF32:
		return "F32"
	case GGMLTypeF16:
		return "F16"
	case GGMLTypeQ8_0:
		return "Q8_0"
	case GGMLTypeBF16:
		return "BF16"
	}
	if ti, ok := ggmlTypes[t]; ok {
		return ti.name
	}
	return fmt.Sprintf("ggml_type(%d)", uint32(t))
}

// ParseGGMLType maps "F32", "F16", "BF16", "Q8_0" (any case) to a type.
func ParseGGMLType(s string) (GGMLType, error) {
	switch s {
	case "F32", "f32":
		return GGMLTypeF32, nil
	case "F16", "f16":
		return GGMLTypeF16, nil
	case "BF16", "bf16":
		return GGMLTypeBF16, nil
	case "Q8_0", "q8_0":
		return GGMLTypeQ8_0, nil
	}
	return 0, fmt.Errorf("unknown GGUF tensor type %q (F32, F16, BF16, Q8_0)", s)
}

// GGMLTypeBytes returns the byte size of n elements of t laid out in rows of
// rowLen elements (rowLen matters for block types: Q8_0 needs rowLen % 32 == 0).
func GGMLTypeBytes(t GGMLType, n, rowLen int64) (int64, error) {
	switch t {
	case GGMLTypeF32:
		return 4 * n, nil
	case GGMLTypeF16, GGMLTypeBF16:
		return 2 * n, nil
	case GGMLTypeQ8_0:
		if rowLen%Q8_0BlockSize != 0 {
			return 0, fmt.Errorf("Q8_0 needs a row length that is a multiple of %d, got %d", Q8_0BlockSize, rowLen)
		}
		return n / Q8_0BlockSize * Q8_0BlockBytes, nil
	}
	return 0, fmt.Errorf("unsupported GGUF tensor type %v", t)
}

// GGUF metadata value types (enum gguf_type).
const (
	ggufU8 uint32 = iota
	ggufI8
	ggufU16
	ggufI16
	ggufU32
	ggufI32
	ggufF32
	ggufBool
	ggufString
	ggufArray
	ggufU64
	ggufI64
	ggufF64
)

// GGUFKV is one metadata entry. Value is one of: uint8, int8, uint16, int16,
// uint32, int32, uint64, int64, float32, float64, bool, string, or a slice
// of one of them ([]string, []int32, []float32, ...), which is written as a
// GGUF array. Plain int is not accepted: GGUF readers check exact types
// (llama.cpp wants u32 for most hyper-parameters), so say which one.
type GGUFKV struct {
	Key   string
	Value any
}

// GGUFTensor is one tensor to write. Shape is row-major as in safetensors
// ([rows, cols]); the writer reverses it into GGUF's ne order. Data holds the
// encoded bytes (EncodeGGUFData); alternatively Encode produces them when
// the tensor is written, so only one tensor's encoding is in memory at a time.
// The writer calls Encode once, writes the bytes and lets go of them before
// it encodes the next tensor, so an encoder may return the same buffer each
// time (or a read-only slice of a Reader's mapping).
type GGUFTensor struct {
	Name   string
	Shape  []int
	Type   GGMLType
	Data   []byte
	Encode func() ([]byte, error)
}

// GGUFDefaultAlignment is the alignment llama.cpp assumes without general.alignment.
const GGUFDefaultAlignment = 32

const ggufMagic = "GGUF"
const ggufVersion = 3

// kvType returns the GGUF value type of v and, for arrays, the element type.
func kvType(v any) (typ, elem uint32, ok bool) {
	switch v.(type) {
	case uint8:
		return ggufU8, 0, true
	case int8:
		return ggufI8, 0, true
	case uint16:
		return ggufU16, 0, true
	case int16:
		return ggufI16, 0, true
	case uint32:
		return ggufU32, 0, true
	case int32:
		return ggufI32, 0, true
	case float32:
		return ggufF32, 0, true
	case bool:
		return ggufBool, 0, true
	case string:
		return ggufString, 0, true
	case uint64:
		return ggufU64, 0, true
	case int64:
		return ggufI64, 0, true
	case float64:
		return ggufF64, 0, true
	case []uint8:
		return ggufArray, ggufU8, true
	case []int8:
		return ggufArray, ggufI8, true
	case []uint16:
		return ggufArray, ggufU16, true
	case []int16:
		return ggufArray, ggufI16, true
	case []uint32:
		return ggufArray, ggufU32, true
	case []int32:
		return ggufArray, ggufI32, true
	case []float32:
		return ggufArray, ggufF32, true
	case []bool:
		return ggufArray, ggufBool, true
	case []string:
		return ggufArray, ggufString, true
	case []uint64:
		return ggufArray, ggufU64, true
	case []int64:
		return ggufArray, ggufI64, true
	case []float64:
		return ggufArray, ggufF64, true
	}
	return 0, 0, false
}

// ggufEnc accumulates little-endian bytes.
type ggufEnc struct{ b bytes.Buffer }

func (e *ggufEnc) u32(v uint32) { e.b.Write(binary.LittleEndian.AppendUint32(nil, v)) }
func (e *ggufEnc) u64(v uint64) { e.b.Write(binary.LittleEndian.AppendUint64(nil, v)) }
func (e *ggufEnc) str(s string) { e.u64(uint64(len(s))); e.b.WriteString(s) }

func (e *ggufEnc) scalar(v any) {
	var tmp [8]byte
	switch x := v.(type) {
	case uint8:
		e.b.WriteByte(x)
	case int8:
		e.b.WriteByte(byte(x))
	case uint16:
		binary.LittleEndian.PutUint16(tmp[:], x)
		e.b.Write(tmp[:2])
	case int16:
		binary.LittleEndian.PutUint16(tmp[:], uint16(x))
		e.b.Write(tmp[:2])
	case uint32:
		e.u32(x)
	case int32:
		e.u32(uint32(x))
	case float32:
		e.u32(math.Float32bits(x))
	case bool:
		if x {
			e.b.WriteByte(1)
		} else {
			e.b.WriteByte(0)
		}
	case string:
		e.str(x)
	case uint64:
		e.u64(x)
	case int64:
		e.u64(uint64(x))
	case float64:
		e.u64(math.Float64bits(x))
	}
}

func (e *ggufEnc) array(v any) {
	each := func(n int, f func(i int) any) {
		e.u64(uint64(n))
		for i := 0; i < n; i++ {
			e.scalar(f(i))
		}
	}
	_, elem, _ := kvType(v)
	e.u32(elem)
	switch x := v.(type) {
	case []uint8:
		e.u64(uint64(len(x)))
		e.b.Write(x)
	case []int8:
		each(len(x), func(i int) any { return x[i] })
	case []uint16:
		each(len(x), func(i int) any { return x[i] })
	case []int16:
		each(len(x), func(i int) any { return x[i] })
	case []uint32:
		each(len(x), func(i int) any { return x[i] })
	case []int32:
		each(len(x), func(i int) any { return x[i] })
	case []float32:
		each(len(x), func(i int) any { return x[i] })
	case []bool:
		each(len(x), func(i int) any { return x[i] })
	case []string:
		e.u64(uint64(len(x)))
		for _, s := range x {
			e.str(s)
		}
	case []uint64:
		each(len(x), func(i int) any { return x[i] })
	case []int64:
		each(len(x), func(i int) any { return x[i] })
	case []float64:
		each(len(x), func(i int) any { return x[i] })
	}
}

// ggufPlan is a validated file: the encoded header and metadata, and where
// each tensor's data goes.
type ggufPlan struct {
	head    []byte  // everything before the data section, padding included
	offsets []int64 // per tensor, relative to the data section
	sizes   []int64
	align   int64
}

func padTo(n, align int64) int64 { return (n + align - 1) / align * align }

func planGGUF(file string, kvs []GGUFKV, tensors []GGUFTensor) (*ggufPlan, error) {
	w := where(file)
	align := int64(GGUFDefaultAlignment)
	hasAlign := false
	seen := map[string]bool{}
	for i, kv := range kvs {
		if kv.Key == "" {
			return nil, fmt.Errorf("%sGGUF metadata entry #%d has an empty key", w, i)
		}
		if seen[kv.Key] {
			return nil, fmt.Errorf("%sGGUF metadata key %q is given twice", w, kv.Key)
		}
		seen[kv.Key] = true
		if _, _, ok := kvType(kv.Value); !ok {
			return nil, fmt.Errorf("%sGGUF metadata key %q: value of Go type %T has no GGUF type (use uint32, int32, float32, bool, string, []string, ...)", w, kv.Key, kv.Value)
		}
		if kv.Key == "general.alignment" {
			a, ok := kv.Value.(uint32)
			if !ok || a == 0 || a%8 != 0 {
				return nil, fmt.Errorf("%sGGUF metadata key general.alignment must be a uint32 multiple of 8, got %v (%T)", w, kv.Value, kv.Value)
			}
			align, hasAlign = int64(a), true
		}
	}
	if !hasAlign {
		kvs = append(kvs, GGUFKV{"general.alignment", uint32(align)})
	}
	var e ggufEnc
	e.b.WriteString(ggufMagic)
	e.u32(ggufVersion)
	e.u64(uint64(len(tensors)))
	e.u64(uint64(len(kvs)))
	for _, kv := range kvs {
		typ, _, _ := kvType(kv.Value)
		e.str(kv.Key)
		e.u32(typ)
		if typ == ggufArray {
			e.array(kv.Value)
		} else {
			e.scalar(kv.Value)
		}
	}
	p := &ggufPlan{align: align, offsets: make([]int64, len(tensors)), sizes: make([]int64, len(tensors))}
	names := map[string]bool{}
	var off int64
	for i, t := range tensors {
		if t.Name == "" {
			return nil, fmt.Errorf("%sGGUF tensor #%d has an empty name", w, i)
		}
		if len(t.Name) >= 64 {
			return nil, fmt.Errorf("%sGGUF tensor name %q is %d bytes; ggml allows at most 63", w, t.Name, len(t.Name))
		}
		if names[t.Name] {
			return nil, fmt.Errorf("%sGGUF tensor %q is given twice", w, t.Name)
		}
		names[t.Name] = true
		if len(t.Shape) == 0 || len(t.Shape) > 4 {
			return nil, fmt.Errorf("%sGGUF tensor %q: shape %v must have 1 to 4 dimensions", w, t.Name, t.Shape)
		}
		n := int64(1)
		for _, d := range t.Shape {
			if d <= 0 {
				return nil, fmt.Errorf("%sGGUF tensor %q: shape %v has a dimension < 1", w, t.Name, t.Shape)
			}
			if n > math.MaxInt64/8/int64(d) {
				return nil, fmt.Errorf("%sGGUF tensor %q: shape %v is too large", w, t.Name, t.Shape)
			}
			n *= int64(d)
		}
		size, err := GGMLTypeBytes(t.Type, n, int64(t.Shape[len(t.Shape)-1]))
		if err != nil {
			return nil, fmt.Errorf("%sGGUF tensor %q (shape %v): %v", w, t.Name, t.Shape, err)
		}
		if t.Encode == nil && int64(len(t.Data)) != size {
			return nil, fmt.Errorf("%sGGUF tensor %q: shape %v of %v needs %d bytes of data, got %d", w, t.Name, t.Shape, t.Type, size, len(t.Data))
		}
		e.str(t.Name)
		e.u32(uint32(len(t.Shape)))
		for j := len(t.Shape) - 1; j >= 0; j-- { // ne[0] = innermost
			e.u64(uint64(t.Shape[j]))
		}
		e.u32(uint32(t.Type))
		e.u64(uint64(off))
		p.offsets[i], p.sizes[i] = off, size
		off = padTo(off+size, align)
	}
	for int64(e.b.Len())%align != 0 {
		e.b.WriteByte(0)
	}
	p.head = e.b.Bytes()
	return p, nil
}

// EncodeGGUF writes a GGUF v3 file to w. general.alignment is added (32)
// unless kvs set it. Errors name the key or tensor; nothing is written when
// the metadata or a tensor's declared size is invalid.
func EncodeGGUF(w io.Writer, kvs []GGUFKV, tensors []GGUFTensor) error {
	return encodeGGUF(w, "", kvs, tensors)
}

func encodeGGUF(w io.Writer, file string, kvs []GGUFKV, tensors []GGUFTensor) error {
	p, err := planGGUF(file, kvs, tensors)
	if err != nil {
		return err
	}
	if _, err := w.Write(p.head); err != nil {
		return err
	}
	zeros := make([]byte, p.align)
	var pos int64
	for i, t := range tensors {
		data := t.Data
		if t.Encode != nil {
			if data, err = t.Encode(); err != nil {
				return fmt.Errorf("%sGGUF tensor %q: %w", where(file), t.Name, err)
			}
			if int64(len(data)) != p.sizes[i] {
				return fmt.Errorf("%sGGUF tensor %q: shape %v of %v needs %d bytes of data, the encoder gave %d", where(file), t.Name, t.Shape, t.Type, p.sizes[i], len(data))
			}
		}
		if pad := p.offsets[i] - pos; pad > 0 {
			if _, err := w.Write(zeros[:pad]); err != nil {
				return err
			}
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
		pos = p.offsets[i] + int64(len(data))
	}
	if pad := padTo(pos, p.align) - pos; pad > 0 && len(tensors) > 0 {
		if _, err := w.Write(zeros[:pad]); err != nil {
			return err
		}
	}
	return nil
}

// WriteGGUF writes a GGUF v3 file atomically (temporary file, fsync, rename;
// see WriteAtomic). See EncodeGGUF.
func WriteGGUF(path string, kvs []GGUFKV, tensors []GGUFTensor) error {
	if _, err := planGGUF(path, kvs, tensors); err != nil {
		return err // fail before creating anything
	}
	return WriteAtomic(path, func(w io.Writer) error {
		return encodeGGUF(w, path, kvs, tensors)
	})
}

// EncodeGGUFData encodes float32 values as GGUF tensor data of type t.
// rowLen is the innermost dimension (Q8_0 quantizes each row in blocks of 32
// and needs rowLen % 32 == 0).
func EncodeGGUFData(v []float32, t GGMLType, rowLen int) ([]byte, error) {
	return AppendGGUFData(nil, v, t, rowLen)
}

// AppendGGUFData appends v encoded as GGUF tensor data of type t to dst (as
// EncodeGGUFData). v must be whole rows of rowLen values, so a tensor can be
// encoded a block of rows at a time with the same bytes as all at once.
func AppendGGUFData(dst []byte, v []float32, t GGMLType, rowLen int) ([]byte, error) {
	switch t {
	case GGMLTypeF32:
		return AppendF32(dst, v), nil
	case GGMLTypeF16:
		return AppendF32AsF16(dst, v), nil
	case GGMLTypeBF16:
		return AppendF32AsBF16(dst, v), nil
	case GGMLTypeQ8_0:
		if rowLen <= 0 || rowLen%Q8_0BlockSize != 0 || len(v)%rowLen != 0 {
			return nil, fmt.Errorf("Q8_0 needs rows whose length is a multiple of %d (row length %d, %d values)", Q8_0BlockSize, rowLen, len(v))
		}
		return appendQ8_0(dst, v), nil
	}
	return nil, fmt.Errorf("unsupported GGUF tensor type %v", t)
}

// QuantizeQ8_0 quantizes v (len a multiple of 32) into Q8_0 blocks the way
// ggml's reference quantizer and gguf-py do: per block of 32, d = max|x|/127
// stored as f16, q = round(x/d) (half away from zero) as int8; an all-zero
// block gets d = 0. It panics if len(v) is not a multiple of 32 (callers
// check; see EncodeGGUFData).
func QuantizeQ8_0(v []float32) []byte {
	return appendQ8_0(make([]byte, 0, len(v)/Q8_0BlockSize*Q8_0BlockBytes), v)
}

func appendQ8_0(dst []byte, v []float32) []byte {
	if len(v)%Q8_0BlockSize != 0 {
		panic(fmt.Sprintf("checkpoint: QuantizeQ8_0 of %d values, not a multiple of %d", len(v), Q8_0BlockSize))
	}
	nb := len(v) / Q8_0BlockSize
	dst, out := grow(dst, nb*Q8_0BlockBytes)
	for b := 0; b < nb; b++ {
		x := v[b*Q8_0BlockSize : (b+1)*Q8_0BlockSize]
		var amax float32
		for _, f := range x {
			amax = max(amax, float32(math.Abs(float64(f))))
		}
		d := amax / 127
		var id float32
		if d != 0 {
			id = 1 / d
		}
		o := out[b*Q8_0BlockBytes:]
		binary.LittleEndian.PutUint16(o, F32ToF16(d))
		for i, f := range x {
			q := math.Round(float64(f * id)) // half away from zero, as roundf
			q = max(-127, min(127, q))       // guards NaN-free rounding noise
			o[2+i] = byte(int8(q))
		}
	}
	return dst
}

// DequantizeQ8_0 expands Q8_0 blocks back to float32 (x = d·q).
func DequantizeQ8_0(b []byte) ([]float32, error) {
	if len(b)%Q8_0BlockBytes != 0 {
		return nil, errors.New("Q8_0 data is not a whole number of 34-byte blocks")
	}
	nb := len(b) / Q8_0BlockBytes
	out := make([]float32, nb*Q8_0BlockSize)
	for i := 0; i < nb; i++ {
		o := b[i*Q8_0BlockBytes:]
		d := F16ToF32(binary.LittleEndian.Uint16(o))
		for j := 0; j < Q8_0BlockSize; j++ {
			out[i*Q8_0BlockSize+j] = d * float32(int8(o[2+j]))
		}
	}
	return out, nil
}
