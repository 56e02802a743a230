package vmath

import (
	"fmt"
	"math"
	"math/rand"
	"testing"
)

var kernelNames = map[int]string{kernelGeneric: "generic", kernelAVX2: "avx2", kernelAVX512: "avx512"}

// forEachKernel runs f with each kernel forced (skipping, with a message,
// the ones this CPU lacks) and restores the default afterwards.
func forEachKernel(t *testing.T, f func(t *testing.T)) {
	saved := kernel
	defer func() { kernel = saved }()
	supported := map[int]bool{}
	for _, k := range supportedKernels() {
		supported[k] = true
	}
	for _, k := range []int{kernelGeneric, kernelAVX2, kernelAVX512} {
		t.Run(kernelNames[k], func(t *testing.T) {
			if !supported[k] {
				t.Skipf("kernel %s not supported on this CPU/architecture", kernelNames[k])
			}
			kernel = k
			f(t)
		})
	}
}

// refExp is the documented contract for x = scale*(src-shift) (float32).
func refExp(x float32) float64 {
	switch {
	case x != x:
		return math.NaN()
	case x > expHi:
		return math.Inf(1)
	case x < expLo:
		return 0
	}
	return math.Exp(float64(x))
}

const maxRelErr = 2.5e-7 // ≈ 2 ulp of float32

// checkExp compares got against the contract for x; returns the relative
// error (0 for exact special values).
func checkExp(t *testing.T, what string, x, got float32) float64 {
	t.Helper()
	want := refExp(x)
	switch {
	case math.IsNaN(want):
		if got == got {
			t.Fatalf("%s: exp(%v) = %v, want NaN", what, x, got)
		}
		return 0
	case math.IsInf(want, 1) || want == 0:
		if float64(got) != want {
			t.Fatalf("%s: exp(%v) = %v, want %v", what, x, got, want)
		}
		return 0
	}
	rel := math.Abs(float64(got)-want) / want
	if !(rel <= maxRelErr) {
		t.Fatalf("%s: exp(%v) = %v, want %v (rel err %.3g)", what, x, got, want, rel)
	}
	return rel
}

var edgeValues = []float32{
	0, float32(math.Copysign(0, -1)), 1e-30, -1e-30, 1e-7, -1e-7, 0.5, -0.5, 1, -1,
	0.34657359, -0.34657359, 0.3466, -0.3466, 0.6931472, -0.6931472, 10, -10, 50, -50,
	-87, -87.3, -87.33654, -87.33655, -87.4, -88, -100, -103.9, -104, -110, -1e30,
	88, 88.3762, 88.37627, 88.7, 88.72283, 88.722839, 88.8, 89, 100, 1e30,
	float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()),
	math.Float32frombits(0x7fc00001), math.Float32frombits(0xffc00abc), math.Float32frombits(0x7f800001),
	math.MaxFloat32, -math.MaxFloat32, math.SmallestNonzeroFloat32,
}

// testInputs returns src values: edge cases first, then random values mostly
// in the softmax range [-104, 0], some in [-90, 89].
func testInputs(n int, rng *rand.Rand) []float32 {
	src := make([]float32, n)
	for i := range src {
		switch {
		case i < len(edgeValues):
			src[i] = edgeValues[i]
		case i%4 == 3:
			src[i] = float32(rng.Float64()*179 - 90)
		default:
			src[i] = float32(-rng.Float64() * 104)
		}
	}
	return src
}

func TestExpAccuracy(t *testing.T) {
	forEachKernel(t, func(t *testing.T) {
		rng := rand.New(rand.NewSource(1))
		worst := 0.0
		for _, p := range []struct{ shift, scale float32 }{{0, 1}, {3.25, 1}, {-2, 0.5}, {7.5, 1.7}, {0, -1}} {
			src := testInputs(200000, rng)
			dst := make([]float32, len(src))
			ExpSum(dst, src, p.shift, p.scale)
			for i, v := range src {
				x := p.scale * (v - p.shift)
				worst = math.Max(worst, checkExp(t, fmt.Sprintf("shift=%v scale=%v src[%d]=%v", p.shift, p.scale, i, v), x, dst[i]))
			}
		}
		// Every float32 in [-87.34, 88.73] with a coarse stride, and a
		// dense sweep of [-1, 1].
		var src []float32
		for x := float32(expLo); x <= 89; x += 0.000731 * (1 + float32(len(src)%7)) {
			src = append(src, x)
		}
		for b := math.Float32bits(-1); b > math.Float32bits(-1e-6); b -= 97 {
			src = append(src, math.Float32frombits(b), -math.Float32frombits(b))
		}
		dst := make([]float32, len(src))
		ExpSum(dst, src, 0, 1)
		for i, x := range src {
			worst = math.Max(worst, checkExp(t, "sweep", x, dst[i]))
		}
		t.Logf("%s: max relative error %.3g (%.2f ulp of 2^-23)", kernelNames[kernel], worst, worst/math.Pow(2, -23))
	})
}

func TestExpSumLengths(t *testing.T) {
	forEachKernel(t, func(t *testing.T) {
		rng := rand.New(rand.NewSource(2))
		lengths := []int{}
		for n := 0; n <= 70; n++ {
			lengths = append(lengths, n)
		}
		lengths = append(lengths, 127, 128, 129, 1000, 128256)
		for _, n := range lengths {
			src := make([]float32, n)
			for i := range src {
				src[i] = float32(rng.NormFloat64() * 8)
			}
			shift := float32(rng.NormFloat64() * 3)
			scale := float32(0.5 + rng.Float64())
			orig := append([]float32(nil), src...)
			dst := make([]float32, n)
			for i := range dst {
				dst[i] = -42 // sentinel: every element must be written
			}
			sum := ExpSum(dst, src, shift, scale)
			var want float64
			for i, v := range src {
				x := scale * (v - shift)
				checkExp(t, fmt.Sprintf("n=%d i=%d", n, i), x, dst[i])
				want += refExp(x)
				if orig[i] != v {
					t.Fatalf("n=%d: src modified", n)
				}
			}
			if d := math.Abs(sum - want); d > 1e-6*want {
				t.Fatalf("n=%d: ExpSum sum %v, want %v (rel %.3g)", n, sum, want, d/want)
			}
			s2 := SumExp(src, shift, scale)
			if d := math.Abs(s2 - want); d > 1e-6*want {
				t.Fatalf("n=%d: SumExp %v, want %v (rel %.3g)", n, s2, want, d/want)
			}
			// In place (dst aliases src).
			in := append([]float32(nil), src...)
			s3 := ExpSum(in, in, shift, scale)
			for i := range in {
				if math.Float32bits(in[i]) != math.Float32bits(dst[i]) {
					t.Fatalf("n=%d i=%d: in-place %v, separate %v", n, i, in[i], dst[i])
				}
			}
			if s3 != sum {
				t.Fatalf("n=%d: in-place sum %v, separate %v", n, s3, sum)
			}
		}
	})
}

func TestSumSpecial(t *testing.T) {
	forEachKernel(t, func(t *testing.T) {
		for _, n := range []int{1, 17, 40, 100} {
			src := make([]float32, n)
			src[n-1] = float32(math.NaN())
			if s := SumExp(src, 0, 1); !math.IsNaN(s) {
				t.Fatalf("n=%d: SumExp with NaN = %v", n, s)
			}
			if s := ExpSum(make([]float32, n), src, 0, 1); !math.IsNaN(s) {
				t.Fatalf("n=%d: ExpSum with NaN = %v", n, s)
			}
			src[n-1] = 100
			if s := SumExp(src, 0, 1); !math.IsInf(s, 1) {
				t.Fatalf("n=%d: SumExp with overflow = %v", n, s)
			}
			src[n-1] = float32(math.Inf(-1))
			if s := SumExp(src, 0, 1); s != float64(n-1) {
				t.Fatalf("n=%d: SumExp with -Inf = %v, want %d", n, s, n-1)
			}
		}
	})
}

// The vector kernels do the same float32 operations, so they agree bit for
// bit (NaN payloads aside).
func TestKernelsAgree(t *testing.T) {
	ks := supportedKernels()
	if len(ks) < 3 {
		t.Skip("needs both AVX2 and AVX-512")
	}
	saved := kernel
	defer func() { kernel = saved }()
	src := testInputs(100000, rand.New(rand.NewSource(3)))
	a := make([]float32, len(src))
	b := make([]float32, len(src))
	kernel = kernelAVX2
	sa := ExpSum(a, src, 1.5, 1.25)
	kernel = kernelAVX512
	sb := ExpSum(b, src, 1.5, 1.25)
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) && !(a[i] != a[i] && b[i] != b[i]) {
			t.Fatalf("src[%d]=%v: avx2 %v, avx512 %v", i, src[i], a[i], b[i])
		}
	}
	if !(math.IsNaN(sa) && math.IsNaN(sb)) && math.Abs(sa-sb) > 1e-12*math.Abs(sa) {
		t.Fatalf("sums differ: %v vs %v", sa, sb)
	}
}

func TestMax(t *testing.T) {
	forEachKernel(t, func(t *testing.T) {
		rng := rand.New(rand.NewSource(4))
		for _, n := range []int{1, 2, 7, 8, 31, 32, 33, 63, 64, 65, 70, 128256} {
			for trial := 0; trial < 5; trial++ {
				src := make([]float32, n)
				for i := range src {
					src[i] = float32(rng.NormFloat64()*10 - 20)
				}
				want := float32(math.Inf(-1))
				if trial == 1 {
					src[rng.Intn(n)] = float32(math.Inf(-1))
				}
				if trial == 2 {
					src[rng.Intn(n)] = 1e30
				}
				for _, v := range src {
					want = max(want, v)
				}
				if got := Max(src); got != want {
					t.Fatalf("n=%d trial=%d: Max = %v, want %v", n, trial, got, want)
				}
				if trial >= 3 {
					for _, pos := range []int{0, n / 2, n - 1} {
						c := append([]float32(nil), src...)
						c[pos] = float32(math.NaN())
						if got := Max(c); got == got {
							t.Fatalf("n=%d: NaN at %d: Max = %v, want NaN", n, pos, got)
						}
					}
				}
			}
		}
		all := []float32{float32(math.Inf(-1)), float32(math.Inf(-1))}
		if got := Max(all); !math.IsInf(float64(got), -1) {
			t.Fatalf("Max(-Inf, -Inf) = %v", got)
		}
	})
}

func TestMismatchedLengthsPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic")
		}
	}()
	ExpSum(make([]float32, 3), make([]float32, 4), 0, 1)
}

const benchN = 128256 // Llama 3 vocabulary

func benchRow() []float32 {
	rng := rand.New(rand.NewSource(5))
	src := make([]float32, benchN)
	for i := range src {
		src[i] = float32(rng.NormFloat64()*4 - 2)
	}
	return src
}

func benchKernels(b *testing.B, f func(b *testing.B, src, dst []float32)) {
	saved := kernel
	defer func() { kernel = saved }()
	supported := map[int]bool{}
	for _, k := range supportedKernels() {
		supported[k] = true
	}
	src := benchRow()
	dst := make([]float32, len(src))
	for _, k := range []int{kernelGeneric, kernelAVX2, kernelAVX512} {
		b.Run(kernelNames[k], func(b *testing.B) {
			if !supported[k] {
				b.Skipf("kernel %s not supported", kernelNames[k])
			}
			kernel = k
			b.SetBytes(4 * benchN)
			for b.Loop() {
				f(b, src, dst)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/benchN, "ns/elem")
		})
	}
}

var sink float64

func BenchmarkExpSum128k(b *testing.B) {
	b.Run("mathExp", func(b *testing.B) {
		src := benchRow()
		dst := make([]float32, len(src))
		b.SetBytes(4 * benchN)
		for b.Loop() {
			var s float64
			for i, v := range src {
				e := math.Exp(float64(v - 1.5))
				dst[i] = float32(e)
				s += e
			}
			sink = s
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/benchN, "ns/elem")
	})
	benchKernels(b, func(b *testing.B, src, dst []float32) { sink = ExpSum(dst, src, 1.5, 1) })
}

func BenchmarkSumExp128k(b *testing.B) {
	benchKernels(b, func(b *testing.B, src, dst []float32) { sink = SumExp(src, 1.5, 1) })
}

func BenchmarkMax128k(b *testing.B) {
	benchKernels(b, func(b *testing.B, src, dst []float32) { sink = float64(Max(src)) })
}
