//go:build amd64

package gemm

import (
	"os"

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

func init() {
	if cpu.X86.HasAVX2 && cpu.X86.HasFMA {
		bestKernel = avx2Kernel
	}
	if cpu.X86.HasAVX512F && os.Getenv("LLAMATUNE_GEMM_NO_AVX512") == "" {
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
