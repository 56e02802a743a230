package cuda

import (
	"fmt"

	"github.com/llamatune/llamatune/kernels"
)

// Attention: causal GQA flash attention with document boundaries (see
// kernels.AttnArgs and src/attention.cu). All buffers F32.
func (be *Backend) Attention(kq, kk, kv, kout, klse kernels.Buffer, a kernels.AttnArgs) {
	q, k, v, out, lse := be.f32("Attention", kq), be.f32("Attention", kk), be.f32("Attention", kv), be.f32("Attention", kout), be.f32("Attention", klse)
	checkAttn("Attention", a, q, k, v)
	need("Attention", "out", out, q.n)
	need("Attention", "lse", lse, a.Batch*a.Heads*a.Tq)
	defer be.enter()()
	if a.Batch*a.Tq*a.Heads == 0 {
		return
	}
	docs, free := be.uploadDocs("Attention", a)
	defer free()
	be.launch("Attention", "attn_fwd", dim3{uint32(ceilDiv(a.Tq, attnWarps)), uint32(a.Heads), uint32(a.Batch)},
		attnWarps*32, attnFwdShared(a.HeadDim),
		q.ptr, k.ptr, v.ptr, out.ptr, ptr(lse), docs, a.Tq, a.Tk, a.Heads, a.KVHeads, a.HeadDim, a.QOffset, a.Scale)
}

// AttentionBackward: D = rowsum(dout∘out), then dq (one warp per query) and
// dk, dv (one warp per key, over its whole GQA group): no atomics.
func (be *Backend) AttentionBackward(kq, kk, kv, kout, klse, kdout, kdq, kdk, kdv kernels.Buffer, a kernels.AttnArgs) {
	op := "AttentionBackward"
	q, k, v, out, lse, dout := be.f32(op, kq), be.f32(op, kk), be.f32(op, kv), be.f32(op, kout), be.f32(op, klse), be.f32(op, kdout)
	dq, dk, dv := be.f32(op, kdq), be.f32(op, kdk), be.f32(op, kdv)
	checkAttn(op, a, q, k, v)
	if lse == nil || out == nil || dout == nil {
		panic(fmt.Sprintf("cuda.%s: out, lse and dout are required", op))
	}
	need(op, "out", out, q.n)
	need(op, "dout", dout, q.n)
	need(op, "lse", lse, a.Batch*a.Heads*a.Tq)
	need(op, "dq", dq, q.n)
	need(op, "dk", dk, k.n)
	need(op, "dv", dv, v.n)
	defer be.enter()()
	if a.Batch*a.Tq*a.Heads == 0 || (dq == nil && dk == nil && dv == nil) {
		return
	}
	docs, free := be.uploadDocs(op, a)
	defer free()
	D, freeD := be.tmp(op, kernels.F32, a.Batch*a.Heads*a.Tq)
	defer freeD()
	rows := a.Batch * a.Tq * a.Heads
	be.launch(op, "attn_bwd_dot", dim3{uint32(ceilDiv(rows, attnWarps)), 1, 1}, attnWarps*32, 0,
		out.ptr, dout.ptr, D.ptr, a.Batch, a.Tq, a.Heads, a.HeadDim)
	if dq != nil {
		be.launch(op, "attn_bwd_dq", dim3{uint32(ceilDiv(a.Tq, attnWarps)), uint32(a.Heads), uint32(a.Batch)},
			attnWarps*32, attnDQShared(a.HeadDim),
			q.ptr, k.ptr, v.ptr, lse.ptr, D.ptr, dout.ptr, dq.ptr, docs,
			a.Tq, a.Tk, a.Heads, a.KVHeads, a.HeadDim, a.QOffset, a.Scale)
	}
	if dk != nil || dv != nil {
		be.launch(op, "attn_bwd_dkdv", dim3{uint32(ceilDiv(a.Tk, attnWarps)), uint32(a.KVHeads), uint32(a.Batch)},
			attnWarps*32, attnDKDVShared(a.HeadDim),
			q.ptr, k.ptr, v.ptr, lse.ptr, D.ptr, dout.ptr, ptr(dk), ptr(dv), docs,
			a.Tq, a.Tk, a.Heads, a.KVHeads, a.HeadDim, a.QOffset, a.Scale)
	}
}

func (be *Backend) uploadDocs(op string, a kernels.AttnArgs) (uint64, func()) {
	if a.DocStart == nil {
		return 0, func() {}
	}
	return be.uploadI32(op, a.DocStart)
}

// checkAttn is the CPU backend's checkAttn, plus the head-dim limit of the
// kernels.
func checkAttn(op string, a kernels.AttnArgs, q, k, v *Buffer) {
	if a.KVHeads <= 0 || a.Heads%a.KVHeads != 0 || a.Tq+a.QOffset > a.Tk {
		panic(fmt.Sprintf("cuda.%s: bad args %+v", op, a))
	}
	if q == nil || k == nil || v == nil {
		panic(fmt.Sprintf("cuda.%s: q, k and v are required", op))
	}
	if q.n != a.Batch*a.Tq*a.Heads*a.HeadDim || k.n != a.Batch*a.Tk*a.KVHeads*a.HeadDim || v.n != k.n {
		panic(fmt.Sprintf("cuda.%s: q=%d k=%d v=%d elements do not match %+v", op, q.n, k.n, v.n, a))
	}
	if a.DocStart != nil && len(a.DocStart) != a.Batch*a.Tk {
		panic(fmt.Sprintf("cuda.%s: DocStart has %d entries, want Batch*Tk=%d", op, len(a.DocStart), a.Batch*a.Tk))
	}
	if a.HeadDim <= 0 || a.HeadDim > attnMaxHeadDim {
		panic(fmt.Sprintf("cuda.%s: head dim %d outside the kernels' range 1..%d", op, a.HeadDim, attnMaxHeadDim))
	}
}
