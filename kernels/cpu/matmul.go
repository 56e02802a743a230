package cpu

import (
	"fmt"

	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu/gemm"
)

// MatMul: C[b] = Alpha·op(A[b])·op(B[b]) + Beta·C[b] (see kernels.MatMulArgs).
// Backward of C = A·B is dA = dC·Bᵀ and dB = Aᵀ·dC: callers express both as
// MatMuls with the transpose flags, so this one kernel serves both passes.
func (*Backend) MatMul(a, b, c kernels.Buffer, p kernels.MatMulArgs) {
	batch := max(p.Batch, 1)
	av, bv, cv := operand(a), operand(b), F32(c)
	needA := p.StrideA*(batch-1) + p.M*p.K
	needB := p.StrideB*(batch-1) + p.K*p.N
	needC := p.StrideC*(batch-1) + p.M*p.N
	if a.Len() < needA || b.Len() < needB || len(cv) < needC {
		panic(fmt.Sprintf("cpu.MatMul: buffers A=%d B=%d C=%d too small for %+v (need %d %d %d)",
			a.Len(), b.Len(), len(cv), p, needA, needB, needC))
	}
	lda, ldb := p.K, p.N
	if p.TransA {
		lda = p.M
	}
	if p.TransB {
		ldb = p.K
	}
	for i := 0; i < batch; i++ {
		gemm.Gemm(precision(p.Compute), p.TransA, p.TransB, p.M, p.N, p.K, p.Alpha,
			sliceOp(av, i*p.StrideA), lda, sliceOp(bv, i*p.StrideB), ldb, p.Beta, cv[i*p.StrideC:], p.N)
	}
}

// sliceOp is o from element off on.
func sliceOp(o gemm.Operand, off int) gemm.Operand {
	if o.NF4 != nil {
		if off != 0 {
			panic(fmt.Sprintf("cpu.MatMul: an NF4 weight cannot be batched with a stride (offset %d)", off))
		}
		return o
	}
	if o.BF16 != nil {
		return gemm.Operand{BF16: o.BF16[off:]}
	}
	return gemm.Operand{F32: o.F32[off:]}
}

func f32Op(v []float32) gemm.Operand { return gemm.Operand{F32: v} }
