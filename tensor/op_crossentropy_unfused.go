package tensor

import (
	"fmt"

	"github.com/llamatune/llamatune/kernels"
)

// CrossEntropy is the unfused loss over materialized logits [T, vocab]:
// Σ_counted −log softmax(logits_t)[labels_t] / normalizer (≤ 0: the counted
// tokens). dlogits += (softmax − onehot)·upstream/normalizer. It is
// LinearCrossEntropy's twin, used when LLAMATUNE_NO_FUSED=1.
func (tp *Tape) CrossEntropy(logits *Tensor, labels []int32, normalizer float64) (*Tensor, int) {
	if len(logits.Shape) != 2 || len(labels) != logits.Shape[0] {
		panic(fmt.Sprintf("tensor.CrossEntropy: logits %v, %d labels", logits.Shape, len(labels)))
	}
	T, V := logits.Shape[0], logits.Shape[1]
	count, normalizer := lossNormalizer(labels, normalizer)
	loss := tp.result(tp.alloc(1), []int{1}, logits)
	var d kernels.Buffer
	if loss.requiresGrad {
		d = tp.alloc(T * V)
	}
	sum, _ := tp.be.CrossEntropy(logits.Buf, d, labels, T, V, float32(1/normalizer))
	tp.be.Copy(loss.Buf, tp.be.FromF32(kernels.F32, []float32{float32(sum / normalizer)}))
	if loss.requiresGrad {
		tp.recordSavedGrads(loss, savedGrad{logits, d})
	}
	return loss, count
}
