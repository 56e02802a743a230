// Package gemm is the CPU single-precision GEMM: a pure-Go reference and the
// fast path used by kernels/cpu.
//
// # Algorithm
//
// Sgemm follows the Goto/BLIS structure, the classic five loops:
//
//	for jc in steps of NC over n:             B block kc×nc   -> L3
//	  for pc in steps of KC over k:
//	    pack op(B)[pc:pc+kc, jc:jc+nc]  into NR-wide column panels
//	    for ic in steps of MC over m:         A block mc×kc   -> L2
//	      pack op(A)[ic:ic+mc, pc:pc+kc] into MR-tall row panels
//	      for jr in steps of NR:              B micro-panel   -> L1
//	        for ir in steps of MR:
//	          micro-kernel: C[ir:ir+MR, jr:jr+NR] = alpha*Apanel*Bpanel + beta'*C
//
// beta' is the caller's beta for the first kc block and 1 afterwards. The
// packing step absorbs all four transpose combinations, so the micro-kernel
// only ever sees one layout: an A micro-panel stores, for each p, the MR values
// A[ir..ir+MR-1, p] contiguously; a B micro-panel stores, for each p, the NR
// values B[p, jr..jr+NR-1] contiguously. Panels are zero-padded at the m/n
// edges; edge tiles are computed into a small MR×NR scratch tile and merged.
//
// # Parallelism
//
// Up to runtime.GOMAXPROCS(0) worker goroutines (fewer for small products)
// form a tm×tn grid (see split). All of them walk the same (jc, pc) blocks and
// pack each B block together, one share of its panels each, then meet at a
// barrier; worker (i, j) then multiplies the i-th band of MR-aligned rows
// (packing its own A blocks) by the j-th share of the block's B panels.
//
// # Kernels
//
// The micro-kernel is chosen at start-up (kernel_amd64.go): AVX-512 (14×32,
// with the AVX2 6×16 one for outputs whose shape would leave the 14×32 tile
// mostly padding), AVX2+FMA (6×16), or the portable pure-Go 4×4 kernel
// (kernel_go.go), which is what other architectures use (kernel_generic.go).
//
// Tiny products (m*n*k <= smallWork) go straight to SgemmRef, and
// matrix-vector products (m == 1 or n == 1) to dot/axpy loops (gemv.go).
package gemm

import (
	"fmt"
	"runtime"
	"sync"
	"time"
	"unsafe"
)

// kernelFunc computes the MR×NR tile
//
//	C[i*ldc+j] = alpha * sum_p a[p*MR+i]*b[p*NR+j] + beta*C[i*ldc+j]
//
// for a packed A micro-panel a (k×MR) and B micro-panel b (k×NR). When beta
// is zero C is only written, never read (so NaN garbage is overwritten).
type kernelFunc func(k int, a, b, c []float32, ldc int, alpha, beta float32)

// kernelSpec is a micro-kernel together with its register tile (mr×nr) and
// the cache blocking (mc, kc, nc) tuned for it.
type kernelSpec struct {
	name       string
	mr, nr     int
	mc, kc, nc int
	fn         kernelFunc
}

// genericKernel is the portable pure-Go micro-kernel (kernel_go.go).
var genericKernel = &kernelSpec{
	name: "go4x4",
	mr:   4, nr: 4,
	mc: 128, kc: 256, nc: 2048,
	fn: kernelGo4x4,
}

// bestKernel is the fastest kernel this CPU supports; set by the
// architecture-specific init (kernel_amd64.go); defaults to the generic one.
var bestKernel = genericKernel

// narrowKernel, when set, is a kernel with a smaller register tile than
// bestKernel; kernelFor switches to it when bestKernel's tile would mostly
// compute zero padding (e.g. m = 8 with a 14-row tile).
var narrowKernel *kernelSpec

// forceGeneric makes Sgemm use the pure-Go micro-kernel even where an assembly
// one is available (used by the tests to cover the fallback path).
var forceGeneric = false

// KernelName reports which micro-kernel Sgemm uses on this machine.
func KernelName() string { return activeKernel().name }

// kernelFor picks the micro-kernel for an m×n output.
func kernelFor(m, n int) *kernelSpec {
	ks := activeKernel()
	if nk := narrowKernel; nk != nil && ks == bestKernel {
		// Compare the padded areas the two register tiles compute; the
		// wide kernel is preferred unless it wastes >25% more.
		wide := roundUp(m, ks.mr) * roundUp(n, ks.nr)
		narrow := roundUp(m, nk.mr) * roundUp(n, nk.nr)
		if 4*wide > 5*narrow {
			return nk
		}
	}
	return ks
}

func activeKernel() *kernelSpec {
	if forceGeneric {
		return genericKernel
	}
	return bestKernel
}

const (
	// smallWork: below this many multiply-adds (m*n*k) the packing overhead is
	// not worth it and the straightforward loops are used.
	smallWork = 256
	// minThreadWork: multiply-adds a worker goroutine should get at least
	// (~tens of microseconds), so that tiny products are not split.
	minThreadWork = 1 << 20
)

// Sgemm computes C = alpha*op(A)*op(B) + beta*C with row-major storage.
// op(A) is m×k (A stored k×m when transA), op(B) is k×n (B stored n×k when
// transB); lda, ldb, ldc are the row strides of the stored matrices.
// When beta is zero C need not be initialised (NaNs in it are overwritten).
func Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	checkArgs(transA, transB, m, n, k, a, lda, b, ldb, c, ldc)
	if m == 0 || n == 0 {
		return
	}
	if k == 0 || alpha == 0 {
		scaleC(m, n, beta, c, ldc)
		return
	}
	if m*n*k <= smallWork {
		SgemmRef(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	if m == 1 || n == 1 {
		gemv(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	ks := kernelFor(m, n)
	threads := runtime.GOMAXPROCS(0)
	if w := m * n * k / minThreadWork; w < threads {
		threads = max(w, 1)
	}
	tm, tn := split(m, n, k, threads, ks)

	sh := getShared(ks, tm*tn)
	p := &problem{ks: ks, transA: transA, transB: transB, m: m, n: n, k: k,
		alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc,
		tm: tm, tn: tn, sh: sh}
	if tm*tn == 1 {
		p.worker(0)
	} else {
		var wg sync.WaitGroup
		for t := 1; t < tm*tn; t++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.worker(t)
			}()
		}
		p.worker(0)
		wg.Wait()
	}
	putShared(sh)
}

// split chooses a tm×tn grid of workers (tm*tn <= threads): worker (i, j)
// computes the i-th band of MR-aligned rows and, inside every nc block, the
// j-th share of the NR-wide column panels. It minimises the per-worker cost:
// the multiply-adds of the largest share plus a packing term (packing moves
// one value per element while the kernel does ~16 FMAs per cycle). Every
// worker packs the A rows of its band; the B block is packed once, jointly.
func split(m, n, k, threads int, ks *kernelSpec) (tm, tn int) {
	best := -1
	nblocks := ceilDiv(n, ks.nc)
	for a := 1; a <= threads; a++ {
		b := threads / a
		mb := roundUp(ceilDiv(m, a), ks.mr)
		nb := roundUp(ceilDiv(n, b), ks.nr)
		// shares that would be empty are wasted threads
		if ceilDiv(m, mb) < a || ceilDiv(n, nb) < b {
			continue
		}
		cost := mb*nb*k + 16*k*(mb*nblocks+n/(a*b))
		if best < 0 || cost < best {
			best, tm, tn = cost, a, b
		}
	}
	if best < 0 {
		return 1, 1
	}
	return tm, tn
}

// problem holds the arguments of one Sgemm call, shared by its workers.
type problem struct {
	ks             *kernelSpec
	transA, transB bool
	m, n, k        int
	alpha, beta    float32
	a              []float32
	lda            int
	b              []float32
	ldb            int
	c              []float32
	ldc            int
	tm, tn         int     // worker grid, see split
	sh             *shared // jointly packed B blocks
}

// worker t runs the five-loop blocking described in the package comment for
// its share of C. All workers walk the same (jc, pc) sequence: together they
// pack the B block (each a contiguous range of panels), meet at a barrier,
// then each multiplies its own rows (packing its own A blocks) by its own
// column panels. The B block is double-buffered, so the single barrier per
// block suffices: a worker packing block i+1 overwrites the buffer of block
// i-1, which every worker has finished with before arriving at barrier i.
func (p *problem) worker(t int) {
	ks := p.ks
	mr, nr := ks.mr, ks.nr
	m, n, k := p.m, p.n, p.k
	nthreads := p.tm * p.tn
	ti, tj := t/p.tn, t%p.tn

	// This worker's band of rows.
	rowStep := roundUp(ceilDiv(m, p.tm), mr)
	i0 := min(ti*rowStep, m)
	i1 := min(i0+rowStep, m)

	// Balance the block sizes: e.g. k=300 with kc=256 gives 2×150, not
	// 256+44. kc and nc must be the same in every worker (shared B blocks).
	kc := ceilDiv(k, ceilDiv(k, ks.kc))
	nc := roundUp(ceilDiv(n, ceilDiv(n, ks.nc)), nr)
	mc := ks.mc
	if i1 > i0 {
		mc = roundUp(ceilDiv(i1-i0, ceilDiv(i1-i0, ks.mc)), mr)
	}

	var ws *workspace
	if i1 > i0 {
		ws = getWorkspace(ks)
		defer putWorkspace(ws)
	}
	block := 0
	for jc := 0; jc < n; jc += nc {
		nb := min(nc, n-jc)
		np := ceilDiv(nb, nr) // panels in this B block
		pack0, pack1 := t*np/nthreads, (t+1)*np/nthreads
		q0, q1 := tj*np/p.tn, (tj+1)*np/p.tn
		for pc := 0; pc < k; pc += kc {
			kb := min(kc, k-pc)
			bbuf := p.sh.b[block&1]
			block++
			packB(bbuf, p.transB, p.b, p.ldb, pc, kb, jc, nb, nr, pack0, pack1)
			if nthreads > 1 {
				p.sh.bar.wait()
			}
			if i1 == i0 || q0 == q1 {
				continue
			}
			beta := p.beta
			if pc > 0 {
				beta = 1
			}
			for ic := i0; ic < i1; ic += mc {
				mb := min(mc, i1-ic)
				packA(ws.a, p.transA, p.a, p.lda, ic, mb, pc, kb, mr)
				p.macroKernel(ws, bbuf, ic, mb, jc, nb, kb, q0, q1, beta)
			}
		}
	}
}

// macroKernel multiplies the packed mb×kb A block by B panels q0..q1-1 of the
// packed kb×nb B block into C[ic:ic+mb, jc+q0*NR : jc+min(q1*NR, nb)], one
// MR×NR register tile at a time. The B micro-panel (kb×NR) stays in L1 while
// the A micro-panels stream from L2.
func (p *problem) macroKernel(ws *workspace, bbuf []float32, ic, mb, jc, nb, kb, q0, q1 int, beta float32) {
	ks := p.ks
	mr, nr := ks.mr, ks.nr
	fn := ks.fn
	c, ldc, alpha := p.c, p.ldc, p.alpha
	for jr := q0 * nr; jr < min(q1*nr, nb); jr += nr {
		nrr := min(nr, nb-jr)
		bp := bbuf[jr*kb:]
		for ir := 0; ir < mb; ir += mr {
			mrr := min(mr, mb-ir)
			ap := ws.a[ir*kb:]
			off := (ic+ir)*ldc + jc + jr
			if mrr == mr && nrr == nr {
				fn(kb, ap, bp, c[off:], ldc, alpha, beta)
				continue
			}
			// Edge tile: compute the full padded tile into scratch, then
			// merge the valid mrr×nrr part.
			t := ws.tile
			fn(kb, ap, bp, t, nr, 1, 0)
			for i := 0; i < mrr; i++ {
				crow := c[off+i*ldc : off+i*ldc+nrr]
				trow := t[i*nr : i*nr+nrr]
				if beta == 0 {
					for j, v := range trow {
						crow[j] = alpha * v
					}
				} else {
					for j, v := range trow {
						crow[j] = alpha*v + beta*crow[j]
					}
				}
			}
		}
	}
}

// packA copies op(A)[i0:i0+mb, p0:p0+kb] into dst as MR-tall micro-panels:
// panel q holds rows i0+q*MR.. and stores, for p = 0..kb-1, the MR values
// op(A)[row, p0+p] contiguously (zero for rows past mb).
func packA(dst []float32, transA bool, a []float32, lda, i0, mb, p0, kb, mr int) {
	for ir := 0; ir < mb; ir += mr {
		panel := dst[ir*kb : (ir+mr)*kb]
		rows := min(mr, mb-ir)
		if transA {
			// op(A)[i,p] = a[p*lda+i]: each p is a contiguous run of rows.
			copyRuns(panel, mr, a[(p0*lda+i0+ir):], lda, rows, kb)
		} else {
			// op(A)[i,p] = a[i*lda+p]: each row is a run along p.
			transposeRuns(panel, mr, a[(i0+ir)*lda+p0:], lda, rows, kb)
		}
	}
}

// packB copies panels q0..q1-1 of op(B)[p0:p0+kb, j0:j0+nb] into dst as
// NR-wide micro-panels: panel q holds columns j0+q*NR.. and stores, for
// p = 0..kb-1, the NR values op(B)[p0+p, col] contiguously (zero for columns
// past nb).
func packB(dst []float32, transB bool, b []float32, ldb, p0, kb, j0, nb, nr, q0, q1 int) {
	for jr := q0 * nr; jr < min(q1*nr, nb); jr += nr {
		panel := dst[jr*kb : (jr+nr)*kb]
		cols := min(nr, nb-jr)
		if transB {
			// op(B)[p,j] = b[j*ldb+p]: each stored row is a run along p.
			transposeRuns(panel, nr, b[(j0+jr)*ldb+p0:], ldb, cols, kb)
		} else {
			// op(B)[p,j] = b[p*ldb+j]: each p is a contiguous run of columns.
			copyRuns(panel, nr, b[p0*ldb+j0+jr:], ldb, cols, kb)
		}
	}
}

// copyRuns fills a w-wide panel: for p = 0..kb-1, panel[p*w : p*w+n] =
// src[p*ld : p*ld+n], zero-padding the remaining w-n values. The common
// full-width cases use fixed-size array copies, which compile to a few
// vector moves instead of a memmove call.
func copyRuns(panel []float32, w int, src []float32, ld, n, kb int) {
	if n == w {
		switch w {
		case 32:
			for p := 0; p < kb; p++ {
				*(*[32]float32)(panel[p*32:]) = *(*[32]float32)(src[p*ld:])
			}
			return
		case 16:
			for p := 0; p < kb; p++ {
				*(*[16]float32)(panel[p*16:]) = *(*[16]float32)(src[p*ld:])
			}
			return
		case 14:
			for p := 0; p < kb; p++ {
				*(*[14]float32)(panel[p*14:]) = *(*[14]float32)(src[p*ld:])
			}
			return
		case 6:
			for p := 0; p < kb; p++ {
				*(*[6]float32)(panel[p*6:]) = *(*[6]float32)(src[p*ld:])
			}
			return
		case 4:
			for p := 0; p < kb; p++ {
				*(*[4]float32)(panel[p*4:]) = *(*[4]float32)(src[p*ld:])
			}
			return
		}
	}
	for p := 0; p < kb; p++ {
		d := panel[p*w : p*w+w]
		copy(d, src[p*ld:p*ld+n])
		clear(d[n:])
	}
}

// transposeRuns fills a w-wide panel from n runs along p: for r < n and
// p < kb, panel[p*w+r] = src[r*ld+p]; columns n..w-1 are zeroed. Four runs
// are transposed together (in 4×4 register blocks on amd64).
func transposeRuns(panel []float32, w int, src []float32, ld, n, kb int) {
	panel = panel[:kb*w]
	r := 0
	for ; r+4 <= n; r += 4 {
		transpose4(panel[r:], w, src[r*ld:], ld, kb)
	}
	for ; r < n; r++ {
		s := src[r*ld : r*ld+kb]
		for p, v := range s {
			panel[p*w+r] = v
		}
	}
	if n < w {
		for p := 0; p < kb; p++ {
			clear(panel[p*w+n : p*w+w])
		}
	}
}

// transpose4Go is the portable transpose4: panel[p*w+r] = src[r*ld+p] for
// r < 4, p < kb.
func transpose4Go(panel []float32, w int, src []float32, ld, kb int) {
	s0 := src[0:kb]
	s1 := src[ld : ld+kb]
	s2 := src[2*ld : 2*ld+kb]
	s3 := src[3*ld : 3*ld+kb]
	for p, v := range s0 {
		d := panel[p*w : p*w+4 : p*w+4]
		d[0], d[1], d[2], d[3] = v, s1[p], s2[p], s3[p]
	}
}

// workspace is one worker's private buffers (64-byte aligned).
type workspace struct {
	ks   *kernelSpec
	a    []float32 // mc×kc packed A block
	tile []float32 // mr×nr scratch for edge tiles
}

var wsPool sync.Pool

func getWorkspace(ks *kernelSpec) *workspace {
	if v := wsPool.Get(); v != nil {
		ws := v.(*workspace)
		if ws.ks == ks {
			return ws
		}
	}
	return &workspace{
		ks:   ks,
		a:    alignedFloats(roundUp(ks.mc, ks.mr) * ks.kc),
		tile: alignedFloats(ks.mr * ks.nr),
	}
}

func putWorkspace(ws *workspace) { wsPool.Put(ws) }

// shared is the state the workers of one Sgemm call share: two kc×nc packed
// B buffers (double-buffered, see worker) and the barrier.
type shared struct {
	ks  *kernelSpec
	b   [2][]float32
	bar barrier
}

var sharedPool sync.Pool

func getShared(ks *kernelSpec, workers int) *shared {
	var sh *shared
	if v := sharedPool.Get(); v != nil {
		if sh = v.(*shared); sh.ks != ks {
			sh = nil
		}
	}
	if sh == nil {
		sh = &shared{ks: ks}
		sh.b[0] = alignedFloats(ks.kc * roundUp(ks.nc, ks.nr))
	}
	if workers > 1 && sh.b[1] == nil {
		sh.b[1] = alignedFloats(ks.kc * roundUp(ks.nc, ks.nr))
	}
	if workers == 1 {
		sh.b[1] = sh.b[0] // a lone worker needs no double buffering
	}
	sh.bar.reset(workers)
	return sh
}

func putShared(sh *shared) {
	if &sh.b[1][0] == &sh.b[0][0] {
		sh.b[1] = nil
	}
	sharedPool.Put(sh)
}

// barrier is a reusable rendezvous for a fixed number of goroutines.
type barrier struct {
	mu    sync.Mutex
	cond  sync.Cond
	n     int
	count int
	gen   uint64
}

func (b *barrier) reset(n int) {
	b.cond.L = &b.mu
	b.n, b.count = n, 0
}

// wait blocks until all n goroutines have called wait.
func (b *barrier) wait() {
	b.mu.Lock()
	gen := b.gen
	b.count++
	if b.count == b.n {
		b.count = 0
		b.gen++
		b.cond.Broadcast()
	} else {
		for gen == b.gen {
			b.cond.Wait()
		}
	}
	b.mu.Unlock()
}

// alignedFloats returns a zeroed slice of n float32 starting on a 64-byte
// (cache line) boundary.
func alignedFloats(n int) []float32 {
	buf := make([]float32, n+16)
	off := 0
	if r := uintptr(unsafe.Pointer(&buf[0])) % 64; r != 0 {
		off = int(64-r) / 4
	}
	return buf[off : off+n : off+n]
}

// scaleC sets C = beta*C (beta == 0 overwrites with zeros).
func scaleC(m, n int, beta float32, c []float32, ldc int) {
	if beta == 1 {
		return
	}
	for i := 0; i < m; i++ {
		row := c[i*ldc : i*ldc+n]
		if beta == 0 {
			clear(row)
			continue
		}
		for j := range row {
			row[j] *= beta
		}
	}
}

func checkArgs(transA, transB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int) {
	if m < 0 || n < 0 || k < 0 {
		panic(fmt.Sprintf("gemm: negative dimension m=%d n=%d k=%d", m, n, k))
	}
	ar, ac := m, k
	if transA {
		ar, ac = k, m
	}
	br, bc := k, n
	if transB {
		br, bc = n, k
	}
	check := func(name string, s []float32, rows, cols, ld int) {
		if rows == 0 || cols == 0 {
			return
		}
		if ld < cols {
			panic(fmt.Sprintf("gemm: ld%s=%d < %d columns", name, ld, cols))
		}
		if need := (rows-1)*ld + cols; len(s) < need {
			panic(fmt.Sprintf("gemm: len(%s)=%d < %d needed for %d×%d with ld=%d", name, len(s), need, rows, cols, ld))
		}
	}
	if m > 0 && n > 0 && k > 0 {
		check("a", a, ar, ac, lda)
		check("b", b, br, bc, ldb)
	}
	check("c", c, m, n, ldc)
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }
func roundUp(a, b int) int { return ceilDiv(a, b) * b }

// GFLOPS converts an m×n×k GEMM that took d into GFLOP/s (2mnk flops).
func GFLOPS(m, n, k int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return 2 * float64(m) * float64(n) * float64(k) / d.Seconds() / 1e9
}

// SgemmRef is the straightforward reference (and fallback) implementation.
// It does not skip zero elements of A, so NaN/Inf in B propagate exactly as
// in Sgemm.
func SgemmRef(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	for i := 0; i < m; i++ {
		crow := c[i*ldc : i*ldc+n]
		if beta == 0 {
			for j := range crow {
				crow[j] = 0
			}
		} else if beta != 1 {
			for j := range crow {
				crow[j] *= beta
			}
		}
		for p := 0; p < k; p++ {
			var av float32
			if transA {
				av = a[p*lda+i]
			} else {
				av = a[i*lda+p]
			}
			av *= alpha
			if transB {
				for j := 0; j < n; j++ {
					crow[j] += av * b[j*ldb+p]
				}
			} else {
				brow := b[p*ldb : p*ldb+n]
				for j, bv := range brow {
					crow[j] += av * bv
				}
			}
		}
	}
}
