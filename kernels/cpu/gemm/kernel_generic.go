//go:build !amd64

package gemm

// Without an assembly micro-kernel for this architecture, Sgemm uses the
// packed, blocked pure-Go kernel (genericKernel), which is bestKernel's
// default value.

// supportedKernels lists the micro-kernels usable on this CPU (for tests).
func supportedKernels() []*kernelSpec { return []*kernelSpec{genericKernel} }
