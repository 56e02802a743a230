package cpu

import (
	"math"

	"github.com/llamatune/llamatune/kernels"
)

// RoPE in HF Llama's rotate-half layout, on x [tokens, heads, headDim]:
// with h = headDim/2 and θ = pos·invFreq[d],
//
//	out[d]   = x[d]·cosθ − x[d+h]·sinθ
//	out[d+h] = x[d+h]·cosθ + x[d]·sinθ
//
// The map is a rotation, so its VJP is the inverse rotation (θ → −θ).
// out may alias x.
func (*Backend) RoPE(x, out kernels.Buffer, pos []int32, tokens, heads, headDim int, invFreq []float32, inverse bool) {
	xv, ov := F32(x), F32(out)
	half := headDim / 2
	sign := 1.0
	if inverse {
		sign = -1
	}
	parallelFor(tokens, 8, func(lo, hi int) {
		cos := make([]float32, half)
		sin := make([]float32, half)
		for t := lo; t < hi; t++ {
			p := float64(pos[t])
			for d := 0; d < half; d++ {
				s, c := math.Sincos(p * float64(invFreq[d]))
				cos[d], sin[d] = float32(c), float32(sign*s)
			}
			for h := 0; h < heads; h++ {
				base := (t*heads + h) * headDim
				xa, xb := xv[base:base+half], xv[base+half:base+headDim]
				oa, ob := ov[base:base+half], ov[base+half:base+headDim]
				for d := 0; d < half; d++ {
					a, b := xa[d], xb[d]
					oa[d] = a*cos[d] - b*sin[d]
					ob[d] = b*cos[d] + a*sin[d]
				}
			}
		}
	})
}
