//go:build amd64

package vmath

import (
	"github.com/llamatune/llamatune/internal/switches"

	"golang.org/x/sys/cpu"
)

// Assembly kernels (vmath_amd64.s). n is a multiple of the kernel's block
// (16 elements for AVX2, 32 for AVX-512, 32 for the max) and > 0. When dst
// is nil the exps are only summed.

//go:noescape
func expSumAVX2(dst, src *float32, n int, shift, scale float32) float64

//go:noescape
func expSumAVX512(dst, src *float32, n int, shift, scale float32) float64

//go:noescape
func maxAVX2(src *float32, n int) (m float32, nan bool)

var hasAVX2FMA = cpu.X86.HasAVX2 && cpu.X86.HasFMA

// init picks the widest kernel the CPU (and OS) supports. Setting
// LLAMATUNE_VMATH_NO_AVX512=1 keeps the AVX2 kernel on AVX-512 machines.
func init() {
	if hasAVX2FMA {
		kernel = kernelAVX2
	}
	if cpu.X86.HasAVX512F && !switches.On(switches.VMathNoAVX512) {
		kernel = kernelAVX512
	}
}

// supportedKernels lists the kernels usable on this CPU (for tests).
func supportedKernels() []int {
	ks := []int{kernelGeneric}
	if hasAVX2FMA {
		ks = append(ks, kernelAVX2)
	}
	if cpu.X86.HasAVX512F {
		ks = append(ks, kernelAVX512)
	}
	return ks
}

// expVec runs the selected kernel over the longest prefix it handles and
// returns that prefix's length and sum. dst == nil: sum only.
func expVec(dst, src []float32, shift, scale float32) (int, float64) {
	var d *float32
	switch kernel {
	case kernelAVX512:
		n := len(src) &^ 31
		if n == 0 {
			return 0, 0
		}
		if dst != nil {
			_ = dst[n-1]
			d = &dst[0]
		}
		return n, expSumAVX512(d, &src[0], n, shift, scale)
	case kernelAVX2:
		n := len(src) &^ 15
		if n == 0 {
			return 0, 0
		}
		if dst != nil {
			_ = dst[n-1]
			d = &dst[0]
		}
		return n, expSumAVX2(d, &src[0], n, shift, scale)
	}
	return 0, 0
}

func expSumVec(dst, src []float32, shift, scale float32) (int, float64) {
	if len(src) == 0 {
		return 0, 0
	}
	return expVec(dst[:len(src)], src, shift, scale)
}

func sumExpVec(src []float32, shift, scale float32) (int, float64) {
	return expVec(nil, src, shift, scale)
}

func maxVec(src []float32) (int, float32, bool) {
	n := len(src) &^ 31
	if n == 0 || !hasAVX2FMA || kernel == kernelGeneric {
		return 0, 0, false
	}
	m, nan := maxAVX2(&src[0], n)
	return n, m, nan
}
