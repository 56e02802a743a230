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
	return tp.LinearCrossEntropyLowRank(h, w, nil, nil, labels, normalizer, chunk)
}

// LinearCrossEntropyLowRank adds a low-rank term to the logits,
// h·Wᵀ + hr·WRᵀ with hr [T, r], WR [vocab, r]: a LoRA adapter on lm_head
// (hr = s·x·Aᵀ, WR = B) without materializing W + s·B·A or the logits.
func (tp *Tape) LinearCrossEntropyLowRank(h, w, hr, wr *Tensor, labels []int32, normalizer float64, chunk int) (*Tensor, int) {
	if len(h.Shape) != 2 || len(w.Shape) != 2 || h.Shape[1] != w.Shape[1] || len(labels) != h.Shape[0] {
		panic(fmt.Sprintf("tensor.LinearCrossEntropy: h %v, W %v, %d labels", h.Shape, w.Shape, len(labels)))
	}
	T, H, V := h.Shape[0], h.Shape[1], w.Shape[0]
	rank := 0
	if hr != nil {
		if len(hr.Shape) != 2 || len(wr.Shape) != 2 || hr.Shape[0] != T || wr.Shape[0] != V || hr.Shape[1] != wr.Shape[1] {
			panic(fmt.Sprintf("tensor.LinearCrossEntropy: low-rank hr %v, WR %v for h %v, W %v", hr.Shape, wr.Shape, h.Shape, w.Shape))
		}
		rank = hr.Shape[1]
	}
	count, normalizer := lossNormalizer(labels, normalizer)
	loss := tp.result(tp.alloc(1), []int{1}, h, w, hr, wr)
	b := kernels.CEBuffers{H: h.Buf, W: w.Buf}
	grad := func(t *Tensor, n int) kernels.Buffer {
		if loss.requiresGrad && t.requiresGrad {
			return tp.alloc(n)
		}
		return nil
	}
	b.DH, b.DW = grad(h, T*H), grad(w, V*H)
	if rank > 0 {
		b.HR, b.WR = hr.Buf, wr.Buf
		b.DHR, b.DWR = grad(hr, T*rank), grad(wr, V*rank)
	}
	sum, _ := tp.be.LinearCrossEntropy(b, labels,
		kernels.CEArgs{Tokens: T, Hidden: H, Vocab: V, Rank: rank, Chunk: chunk, GradScale: float32(1 / normalizer), Compute: tp.Compute})
	tp.be.Copy(loss.Buf, tp.be.FromF32(kernels.F32, []float32{float32(sum / normalizer)}))
	if loss.requiresGrad {
		tp.recordSavedGrads(loss, savedGrad{h, b.DH}, savedGrad{w, b.DW}, savedGrad{hr, b.DHR}, savedGrad{wr, b.DWR})
	}
	return loss, count
}
