package tensor

import "fmt"

// RoPE rotates pairs (d, d+headDim/2) of every head by pos·invFreq[d]
// (HF Llama rotate-half). x [T, heads·headDim]. A rotation's VJP is the
// inverse rotation: dx = R(−θ)·dy.
func (tp *Tape) RoPE(x *Tensor, pos []int32, heads, headDim int, invFreq []float32) *Tensor {
	T := len(pos)
	if x.Numel() != T*heads*headDim || len(invFreq) != headDim/2 {
		panic(fmt.Sprintf("tensor.RoPE: x %v, %d positions, %d heads of %d, %d freqs", x.Shape, T, heads, headDim, len(invFreq)))
	}
	y := tp.result(tp.alloc(x.Numel()), x.Shape, x)
	tp.be.RoPE(x.Buf, y.Buf, pos, T, heads, headDim, invFreq, false)
	if y.requiresGrad {
		tp.record(func() {
			tmp := tp.be.Alloc(y.Grad.DType(), y.Grad.Len())
			tp.be.RoPE(y.Grad, tmp, pos, T, heads, headDim, invFreq, true)
			tp.be.AddScaled(x.grad(), tmp, 1)
			tp.be.Free(tmp)
		}, y)
	}
	return y
}
