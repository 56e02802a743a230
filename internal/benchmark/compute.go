package benchmark

import (
	"errors"

	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/model/llama"
)

// ErrComputeNotYet is SetCompute's answer to bf16 until llama.Model has its
// Compute field.
var ErrComputeNotYet = errors.New("bf16 compute is not yet in this build (set precision.compute: f32, or --compute f32)")

// SetCompute sets the precision m computes in (activations and GEMM inputs;
// accumulation stays f32). It is the one place every recipe (train, eval,
// distill, teacher-logits, generate, bench step) goes through.
func SetCompute(m *llama.Model, dt kernels.DType) error {
	// TODO(merge): m.Compute = dt (the bf16 compute work adds llama.Model.Compute); then drop the error.
	if dt != kernels.F32 {
		return ErrComputeNotYet
	}
	return nil
}
