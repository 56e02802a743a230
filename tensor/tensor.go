// Package tensor holds Tensor (a shape over a backend-owned buffer) and Tape,
// the reverse-mode autograd. Each op lives in its own file (op_*.go) with its
// forward and its VJP side by side.
package tensor

import (
	"fmt"

	"github.com/llamatune/llamatune/kernels"
)

// Tensor is a dense row-major array on a backend.
//
// A tensor requires grad when it is a trainable leaf (SetRequiresGrad) or was
// computed on a recording tape from one that does. Only such tensors ever get a
// Grad buffer: frozen weights never allocate one.
type Tensor struct {
	Name  string
	Shape []int
	Buf   kernels.Buffer
	// Grad is the accumulated gradient (F32, same element count), or nil.
	// Leaves keep it across Backward calls until ZeroGrad; the tape frees the
	// gradients of intermediates after use.
	Grad kernels.Buffer

	be           kernels.Backend
	requiresGrad bool
	leaf         bool
}

// New allocates a zero tensor.
func New(be kernels.Backend, dt kernels.DType, shape ...int) *Tensor {
	return &Tensor{Shape: append([]int(nil), shape...), Buf: be.Alloc(dt, numel(shape)), be: be, leaf: true}
}

// FromF32 makes a tensor of dtype dt holding v.
func FromF32(be kernels.Backend, dt kernels.DType, v []float32, shape ...int) *Tensor {
	if len(v) != numel(shape) {
		panic(fmt.Sprintf("tensor.FromF32: %d values for shape %v", len(v), shape))
	}
	return &Tensor{Shape: append([]int(nil), shape...), Buf: be.FromF32(dt, v), be: be, leaf: true}
}

// Wrap makes a tensor over an existing buffer.
func Wrap(be kernels.Backend, buf kernels.Buffer, shape ...int) *Tensor {
	if buf.Len() != numel(shape) {
		panic(fmt.Sprintf("tensor.Wrap: buffer of %d for shape %v", buf.Len(), shape))
	}
	return &Tensor{Shape: append([]int(nil), shape...), Buf: buf, be: be, leaf: true}
}

func numel(shape []int) int {
	n := 1
	for _, d := range shape {
		if d < 0 {
			panic(fmt.Sprintf("tensor: negative dimension in shape %v", shape))
		}
		n *= d
	}
	return n
}

// Numel is the element count.
func (t *Tensor) Numel() int { return numel(t.Shape) }

// DType is the storage dtype.
func (t *Tensor) DType() kernels.DType { return t.Buf.DType() }

// Backend is the backend owning the buffer.
func (t *Tensor) Backend() kernels.Backend { return t.be }

// F32 returns a copy of the values as float32.
func (t *Tensor) F32() []float32 { return t.be.ToF32(t.Buf) }

// GradF32 returns a copy of the gradient, or nil when there is none.
func (t *Tensor) GradF32() []float32 {
	if t.Grad == nil {
		return nil
	}
	return t.be.ToF32(t.Grad)
}

// SetRequiresGrad marks a leaf as trainable (or frozen).
func (t *Tensor) SetRequiresGrad(on bool) *Tensor {
	if !t.leaf {
		panic(fmt.Sprintf("tensor %q: SetRequiresGrad on a computed tensor", t.Name))
	}
	t.requiresGrad = on
	return t
}

// RequiresGrad reports whether gradients flow to t.
func (t *Tensor) RequiresGrad() bool { return t.requiresGrad }

// ZeroGrad drops the accumulated gradient (the buffer is kept and zeroed).
func (t *Tensor) ZeroGrad() {
	if t.Grad != nil {
		t.be.Zero(t.Grad)
	}
}

// Item returns the single value of a scalar tensor.
func (t *Tensor) Item() float32 {
	if t.Numel() != 1 {
		panic(fmt.Sprintf("tensor %q: Item on shape %v", t.Name, t.Shape))
	}
	return t.F32()[0]
}

// grad returns t's gradient buffer, allocating a zero one on first use.
func (t *Tensor) grad() kernels.Buffer {
	if t.Grad == nil {
		t.Grad = t.be.Alloc(kernels.F32, t.Numel())
	}
	return t.Grad
}

// Reshape returns a view of t with another shape (same buffer). On a
// recording tape the gradient flows back through the view.
func (tp *Tape) Reshape(t *Tensor, shape ...int) *Tensor {
	if numel(shape) != t.Numel() {
		panic(fmt.Sprintf("tensor.Reshape: %v to %v", t.Shape, shape))
	}
	out := tp.result(t.Buf, shape, t)
	if out.requiresGrad {
		tp.record(func() {
			if t.requiresGrad {
				tp.be.AddScaled(t.grad(), out.Grad, 1)
			}
		}, out)
	}
	return out
}
