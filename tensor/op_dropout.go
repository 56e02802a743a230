package tensor

import (
	"math/rand/v2"

	"github.com/llamatune/llamatune/kernels"
)

// Dropout zeroes each element with probability p and scales the rest by
// 1/(1−p) (inverted dropout, as torch.nn.Dropout in training). The mask comes
// from seed alone, so re-running the op (activation recomputation) draws the
// same mask. dx = mask·dy/(1−p).
//
// On an Inference tape (evaluation, generation) it is the identity, as
// dropout in torch's eval mode.
func (tp *Tape) Dropout(x *Tensor, p float64, seed uint64) *Tensor {
	if p <= 0 || tp.Inference {
		return x
	}
	if p >= 1 {
		panic("tensor.Dropout: p must be < 1")
	}
	n := x.Numel()
	mask := make([]float32, n)
	r := rand.New(rand.NewPCG(seed, 0xd50))
	keep := float32(1 / (1 - p))
	for i := range mask {
		if r.Float64() >= p {
			mask[i] = keep
		}
	}
	m := tp.be.FromF32(kernels.F32, mask) // exact 1/(1−p) whatever x's dtype
	tp.owned = append(tp.owned, m)
	y := tp.result(tp.alloc(n), x.Shape, x)
	tp.be.Copy(y.Buf, x.Buf)
	tp.be.Mul(y.Buf, m)
	if y.requiresGrad {
		tp.record(func() {
			tmp := tp.be.Alloc(y.Grad.DType(), n)
			tp.be.Copy(tmp, y.Grad)
			tp.be.Mul(tmp, m)
			tp.be.AddScaled(x.grad(), tmp, 1)
			tp.be.Free(tmp)
		}, y)
	}
	return y
}
