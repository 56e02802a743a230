package gemm

import (
	"fmt"
	"math"
	"math/rand"
	"runtime"
	"testing"
	"time"
)

func randSlice(r *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = r.Float32()*2 - 1
	}
	return s
}

func absSlice(s []float32) []float32 {
	t := make([]float32, len(s))
	for i, v := range s {
		t[i] = float32(math.Abs(float64(v)))
	}
	return t
}

type gemmCase struct {
	transA, transB bool
	m, n, k        int
	alpha, beta    float32
	padA, padB     int // extra row stride beyond the tight one
	padC           int
}

func (tc gemmCase) String() string {
	return fmt.Sprintf("tA=%v tB=%v m=%d n=%d k=%d alpha=%g beta=%g pad=%d/%d/%d",
		tc.transA, tc.transB, tc.m, tc.n, tc.k, tc.alpha, tc.beta, tc.padA, tc.padB, tc.padC)
}

// checkCase runs Sgemm and SgemmRef on the same random inputs and compares
// them elementwise with a tolerance proportional to k and to the magnitude
// sum |alpha| Σ|a||b| + |beta||c| of each output element.
func checkCase(t *testing.T, r *rand.Rand, tc gemmCase) {
	t.Helper()
	if err := checkCaseErr(r, tc); err != nil {
		t.Fatal(err)
	}
}

func checkCaseErr(r *rand.Rand, tc gemmCase) error {
	m, n, k := tc.m, tc.n, tc.k
	ar, ac := m, k
	if tc.transA {
		ar, ac = k, m
	}
	br, bc := k, n
	if tc.transB {
		br, bc = n, k
	}
	lda, ldb, ldc := ac+tc.padA, bc+tc.padB, n+tc.padC
	a := randSlice(r, max(ar*lda, 1))
	b := randSlice(r, max(br*ldb, 1))
	c0 := randSlice(r, max(m*ldc, 1))
	got := append([]float32(nil), c0...)
	if tc.beta == 0 {
		// beta == 0 must overwrite C even when it holds NaNs.
		for i := range got {
			got[i] = float32(math.NaN())
		}
	}
	want := append([]float32(nil), c0...)
	Sgemm(tc.transA, tc.transB, m, n, k, tc.alpha, a, lda, b, ldb, tc.beta, got, ldc)
	SgemmRef(tc.transA, tc.transB, m, n, k, tc.alpha, a, lda, b, ldb, tc.beta, want, ldc)

	mag := absSlice(c0)
	SgemmRef(tc.transA, tc.transB, m, n, k, float32(math.Abs(float64(tc.alpha))), absSlice(a), lda,
		absSlice(b), ldb, float32(math.Abs(float64(tc.beta))), mag, ldc)
	rel := 1e-6 * float64(k+8)
	for i := 0; i < m; i++ {
		for j := 0; j < ldc; j++ {
			idx := i*ldc + j
			g, w := got[idx], want[idx]
			if j >= n {
				// Padding between rows must be untouched.
				if tc.beta != 0 && g != c0[idx] || tc.beta == 0 && !math.IsNaN(float64(g)) {
					return fmt.Errorf("%v: wrote padding C[%d,%d] = %v", tc, i, j, g)
				}
				continue
			}
			tol := rel*float64(mag[idx]) + 1e-6
			if d := math.Abs(float64(g - w)); !(d <= tol) {
				return fmt.Errorf("%v: C[%d,%d] = %v, want %v (diff %g, tol %g)", tc, i, j, g, w, d, tol)
			}
		}
	}
	return nil
}

// shapes returns interesting sizes around the tile edges of the kernel ks.
func shapes(ks *kernelSpec) (ms, ns, kk []int) {
	ms = []int{1, 2, 3, ks.mr - 1, ks.mr, ks.mr + 1, 2*ks.mr + 1, 37}
	ns = []int{1, 5, ks.nr - 1, ks.nr, ks.nr + 1, 2*ks.nr + 3, 45}
	kk = []int{1, 2, 7, 16, 33}
	return
}

func runRandomCases(t *testing.T, seed int64) {
	r := rand.New(rand.NewSource(seed))
	ks := activeKernel()
	ms, ns, kk := shapes(ks)
	alphas := []float32{1, -0.5, 2}
	betas := []float32{0, 1, 0.25}
	for _, transA := range []bool{false, true} {
		for _, transB := range []bool{false, true} {
			for _, m := range ms {
				for _, n := range ns {
					for _, k := range kk {
						tc := gemmCase{
							transA: transA, transB: transB, m: m, n: n, k: k,
							alpha: alphas[r.Intn(len(alphas))],
							beta:  betas[r.Intn(len(betas))],
						}
						if r.Intn(3) == 0 {
							tc.padA, tc.padB, tc.padC = r.Intn(5), r.Intn(5), r.Intn(5)
						}
						checkCase(t, r, tc)
					}
				}
			}
		}
	}
}

// largeCases cross several cache blocks (mc, kc, nc) of ks and use several
// goroutines.
func largeCases(ks *kernelSpec) []gemmCase {
	return []gemmCase{
		{m: 2*ks.mc + ks.mr + 1, n: 2*ks.nr + 5, k: ks.kc + 3, alpha: 1, beta: 0},
		{m: 2*ks.mr + 1, n: ks.nc + ks.nr + 1, k: 2*ks.kc + 1, alpha: 0.5, beta: 1, transB: true},
		{m: ks.mc + 1, n: 3*ks.nr + 1, k: ks.kc*2 + 17, alpha: -1, beta: 0.5, transA: true, padA: 3, padC: 1},
		{m: 200, n: 300, k: 150, alpha: 1, beta: 0, transA: true, transB: true, padB: 2},
		{m: 1, n: 1000, k: 700, alpha: 1, beta: 0},
		{m: 1000, n: 1, k: 700, alpha: 1, beta: 1, transA: true},
		{m: 257, n: 513, k: 129, alpha: 1, beta: 0.5},
	}
}

func TestSgemmRandom(t *testing.T) {
	t.Logf("kernel %s", KernelName())
	runRandomCases(t, 1)
}

func TestSgemmLarge(t *testing.T) {
	r := rand.New(rand.NewSource(2))
	for _, tc := range largeCases(activeKernel())[3:] {
		checkCase(t, r, tc)
	}
}

// TestSgemmGeneric covers the pure-Go micro-kernel used on other
// architectures, whatever this CPU supports.
func TestSgemmGeneric(t *testing.T) {
	forceGeneric = true
	defer func() { forceGeneric = false }()
	runRandomCases(t, 3)
	r := rand.New(rand.NewSource(4))
	checkCase(t, r, largeCases(genericKernel)[3])
}

// TestSgemmAllKernels runs every micro-kernel this CPU supports (the pure-Go
// one included), each with its real cache blocking and with a copy whose
// mc/kc/nc blocks are tiny, so that shapes of a few dozen cross every block
// boundary (beta handling across kc blocks, edge panels in every block).
func TestSgemmAllKernels(t *testing.T) {
	saved, savedNarrow := bestKernel, narrowKernel
	defer func() { bestKernel, narrowKernel = saved, savedNarrow }()
	narrowKernel = nil
	for i, ks := range supportedKernels() {
		tiny := *ks
		tiny.name += "-tinyblocks"
		tiny.mc, tiny.kc, tiny.nc = 2*ks.mr, 5, 2*ks.nr
		for j, spec := range []*kernelSpec{ks, &tiny} {
			bestKernel = spec
			t.Run(spec.name, func(t *testing.T) {
				r := rand.New(rand.NewSource(int64(10 + 2*i + j)))
				cases := largeCases(spec)[:3]
				if spec == ks {
					// Crossing the real nc (4096) is slow against the
					// reference; the tiny-block copy covers nc edges.
					cases = []gemmCase{cases[0], cases[2]}
				}
				for _, tc := range cases {
					checkCase(t, r, tc)
				}
				ms, ns, kk := shapes(spec)
				for _, m := range ms {
					for _, n := range ns {
						tc := gemmCase{m: m, n: n, k: kk[r.Intn(len(kk))], alpha: 1.5, beta: float32(r.Intn(2)),
							transA: r.Intn(2) == 0, transB: r.Intn(2) == 0}
						checkCase(t, r, tc)
					}
				}
			})
		}
	}
}

func TestSgemmSerial(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	r := rand.New(rand.NewSource(5))
	checkCase(t, r, gemmCase{m: 300, n: 200, k: 300, alpha: 1, beta: 0})
}

func TestSgemmManyThreads(t *testing.T) {
	// More workers than cores, and work items split along columns (m = 7).
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(6))
	r := rand.New(rand.NewSource(6))
	checkCase(t, r, gemmCase{m: 301, n: 203, k: 300, alpha: 1, beta: 0.5})
	checkCase(t, r, gemmCase{m: 7, n: 2000, k: 300, alpha: 1, beta: 0, transB: true})

	// Tiny cache blocks: hundreds of jointly packed, double-buffered B blocks
	// and work items claimed by several workers.
	saved, savedNarrow := bestKernel, narrowKernel
	defer func() { bestKernel, narrowKernel = saved, savedNarrow }()
	narrowKernel = nil
	tiny := *saved
	tiny.mc, tiny.kc, tiny.nc = 3*saved.mr, 7, 3*saved.nr
	bestKernel = &tiny
	checkCase(t, r, gemmCase{m: 150, n: 7*saved.nr + 3, k: 250, alpha: 1, beta: 0.5, transA: true})
	checkCase(t, r, gemmCase{m: 9, n: 11*saved.nr + 1, k: 1000, alpha: 2, beta: 0, transB: true})
}

func TestSgemmDegenerate(t *testing.T) {
	c := []float32{1, 2, 3, 4}
	// k == 0: C = beta*C.
	Sgemm(false, false, 2, 2, 0, 1, nil, 1, nil, 2, 2, c, 2)
	if c[0] != 2 || c[3] != 8 {
		t.Fatalf("k=0: got %v", c)
	}
	// alpha == 0, beta == 0 overwrites NaN.
	c[1] = float32(math.NaN())
	a := []float32{1, 1, 1, 1}
	Sgemm(false, false, 2, 2, 2, 0, a, 2, a, 2, 0, c, 2)
	for _, v := range c {
		if v != 0 {
			t.Fatalf("alpha=0 beta=0: got %v", c)
		}
	}
	// m == 0 or n == 0 is a no-op.
	Sgemm(false, false, 0, 2, 2, 1, nil, 2, a, 2, 0, nil, 2)
	Sgemm(true, true, 2, 0, 2, 1, a, 2, nil, 2, 0, nil, 1)
}

func TestSgemmShortSlicePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("expected panic for short A")
		}
	}()
	Sgemm(false, false, 4, 4, 4, 1, make([]float32, 15), 4, make([]float32, 16), 4, 0, make([]float32, 16), 4)
}

func TestSgemmNoAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops buffers under the race detector")
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	r := rand.New(rand.NewSource(7))
	a, b, c := randSlice(r, 128*128), randSlice(r, 128*128), make([]float32, 128*128)
	Sgemm(false, false, 128, 128, 128, 1, a, 128, b, 128, 0, c, 128)
	allocs := testing.AllocsPerRun(20, func() {
		Sgemm(false, false, 128, 128, 128, 1, a, 128, b, 128, 0, c, 128)
	})
	if allocs > 2 {
		t.Fatalf("%v allocations per call", allocs)
	}
}

func benchSgemm(bm *testing.B, transA, transB bool, m, n, k int) {
	r := rand.New(rand.NewSource(1))
	a, b, c := randSlice(r, m*k), randSlice(r, k*n), make([]float32, m*n)
	lda, ldb := k, n
	if transA {
		lda = m
	}
	if transB {
		ldb = k
	}
	Sgemm(transA, transB, m, n, k, 1, a, lda, b, ldb, 0, c, n)
	bm.ResetTimer()
	best := time.Duration(math.MaxInt64)
	for i := 0; i < bm.N; i++ {
		t0 := time.Now()
		Sgemm(transA, transB, m, n, k, 1, a, lda, b, ldb, 0, c, n)
		best = min(best, time.Since(t0))
	}
	// GFLOP/s is the mean over all iterations; best-GFLOP/s the fastest
	// single call (what sgemm_openblas.sh reports), useful on a shared box.
	bm.ReportMetric(GFLOPS(m, n, k, bm.Elapsed())*float64(bm.N), "GFLOP/s")
	bm.ReportMetric(GFLOPS(m, n, k, best), "best-GFLOP/s")
}

func BenchmarkSgemm1024(b *testing.B)   { benchSgemm(b, false, false, 1024, 1024, 1024) }
func BenchmarkSgemm1024NT(b *testing.B) { benchSgemm(b, false, true, 1024, 1024, 1024) }
func BenchmarkSgemm1024TN(b *testing.B) { benchSgemm(b, true, false, 1024, 1024, 1024) }
func BenchmarkSgemm256(b *testing.B)    { benchSgemm(b, false, false, 256, 256, 256) }

// Transformer-shaped products: activations (tokens×d) times weights.
func BenchmarkSgemmMLPUp(b *testing.B)   { benchSgemm(b, false, true, 512, 2048, 512) }  // x·Wᵀ
func BenchmarkSgemmMLPDown(b *testing.B) { benchSgemm(b, false, false, 512, 512, 2048) } // h·W
func BenchmarkSgemmWGrad(b *testing.B)   { benchSgemm(b, true, false, 512, 2048, 512) }  // dWᵀ = xᵀ·dy

func BenchmarkSgemm512Generic(b *testing.B) {
	forceGeneric = true
	defer func() { forceGeneric = false }()
	benchSgemm(b, false, false, 512, 512, 512)
}

// BenchmarkSgemmKernels compares every supported micro-kernel on 1024³ NN.
func BenchmarkSgemmKernels(b *testing.B) {
	saved, savedNarrow := bestKernel, narrowKernel
	defer func() { bestKernel, narrowKernel = saved, savedNarrow }()
	narrowKernel = nil
	for _, ks := range supportedKernels() {
		if ks == genericKernel {
			continue
		}
		bestKernel = ks
		b.Run(ks.name, func(b *testing.B) { benchSgemm(b, false, false, 1024, 1024, 1024) })
	}
}

func TestCopyFull(t *testing.T) {
	r := rand.New(rand.NewSource(10))
	for w := 1; w <= 33; w++ {
		for kb := 0; kb < 5; kb++ {
			ld := w + r.Intn(3)
			src := randSlice(r, kb*ld+w)
			got, want := make([]float32, kb*w+4), make([]float32, kb*w+4)
			copyFull(got, w, src, ld, kb)
			copyFullGo(want, w, src, ld, kb)
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("w=%d kb=%d: panel[%d] = %v, want %v", w, kb, i, got[i], want[i])
				}
			}
		}
	}
}

func TestTranspose4(t *testing.T) {
	r := rand.New(rand.NewSource(8))
	for _, w := range []int{4, 6, 14, 16, 32} {
		for kb := 0; kb < 14; kb++ {
			ld := kb + r.Intn(3)
			src := randSlice(r, 3*ld+kb+1)
			got, want := make([]float32, kb*w+4), make([]float32, kb*w+4)
			transpose4(got, w, src, ld, kb)
			transpose4Go(want, w, src, ld, kb)
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("w=%d kb=%d: panel[%d] = %v, want %v", w, kb, i, got[i], want[i])
				}
			}
		}
	}
}

func TestVectorHelpers(t *testing.T) {
	r := rand.New(rand.NewSource(9))
	for n := 0; n < 80; n++ {
		x, y := randSlice(r, n), randSlice(r, n+1)
		got, want := dot(x, y), dotGo(x, y)
		if d := math.Abs(float64(got - want)); d > 1e-5*float64(n+1) {
			t.Fatalf("dot n=%d: %v, want %v", n, got, want)
		}
		y2 := append([]float32(nil), y...)
		axpy(0.75, x, y)
		axpyGo(0.75, x, y2)
		for i := range y {
			if d := math.Abs(float64(y[i] - y2[i])); d > 1e-6 {
				t.Fatalf("axpy n=%d: y[%d] = %v, want %v", n, i, y[i], y2[i])
			}
		}
	}
}

// BenchmarkSgemv: one token through a 4096×4096 linear layer, y = x·Wᵀ.
func BenchmarkSgemv4096NT(b *testing.B) { benchSgemm(b, false, true, 1, 4096, 4096) }

// TestSgemmConcurrent runs independent products from several goroutines at
// once (pooled buffers and counters must not be shared between calls).
func TestSgemmConcurrent(t *testing.T) {
	done := make(chan struct{})
	for g := 0; g < 4; g++ {
		go func() {
			defer func() { done <- struct{}{} }()
			r := rand.New(rand.NewSource(int64(100 + g)))
			for i := 0; i < 3; i++ {
				err := checkCaseErr(r, gemmCase{m: 60 + r.Intn(80), n: 50 + r.Intn(90), k: 100 + r.Intn(300),
					alpha: 1, beta: 0.5, transA: g&1 == 1, transB: g&2 == 2})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for g := 0; g < 4; g++ {
		<-done
	}
}

// BenchmarkSgemmParallelCallers: products issued from parallel goroutines,
// as the CPU attention kernel does (one 64×128×512 P·V product per head).
func BenchmarkSgemmParallelCallers(b *testing.B) {
	const m, n, k = 64, 128, 512
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewSource(1))
		x, y, c := randSlice(r, m*k), randSlice(r, k*n), make([]float32, m*n)
		for pb.Next() {
			Sgemm(false, false, m, n, k, 1, x, k, y, n, 0, c, n)
		}
	})
	b.ReportMetric(GFLOPS(m, n, k, b.Elapsed())*float64(b.N), "GFLOP/s")
}
