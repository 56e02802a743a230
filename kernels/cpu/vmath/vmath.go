// Package vmath provides vectorized float32 math for softmax-style loops
// over long rows (vocabulary-sized logits): a fused exp + sum and a max.
//
// # Algorithm
//
// exp(x) is computed as 2^k · e^r with k = round(x·log2(e)) and
// r = x − k·ln2 (Cody–Waite reduction with a two-part ln2, so |r| ≤ ~ln2/2),
// e^r ≈ 1 + r·(1 + r·Q(r)) where Q is a degree-4 polynomial (our own minimax
// fit of (e^r − 1 − r)/r² in relative error; the approximation error of the
// degree-6 result is 3.1e-9, far below float32 rounding), and the 2^k scaling
// is done on the exponent bits (AVX2: VPSLLD/VPADDD) or with VSCALEFPS
// (AVX-512). The kernels are chosen at run time via golang.org/x/sys/cpu;
// a pure-Go version of the same math handles row tails and other
// architectures. The AVX2 and AVX-512 kernels perform the same float32
// operations and give bit-identical results; the pure-Go path may differ by
// an ulp where the compiler does or does not fuse multiply-adds. Setting
// LLAMATUNE_VMATH_NO_AVX512=1 keeps the AVX2 kernel on AVX-512 machines.
//
// # Accuracy and special values
//
// For x = scale·(src−shift) evaluated in float32 (sub, then mul), results
// in the normal range −87.3365 ≤ x ≤ 88.7228 are accurate to about one
// float32 rounding: the measured maximum relative error vs math.Exp is 7.7e-8 for the vector
// kernels and 9.5e-8 for the pure-Go path (tests allow 2.5e-7). Outside it:
//
//   - x > 88.72283 (the largest float32 below ln MaxFloat32, so exp of
//     any larger float32 rounds to +Inf), including +Inf: +Inf.
//   - x < −87.33654 (= ln 2^-126, where the result would be subnormal),
//     including −Inf: +0. All kernels flush there (no subnormal outputs),
//     so every kernel gives the same results and downstream arithmetic never
//     meets subnormals.
//   - NaN propagates (NaN in, NaN out; the sums become NaN).
//
// Sums accumulate pairs of float32 results in float64 lanes, so the sum's
// relative error is about one float32 rounding (≤ 1e-7) on top of the
// element errors, independent of the row length.
package vmath

import "math"

// Kernel identifiers for the package variable kernel.
const (
	kernelGeneric = iota // pure Go, float32 scalar
	kernelAVX2           // AVX2 + FMA, 8 lanes
	kernelAVX512         // AVX-512F, 16 lanes
)

// kernel is the exp kernel in use; set by the architecture's init and
// overridden by tests.
var kernel = kernelGeneric

// ExpSum sets dst[i] = exp(scale*(src[i]-shift)) for all i and returns the
// float64 sum of dst. dst may alias src (the same slice); other partial
// overlaps are not allowed. It panics if len(dst) != len(src).
func ExpSum(dst, src []float32, shift, scale float32) float64 {
	if len(dst) != len(src) {
		panic("vmath: ExpSum: len(dst) != len(src)")
	}
	n, s := expSumVec(dst, src, shift, scale)
	return s + expSumGo(dst[n:], src[n:], shift, scale)
}

// SumExp returns Σ exp(scale*(src[i]-shift)) without storing anything.
func SumExp(src []float32, shift, scale float32) float64 {
	n, s := sumExpVec(src, shift, scale)
	return s + sumExpGo(src[n:], shift, scale)
}

// Max returns the maximum of src, which must not be empty. If any element
// is NaN the result is NaN. Which zero is returned for max(−0, +0) is
// unspecified.
func Max(src []float32) float32 {
	_ = src[0] // len ≥ 1
	n, m, nan := maxVec(src)
	if nan {
		return float32(math.NaN())
	}
	if n == 0 {
		m = src[0]
	}
	for _, v := range src[n:] {
		if v > m {
			m = v
		} else if v != v {
			return v
		}
	}
	return m
}

// Constants shared with the assembly kernels (see the DATA table there).
const (
	expHi    = 88.72283172607422      // largest float32 below 128·ln2 (0x42b17217); exp is finite up to here
	expLo    = -87.33654022216797     // smallest float32 ≥ −126·ln2 (0xc2aeac4f)
	expLog2e = 1.4426950408889634     // log2(e)
	expMagic = 12582912               // 1.5·2^23: adding it rounds to an integer
	expC1    = 0.693359375            // ln2 high part (9 significant bits, k·C1 exact)
	expC2    = -2.1219444005469057e-4 // ln2 − C1
	// (e^r − 1 − r)/r² ≈ q2 + q3 r + q4 r² + q5 r³ + q6 r⁴ on |r| ≤ ln2/2.
	expQ2 = 0.499999934
	expQ3 = 0.166665204
	expQ4 = 0.0416683908
	expQ5 = 0.00836874511
	expQ6 = 0.00138145401
)

// exp32 is the scalar version of the vector kernels' math.
func exp32(x float32) float32 {
	if !(x <= expHi) {
		return x + float32(math.Inf(1)) // overflow → +Inf; NaN stays NaN
	}
	if x < expLo {
		return 0
	}
	t := x*expLog2e + expMagic // low bits of t hold k = round(x·log2e)
	kf := t - expMagic
	r := x - kf*expC1
	r -= kf * expC2
	q := expQ6*r + expQ5
	q = q*r + expQ4
	q = q*r + expQ3
	q = q*r + expQ2
	q = q*r + 1
	q = q*r + 1
	// q ∈ [0.7, 1.42] and x ∈ [expLo, expHi] keep the exponent in range.
	return math.Float32frombits(math.Float32bits(q) + math.Float32bits(t)<<23)
}

func expSumGo(dst, src []float32, shift, scale float32) float64 {
	dst = dst[:len(src)]
	var s float64
	for i, v := range src {
		e := exp32(scale * (v - shift))
		dst[i] = e
		s += float64(e)
	}
	return s
}

func sumExpGo(src []float32, shift, scale float32) float64 {
	var s float64
	for _, v := range src {
		s += float64(exp32(scale * (v - shift)))
	}
	return s
}
