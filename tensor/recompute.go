package tensor

import "github.com/llamatune/llamatune/kernels"

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
		inner := &Tape{be: tp.be, NoGrad: true, Inference: tp.Inference, Compute: tp.Compute}
		y0 := fn(inner, x)
		y := tp.result(tp.alloc(y0.Numel()), y0.Shape)
		tp.be.Copy(y.Buf, y0.Buf)
		inner.Release()
		return y
	}
	inner := &Tape{be: tp.be, NoGrad: true, Inference: tp.Inference, Compute: tp.Compute}
	y0 := fn(inner, x)
	// Keep only the output buffer; drop everything else fn made.
	y := tp.result(tp.alloc(y0.Numel()), y0.Shape, x)
	tp.be.Copy(y.Buf, y0.Buf)
	inner.Release()
	y.requiresGrad = true // parameters inside fn may require grad
	tp.record(func() {
		sub := NewTape(tp.be)
		sub.Compute = tp.Compute
		xb := x.Buf
		if xb.DType() == kernels.BF16 { // kept as a bf16 checkpoint (KeepBF16)
			xb = sub.alloc(x.Numel())
			tp.be.Copy(xb, x.Buf)
		}
		xd := &Tensor{Name: x.Name, Shape: x.Shape, Buf: xb, be: x.be, requiresGrad: x.requiresGrad, leaf: true}
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

// KeepBF16 stores x in bf16 from now on: its f32 buffer is freed. Two uses:
//
//   - an activation checkpoint (the input of a Recompute, which the forward
//     pass reads no more): Recompute's backward widens it again and
//     recomputes from the rounded values, as bf16 mixed precision does;
//   - an activation a layer saves for backward, under bf16 compute on a
//     backend that reads bf16 activations (kernels.BF16Activations): every
//     op that reads x afterwards, forward or backward, must accept BF16
//     there (see that interface), as torch autocast's bf16 activations.
//
// Either halves what x holds. Only buffers the tape made are converted;
// anything else is left as it is.
func (tp *Tape) KeepBF16(x *Tensor) {
	if x.Buf.DType() == kernels.BF16 {
		return
	}
	if i := tp.ownedIndex(x.Buf); i >= 0 {
		h := tp.be.Alloc(kernels.BF16, x.Numel())
		tp.be.Copy(h, x.Buf)
		tp.be.Free(x.Buf)
		tp.owned[i], x.Buf = h, h
	}
}

// Drop frees x's buffer now, before Release: the caller states that no op
// reads x's values again, neither later in the forward pass nor in any VJP
// already recorded (Linear, Add, AddLinear, RoPE and Scale never read their
// output's values, so a projection's output that only fed one of those is
// dead once it has). Gradients still flow through x. Buffers the tape did
// not make are left alone. Reading x afterwards is a bug, and panics.
func (tp *Tape) Drop(x *Tensor) {
	if i := tp.ownedIndex(x.Buf); i >= 0 {
		tp.be.Free(x.Buf)
		last := len(tp.owned) - 1
		tp.owned[i] = tp.owned[last]
		tp.owned = tp.owned[:last]
		x.Buf = nil
	}
}

// ownedIndex is b's index in tp.owned (searched from the newest), or -1.
func (tp *Tape) ownedIndex(b kernels.Buffer) int {
	for i := len(tp.owned) - 1; i >= 0; i-- {
		if tp.owned[i] == b {
			return i
		}
	}
	return -1
}
