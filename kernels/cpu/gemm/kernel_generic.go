//go:build !amd64

package gemm

// Without an assembly micro-kernel for this architecture, Sgemm uses the
// packed, blocked pure-Go kernel (genericKernel), which is bestKernel's
// default value.

// supportedKernels lists the micro-kernels usable on this CPU (for tests).
func supportedKernels() []*kernelSpec { return []*kernelSpec{genericKernel} }

// transpose4 writes panel[p*w+r] = src[r*ld+p] for r < 4, p < kb
// (see transposeRuns).
func transpose4(panel []float32, w int, src []float32, ld, kb int) {
	transpose4Go(panel, w, src, ld, kb)
}

// dot returns sum_i x[i]*y[i] over len(x) (len(y) >= len(x)).
func dot(x, y []float32) float32 { return dotGo(x, y) }

// axpy computes y[i] += alpha*x[i] over len(x) (len(y) >= len(x)).
func axpy(alpha float32, x, y []float32) { axpyGo(alpha, x, y) }

// copyFull writes panel[p*w : p*w+w] = src[p*ld : p*ld+w] for p < kb
// (see copyRuns).
func copyFull(panel []float32, w int, src []float32, ld, kb int) {
	copyFullGo(panel, w, src, ld, kb)
}

// toBF16 writes dst[i] = bf16(src[i]) for i < len(src).
func toBF16(dst []uint16, src []float32) {
	for i, f := range src {
		dst[i] = f32ToBF16(f)
	}
}

// interleave writes dst[i] = a[i] | b[i]<<16 for i < len(a).
func interleave(dst []uint32, a, b []uint16) {
	for i, x := range a {
		dst[i] = uint32(x) | uint32(b[i])<<16
	}
}

// interleavePanel fills pair rows q < kp of a w-wide panel from bf16 rows:
// slots[q*w+r] = src[2q*ld+r] | src[(2q+1)*ld+r]<<16 for r < n.
func interleavePanel(slots []uint32, w int, src []uint16, ld, n, kp int) {
	for q := 0; q < kp; q++ {
		interleave(slots[q*w:q*w+n], src[2*q*ld:2*q*ld+n], src[(2*q+1)*ld:(2*q+1)*ld+n])
	}
}

// transpose16 has no portable fast path: transposeRuns uses transpose4.
func transpose16(panel []float32, w int, src []float32, ld, n16 int) bool { return false }
