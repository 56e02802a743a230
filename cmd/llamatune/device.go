package main

import (
	"fmt"

	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	_ "github.com/llamatune/llamatune/kernels/cuda" // registers device: cuda (a clear error at use where no GPU is)
)

// jobBackend opens the job's device.
func jobBackend(job *configs.Job) (kernels.Backend, error) {
	be, err := kernels.New(job.Device)
	if err != nil {
		return nil, fmt.Errorf("%w (device: cpu runs on the CPU)", err)
	}
	return be, nil
}

// frozenDType is how a model's frozen weights are stored under the job's
// precision.weights: a teacher's, or a LoRA student's base (full
// fine-tuning trains every weight in f32): bf16, or nf4 (QLoRA: the linear
// layers 4-bit, the rest bf16). Adapters always stay f32.
func frozenDType(job *configs.Job) kernels.DType {
	switch job.Precision.Weights {
	case "bf16":
		return kernels.BF16
	case "nf4":
		return kernels.NF4
	}
	return kernels.F32
}

// computeDType resolves precision.compute: auto is bf16 on CUDA and on a CPU
// with AVX512_BF16, else f32.
func computeDType(job *configs.Job) kernels.DType {
	switch job.Precision.Compute {
	case "bf16":
		return kernels.BF16
	case "auto":
		if job.Device == "cuda" || cpu.FastBF16() {
			return kernels.BF16
		}
	}
	return kernels.F32
}
