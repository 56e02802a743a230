package tensor

import "fmt"

// Embedding: out[t] = W[ids[t]].   W [vocab, dim], out [T, dim]
// dW[ids[t]] += dout[t] (scatter-add; repeated ids accumulate).
func (tp *Tape) Embedding(w *Tensor, ids []int32) *Tensor {
	if len(w.Shape) != 2 {
		panic(fmt.Sprintf("tensor.Embedding: W %v, want [vocab, dim]", w.Shape))
	}
	dim := w.Shape[1]
	for t, id := range ids {
		if id < 0 || int(id) >= w.Shape[0] {
			panic(fmt.Sprintf("tensor.Embedding: id %d at %d outside vocab %d", id, t, w.Shape[0]))
		}
	}
	out := tp.result(tp.alloc(len(ids)*dim), []int{len(ids), dim}, w)
	tp.be.Embedding(w.Buf, ids, out.Buf, dim)
	if out.requiresGrad {
		tp.record(func() { tp.be.EmbeddingBackward(out.Grad, ids, w.grad(), dim) }, out)
	}
	return out
}
