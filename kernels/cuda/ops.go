package cuda

import (
	"fmt"
	"math"

	"github.com/llamatune/llamatune/kernels"
)

// Each op checks its arguments on the host exactly where the CPU backend
// (kernels/cpu) would panic, so a misuse fails the same way on both, and
// then queues its kernels. Ops that return host values wait for the stream.

var _ kernels.Backend = (*Backend)(nil)

func dtArg(b *Buffer) int {
	if b.dt == kernels.BF16 {
		return 1
	}
	return 0
}

func need(op, what string, b *Buffer, n int) {
	if b != nil && b.n < n {
		panic(fmt.Sprintf("cuda.%s: %s has %d elements, need %d", op, what, b.n, n))
	}
}

// MatMul: C[b] = Alpha·op(A[b])·op(B[b]) + Beta·C[b] (see kernels.MatMulArgs)
// on cuBLAS. With Compute BF16 an F32 operand is rounded to BF16 and the
// product runs on the tensor cores (bf16 in, f32 accumulate). With Compute
// F32, same-type operands go straight in (BF16×BF16 or F32×F32) and a BF16
// operand next to an F32 one is widened to F32 first.
func (be *Backend) MatMul(ka, kb, kc kernels.Buffer, p kernels.MatMulArgs) {
	a, b, c := be.buf("MatMul", ka), be.buf("MatMul", kb), be.f32("MatMul", kc)
	batch := max(p.Batch, 1)
	needA := p.StrideA*(batch-1) + p.M*p.K
	needB := p.StrideB*(batch-1) + p.K*p.N
	needC := p.StrideC*(batch-1) + p.M*p.N
	if a.n < needA || b.n < needB || c.n < needC {
		panic(fmt.Sprintf("cuda.MatMul: buffers A=%d B=%d C=%d too small for %+v (need %d %d %d)",
			a.n, b.n, c.n, p, needA, needB, needC))
	}
	defer be.enter()()
	if p.Compute == kernels.BF16 {
		var freeA, freeB func()
		a, freeA = be.asBF16("MatMul", a)
		b, freeB = be.asBF16("MatMul", b)
		defer freeA()
		defer freeB()
	} else if a.dt != b.dt {
		var free func()
		if a.dt == kernels.BF16 {
			a, free = be.asF32("MatMul", a)
		} else {
			b, free = be.asF32("MatMul", b)
		}
		defer free()
	}
	lda, ldb := p.K, p.N
	if p.TransA {
		lda = p.M
	}
	if p.TransB {
		ldb = p.K
	}
	bf := a.dt == kernels.BF16
	be.gemm("MatMul", p.TransA, p.TransB, p.M, p.N, p.K, batch, p.Alpha,
		operand{a.ptr, bf, lda, p.StrideA}, operand{b.ptr, bf, ldb, p.StrideB}, p.Beta, c.ptr, p.N, p.StrideC)
}

// Embedding: out[t,:] = w[ids[t],:].
func (be *Backend) Embedding(kw kernels.Buffer, ids []int32, kout kernels.Buffer, dim int) {
	w, out := be.buf("Embedding", kw), be.f32("Embedding", kout)
	vocab := w.n / dim
	for t, id := range ids {
		if id < 0 || int(id) >= vocab {
			panic(fmt.Sprintf("cuda.Embedding: token id %d at position %d outside vocab %d", id, t, vocab))
		}
	}
	need("Embedding", "out", out, len(ids)*dim)
	defer be.enter()()
	if len(ids) == 0 {
		return
	}
	d, free := be.uploadI32("Embedding", ids)
	defer free()
	be.launch1D("Embedding", "embedding_fwd", len(ids)*dim, w.ptr, dtArg(w), d, out.ptr, len(ids), dim)
}

// EmbeddingBackward: dw[ids[t],:] += dout[t,:] (atomic scatter-add).
func (be *Backend) EmbeddingBackward(kdout kernels.Buffer, ids []int32, kdw kernels.Buffer, dim int) {
	dout, dw := be.f32("EmbeddingBackward", kdout), be.f32("EmbeddingBackward", kdw)
	vocab := dw.n / dim
	for t, id := range ids {
		if id < 0 || int(id) >= vocab {
			panic(fmt.Sprintf("cuda.EmbeddingBackward: token id %d at position %d outside vocab %d", id, t, vocab))
		}
	}
	need("EmbeddingBackward", "dout", dout, len(ids)*dim)
	defer be.enter()()
	if len(ids) == 0 {
		return
	}
	d, free := be.uploadI32("EmbeddingBackward", ids)
	defer free()
	be.launch1D("EmbeddingBackward", "embedding_bwd", len(ids)*dim, dout.ptr, d, dw.ptr, len(ids), dim)
}

// RMSNorm: out = x·rstd·w, rstd = 1/sqrt(mean(x²)+eps) saved per row.
func (be *Backend) RMSNorm(kx, kw, kout, krstd kernels.Buffer, rows, dim int, eps float32) {
	x, w, out, rstd := be.f32("RMSNorm", kx), be.buf("RMSNorm", kw), be.f32("RMSNorm", kout), be.f32("RMSNorm", krstd)
	need("RMSNorm", "x", x, rows*dim)
	need("RMSNorm", "out", out, rows*dim)
	need("RMSNorm", "w", w, dim)
	need("RMSNorm", "rstd", rstd, rows)
	defer be.enter()()
	if rows == 0 {
		return
	}
	be.launch("RMSNorm", "rmsnorm_fwd", dim3{uint32(rows), 1, 1}, uint32(rowBlock(dim/4, 512)), 0,
		x.ptr, w.ptr, dtArg(w), out.ptr, ptr(rstd), rows, dim, eps)
}

func (be *Backend) RMSNormBackward(kdout, kx, kw, krstd, kdx, kdw kernels.Buffer, rows, dim int) {
	op := "RMSNormBackward"
	dout, x, w, rstd := be.f32(op, kdout), be.f32(op, kx), be.buf(op, kw), be.f32(op, krstd)
	dx, dw := be.f32(op, kdx), be.f32(op, kdw)
	need(op, "dout", dout, rows*dim)
	need(op, "x", x, rows*dim)
	need(op, "w", w, dim)
	need(op, "rstd", rstd, rows)
	need(op, "dx", dx, rows*dim)
	need(op, "dw", dw, dim)
	defer be.enter()()
	if rows == 0 {
		return
	}
	if dx != nil {
		be.launch(op, "rmsnorm_bwd_dx", dim3{uint32(rows), 1, 1}, uint32(rowBlock(dim/4, 512)), 0,
			dout.ptr, x.ptr, w.ptr, dtArg(w), rstd.ptr, dx.ptr, rows, dim)
	}
	if dw != nil {
		bands, per := rmsDWBands(rows)
		be.launch(op, "rmsnorm_bwd_dw", dim3{uint32(ceilDiv(dim, 256)), uint32(bands), 1}, 256, 0,
			dout.ptr, x.ptr, rstd.ptr, dw.ptr, rows, dim, per)
	}
}

// RoPE (rotate-half, HF Llama) on x [tokens, heads, headDim]; out may alias x.
func (be *Backend) RoPE(kx, kout kernels.Buffer, pos []int32, tokens, heads, headDim int, invFreq []float32, inverse bool) {
	x, out := be.f32("RoPE", kx), be.f32("RoPE", kout)
	half := headDim / 2
	if len(pos) < tokens || len(invFreq) < half {
		panic(fmt.Sprintf("cuda.RoPE: %d positions for %d tokens, %d inverse frequencies for head dim %d", len(pos), tokens, len(invFreq), headDim))
	}
	need("RoPE", "x", x, tokens*heads*headDim)
	need("RoPE", "out", out, tokens*heads*headDim)
	defer be.enter()()
	if tokens*heads*half == 0 {
		return
	}
	dpos, free1 := be.uploadI32("RoPE", pos[:tokens])
	defer free1()
	dinv, free2 := be.uploadF32("RoPE", invFreq[:half])
	defer free2()
	sign := 1.0
	if inverse {
		sign = -1
	}
	be.launch1D("RoPE", "rope", tokens*heads*half, x.ptr, out.ptr, dpos, dinv, tokens, heads, headDim, sign)
}

// SwiGLU: out = silu(gate)·up.
func (be *Backend) SwiGLU(kg, ku, kout kernels.Buffer, n int) {
	g, u, out := be.f32("SwiGLU", kg), be.f32("SwiGLU", ku), be.f32("SwiGLU", kout)
	need("SwiGLU", "gate", g, n)
	need("SwiGLU", "up", u, n)
	need("SwiGLU", "out", out, n)
	defer be.enter()()
	be.launch1D("SwiGLU", "swiglu_fwd", n, g.ptr, u.ptr, out.ptr, int64(n))
}

func (be *Backend) SwiGLUBackward(kd, kg, ku, kdg, kdu kernels.Buffer, n int) {
	op := "SwiGLUBackward"
	d, g, u, dg, du := be.f32(op, kd), be.f32(op, kg), be.f32(op, ku), be.f32(op, kdg), be.f32(op, kdu)
	for _, c := range []struct {
		name string
		b    *Buffer
	}{{"dout", d}, {"gate", g}, {"up", u}, {"dgate", dg}, {"dup", du}} {
		need(op, c.name, c.b, n)
	}
	defer be.enter()()
	be.launch1D(op, "swiglu_bwd", n, d.ptr, g.ptr, u.ptr, ptr(dg), ptr(du), int64(n))
}

// --- elementwise and reductions ---------------------------------------------

func (be *Backend) Add(ka, kb, kout kernels.Buffer) {
	a, b, out := be.f32("Add", ka), be.f32("Add", kb), be.f32("Add", kout)
	if a.n != b.n || a.n != out.n {
		panic(fmt.Sprintf("cuda.Add: lengths %d, %d, %d differ", a.n, b.n, out.n))
	}
	defer be.enter()()
	be.launch1D("Add", "add_f32", a.n, a.ptr, b.ptr, out.ptr, int64(a.n))
}

func (be *Backend) AddScaled(kdst, ksrc kernels.Buffer, s float32) {
	d, src := be.f32("AddScaled", kdst), be.buf("AddScaled", ksrc)
	if d.n != src.n {
		panic(fmt.Sprintf("cuda.AddScaled: lengths %d, %d differ", d.n, src.n))
	}
	defer be.enter()()
	be.launch1D("AddScaled", "add_scaled", d.n, d.ptr, src.ptr, dtArg(src), s, int64(d.n))
}

func (be *Backend) Scale(kb kernels.Buffer, s float32) {
	b := be.f32("Scale", kb)
	defer be.enter()()
	be.launch1D("Scale", "scale_f32", b.n, b.ptr, s, int64(b.n))
}

func (be *Backend) Mul(kdst, ksrc kernels.Buffer) {
	d, src := be.f32("Mul", kdst), be.buf("Mul", ksrc)
	if d.n != src.n {
		panic(fmt.Sprintf("cuda.Mul: lengths %d, %d differ", d.n, src.n))
	}
	defer be.enter()()
	be.launch1D("Mul", "mul_f32", d.n, d.ptr, src.ptr, dtArg(src), int64(d.n))
}

// SumSquares: Σ b² in f64; per-block partials added on the host in order.
func (be *Backend) SumSquares(kb kernels.Buffer) float64 {
	b := be.buf("SumSquares", kb)
	defer be.enter()()
	if b.n == 0 {
		return 0
	}
	blocks := int(min(grid1D(b.n), 1024))
	part, free := be.tmp("SumSquares", kernels.F32, 2*blocks) // f64 partials
	defer free()
	be.launch("SumSquares", "sum_squares_partial", dim3{uint32(blocks), 1, 1}, blockElementwise, 0,
		b.ptr, dtArg(b), int64(b.n), part.ptr)
	var s float64
	for _, x := range be.downloadF64("SumSquares", part.ptr, blocks) {
		s += x
	}
	return s
}

// AdamW: one decoupled-weight-decay step (see kernels/cpu/adamw.go); the
// bias corrections are formed on the host in f64 exactly as there.
func (be *Backend) AdamW(kp, kg, km, kv kernels.Buffer, a kernels.AdamWArgs) {
	p, g, m, v := be.buf("AdamW", kp), be.f32("AdamW", kg), be.f32("AdamW", km), be.f32("AdamW", kv)
	if p.n != g.n || m.n != g.n || v.n != g.n {
		panic(fmt.Sprintf("cuda.AdamW: lengths p=%d g=%d m=%d v=%d differ", p.n, g.n, m.n, v.n))
	}
	defer be.enter()()
	bc1 := 1 - math.Pow(float64(a.Beta1), float64(a.Step))
	bc2 := 1 - math.Pow(float64(a.Beta2), float64(a.Step))
	stepSize := float32(float64(a.LR) / bc1)
	bc2s := float32(math.Sqrt(bc2))
	decay := 1 - a.LR*a.WeightDecay
	be.launch1D("AdamW", "adamw", g.n, p.ptr, dtArg(p), g.ptr, m.ptr, v.ptr, int64(g.n),
		a.Beta1, a.Beta2, a.Eps, decay, stepSize, bc2s)
}
