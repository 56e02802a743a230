package cuda

import (
	"fmt"

	"github.com/llamatune/llamatune/kernels"
)

// The fused lm_head losses, chunk by chunk as the CPU backend: per chunk of
// token rows, z = H·Wᵀ (+ HR·WRᵀ) by cuBLAS into one scratch [chunk, V],
// a row kernel (ce_rows / kd_rows) writing per-row losses and replacing z by
// dz, then dH += dz·W, dW += dzᵀ·H (and the low-rank pair) by cuBLAS. The
// per-row losses come back once at the end and are added in row order.

// lossOperands are the student's operands after dtype preparation: H and HR
// are F32 (as the CPU requires); W and WR are widened to F32 scratch when
// BF16 (cuBLAS has no BF16×F32 GEMM, and rounding H to BF16 would change the
// math).
type lossOperands struct {
	h, w, hr, wr, dh, dw, dhr, dwr *Buffer
	release                        []func()
}

func (o *lossOperands) free() {
	for _, f := range o.release {
		f()
	}
}

// checkStudent unwraps and checks the student's operands (nil when their
// sizes do not match the args: the caller panics with its message).
func (be *Backend) checkStudent(op string, s kernels.CEBuffers, T, H, V, R int, labels []int32) *lossOperands {
	var o lossOperands
	o.h, o.dh, o.dw = be.f32(op, s.H), be.f32(op, s.DH), be.f32(op, s.DW)
	o.w = be.buf(op, s.W)
	if o.h == nil || o.h.n != T*H || o.w.n != V*H || len(labels) != T {
		return nil
	}
	if R > 0 {
		if s.HR == nil || s.WR == nil {
			return nil
		}
		o.hr, o.dhr, o.dwr = be.f32(op, s.HR), be.f32(op, s.DHR), be.f32(op, s.DWR)
		o.wr = be.buf(op, s.WR)
		if o.hr.n != T*R || o.wr.n != V*R {
			return nil
		}
	}
	need(op, "DH", o.dh, T*H)
	need(op, "DW", o.dw, V*H)
	need(op, "DHR", o.dhr, T*R)
	need(op, "DWR", o.dwr, V*R)
	return &o
}

// widen replaces BF16 W / WR by F32 scratch copies (freed by o.free).
func (be *Backend) widen(op string, o *lossOperands) {
	var f func()
	o.w, f = be.asF32(op, o.w)
	o.release = append(o.release, f)
	if o.wr != nil {
		o.wr, f = be.asF32(op, o.wr)
		o.release = append(o.release, f)
	}
}

// checkLabels panics on a label outside the vocabulary (the CPU backend's
// check) and says which chunks hold a counted token.
func checkLabels(op string, labels []int32, V int, spans []span) []bool {
	live := make([]bool, len(spans))
	for ci, sp := range spans {
		for t := sp.lo; t < sp.hi; t++ {
			if l := labels[t]; l != kernels.IgnoreIndex {
				if l < 0 || int(l) >= V {
					panic(fmt.Sprintf("cuda.%s: label %d at token %d outside vocab %d", op, l, t, V))
				}
				live[ci] = true
			}
		}
	}
	return live
}

func f32op(b *Buffer, off, ld int) operand { return operand{ptr: at(b, off), ld: ld} }

// logits: z = h[c0:c1]·Wᵀ (+ hr[c0:c1]·WRᵀ).
func (be *Backend) studentLogits(op string, o *lossOperands, sp span, H, V, R int, z *Buffer) {
	n := sp.hi - sp.lo
	be.gemm(op, false, true, n, V, H, 1, 1, f32op(o.h, sp.lo*H, H), f32op(o.w, 0, H), 0, z.ptr, V, 0)
	if R > 0 {
		be.gemm(op, false, true, n, V, R, 1, 1, f32op(o.hr, sp.lo*R, R), f32op(o.wr, 0, R), 1, z.ptr, V, 0)
	}
}

// studentGrads: dh += dz·W, dW += dzᵀ·h, and the low-rank pair.
func (be *Backend) studentGrads(op string, o *lossOperands, sp span, H, V, R int, z *Buffer) {
	n := sp.hi - sp.lo
	dz := f32op(z, 0, V)
	if o.dh != nil {
		be.gemm(op, false, false, n, H, V, 1, 1, dz, f32op(o.w, 0, H), 1, at(o.dh, sp.lo*H), H, 0)
	}
	if o.dw != nil {
		be.gemm(op, true, false, V, H, n, 1, 1, dz, f32op(o.h, sp.lo*H, H), 1, o.dw.ptr, H, 0)
	}
	if R > 0 && o.dhr != nil {
		be.gemm(op, false, false, n, R, V, 1, 1, dz, f32op(o.wr, 0, R), 1, at(o.dhr, sp.lo*R), R, 0)
	}
	if R > 0 && o.dwr != nil {
		be.gemm(op, true, false, V, R, n, 1, 1, dz, f32op(o.hr, sp.lo*R, R), 1, o.dwr.ptr, R, 0)
	}
}

const lossBlockLimit = 512

func (be *Backend) LinearCrossEntropy(bufs kernels.CEBuffers, labels []int32, a kernels.CEArgs) (float64, int) {
	const op = "LinearCrossEntropy"
	T, H, V, R := a.Tokens, a.Hidden, a.Vocab, a.Rank
	o := be.checkStudent(op, bufs, T, H, V, R, labels)
	if o == nil {
		panic(fmt.Sprintf("cuda.LinearCrossEntropy: operands do not match %+v", a))
	}
	spans := chunks(T, a.Chunk, 1024)
	live := checkLabels(op, labels, V, spans)
	if T == 0 {
		return 0, 0
	}
	defer be.enter()()
	be.widen(op, o)
	defer o.free()
	dlab, freeL := be.uploadI32(op, labels)
	defer freeL()
	rowLoss, freeR := be.tmp(op, kernels.F32, 2*T) // f64
	defer freeR()
	be.memset0(op, rowLoss.ptr, 8*T)
	z, freeZ := be.tmp(op, kernels.F32, min(spans[0].hi-spans[0].lo, T)*V)
	defer freeZ()
	for ci, sp := range spans {
		if !live[ci] {
			continue
		}
		be.studentLogits(op, o, sp, H, V, R, z)
		be.launch(op, "ce_rows", dim3{uint32(sp.hi - sp.lo), 1, 1}, uint32(rowBlock(V/4, lossBlockLimit)), 0,
			z.ptr, V, dlab+uint64(4*sp.lo), a.GradScale, rowLoss.ptr+uint64(8*sp.lo))
		be.studentGrads(op, o, sp, H, V, R, z)
	}
	var sum float64
	count := 0
	for t, l := range be.downloadF64(op, rowLoss.ptr, T) {
		if labels[t] != kernels.IgnoreIndex {
			sum += l
			count++
		}
	}
	return sum, count
}

// LinearKD: see kernels.KDArgs and kernels/cpu/kd.go. A dense teacher's
// logits chunk is made by cuBLAS next to the student's.
func (be *Backend) LinearKD(b kernels.KDBuffers, labels []int32, a kernels.KDArgs) (float64, float64, int) {
	const op = "LinearKD"
	T, H, V, R := a.Tokens, a.Hidden, a.Vocab, a.Rank
	o := be.checkStudent(op, b.Student, T, H, V, R, labels)
	if o == nil {
		panic(fmt.Sprintf("cuda.LinearKD: student operands do not match %+v", a))
	}
	dense := a.TeacherHidden > 0
	if dense == (a.K > 0) {
		panic(fmt.Sprintf("cuda.LinearKD: need exactly one of a dense teacher or top-k (%+v)", a))
	}
	var th, tw *Buffer
	if dense {
		th, tw = be.f32(op, b.TH), be.buf(op, b.TW)
		if th.n != T*a.TeacherHidden || tw.n != V*a.TeacherHidden {
			panic(fmt.Sprintf("cuda.LinearKD: teacher operands do not match %+v", a))
		}
	} else if len(b.TopKIDs) != T*a.K || len(b.TopKLogProbs) != T*a.K {
		panic(fmt.Sprintf("cuda.LinearKD: top-k has %d ids, %d log-probs for %+v", len(b.TopKIDs), len(b.TopKLogProbs), a))
	}
	if a.Temperature <= 0 || (a.Kind == kernels.JSD && (a.Beta <= 0 || a.Beta >= 1)) || (a.Renorm && a.Kind != kernels.ForwardKL) {
		panic(fmt.Sprintf("cuda.LinearKD: invalid temperature, beta or kind for %+v", a))
	}
	spans := chunks(T, a.Chunk, 512)
	live := checkLabels(op, labels, V, spans)
	if T == 0 {
		return 0, 0, 0
	}
	if !dense {
		for i, id := range b.TopKIDs {
			if id < 0 || int(id) >= V {
				panic(fmt.Sprintf("cuda.LinearKD: top-k id %d at [%d] outside vocab %d", id, i, V))
			}
		}
	}
	defer be.enter()()
	be.widen(op, o)
	defer o.free()
	dlab, freeL := be.uploadI32(op, labels)
	defer freeL()
	rows, freeR := be.tmp(op, kernels.F32, 4*T) // kd then ce, f64 each
	defer freeR()
	be.memset0(op, rows.ptr, 16*T)
	kdOut, ceOut := rows.ptr, rows.ptr+uint64(8*T)
	n0 := spans[0].hi - spans[0].lo
	z, freeZ := be.tmp(op, kernels.F32, n0*V)
	defer freeZ()
	var zt *Buffer
	var twf *Buffer
	var dids, dlps uint64
	shared := 0
	if dense {
		var f1, f2 func()
		zt, f1 = be.tmp(op, kernels.F32, n0*V)
		defer f1()
		twf, f2 = be.asF32(op, tw)
		defer f2()
	} else {
		var f1, f2 func()
		dids, f1 = be.uploadI32(op, b.TopKIDs)
		defer f1()
		dlps, f2 = be.uploadF32(op, b.TopKLogProbs)
		defer f2()
		shared = kdSparseShared(a.K)
	}
	renorm := 0
	if a.Renorm {
		renorm = 1
	}
	for ci, sp := range spans {
		if !live[ci] {
			continue
		}
		n := sp.hi - sp.lo
		be.studentLogits(op, o, sp, H, V, R, z)
		var ztp, idp, lpp uint64
		if dense {
			TH := a.TeacherHidden
			be.gemm(op, false, true, n, V, TH, 1, 1, f32op(th, sp.lo*TH, TH), f32op(twf, 0, TH), 0, zt.ptr, V, 0)
			ztp = zt.ptr
		} else {
			idp, lpp = dids+uint64(4*sp.lo*a.K), dlps+uint64(4*sp.lo*a.K)
		}
		be.launch(op, "kd_rows", dim3{uint32(n), 1, 1}, uint32(rowBlock(V/4, lossBlockLimit)), shared,
			z.ptr, ztp, idp, lpp, dlab+uint64(4*sp.lo), V, a.K, int(a.Kind), renorm,
			a.Beta, a.Temperature, a.KDWeight, a.GradScale, kdOut+uint64(8*sp.lo), ceOut+uint64(8*sp.lo))
		be.studentGrads(op, o, sp, H, V, R, z)
	}
	all := be.downloadF64(op, rows.ptr, 2*T)
	var kdSum, ceSum float64
	count := 0
	for t := 0; t < T; t++ {
		if labels[t] != kernels.IgnoreIndex {
			kdSum += all[t]
			ceSum += all[T+t]
			count++
		}
	}
	return kdSum, ceSum, count
}

// CrossEntropy is LinearCrossEntropy's unfused twin over logits already made
// (LLAMATUNE_NO_FUSED=1): the same ce_rows kernel on a copy of the logits,
// then dlogits += the result.
func (be *Backend) CrossEntropy(logits, dlogits kernels.Buffer, labels []int32, rows, vocab int, gradScale float32) (float64, int) {
	const op = "CrossEntropy"
	if lb := be.f32(op, logits); lb.n != rows*vocab || len(labels) != rows {
		panic(fmt.Sprintf("cuda.CrossEntropy: %d logits, %d labels for %d×%d", lb.n, len(labels), rows, vocab))
	}
	checkLabels(op, labels, vocab, []span{{0, rows}})
	if rows == 0 {
		return 0, 0
	}
	z := be.Alloc(kernels.F32, rows*vocab)
	defer be.Free(z)
	be.Copy(z, logits)
	losses := func() []float64 {
		defer be.enter()()
		dlab, freeL := be.uploadI32(op, labels)
		defer freeL()
		rowLoss, freeR := be.tmp(op, kernels.F32, 2*rows) // f64
		defer freeR()
		be.memset0(op, rowLoss.ptr, 8*rows)
		be.launch(op, "ce_rows", dim3{uint32(rows), 1, 1}, uint32(rowBlock(vocab/4, lossBlockLimit)), 0,
			z.(*Buffer).ptr, vocab, dlab, gradScale, rowLoss.ptr)
		return be.downloadF64(op, rowLoss.ptr, rows)
	}()
	if dlogits != nil {
		be.AddScaled(dlogits, z, 1)
	}
	var sum float64
	count := 0
	for t, l := range losses {
		if labels[t] != kernels.IgnoreIndex {
			sum += l
			count++
		}
	}
	return sum, count
}
