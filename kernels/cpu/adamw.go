package cpu

import (
	"math"

	"github.com/llamatune/llamatune/kernels"
)

// AdamW, as torch.optim.AdamW computes it (decoupled weight decay):
//
//	p ← p·(1 − lr·wd)
//	m ← β1·m + (1−β1)·g ;  v ← β2·v + (1−β2)·g²
//	p ← p − lr/(1−β1ᵗ) · m / (sqrt(v)/sqrt(1−β2ᵗ) + eps)
//
// p may be BF16 (updated in f32, rounded back); m, v, g are F32.
func (*Backend) AdamW(p, g, m, v kernels.Buffer, a kernels.AdamWArgs) {
	gv, mv, vv := F32(g), F32(m), F32(v)
	bc1 := 1 - math.Pow(float64(a.Beta1), float64(a.Step))
	bc2 := 1 - math.Pow(float64(a.Beta2), float64(a.Step))
	stepSize := float32(float64(a.LR) / bc1)
	bc2s := float32(math.Sqrt(bc2))
	decay := 1 - a.LR*a.WeightDecay
	pb := p.(*Buffer)
	parallelFor(len(gv), 1<<12, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			var w float32
			if pb.dt == kernels.F32 {
				w = pb.f32[i]
			} else {
				w = kernels.BF16ToF32(pb.bf16[i])
			}
			w *= decay
			mv[i] = a.Beta1*mv[i] + (1-a.Beta1)*gv[i]
			vv[i] = a.Beta2*vv[i] + (1-a.Beta2)*gv[i]*gv[i]
			denom := float32(math.Sqrt(float64(vv[i])))/bc2s + a.Eps
			w -= stepSize * mv[i] / denom
			if pb.dt == kernels.F32 {
				pb.f32[i] = w
			} else {
				pb.bf16[i] = kernels.F32ToBF16(w)
			}
		}
	})
}
