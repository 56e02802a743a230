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
// Up to runtime.GOMAXPROCS(0) worker goroutines (fewer for small products,
// or when several Sgemm calls run at once) walk the same (jc, pc) blocks.
// They claim the panels of each B block to pack them together, then claim
// work items, a block of rows (whose A block the claiming worker packs)
// times a share of the B panels (see schedule and worker). Claims come from
// shared atomic counters and the B blocks are double-buffered, with no
// barrier, so the work balances itself even when other processes slow some
// workers down.
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
	"runtime"
	"sync"
	"sync/atomic"
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
	// pairs: the kernel reads bf16 pairs (see packPanel): its panels hold
	// one 32-bit slot per two k values, and fn's k is the number of pairs.
	pairs bool
}

// slots is the number of panel values per row or column for kb k values.
func (ks *kernelSpec) slots(kb int) int {
	if ks.pairs {
		return (kb + 1) / 2
	}
	return kb
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

// bf16Kernel, when set, is the micro-kernel for BF16 precision (pairs of
// bf16 per 32-bit slot, f32 accumulation); without it BF16 products run on
// the f32 kernels with operands rounded to bf16 when packed.
var bf16Kernel *kernelSpec

// forceGeneric makes Sgemm use the pure-Go micro-kernel (and dot/axpy loops)
// even where assembly is available (the tests use it to cover the fallback
// path; packing helpers stay in assembly).
var forceGeneric = false

// HasBF16Kernel reports whether BF16 precision runs on a bf16 kernel
// (AVX512_BF16) rather than on the f32 ones.
func HasBF16Kernel() bool { return bf16Kernel != nil }

// KernelName reports which micro-kernel Sgemm uses on this machine.
func KernelName() string { return activeKernel().name }

// kernelFor picks the micro-kernel for an m×n output in precision prec: the
// bf16 pair kernel where the CPU has one, else an f32 kernel (which then
// gets operands rounded to bf16 by the packing step).
func kernelFor(m, n int, prec Precision) *kernelSpec {
	if prec == BF16 && bf16Kernel != nil && !forceGeneric {
		return bf16Kernel
	}
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
// When beta is zero C need not be initialised (NaNs in it are overwritten);
// when alpha is zero (or k is zero) A and B are not read and C = beta*C, as in
// BLAS. It panics if a slice is too short for its dimensions and stride.
// Safe for concurrent use; it runs on up to GOMAXPROCS goroutines.
func Sgemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	checkArgs(transA, transB, m, n, k, a, lda, b, ldb, c, ldc)
	if m == 0 || n == 0 {
		return
	}
	if k == 0 || alpha == 0 {
		scaleC(m, n, beta, c, ldc)
		return
	}
	work := int64(m) * int64(n) * int64(k) // int64: int may be 32 bits
	if work <= smallWork {
		SgemmRef(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	if m == 1 || n == 1 {
		gemv(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	run(&problem{transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
		a: Operand{F32: a}, lda: lda, b: Operand{F32: b}, ldb: ldb, beta: beta, c: c, ldc: ldc})
}

// run computes a packed product (m, n, k > 0, alpha != 0) on the kernel
// chosen for its shape and precision.
func run(p *problem) {
	p.ks = kernelFor(p.m, p.n, p.prec)
	p.round = p.prec == BF16 && !p.ks.pairs
	threads, done := workers(int64(p.m) * int64(p.n) * int64(p.k))
	defer done()
	p.threads = threads
	p.rowBlock, p.rowBlocks, p.colShares = schedule(p.m, p.n, threads, p.ks)
	p.sh = getShared(p.ks, threads, p.rowBlocks*p.colShares)
	if threads == 1 {
		p.worker(0)
	} else {
		var wg sync.WaitGroup
		for t := 1; t < threads; t++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.worker(t)
			}()
		}
		p.worker(0)
		wg.Wait()
	}
	putShared(p.sh)
}

// activeCalls counts the Sgemm calls in progress in the process.
var activeCalls atomic.Int32

// workers returns how many goroutines a product of work multiply-adds should
// use: GOMAXPROCS shared among the Sgemm calls running at the same time (so
// that calls made from already-parallel code, e.g. one per attention head,
// do not multiply the goroutines), and at most one per
// minThreadWork. done must be called when the product is finished.
func workers(work int64) (threads int, done func()) {
	active := int(activeCalls.Add(1))
	threads = max(runtime.GOMAXPROCS(0)/active, 1)
	if w := work / minThreadWork; w < int64(threads) {
		threads = max(int(w), 1)
	}
	return threads, decActive
}

func decActive() { activeCalls.Add(-1) }

// schedule cuts the work on each packed B block into items for the workers
// to claim: rowBlocks blocks of rowBlock (MR-aligned) rows times colShares
// shares of the block's NR-wide panels. Rows are cut into several items per
// worker (at most MC rows each, at least 4*MR) so that a worker slowed down by
// other load on the machine simply claims fewer items; columns are only cut
// when there are too few row blocks to go round (small m).
func schedule(m, n, threads int, ks *kernelSpec) (rowBlock, rowBlocks, colShares int) {
	rowBlocks = max(ceilDiv(m, ks.mc), min(4*threads, ceilDiv(m, 4*ks.mr)))
	rowBlock = roundUp(ceilDiv(m, rowBlocks), ks.mr)
	rowBlocks = ceilDiv(m, rowBlock)
	colShares = 1
	if rowBlocks < 2*threads {
		panels := ceilDiv(min(n, ks.nc), ks.nr)
		colShares = max(1, min(ceilDiv(2*threads, rowBlocks), panels))
	}
	return rowBlock, rowBlocks, colShares
}

// problem holds the arguments of one Sgemm call, shared by its workers.
type problem struct {
	ks             *kernelSpec
	transA, transB bool
	m, n, k        int
	alpha, beta    float32
	a              Operand
	lda            int
	b              Operand
	ldb            int
	prec           Precision
	round          bool // f32 kernel in BF16 precision: operands rounded to bf16 when packed
	c              []float32
	ldc            int
	threads        int
	rowBlock       int // rows per work item, see schedule
	rowBlocks      int
	colShares      int
	sh             *shared // jointly packed B blocks and their claim counters
}

// worker t runs the five-loop blocking described in the package comment.
// All workers walk the same (jc, pc) sequence of B blocks; for each block
// they claim, from shared counters, first B panels to pack and then work
// items (a block of rows × a share of the panels, see schedule) to compute,
// packing the A block of each item's rows before running the macro-kernel.
//
// There is no barrier: a worker that is ahead packs the next block itself
// (into the other of two B buffers) and starts on it while the others finish
// the current one. The counters of each buffer only ever grow (blocks that
// reuse a buffer continue its counts), so a worker knows the range of claims
// that belong to its block from the deterministic block sequence, and claims
// with compare-and-swap never overshoot into a later block. A buffer is only
// refilled once every item of the block that last used it is done, and an
// item only starts once the same item of the previous block is done (both
// update the same part of C). Neither wait can deadlock: a worker moves on to
// a block only when every item of the previous one has been claimed.
func (p *problem) worker(t int) {
	ks := p.ks
	nr := ks.nr
	m, n, k := p.m, p.n, p.k

	// Balance the block sizes: e.g. k=300 with kc=256 gives 2×150, not
	// 256+44. kc and nc are the same in every worker (shared B blocks).
	kc := ceilDiv(k, ceilDiv(k, ks.kc))
	if ks.pairs {
		kc = roundUp(kc, 2) // whole pairs per block (the buffers hold kc/2 slots)
	}
	nc := roundUp(ceilDiv(n, ceilDiv(n, ks.nc)), nr)
	items := int64(p.rowBlocks * p.colShares)

	ws := getWorkspace(ks)
	defer putWorkspace(ws)
	var packBase, itemBase [2]int64 // where this block's claims start, per buffer
	block := 0
	for jc := 0; jc < n; jc += nc {
		nb := min(nc, n-jc)
		np := ceilDiv(nb, nr) // panels in this B block
		for pc := 0; pc < k; pc += kc {
			kb := min(kc, k-pc)
			s := block & 1
			block++
			sl := &p.sh.sync[s]
			bbuf := p.sh.b[s]
			pb, ib := packBase[s], itemBase[s]
			packEnd, itemEnd := pb+int64(np), ib+items
			packBase[s], itemBase[s] = packEnd, itemEnd

			// The buffer's previous block must be fully consumed.
			waitFor(&sl.itemDone, ib)
			// Pack the panels nobody has claimed yet, then wait for
			// those still being packed by others.
			for {
				q, ok := claim(&sl.packNext, packEnd)
				if !ok {
					break
				}
				jp := int(q - pb)
				p.packB(ws, bbuf, pc, kb, jc, nb, jp, jp+1)
				sl.packDone.Add(1)
			}
			waitFor(&sl.packDone, packEnd)

			beta := p.beta
			if pc > 0 {
				beta = 1
			}
			packedRows := -1 // row block whose A panels are in ws.a
			for {
				x, ok := claim(&sl.itemNext, itemEnd)
				if !ok {
					break
				}
				i := int(x - ib)
				// The previous k block's update of the same part of C
				// (claimed earlier, maybe still running elsewhere) must
				// land first: that one may have overwritten C (beta).
				waitFor(&p.sh.itemBlock[i], int64(block-1))
				rb, cs := i/p.colShares, i%p.colShares
				q0, q1 := cs*np/p.colShares, (cs+1)*np/p.colShares
				if q0 < q1 {
					ic := rb * p.rowBlock
					mb := min(p.rowBlock, m-ic)
					if rb != packedRows {
						p.packA(ws, ws.a, ic, mb, pc, kb)
						packedRows = rb
					}
					p.macroKernel(ws, bbuf, ic, mb, jc, nb, kb, q0, q1, beta)
				}
				p.sh.itemBlock[i].Store(int64(block))
				sl.itemDone.Add(1)
			}
		}
	}
}

// claim takes the next value of ctr if it is below end.
func claim(ctr *atomic.Int64, end int64) (int64, bool) {
	for {
		x := ctr.Load()
		if x >= end {
			return 0, false
		}
		if ctr.CompareAndSwap(x, x+1) {
			return x, true
		}
	}
}

// waitFor spins until ctr reaches target. The waits are short (another
// worker finishing one panel or item), so it only yields the processor now
// and then (every 1024 checks: runtime.Gosched takes the scheduler's
// global lock, which slows the very worker being waited for), for a sibling
// worker waiting for one (nested parallelism).
func waitFor(ctr *atomic.Int64, target int64) {
	for i := 1; ctr.Load() < target; i++ {
		if i%1024 == 0 {
			runtime.Gosched()
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
	kb = ks.slots(kb) // panel values per row/column (k pairs for the bf16 kernel)
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

// packA packs op(A)[i0:i0+mb, p0:p0+kb] for the problem's kernel: f32
// panels (packAF32; packPanel widens bf16 and rounds in BF16 precision), or
// bf16 pair panels for the pair kernel.
func (p *problem) packA(ws *workspace, dst []float32, i0, mb, p0, kb int) {
	if p.a.F32 != nil && !p.ks.pairs && !p.round {
		packAF32(dst, p.transA, p.a.F32, p.lda, i0, mb, p0, kb, p.ks.mr)
		return
	}
	mr := p.ks.mr
	for ir := 0; ir < mb; ir += mr {
		rows := min(mr, mb-ir)
		off := (i0+ir)*p.lda + p0 // op(A)[i,p] = a[i*lda+p]: row runs along p
		if p.transA {
			off = p0*p.lda + i0 + ir
		}
		packPanel(ws, dst[ir*p.ks.slots(kb):], mr, p.a, off, p.lda, rows, kb, !p.transA, p.ks.pairs, p.prec == BF16)
	}
}

// packB packs panels q0..q1-1 of op(B)[p0:p0+kb, j0:j0+nb] (see packA).
func (p *problem) packB(ws *workspace, dst []float32, p0, kb, j0, nb, q0, q1 int) {
	nr := p.ks.nr
	if p.b.F32 != nil && !p.ks.pairs && !p.round {
		packBF32(dst, p.transB, p.b.F32, p.ldb, p0, kb, j0, nb, nr, q0, q1)
		return
	}
	for jr := q0 * nr; jr < min(q1*nr, nb); jr += nr {
		cols := min(nr, nb-jr)
		off := p0*p.ldb + j0 + jr
		if p.transB { // op(B)[p,j] = b[j*ldb+p]: stored rows run along p
			off = (j0+jr)*p.ldb + p0
		}
		packPanel(ws, dst[jr*p.ks.slots(kb):], nr, p.b, off, p.ldb, cols, kb, p.transB, p.ks.pairs, p.prec == BF16)
	}
}

// packAF32 copies op(A)[i0:i0+mb, p0:p0+kb] into dst as MR-tall micro-panels:
// panel q holds rows i0+q*MR.. and stores, for p = 0..kb-1, the MR values
// op(A)[row, p0+p] contiguously (zero for rows past mb).
func packAF32(dst []float32, transA bool, a []float32, lda, i0, mb, p0, kb, mr int) {
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

// packBF32 copies panels q0..q1-1 of op(B)[p0:p0+kb, j0:j0+nb] into dst as
// NR-wide micro-panels: panel q holds columns j0+q*NR.. and stores, for
// p = 0..kb-1, the NR values op(B)[p0+p, col] contiguously (zero for columns
// past nb).
func packBF32(dst []float32, transB bool, b []float32, ldb, p0, kb, j0, nb, nr, q0, q1 int) {
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
// src[p*ld : p*ld+n], zero-padding the remaining w-n values. Full-width
// panels (n == w) use copyFull (16-byte moves in assembly on amd64).
func copyRuns(panel []float32, w int, src []float32, ld, n, kb int) {
	if n == w {
		copyFull(panel, w, src, ld, kb)
		return
	}
	for p := 0; p < kb; p++ {
		d := panel[p*w : p*w+w]
		copy(d, src[p*ld:p*ld+n])
		clear(d[n:])
	}
}

// copyFullGo is the portable copyFull.
func copyFullGo(panel []float32, w int, src []float32, ld, kb int) {
	for p := 0; p < kb; p++ {
		copy(panel[p*w:p*w+w], src[p*ld:p*ld+w])
	}
}

// transposeRuns fills a w-wide panel from n runs along p: for r < n and
// p < kb, panel[p*w+r] = src[r*ld+p]; columns n..w-1 are zeroed. Four runs
// are transposed together (in 4×4 register blocks on amd64).
func transposeRuns(panel []float32, w int, src []float32, ld, n, kb int) {
	panel = panel[:kb*w]
	r := 0
	if n16 := kb / 16; n16 > 0 {
		// 16 runs × 16 values at a time (AVX-512), the k tail by 4×4.
		for ; r+16 <= n && transpose16(panel[r:], w, src[r*ld:], ld, n16); r += 16 {
			if tail := kb - 16*n16; tail > 0 {
				for q := r; q < r+16; q += 4 {
					transpose4(panel[16*n16*w+q:], w, src[q*ld+16*n16:], ld, tail)
				}
			}
		}
	}
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
	conv []uint16  // runs converted before packing (see packPanel), made on first use
}

// freeLists keeps each kernel's spare workspaces and shared B buffers.
// Unlike a sync.Pool they survive garbage collections, so the packing
// buffers (megabytes) are not made and zeroed again after every GC of a
// training step, which allocates a lot. At most freeListCap of each are
// kept per kernel.
type freeLists struct {
	ws chan *workspace
	sh chan *shared
}

const freeListCap = 4

var (
	freeMu sync.Mutex
	frees  = map[*kernelSpec]*freeLists{}
)

func freeListsOf(ks *kernelSpec) *freeLists {
	freeMu.Lock()
	defer freeMu.Unlock()
	f := frees[ks]
	if f == nil {
		f = &freeLists{ws: make(chan *workspace, freeListCap), sh: make(chan *shared, freeListCap)}
		frees[ks] = f
	}
	return f
}

func getWorkspace(ks *kernelSpec) *workspace {
	select {
	case ws := <-freeListsOf(ks).ws:
		return ws
	default:
	}
	return &workspace{
		ks:   ks,
		a:    alignedFloats(roundUp(ks.mc, ks.mr) * ks.slots(ks.kc)),
		tile: alignedFloats(ks.mr * ks.nr),
	}
}

func putWorkspace(ws *workspace) {
	select {
	case freeListsOf(ws.ks).ws <- ws:
	default:
	}
}

// shared is the state the workers of one Sgemm call share: two kc×nc packed
// B buffers and the claim counters of each (see worker).
type shared struct {
	ks   *kernelSpec
	b    [2][]float32 // in use: own[0], own[1] (or own[0] twice for a lone worker)
	own  [2][]float32 // allocated (own[1] only once a call had two workers)
	sync [2]bufferSync
	// itemBlock[i] is the number of blocks (in worker order) whose work
	// item i is done.
	itemBlock []atomic.Int64
}

// bufferSync counts, over all blocks that used one B buffer, the B panels
// claimed and packed and the work items claimed and done.
type bufferSync struct {
	packNext, packDone atomic.Int64
	itemNext, itemDone atomic.Int64
	_                  [64]byte // keep the two buffers' counters apart
}

func getShared(ks *kernelSpec, workers, items int) *shared {
	var sh *shared
	select {
	case sh = <-freeListsOf(ks).sh:
	default:
		sh = &shared{ks: ks}
		sh.own[0] = alignedFloats(ks.slots(ks.kc) * roundUp(ks.nc, ks.nr))
	}
	if workers > 1 && sh.own[1] == nil {
		sh.own[1] = alignedFloats(ks.slots(ks.kc) * roundUp(ks.nc, ks.nr))
	}
	sh.b = sh.own
	if workers == 1 {
		sh.b[1] = sh.b[0] // a lone worker needs no double buffering
	}
	for i := range sh.sync {
		bs := &sh.sync[i]
		bs.packNext.Store(0)
		bs.packDone.Store(0)
		bs.itemNext.Store(0)
		bs.itemDone.Store(0)
	}
	if cap(sh.itemBlock) < items {
		sh.itemBlock = make([]atomic.Int64, items)
	}
	sh.itemBlock = sh.itemBlock[:items]
	for i := range sh.itemBlock {
		sh.itemBlock[i].Store(0)
	}
	return sh
}

func putShared(sh *shared) {
	select {
	case freeListsOf(sh.ks).sh <- sh:
	default:
	}
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
	checkDims(transA, transB, m, n, k, len(a), lda, len(b), ldb, len(c), ldc)
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
