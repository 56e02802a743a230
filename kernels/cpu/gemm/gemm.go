// Package gemm is the CPU single-precision GEMM: a pure-Go reference and the
// fast path used by kernels/cpu.
//
// # Algorithm
//
// Sgemm follows the Goto/BLIS structure. C (m×n) is first split into a grid
// of independent rectangles, one per worker goroutine (see split). Each worker
// then runs the classic five loops over its rectangle:
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
// The micro-kernel is chosen at start-up (kernel_amd64.go): AVX-512 (14×32),
// AVX2+FMA (6×16) or the portable pure-Go 4×4 kernel (kernel_generic.go).
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

// forceGeneric makes Sgemm use the pure-Go micro-kernel even where an assembly
// one is available (used by the tests to cover the fallback path).
var forceGeneric = false

// KernelName reports which micro-kernel Sgemm uses on this machine.
func KernelName() string { return activeKernel().name }

func activeKernel() *kernelSpec {
	if forceGeneric {
		return genericKernel
	}
	return bestKernel
}

const (
	// smallWork: below this many multiply-adds (m*n*k) the packing overhead is
	// not worth it and the straightforward loops are used.
	smallWork = 8 * 8 * 8
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
	ks := activeKernel()
	p := &problem{ks: ks, transA: transA, transB: transB, k: k, alpha: alpha,
		a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc}

	threads := runtime.GOMAXPROCS(0)
	if w := m * n * k / minThreadWork; w < threads {
		threads = max(w, 1)
	}
	if threads == 1 {
		ws := getWorkspace(ks)
		p.run(ws, 0, m, 0, n)
		putWorkspace(ws)
		return
	}
	tm, tn := split(m, n, k, threads, ks.mr, ks.nr)
	rowStep := roundUp(ceilDiv(m, tm), ks.mr)
	colStep := roundUp(ceilDiv(n, tn), ks.nr)
	var wg sync.WaitGroup
	for i0 := 0; i0 < m; i0 += rowStep {
		for j0 := 0; j0 < n; j0 += colStep {
			i1, j1 := min(i0+rowStep, m), min(j0+colStep, n)
			wg.Add(1)
			go func() {
				defer wg.Done()
				ws := getWorkspace(ks)
				p.run(ws, i0, i1, j0, j1)
				putWorkspace(ws)
			}()
		}
	}
	wg.Wait()
}

// split chooses a tm×tn grid of worker rectangles (tm*tn <= threads) for an
// m×n output. It minimises the per-worker cost: the multiply-adds of the
// largest rectangle plus a packing term for the operands that rectangle needs
// (packing moves one value per element, the kernel does ~16 FMAs per cycle).
func split(m, n, k, threads, mr, nr int) (tm, tn int) {
	best := -1
	for a := 1; a <= threads; a++ {
		b := threads / a
		mb := roundUp(ceilDiv(m, a), mr)
		nb := roundUp(ceilDiv(n, b), nr)
		// rectangles that would be empty are wasted threads
		if ceilDiv(m, mb) < a || ceilDiv(n, nb) < b {
			continue
		}
		cost := mb*nb*k + 16*(mb+nb)*k
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
	k              int
	alpha, beta    float32
	a              []float32
	lda            int
	b              []float32
	ldb            int
	c              []float32
	ldc            int
}

// run computes the rectangle C[i0:i1, j0:j1] with the five-loop blocking
// described in the package comment, using the worker's own pack buffers.
func (p *problem) run(ws *workspace, i0, i1, j0, j1 int) {
	ks := p.ks
	k := p.k
	// Balance the block sizes: e.g. k=300 with kc=256 gives 2×150, not 256+44.
	kc := ceilDiv(k, ceilDiv(k, ks.kc))
	nc := roundUp(ceilDiv(j1-j0, ceilDiv(j1-j0, ks.nc)), ks.nr)
	mc := roundUp(ceilDiv(i1-i0, ceilDiv(i1-i0, ks.mc)), ks.mr)

	for jc := j0; jc < j1; jc += nc {
		nb := min(nc, j1-jc)
		for pc := 0; pc < k; pc += kc {
			kb := min(kc, k-pc)
			packB(ws.b, p.transB, p.b, p.ldb, pc, kb, jc, nb, ks.nr)
			beta := p.beta
			if pc > 0 {
				beta = 1
			}
			for ic := i0; ic < i1; ic += mc {
				mb := min(mc, i1-ic)
				packA(ws.a, p.transA, p.a, p.lda, ic, mb, pc, kb, ks.mr)
				p.macroKernel(ws, ic, mb, jc, nb, kb, beta)
			}
		}
	}
}

// macroKernel multiplies the packed mb×kb A block by the packed kb×nb B block
// into C[ic:ic+mb, jc:jc+nb], one MR×NR register tile at a time. The B
// micro-panel (kb×NR) stays in L1 while the A micro-panels stream from L2.
func (p *problem) macroKernel(ws *workspace, ic, mb, jc, nb, kb int, beta float32) {
	ks := p.ks
	mr, nr := ks.mr, ks.nr
	fn := ks.fn
	c, ldc, alpha := p.c, p.ldc, p.alpha
	for jr := 0; jr < nb; jr += nr {
		nrr := min(nr, nb-jr)
		bp := ws.b[jr*kb:]
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
			base := p0*lda + i0 + ir
			if rows == mr {
				for p := 0; p < kb; p++ {
					copy(panel[p*mr:p*mr+mr], a[base+p*lda:base+p*lda+mr])
				}
			} else {
				for p := 0; p < kb; p++ {
					d := panel[p*mr : p*mr+mr]
					copy(d, a[base+p*lda:base+p*lda+rows])
					clear(d[rows:])
				}
			}
			continue
		}
		// op(A)[i,p] = a[i*lda+p]: read each row sequentially, scatter with
		// stride MR.
		for r := 0; r < rows; r++ {
			src := a[(i0+ir+r)*lda+p0 : (i0+ir+r)*lda+p0+kb]
			d := panel[r:]
			for p, v := range src {
				d[p*mr] = v
			}
		}
		for r := rows; r < mr; r++ {
			for p := 0; p < kb; p++ {
				panel[p*mr+r] = 0
			}
		}
	}
}

// packB copies op(B)[p0:p0+kb, j0:j0+nb] into dst as NR-wide micro-panels:
// panel q holds columns j0+q*NR.. and stores, for p = 0..kb-1, the NR values
// op(B)[p0+p, col] contiguously (zero for columns past nb).
func packB(dst []float32, transB bool, b []float32, ldb, p0, kb, j0, nb, nr int) {
	for jr := 0; jr < nb; jr += nr {
		panel := dst[jr*kb : (jr+nr)*kb]
		cols := min(nr, nb-jr)
		if !transB {
			// op(B)[p,j] = b[p*ldb+j]: each p is a contiguous run of columns.
			base := p0*ldb + j0 + jr
			if cols == nr {
				for p := 0; p < kb; p++ {
					copy(panel[p*nr:p*nr+nr], b[base+p*ldb:base+p*ldb+nr])
				}
			} else {
				for p := 0; p < kb; p++ {
					d := panel[p*nr : p*nr+nr]
					copy(d, b[base+p*ldb:base+p*ldb+cols])
					clear(d[cols:])
				}
			}
			continue
		}
		// op(B)[p,j] = b[j*ldb+p]: read each stored row (a column of op(B))
		// sequentially, scatter with stride NR.
		for q := 0; q < cols; q++ {
			src := b[(j0+jr+q)*ldb+p0 : (j0+jr+q)*ldb+p0+kb]
			d := panel[q:]
			for p, v := range src {
				d[p*nr] = v
			}
		}
		for q := cols; q < nr; q++ {
			for p := 0; p < kb; p++ {
				panel[p*nr+q] = 0
			}
		}
	}
}

// workspace is one worker's pack buffers (64-byte aligned).
type workspace struct {
	ks   *kernelSpec
	a    []float32 // mc×kc packed A block
	b    []float32 // kc×nc packed B block
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
		b:    alignedFloats(ks.kc * roundUp(ks.nc, ks.nr)),
		tile: alignedFloats(ks.mr * ks.nr),
	}
}

func putWorkspace(ws *workspace) { wsPool.Put(ws) }

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
			if av == 0 {
				continue
			}
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
