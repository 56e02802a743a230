package gemm

import (
	"fmt"
	"math"
	"math/rand"
	"testing"
)

// refGemm64 is C = alpha·op(A)·op(B) + beta·C in float64 over the values
// value(x, i, round) (bf16-rounded inputs for BF16 precision), with the
// magnitude Σ|a||b| per output for the tolerance.
func refGemm64(round, transA, transB bool, m, n, k int, alpha float32, a Operand, lda int, b Operand, ldb int, beta float32, c []float32, ldc int) (ref, mag []float64) {
	ref, mag = make([]float64, m*n), make([]float64, m*n)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s, g float64
			for p := 0; p < k; p++ {
				ia, ib := i*lda+p, p*ldb+j
				if transA {
					ia = p*lda + i
				}
				if transB {
					ib = j*ldb + p
				}
				x := float64(value(a, ia, round)) * float64(value(b, ib, round))
				s += x
				g += math.Abs(x)
			}
			ref[i*n+j] = float64(alpha)*s + float64(beta)*float64(c[i*ldc+j])
			mag[i*n+j] = math.Abs(float64(alpha))*g + math.Abs(float64(beta)*float64(c[i*ldc+j]))
		}
	}
	return ref, mag
}

func randOperand(r *rand.Rand, n int, bf16 bool) Operand {
	v := randSlice(r, n)
	if !bf16 {
		return Operand{F32: v}
	}
	h := make([]uint16, n)
	for i, f := range v {
		h[i] = f32ToBF16(f)
	}
	return Operand{BF16: h}
}

// checkGemm runs Gemm on random operands (f32 or bf16 storage) and compares
// with the float64 reference over the values the precision implies. The
// tolerance (1e-5 of Σ|a||b|, f32 accumulation over k ≤ 1000) is far below
// the bf16 rounding error (~4e-3 relative per input), so a path that skipped
// the rounding, or mixed up the pairs, fails.
func checkGemm(t *testing.T, r *rand.Rand, prec Precision, aBF, bBF bool, tc gemmCase) {
	t.Helper()
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
	a := randOperand(r, ar*lda, aBF)
	b := randOperand(r, br*ldb, bBF)
	c := randSlice(r, m*ldc)
	ref, mag := refGemm64(prec == BF16, tc.transA, tc.transB, m, n, k, tc.alpha, a, lda, b, ldb, tc.beta, c, ldc)
	Gemm(prec, tc.transA, tc.transB, m, n, k, tc.alpha, a, lda, b, ldb, tc.beta, c, ldc)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			got, want := float64(c[i*ldc+j]), ref[i*n+j]
			if d := math.Abs(got - want); d > 1e-5*mag[i*n+j]+1e-6 {
				t.Fatalf("%v %s aBF16=%v bBF16=%v: C[%d,%d] = %g, want %g (|Σab| scale %g)", prec, tc, aBF, bBF, i, j, got, want, mag[i*n+j])
			}
		}
	}
}

func gemmCases() []gemmCase {
	var cs []gemmCase
	for _, tA := range []bool{false, true} {
		for _, tB := range []bool{false, true} {
			for _, s := range [][3]int{{1, 1, 1}, {3, 5, 7}, {14, 32, 2}, {15, 33, 3}, {29, 70, 389}, {31, 40, 771}, {57, 1, 40}, {20, 40, 386}, {15, 33, 258}} {
				cs = append(cs, gemmCase{transA: tA, transB: tB, m: s[0], n: s[1], k: s[2], alpha: 1, beta: 0})
				cs = append(cs, gemmCase{transA: tA, transB: tB, m: s[0], n: s[1], k: s[2], alpha: 0.5, beta: 1.5, padA: 3, padB: 1, padC: 2})
			}
		}
	}
	return cs
}

// TestGemmOperands covers every precision × storage combination on the
// kernel this CPU picks, the f32 fallback for BF16 precision (no
// AVX512_BF16) and the pure-Go kernel.
func TestGemmOperands(t *testing.T) {
	saved := bf16Kernel
	defer func() { bf16Kernel, forceGeneric = saved, false }()
	variants := []struct {
		name    string
		bf16    *kernelSpec
		generic bool
	}{{"best", saved, false}, {"no-bf16-kernel", nil, false}, {"generic", nil, true}}
	for _, v := range variants {
		bf16Kernel, forceGeneric = v.bf16, v.generic
		t.Run(v.name, func(t *testing.T) {
			r := rand.New(rand.NewSource(7))
			for _, prec := range []Precision{F32, BF16} {
				for _, st := range [][2]bool{{false, false}, {true, false}, {false, true}, {true, true}} {
					for _, tc := range gemmCases() {
						checkGemm(t, r, prec, st[0], st[1], tc)
					}
				}
			}
		})
	}
}

// TestGemmBF16Pairs checks the pair packing directly: a panel from bf16
// storage equals the one from the same values in f32 storage, and element
// (r, 2q) sits in the low half of slot [q*w+r].
func TestGemmBF16Pairs(t *testing.T) {
	r := rand.New(rand.NewSource(3))
	for _, alongP := range []bool{false, true} {
		for _, kb := range []int{1, 2, 5, 8} {
			w, n, ld := 8, 6, 11
			x := randOperand(r, 12*ld, true)
			xf := Operand{F32: make([]float32, len(x.BF16))}
			for i, h := range x.BF16 {
				xf.F32[i] = bf16ToF32(h)
			}
			p1 := make([]float32, w*kb)
			p2 := make([]float32, w*kb)
			packPanel(&workspace{}, p1, w, x, 2, ld, n, kb, alongP, true, true)
			packPanel(&workspace{}, p2, w, xf, 2, ld, n, kb, alongP, true, true)
			for i := range p1 {
				if math.Float32bits(p1[i]) != math.Float32bits(p2[i]) {
					t.Fatalf("alongP=%v kb=%d: slot %d differs between bf16 and f32 storage", alongP, kb, i)
				}
			}
			for q := 0; q < (kb+1)/2; q++ {
				for rr := 0; rr < w; rr++ {
					slot := math.Float32bits(p1[q*w+rr])
					for h := 0; h < 2; h++ {
						p := 2*q + h
						var want uint16
						if rr < n && p < kb {
							i := 2 + p*ld + rr
							if alongP {
								i = 2 + rr*ld + p
							}
							want = x.BF16[i]
						}
						if got := uint16(slot >> (16 * h)); got != want {
							t.Fatalf("alongP=%v kb=%d: slot (%d,%d) half %d = %#x, want %#x", alongP, kb, q, rr, h, got, want)
						}
					}
				}
			}
		}
	}
}

func benchGemm(bm *testing.B, prec Precision, bBF16 bool, transB bool, m, n, k int) {
	r := rand.New(rand.NewSource(1))
	a := randOperand(r, m*k, false)
	b := randOperand(r, k*n, bBF16)
	c := make([]float32, m*n)
	ldb := n
	if transB {
		ldb = k
	}
	bm.SetBytes(0)
	bm.ResetTimer()
	for i := 0; i < bm.N; i++ {
		Gemm(prec, false, transB, m, n, k, 1, a, k, b, ldb, 0, c, n)
	}
	bm.ReportMetric(2*float64(m)*float64(n)*float64(k)*float64(bm.N)/bm.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// BenchmarkGemmPrecision compares f32 and bf16 precision side by side on
// square products and on a linear layer's shapes (x·Wᵀ with W in bf16).
func BenchmarkGemmPrecision(b *testing.B) {
	for _, s := range []struct {
		name    string
		transB  bool
		bBF16   bool
		m, n, k int
	}{
		{"1024", false, false, 1024, 1024, 1024},
		{"linear-512x8192x2048-Wbf16", true, true, 512, 8192, 2048},
		{"dx-512x2048x8192-Wbf16", false, true, 512, 2048, 8192},
	} {
		for _, prec := range []Precision{F32, BF16} {
			b.Run(fmt.Sprintf("%s/%v", s.name, prec), func(b *testing.B) {
				benchGemm(b, prec, s.bBF16, s.transB, s.m, s.n, s.k)
			})
		}
	}
}

// ToBF16 rounds an element the same whether it falls in a vector block or a
// slice's tail: converting a slice in pieces cut anywhere gives the bits of
// converting it whole (denormals included, which vcvtneps2bf16 flushes).
func TestToBF16Cuts(t *testing.T) {
	src := make([]float32, 100)
	for i := range src {
		src[i] = float32(i-50) * 1e-40 // denormals of both signs, and zero
	}
	src[3], src[40] = 1.5, float32(math.Inf(-1))
	whole := make([]uint16, len(src))
	ToBF16(whole, src)
	for _, cut := range []int{1, 7, 16, 17, 33, 99} {
		parts := make([]uint16, len(src))
		ToBF16(parts[:cut], src[:cut])
		ToBF16(parts[cut:], src[cut:])
		for i := range whole {
			if parts[i] != whole[i] {
				t.Fatalf("cut at %d: element %d (%g) rounds to %#x in pieces, %#x whole", cut, i, src[i], parts[i], whole[i])
			}
		}
	}
}
