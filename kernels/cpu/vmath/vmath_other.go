//go:build !amd64

package vmath

func supportedKernels() []int { return []int{kernelGeneric} }

func expSumVec(dst, src []float32, shift, scale float32) (int, float64) { return 0, 0 }

func sumExpVec(src []float32, shift, scale float32) (int, float64) { return 0, 0 }

func maxVec(src []float32) (int, float32, bool) { return 0, 0, false }
