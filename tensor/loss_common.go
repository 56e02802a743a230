package tensor

import "github.com/llamatune/llamatune/kernels"

// lossNormalizer counts the labels that carry loss and returns that count and
// the normalizer to divide the loss sum by: the given one, or (≤ 0) the count.
func lossNormalizer(labels []int32, normalizer float64) (int, float64) {
	count := 0
	for _, l := range labels {
		if l != kernels.IgnoreIndex {
			count++
		}
	}
	if normalizer <= 0 {
		normalizer = float64(max(count, 1))
	}
	return count, normalizer
}

// savedGrad pairs an input with the gradient a fused loss made for it in the
// forward pass (nil when the input needs none).
type savedGrad struct {
	t *Tensor
	d kernels.Buffer
}

// recordSavedGrads is the VJP of a scalar loss whose input gradients were
// made in the forward pass: each is scaled by the upstream gradient.
func (tp *Tape) recordSavedGrads(loss *Tensor, grads ...savedGrad) {
	tp.record(func() {
		g := tp.be.ToF32(loss.Grad)[0]
		for _, p := range grads {
			if p.d != nil {
				tp.be.AddScaled(p.t.grad(), p.d, g)
			}
		}
	}, loss)
}
