package tensor

import (
	"errors"
	"fmt"

	"github.com/llamatune/llamatune/kernels"
)

// Tape records ops for reverse-mode autograd (define-by-run).
//
// Each op appends a node holding its VJP closure. Backward walks the nodes in
// reverse, seeding the loss gradient with 1; every VJP reads its output's
// gradient and accumulates into the gradients of the inputs that require one.
// After a node runs, its output gradients are freed. Release frees every
// intermediate buffer the tape made.
//
// A tape with NoGrad set records nothing: ops just compute (inference,
// evaluation, a teacher's forward pass). Ops need a tape for its backend and
// buffers, so a nil *Tape is not a valid receiver (only Canceled accepts it).
type Tape struct {
	be     kernels.Backend
	NoGrad bool
	// Inference runs the ops as a model in eval mode does: dropout is the
	// identity (torch's model.eval()). Evaluation and generation set it;
	// the tapes of a training step, their recompute passes included, keep
	// dropout on.
	Inference bool
	// Compute is the GEMM precision of the ops recorded from now on
	// (Linear, Attention, the fused losses): F32 (the zero value, the
	// reference) or BF16 (operands rounded to bf16, f32 accumulation; see
	// package kernels). Tapes made by Recompute inherit it.
	Compute kernels.DType
	// Cancel, when set, is asked between the nodes of Backward and by
	// models between their layers (Canceled); once it says true, Backward
	// stops where it is, leaving the leaves' gradients partial: the caller
	// must drop them (the trainer zeroes them and saves the last whole
	// step). Tapes made by Recompute do not ask: one layer runs to its end.
	Cancel   func() bool
	canceled bool
	nodes    []node
	owned    []kernels.Buffer // intermediate buffers to free on Release
}

// ErrCanceled is what a forward pass returns when the tape's Cancel said
// stop between layers.
var ErrCanceled = errors.New("canceled between layers")

// Canceled asks Cancel (false when unset) and remembers a true answer: a
// forward pass returns ErrCanceled, and after Backward it tells the caller
// the gradients are partial.
func (tp *Tape) Canceled() bool {
	if tp == nil {
		return false
	}
	if !tp.canceled && tp.Cancel != nil && tp.Cancel() {
		tp.canceled = true
	}
	return tp.canceled
}

type node struct {
	backward func()
	outs     []*Tensor
}

// NewTape returns a recording tape on be.
func NewTape(be kernels.Backend) *Tape { return &Tape{be: be} }

// Backend returns the tape's backend.
func (tp *Tape) Backend() kernels.Backend { return tp.be }

func (tp *Tape) recording() bool { return !tp.NoGrad }

// result makes an op's output over buf; it requires grad when recording and
// any input does.
func (tp *Tape) result(buf kernels.Buffer, shape []int, inputs ...*Tensor) *Tensor {
	t := &Tensor{Shape: append([]int(nil), shape...), Buf: buf, be: tp.be}
	if tp.recording() {
		for _, in := range inputs {
			if in != nil && in.requiresGrad {
				t.requiresGrad = true
				break
			}
		}
	}
	return t
}

// alloc makes an intermediate F32 buffer owned by the tape.
func (tp *Tape) alloc(n int) kernels.Buffer {
	b := tp.be.Alloc(kernels.F32, n)
	tp.owned = append(tp.owned, b)
	return b
}

// record appends a node whose backward runs once outs' gradients are final.
func (tp *Tape) record(backward func(), outs ...*Tensor) {
	tp.nodes = append(tp.nodes, node{backward: backward, outs: outs})
}

// Backward propagates from a scalar loss: d(loss)/d(loss) = 1.
func (tp *Tape) Backward(loss *Tensor) {
	if loss.Numel() != 1 {
		panic(fmt.Sprintf("tensor.Backward: loss has shape %v, want a scalar", loss.Shape))
	}
	if !loss.requiresGrad {
		panic("tensor.Backward: loss does not depend on any tensor that requires grad")
	}
	tp.be.Copy(loss.grad(), tp.be.FromF32(kernels.F32, []float32{1}))
	tp.backwardAll()
}

// BackwardFrom propagates from out with a given upstream gradient (used by
// activation recomputation).
func (tp *Tape) BackwardFrom(out *Tensor, grad kernels.Buffer) {
	if out.requiresGrad {
		tp.be.Copy(out.grad(), grad)
		tp.backwardAll()
	}
}

func (tp *Tape) backwardAll() {
	for i := len(tp.nodes) - 1; i >= 0; i-- {
		n := tp.nodes[i]
		if tp.Canceled() {
			tp.dropGrads(i)
			break
		}
		ready := false
		for _, o := range n.outs {
			if o.Grad != nil {
				ready = true
			}
		}
		if ready {
			for _, o := range n.outs {
				o.grad()
			}
			n.backward()
		}
		for _, o := range n.outs {
			if !o.leaf && o.Grad != nil {
				tp.be.Free(o.Grad)
				o.Grad = nil
			}
		}
		tp.nodes[i] = node{}
	}
	tp.nodes = tp.nodes[:0]
}

// dropGrads frees the output gradients of nodes[0..i] (Backward canceled).
func (tp *Tape) dropGrads(i int) {
	for ; i >= 0; i-- {
		for _, o := range tp.nodes[i].outs {
			if !o.leaf && o.Grad != nil {
				tp.be.Free(o.Grad)
				o.Grad = nil
			}
		}
		tp.nodes[i] = node{}
	}
}

// HeldBytes is the storage of the intermediate buffers the tape holds now
// (what Release would free): activations saved for backward, and outputs
// not yet dropped.
func (tp *Tape) HeldBytes() int64 {
	var n int64
	for _, b := range tp.owned {
		n += int64(b.Len()) * int64(b.DType().Size())
	}
	return n
}

// Release frees every intermediate buffer the tape made. Tensors computed on
// the tape must not be used afterwards; leaves are untouched.
func (tp *Tape) Release() {
	for _, b := range tp.owned {
		tp.be.Free(b)
	}
	tp.owned = nil
	tp.nodes = nil
}
