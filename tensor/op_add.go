package tensor

import "fmt"

// Add: y = a + b (same shape). da += dy ; db += dy.
func (tp *Tape) Add(a, b *Tensor) *Tensor {
	if a.Numel() != b.Numel() {
		panic(fmt.Sprintf("tensor.Add: %v + %v", a.Shape, b.Shape))
	}
	y := tp.result(tp.alloc(a.Numel()), a.Shape, a, b)
	tp.be.Add(a.Buf, b.Buf, y.Buf)
	if y.requiresGrad {
		tp.record(func() {
			for _, in := range []*Tensor{a, b} {
				if in.requiresGrad {
					tp.be.AddScaled(in.grad(), y.Grad, 1)
				}
			}
		}, y)
	}
	return y
}

// Scale: y = s·x. dx += s·dy.
func (tp *Tape) Scale(x *Tensor, s float32) *Tensor {
	y := tp.result(tp.alloc(x.Numel()), x.Shape, x)
	tp.be.Copy(y.Buf, x.Buf)
	tp.be.Scale(y.Buf, s)
	if y.requiresGrad {
		tp.record(func() { tp.be.AddScaled(x.grad(), y.Grad, s) }, y)
	}
	return y
}
