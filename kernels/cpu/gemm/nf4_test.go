package gemm

import (
	"fmt"
	"math"
	"math/rand"
	"testing"

	"github.com/llamatune/llamatune/kernels/nf4"
)

// gemmOpsErr runs Gemm on the given operands and compares with the float64
// reference over the values value() reads: for NF4, Tensor.At (the scalar
// dequantization, code·absmax, rounded to bf16 in BF16 precision), not the
// run dequantizers and panel packers under test. Tolerance as checkGemm.
func gemmOpsErr(prec Precision, tc gemmCase, a, b Operand, lda, ldb int, r *rand.Rand) error {
	m, n, k := tc.m, tc.n, tc.k
	ldc := n + tc.padC
	c := randSlice(r, m*ldc)
	ref, mag := refGemm64(prec == BF16, tc.transA, tc.transB, m, n, k, tc.alpha, a, lda, b, ldb, tc.beta, c, ldc)
	Gemm(prec, tc.transA, tc.transB, m, n, k, tc.alpha, a, lda, b, ldb, tc.beta, c, ldc)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			got, want := float64(c[i*ldc+j]), ref[i*n+j]
			if d := math.Abs(got - want); d > 1e-5*mag[i*n+j]+1e-6 {
				return fmt.Errorf("%v %s: C[%d,%d] = %g, want %g (|Σab| scale %g)", prec, tc, i, j, got, want, mag[i*n+j])
			}
		}
	}
	return nil
}

// nf4Operands makes the case's operands: A and/or B NF4-quantized from
// random values, the other f32.
func nf4Operands(r *rand.Rand, tc gemmCase, aNF4, bNF4 bool) (a, b Operand, lda, ldb int) {
	ar, ac := tc.m, tc.k
	if tc.transA {
		ar, ac = tc.k, tc.m
	}
	br, bc := tc.k, tc.n
	if tc.transB {
		br, bc = tc.n, tc.k
	}
	lda, ldb = ac+tc.padA, bc+tc.padB
	a, b = randOperand(r, ar*lda, false), randOperand(r, br*ldb, false)
	if aNF4 {
		a = Operand{NF4: nf4.Quantize(a.F32)}
	}
	if bNF4 {
		b = Operand{NF4: nf4.Quantize(b.F32)}
	}
	return a, b, lda, ldb
}

// TestGemmNF4 covers NF4 storage for B (a frozen weight: x·Wᵀ with transB,
// dy·W without) and A, in both precisions, on the kernel this CPU picks,
// on the f32 kernels for BF16 precision and on the pure-Go kernel. The
// shapes cross block (64) and pair boundaries at odd offsets and strides.
func TestGemmNF4(t *testing.T) {
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
			r := rand.New(rand.NewSource(11))
			storages := [][2]bool{{false, true}, {true, false}, {true, true}}
			if v.name != "best" { // the fallbacks: W only (what training uses)
				storages = storages[:1]
			}
			for _, prec := range []Precision{F32, BF16} {
				for _, st := range storages {
					// m = 1: one token through a layer (generation) takes
					// the packed path with an NF4 weight.
					cases := append(gemmCases(), gemmCase{transB: true, m: 1, n: 70, k: 389, alpha: 1},
						gemmCase{m: 1, n: 70, k: 389, alpha: 1, beta: 1})
					for _, tc := range cases {
						a, b, lda, ldb := nf4Operands(r, tc, st[0], st[1])
						if err := gemmOpsErr(prec, tc, a, b, lda, ldb, r); err != nil {
							t.Fatalf("aNF4=%v bNF4=%v: %v", st[0], st[1], err)
						}
					}
				}
			}
		})
	}
}

// TestGemmNF4CatchesNibbleSwap is the planted bug: the same codes with the
// two nibbles of every byte swapped (what a packer reading the first
// element from the low nibble would compute) must fail the check above,
// in both precisions and both layouts of W.
func TestGemmNF4CatchesNibbleSwap(t *testing.T) {
	r := rand.New(rand.NewSource(5))
	for _, prec := range []Precision{F32, BF16} {
		for _, transB := range []bool{false, true} {
			tc := gemmCase{transB: transB, m: 20, n: 40, k: 386, alpha: 1}
			a, b, lda, ldb := nf4Operands(r, tc, false, true)
			swapped := *b.NF4
			swapped.Packed = append([]byte(nil), b.NF4.Packed...)
			for i, q := range swapped.Packed {
				swapped.Packed[i] = q<<4 | q>>4
			}
			// The reference reads the true layout, Gemm the swapped one.
			ldc := tc.n
			c := make([]float32, tc.m*ldc)
			ref, mag := refGemm64(prec == BF16, false, transB, tc.m, tc.n, tc.k, 1, a, lda, b, ldb, 0, c, ldc)
			Gemm(prec, false, transB, tc.m, tc.n, tc.k, 1, a, lda, Operand{NF4: &swapped}, ldb, 0, c, ldc)
			bad := 0
			for i, want := range ref {
				if math.Abs(float64(c[i])-want) > 1e-5*mag[i]+1e-6 {
					bad++
				}
			}
			if bad < len(ref)/2 {
				t.Fatalf("%v transB=%v: only %d of %d outputs differ with swapped nibbles", prec, transB, bad, len(ref))
			}
		}
	}
}

// TestPackNF4MatchesBF16 checks the NF4 packer against the bf16 one on the
// dequantized values: the pair panels must be bit-identical.
func TestPackNF4MatchesBF16(t *testing.T) {
	r := rand.New(rand.NewSource(9))
	for _, alongP := range []bool{false, true} {
		for _, kb := range []int{1, 2, 5, 64, 129} {
			w, n, ld := 32, 29, 131
			v := randSlice(r, (kb+n+2)*ld)
			q := nf4.Quantize(v)
			h := make([]uint16, len(v))
			q.DequantizeBF16(h, 0)
			p1 := make([]float32, w*kb)
			p2 := make([]float32, w*kb)
			packPanel(&workspace{}, p1, w, Operand{NF4: q}, 3, ld, n, kb, alongP, true, true)
			packPanel(&workspace{}, p2, w, Operand{BF16: h}, 3, ld, n, kb, alongP, true, true)
			for i := range p1 {
				if math.Float32bits(p1[i]) != math.Float32bits(p2[i]) {
					t.Fatalf("alongP=%v kb=%d: slot %d differs between NF4 and its bf16 dequantization", alongP, kb, i)
				}
			}
		}
	}
}

// BenchmarkGemmNF4 compares a linear layer's products with W in bf16 and
// in NF4 (dequantized while packed).
func BenchmarkGemmNF4(b *testing.B) {
	r := rand.New(rand.NewSource(1))
	m, n, k := 512, 2048, 2048
	x := randOperand(r, m*k, false)
	w := randSlice(r, n*k)
	h := make([]uint16, len(w))
	for i, f := range w {
		h[i] = f32ToBF16(f)
	}
	ops := map[string]Operand{"bf16": {BF16: h}, "nf4": {NF4: nf4.Quantize(w)}}
	c := make([]float32, m*n)
	for _, name := range []string{"bf16", "nf4"} {
		for _, transB := range []bool{true, false} {
			b.Run(fmt.Sprintf("%s/transB=%v", name, transB), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					Gemm(BF16, false, transB, m, n, k, 1, x, k, ops[name], map[bool]int{true: k, false: n}[transB], 0, c, n)
				}
				b.ReportMetric(2*float64(m)*float64(n)*float64(k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
			})
		}
	}
}
