//go:build amd64

package gemm

import (
	"math"

	"github.com/llamatune/llamatune/internal/switches"

	"golang.org/x/sys/cpu"
)

// Assembly micro-kernels (kernel_amd64.s). a and b point at packed
// micro-panels, c at the top-left element of the tile, ldc is in elements.
// C = alpha*A*B + beta*C; when beta is zero C is not read.

//go:noescape
func sgemmKernel6x16AVX2(k int, a, b, c *float32, ldc int, alpha, beta float32)

//go:noescape
func sgemmKernel14x32AVX512(k int, a, b, c *float32, ldc int, alpha, beta float32)

var avx512Kernel = &kernelSpec{
	name: "avx512-14x32",
	mr:   14, nr: 32,
	// kc: a 32×kc B micro-panel (24 KiB) stays in the 32 KiB L1; the
	// mc×kc A block (~260 KiB) in L2, the kc×nc B block (3 MiB) in L3.
	mc: 336, kc: 192, nc: 4096,
	fn: func(k int, a, b, c []float32, ldc int, alpha, beta float32) {
		sgemmKernel14x32AVX512(k, &a[0], &b[0], &c[0], ldc, alpha, beta)
	},
}

var avx2Kernel = &kernelSpec{
	name: "avx2-6x16",
	mr:   6, nr: 16,
	// kc: a 16×kc B micro-panel (16 KiB) stays in the 32 KiB L1 next to
	// the streamed 6×kc A micro-panel. mc×kc A block (~400 KiB) sits in
	// L2, kc×nc B block (4 MiB) in L3.
	mc: 384, kc: 256, nc: 4096,
	fn: func(k int, a, b, c []float32, ldc int, alpha, beta float32) {
		sgemmKernel6x16AVX2(k, &a[0], &b[0], &c[0], ldc, alpha, beta)
	},
}

// init picks the fastest kernel the CPU (and OS) supports. Setting
// LLAMATUNE_GEMM_NO_AVX512=1 keeps the AVX2 kernel on AVX-512 machines (e.g.
// to compare them, or where AVX-512 lowers the clock).
func init() {
	if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		bestKernel = avx2Kernel
	}
	if cpu.X86.HasAVX512F && !switches.On(switches.GemmNoAVX512) {
		bestKernel = avx512Kernel
		if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
			narrowKernel = avx2Kernel
		}
	}
}

// supportedKernels lists the micro-kernels usable on this CPU (for tests).
func supportedKernels() []*kernelSpec {
	ks := []*kernelSpec{genericKernel}
	if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		ks = append(ks, avx2Kernel)
	}
	if cpu.X86.HasAVX512F {
		ks = append(ks, avx512Kernel)
	}
	return ks
}

//go:noescape
func transpose4Runs(dst *float32, w int, src *float32, ld int, n4 int)

// transpose4 writes panel[p*w+r] = src[r*ld+p] for r < 4, p < kb
// (see transposeRuns), 4×4 blocks at a time in assembly.
func transpose4(panel []float32, w int, src []float32, ld, kb int) {
	n4 := kb / 4
	if n4 > 0 {
		// Bounds the assembly relies on.
		_ = src[3*ld+4*n4-1]
		_ = panel[(4*n4-1)*w+3]
		transpose4Runs(&panel[0], w, &src[0], ld, n4)
	}
	for p := 4 * n4; p < kb; p++ {
		d := panel[p*w : p*w+4 : p*w+4]
		d[0], d[1], d[2], d[3] = src[p], src[ld+p], src[2*ld+p], src[3*ld+p]
	}
}

//go:noescape
func sdotAVX2(n int, x, y *float32) float32

//go:noescape
func saxpyAVX2(n int, alpha float32, x, y *float32)

var hasAVX2FMA = cpu.X86.HasAVX2 && cpu.X86.HasFMA

// dot returns sum_i x[i]*y[i] over len(x) (len(y) >= len(x)).
func dot(x, y []float32) float32 {
	if !hasAVX2FMA || forceGeneric || len(x) == 0 {
		return dotGo(x, y)
	}
	_ = y[len(x)-1]
	return sdotAVX2(len(x), &x[0], &y[0])
}

// axpy computes y[i] += alpha*x[i] over len(x) (len(y) >= len(x)).
func axpy(alpha float32, x, y []float32) {
	if !hasAVX2FMA || forceGeneric || len(x) == 0 {
		axpyGo(alpha, x, y)
		return
	}
	_ = y[len(x)-1]
	saxpyAVX2(len(x), alpha, &x[0], &y[0])
}

//go:noescape
func copyRunsSSE(dst *float32, w int, src *float32, ld int, kb int)

// copyFull writes panel[p*w : p*w+w] = src[p*ld : p*ld+w] for p < kb
// (see copyRuns) in assembly.
func copyFull(panel []float32, w int, src []float32, ld, kb int) {
	if kb == 0 {
		return
	}
	// Bounds the assembly relies on.
	_ = src[(kb-1)*ld+w-1]
	_ = panel[kb*w-1]
	copyRunsSSE(&panel[0], w, &src[0], ld, kb)
}

//go:noescape
func bgemmKernel14x32AVX512BF16(kp int, a, b, c *float32, ldc int, alpha, beta float32)

// bf16PairKernel is the AVX512_BF16 kernel (kernel_bf16_amd64.s): bf16 pair
// panels, f32 accumulation. kc counts k values (kc/2 pairs): a 32×kc/2
// dword B micro-panel is the same 24 KiB as the f32 kernel's at kc 192.
var bf16PairKernel = &kernelSpec{
	name: "avx512bf16-14x32",
	mr:   14, nr: 32,
	mc: 336, kc: 384, nc: 4096,
	pairs: true,
	fn: func(kp int, a, b, c []float32, ldc int, alpha, beta float32) {
		bgemmKernel14x32AVX512BF16(kp, &a[0], &b[0], &c[0], ldc, alpha, beta)
	},
}

func init() {
	if cpu.X86.HasAVX512BF16 && !switches.On(switches.GemmNoAVX512) && !switches.On(switches.GemmNoBF16) {
		bf16Kernel = bf16PairKernel
	}
}

//go:noescape
func cvtF32ToBF16AVX512(dst *uint16, src *float32, n16 int)

// toBF16 writes dst[i] = bf16(src[i]) for i < len(src) (len(dst) >=
// len(src)): vcvtneps2bf16 where the bf16 kernel runs (AVX512_BF16, whose
// products treat denormals as zero just as this conversion does), the
// elements past the last 16 flushed the same way, so that every element
// rounds alike wherever a slice is cut; else f32ToBF16.
func toBF16(dst []uint16, src []float32) {
	if bf16Kernel == nil || forceGeneric {
		for i, f := range src {
			dst[i] = f32ToBF16(f)
		}
		return
	}
	n16 := len(src) / 16
	if n16 > 0 {
		_ = dst[len(src)-1]
		cvtF32ToBF16AVX512(&dst[0], &src[0], n16)
	}
	for i := 16 * n16; i < len(src); i++ { // the tail as vcvtneps2bf16 does it: denormals flushed
		dst[i] = f32ToBF16(flushDenormal(src[i]))
	}
}

//go:noescape
func interleaveBF16(dst *uint32, a, b *uint16, n8 int)

// interleave writes dst[i] = a[i] | b[i]<<16 for i < len(a) (b and dst at
// least as long): 8 at a time in SSE2.
func interleave(dst []uint32, a, b []uint16) {
	n8 := len(a) / 8
	if n8 > 0 {
		_, _ = b[len(a)-1], dst[len(a)-1]
		interleaveBF16(&dst[0], &a[0], &b[0], n8)
	}
	for i := 8 * n8; i < len(a); i++ {
		dst[i] = uint32(a[i]) | uint32(b[i])<<16
	}
}

//go:noescape
func interleaveRuns(dst *uint32, w int, src *uint16, ld int, n8 int, kp int)

// interleavePanel fills pair rows q < kp of a w-wide panel from bf16 rows:
// slots[q*w+r] = src[2q*ld+r] | src[(2q+1)*ld+r]<<16 for r < n (columns
// n..w-1 are left alone). Source rows 2q+1 must exist for every q < kp.
func interleavePanel(slots []uint32, w int, src []uint16, ld, n, kp int) {
	n8 := n / 8
	if n8 > 0 && kp > 0 {
		_ = src[(2*kp-1)*ld+8*n8-1]
		_ = slots[(kp-1)*w+8*n8-1]
		interleaveRuns(&slots[0], w, &src[0], ld, n8, kp)
	}
	for q := 0; q < kp; q++ {
		for r := 8 * n8; r < n; r++ {
			slots[q*w+r] = uint32(src[2*q*ld+r]) | uint32(src[(2*q+1)*ld+r])<<16
		}
	}
}

//go:noescape
func transpose16Runs(dst *float32, w int, src *float32, ld int, n16 int)

var hasAVX512 = cpu.X86.HasAVX512F

// transpose16 writes panel[p*w+r] = src[r*ld+p] for r < 16, p < 16*n16
// (see transposeRuns) in AVX-512 16×16 blocks; it reports false where that
// is not available.
func transpose16(panel []float32, w int, src []float32, ld, n16 int) bool {
	if !hasAVX512 || forceGeneric || n16 == 0 {
		return false
	}
	// Bounds the assembly relies on.
	_ = src[15*ld+16*n16-1]
	_ = panel[(16*n16-1)*w+15]
	transpose16Runs(&panel[0], w, &src[0], ld, n16)
	return true
}

// flushDenormal is f with a denormal replaced by a zero of its sign.
func flushDenormal(f float32) float32 {
	if u := math.Float32bits(f); u&0x7f800000 == 0 {
		return math.Float32frombits(u & 0x80000000)
	}
	return f
}
