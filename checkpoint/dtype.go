package checkpoint

import (
	"encoding/binary"
	"github.com/llamatune/llamatune/kernels"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/x448/float16"
)

// DType names exactly as they appear in safetensors headers.
const (
	F64  = "F64"
	F32  = "F32"
	F16  = "F16"
	BF16 = "BF16"
	I64  = "I64"
	I32  = "I32"
	I16  = "I16"
	I8   = "I8"
	U64  = "U64"
	U32  = "U32"
	U16  = "U16"
	U8   = "U8"
	BOOL = "BOOL"
)

// dtypeSizes holds the element size in bytes of every whole-byte dtype the
// safetensors format defines. Sub-byte dtypes (F4, F6_E2M3, F6_E3M2) are
// deliberately absent: nothing in llamatune produces or consumes them, and
// they are reported as unsupported rather than misread.
var dtypeSizes = map[string]int{
	"BOOL": 1, "U8": 1, "I8": 1,
	"F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
	"I16": 2, "U16": 2, "F16": 2, "BF16": 2,
	"I32": 4, "U32": 4, "F32": 4,
	"C64": 8, "F64": 8, "I64": 8, "U64": 8,
}

var subByteDTypes = map[string]bool{"F4": true, "F6_E2M3": true, "F6_E3M2": true}

// DTypeSize returns the size in bytes of one element of dtype, and false for
// a dtype this package does not know (including the sub-byte F4/F6 types).
func DTypeSize(dtype string) (int, bool) {
	n, ok := dtypeSizes[dtype]
	return n, ok
}

// knownDTypes lists the supported dtype names, sorted, for error messages.
func knownDTypes() string {
	names := make([]string, 0, len(dtypeSizes))
	for k := range dtypeSizes {
		names = append(names, k)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// F32ToBF16 converts a float32 to bfloat16 bits with round-to-nearest-even
// (kernels.F32ToBF16: overflow to ±Inf as PyTorch, NaN stays NaN).
func F32ToBF16(f float32) uint16 { return kernels.F32ToBF16(f) }

// BF16ToF32 widens bfloat16 bits to float32 (exact).
func BF16ToF32(h uint16) float32 { return kernels.BF16ToF32(h) }

// F32ToF16 converts a float32 to IEEE 754 half-precision bits with
// round-to-nearest-even (overflow goes to ±Inf, NaN stays NaN).
func F32ToF16(f float32) uint16 {
	return uint16(float16.Fromfloat32(f))
}

// F16ToF32 widens half-precision bits to float32 (exact).
func F16ToF32(h uint16) float32 {
	return float16.Frombits(h).Float32()
}

// F16ToBF16 converts half-precision bits to bfloat16 bits. The float16 value
// is first widened exactly to float32, so there is a single rounding step.
func F16ToBF16(h uint16) uint16 {
	return F32ToBF16(F16ToF32(h))
}

// F32sToBF16 converts a slice of float32 to bfloat16 bits (round-to-nearest-even).
func F32sToBF16(src []float32) []uint16 {
	dst := make([]uint16, len(src))
	for i, v := range src {
		dst[i] = F32ToBF16(v)
	}
	return dst
}

// BF16sToF32 widens a slice of bfloat16 bits to float32.
func BF16sToF32(src []uint16) []float32 {
	dst := make([]float32, len(src))
	for i, v := range src {
		dst[i] = BF16ToF32(v)
	}
	return dst
}

// F32sToF16 converts a slice of float32 to half-precision bits (round-to-nearest-even).
func F32sToF16(src []float32) []uint16 {
	dst := make([]uint16, len(src))
	for i, v := range src {
		dst[i] = F32ToF16(v)
	}
	return dst
}

// F16sToF32 widens a slice of half-precision bits to float32.
func F16sToF32(src []uint16) []float32 {
	dst := make([]float32, len(src))
	for i, v := range src {
		dst[i] = F16ToF32(v)
	}
	return dst
}

// EncodeF32 returns the little-endian bytes of v, ready for a WriteTensor
// with DType "F32".
func EncodeF32(v []float32) []byte { return AppendF32(make([]byte, 0, 4*len(v)), v) }

// AppendF32 appends the little-endian bytes of v to dst (as EncodeF32) and
// returns the extended slice, so that a caller can encode into one buffer
// again and again, or a tensor a block of rows at a time.
func AppendF32(dst []byte, v []float32) []byte {
	dst, b := grow(dst, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return dst
}

// grow extends dst by n bytes and returns it with the new n-byte tail.
func grow(dst []byte, n int) (all, tail []byte) {
	l := len(dst)
	dst = slices.Grow(dst, n)[:l+n]
	return dst, dst[l:]
}

// EncodeBF16 returns the little-endian bytes of bfloat16 bits, ready for a
// WriteTensor with DType "BF16".
func EncodeBF16(v []uint16) []byte { return encodeU16(v) }

// EncodeF16 returns the little-endian bytes of half-precision bits, ready for
// a WriteTensor with DType "F16".
func EncodeF16(v []uint16) []byte { return encodeU16(v) }

// EncodeF32AsBF16 rounds v to bfloat16 (nearest-even) and returns the
// little-endian bytes for a WriteTensor with DType "BF16".
func EncodeF32AsBF16(v []float32) []byte { return AppendF32AsBF16(make([]byte, 0, 2*len(v)), v) }

// AppendF32AsBF16 appends v rounded to bfloat16 (as EncodeF32AsBF16) to dst.
func AppendF32AsBF16(dst []byte, v []float32) []byte {
	dst, b := grow(dst, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], F32ToBF16(x))
	}
	return dst
}

// EncodeF32AsF16 rounds v to half precision (nearest-even) and returns the
// little-endian bytes for a WriteTensor with DType "F16".
func EncodeF32AsF16(v []float32) []byte { return AppendF32AsF16(make([]byte, 0, 2*len(v)), v) }

// AppendF32AsF16 appends v rounded to half precision (as EncodeF32AsF16) to dst.
func AppendF32AsF16(dst []byte, v []float32) []byte {
	dst, b := grow(dst, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], F32ToF16(x))
	}
	return dst
}

func encodeU16(v []uint16) []byte {
	b := make([]byte, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], x)
	}
	return b
}

// decodeToF32 converts raw little-endian data of dtype into dst, which must
// hold exactly the element count. It reports false for a dtype that has no
// float32 conversion.
func decodeToF32(dst []float32, raw []byte, dtype string) bool {
	switch dtype {
	case F32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
	case BF16:
		for i := range dst {
			dst[i] = BF16ToF32(binary.LittleEndian.Uint16(raw[2*i:]))
		}
	case F16:
		for i := range dst {
			dst[i] = F16ToF32(binary.LittleEndian.Uint16(raw[2*i:]))
		}
	case F64:
		for i := range dst {
			dst[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(raw[8*i:])))
		}
	default:
		return false
	}
	return true
}

// decodeToBF16 converts raw little-endian data of dtype into bfloat16 bits in
// dst. It reports false for a dtype that has no bfloat16 conversion.
func decodeToBF16(dst []uint16, raw []byte, dtype string) bool {
	switch dtype {
	case BF16:
		for i := range dst {
			dst[i] = binary.LittleEndian.Uint16(raw[2*i:])
		}
	case F32:
		for i := range dst {
			dst[i] = F32ToBF16(math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])))
		}
	case F16:
		for i := range dst {
			dst[i] = F16ToBF16(binary.LittleEndian.Uint16(raw[2*i:]))
		}
	default:
		return false
	}
	return true
}
