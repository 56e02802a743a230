package tensor

// Recompute runs fn(x) without keeping its activations (activation
// checkpointing): the forward pass runs on a non-recording tape, and the VJP
// runs fn again on a fresh recording tape from a detached copy of x, then
// propagates the upstream gradient through it. Parameters used inside fn
// accumulate their gradients as usual. fn must be deterministic (seed any
// dropout from state captured outside fn). On a non-recording tape it just
// runs fn and frees everything but the output at once (layer-by-layer
// inference in bounded memory).
func (tp *Tape) Recompute(x *Tensor, fn func(tp *Tape, x *Tensor) *Tensor) *Tensor {
	if !tp.recording() {
		// Inference: keep only fn's output, free its intermediates now.
		inner := &Tape{be: tp.be, NoGrad: true, Compute: tp.Compute}
		y0 := fn(inner, x)
		y := tp.result(tp.alloc(y0.Numel()), y0.Shape)
		tp.be.Copy(y.Buf, y0.Buf)
		inner.Release()
		return y
	}
	inner := &Tape{be: tp.be, NoGrad: true, Compute: tp.Compute}
	y0 := fn(inner, x)
	// Keep only the output buffer; drop everything else fn made.
	y := tp.result(tp.alloc(y0.Numel()), y0.Shape, x)
	tp.be.Copy(y.Buf, y0.Buf)
	inner.Release()
	y.requiresGrad = true // parameters inside fn may require grad
	tp.record(func() {
		sub := NewTape(tp.be)
		sub.Compute = tp.Compute
		xd := &Tensor{Name: x.Name, Shape: x.Shape, Buf: x.Buf, be: x.be, requiresGrad: x.requiresGrad, leaf: true}
		out := fn(sub, xd)
		sub.BackwardFrom(out, y.Grad)
		if x.requiresGrad && xd.Grad != nil {
			tp.be.AddScaled(x.grad(), xd.Grad, 1)
			tp.be.Free(xd.Grad)
		}
		sub.Release()
	}, y)
	return y
}
