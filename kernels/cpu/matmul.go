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
	av, bv, cv := asF32(a), asF32(b), F32(c)
	needA := p.StrideA*(batch-1) + p.M*p.K
	needB := p.StrideB*(batch-1) + p.K*p.N
	needC := p.StrideC*(batch-1) + p.M*p.N
	if len(av) < needA || len(bv) < needB || len(cv) < needC {
		panic(fmt.Sprintf("cpu.MatMul: buffers A=%d B=%d C=%d too small for %+v (need %d %d %d)",
			len(av), len(bv), len(cv), p, needA, needB, needC))
	}
	lda, ldb := p.K, p.N
	if p.TransA {
		lda = p.M
	}
	if p.TransB {
		ldb = p.K
	}
	for i := 0; i < batch; i++ {
		gemm.Sgemm(p.TransA, p.TransB, p.M, p.N, p.K, p.Alpha,
			av[i*p.StrideA:], lda, bv[i*p.StrideB:], ldb, p.Beta, cv[i*p.StrideC:], p.N)
	}
}
