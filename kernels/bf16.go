package kernels

import "math"

// F32ToBF16 converts a float32 to bfloat16 bits with round-to-nearest-even.
// Values beyond the largest finite bfloat16 round to ±Inf, exactly as
// PyTorch does. NaN stays NaN: the sign and the top payload bits are kept and
// the quiet bit is set, so a signalling NaN whose payload lives only in the
// low 16 bits cannot turn into Inf.
func F32ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 { // NaN
		return uint16(u>>16) | 0x40
	}
	rounding := uint32(0x7fff) + (u>>16)&1
	return uint16((u + rounding) >> 16)
}

// BF16ToF32 widens exactly.
func BF16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }
