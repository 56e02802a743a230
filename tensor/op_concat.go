package tensor

import (
	"fmt"

	"github.com/llamatune/llamatune/kernels"
)

// ConcatCols joins a [N, p] and b [N, q] into [N, p+q]. Its VJP splits the
// gradient's columns back: da += dy[:, :p], db += dy[:, p:].
func (tp *Tape) ConcatCols(a, b *Tensor) *Tensor {
	if len(a.Shape) != 2 || len(b.Shape) != 2 || a.Shape[0] != b.Shape[0] {
		panic(fmt.Sprintf("tensor.ConcatCols: %v and %v", a.Shape, b.Shape))
	}
	n, p, q := a.Shape[0], a.Shape[1], b.Shape[1]
	y := tp.result(tp.alloc(n*(p+q)), []int{n, p + q}, a, b)
	tp.be.ConcatCols(a.Buf, b.Buf, y.Buf, n, p, q)
	if y.requiresGrad {
		tp.record(func() {
			var da, db kernels.Buffer
			if a.requiresGrad {
				da = a.grad()
			}
			if b.requiresGrad {
				db = b.grad()
			}
			tp.be.SplitCols(y.Grad, da, db, n, p, q)
		}, y)
	}
	return y
}
