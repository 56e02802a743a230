package tensor

import (
	"fmt"

	"github.com/llamatune/llamatune/kernels"
)

// LinearCrossEntropy is the fused lm_head + cross-entropy loss:
//
//	loss = Σ_t∈counted −log softmax(h_t·Wᵀ)[labels_t] / normalizer
//
// h [T, hidden], W [vocab, hidden], labels [T] (kernels.IgnoreIndex = skip).
// normalizer ≤ 0 means "the number of counted tokens" (a plain mean); the
// trainer passes the trained-token count of the whole accumulated step so that
// k micro-batches equal one big batch. Logits are made chunk rows at a time and
// never all live at once; gradients are produced in that same pass and scaled
// by the upstream gradient in the VJP. Returns the loss and the counted tokens.
func (tp *Tape) LinearCrossEntropy(h, w *Tensor, labels []int32, normalizer float64, chunk int) (*Tensor, int) {
	if len(h.Shape) != 2 || len(w.Shape) != 2 || h.Shape[1] != w.Shape[1] || len(labels) != h.Shape[0] {
		panic(fmt.Sprintf("tensor.LinearCrossEntropy: h %v, W %v, %d labels", h.Shape, w.Shape, len(labels)))
	}
	T, H, V := h.Shape[0], h.Shape[1], w.Shape[0]
	count := 0
	for _, l := range labels {
		if l != kernels.IgnoreIndex {
			count++
		}
	}
	if normalizer <= 0 {
		normalizer = float64(max(count, 1))
	}
	loss := tp.result(tp.alloc(1), []int{1}, h, w)
	var dh, dw kernels.Buffer
	if loss.requiresGrad && h.requiresGrad {
		dh = tp.alloc(T * H)
	}
	if loss.requiresGrad && w.requiresGrad {
		dw = tp.alloc(V * H)
	}
	sum, _ := tp.be.LinearCrossEntropy(h.Buf, w.Buf, labels, dh, dw,
		kernels.CEArgs{Tokens: T, Hidden: H, Vocab: V, Chunk: chunk, GradScale: float32(1 / normalizer)})
	tp.be.Copy(loss.Buf, tp.be.FromF32(kernels.F32, []float32{float32(sum / normalizer)}))
	if loss.requiresGrad {
		tp.record(func() {
			g := tp.be.ToF32(loss.Grad)[0]
			if dh != nil {
				tp.be.AddScaled(h.grad(), dh, g)
			}
			if dw != nil {
				tp.be.AddScaled(w.grad(), dw, g)
			}
		}, loss)
	}
	return loss, count
}
