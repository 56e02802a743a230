//go:build amd64

package gemm

import "golang.org/x/sys/cpu"

// Assembly micro-kernels (kernel_amd64.s). a and b point at packed
// micro-panels, c at the top-left element of the tile, ldc is in elements.
// C = alpha*A*B + beta*C; when beta is zero C is not read.

//go:noescape
func sgemmKernel6x16AVX2(k int, a, b, c *float32, ldc int, alpha, beta float32)

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

func init() {
	if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		bestKernel = avx2Kernel
	}
}

// supportedKernels lists the micro-kernels usable on this CPU (for tests).
func supportedKernels() []*kernelSpec {
	ks := []*kernelSpec{genericKernel}
	if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		ks = append(ks, avx2Kernel)
	}
	return ks
}
