// Package kerneltest is the conformance suite every kernels.Backend runs:
// values against naive float64 references, gradients against central
// differences of those references, with tolerances per dtype.
//
//	func TestConformance(t *testing.T) { kerneltest.Run(t, mybackend.New()) }
package kerneltest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/llamatune/llamatune/kernels"
)

// Tolerances: |got − want| ≤ tol·(1 + |want|).
const (
	tolF32  = 2e-4 // f32 compute against f64 reference
	tolGrad = 2e-3 // f32 backward against f64 central differences
	// BF16 compute rounds every GEMM operand to bf16 (relative error up
	// to 2⁻⁹ ≈ 2e-3 each) and accumulates in f32; the reference keeps
	// the f32 inputs, so values carry a few such errors.
	tolBF16     = 1.5e-2
	tolGradBF16 = 4e-2
)

// computes are the GEMM precisions every GEMM-bearing op is checked in.
var computes = []kernels.DType{kernels.F32, kernels.BF16}

// tols returns the value and gradient tolerances of a compute precision.
func tols(c kernels.DType) (val, grad float64) {
	if c == kernels.BF16 {
		return tolBF16, tolGradBF16
	}
	return tolF32, tolGrad
}

// Run runs every conformance test on be.
func Run(t *testing.T, be kernels.Backend) {
	t.Run("MatMul", func(t *testing.T) { testMatMul(t, be) })
	t.Run("Embedding", func(t *testing.T) { testEmbedding(t, be) })
	t.Run("RMSNorm", func(t *testing.T) { testRMSNorm(t, be) })
	t.Run("RoPE", func(t *testing.T) { testRoPE(t, be) })
	t.Run("SwiGLU", func(t *testing.T) { testSwiGLU(t, be) })
	t.Run("Attention", func(t *testing.T) { testAttention(t, be) })
	t.Run("LinearCrossEntropy", func(t *testing.T) { testCE(t, be) })
	t.Run("CrossEntropy", func(t *testing.T) { testUnfusedCE(t, be) })
	t.Run("LinearKD", func(t *testing.T) { testKD(t, be) })
	t.Run("Elementwise", func(t *testing.T) { testElementwise(t, be) })
	t.Run("AdamW", func(t *testing.T) { testAdamW(t, be) })
}

type gen struct{ r *rand.Rand }

func newGen(seed uint64) *gen { return &gen{rand.New(rand.NewPCG(seed, 7))} }

// vec returns n values in [-scale, scale), rounded through dt so that the
// f64 reference sees exactly what the backend stores.
func (g *gen) vec(n int, scale float64, dt kernels.DType) []float64 {
	v := make([]float64, n)
	for i := range v {
		x := float32((g.r.Float64()*2 - 1) * scale)
		if dt == kernels.BF16 {
			x = kernels.BF16ToF32(kernels.F32ToBF16(x))
		}
		v[i] = float64(x)
	}
	return v
}

func f32(v []float64) []float32 {
	o := make([]float32, len(v))
	for i, x := range v {
		o[i] = float32(x)
	}
	return o
}

func upload(be kernels.Backend, dt kernels.DType, v []float64) kernels.Buffer {
	return be.FromF32(dt, f32(v))
}

func check(t *testing.T, what string, got []float32, want []float64, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	worst, at := 0.0, -1
	for i := range got {
		e := math.Abs(float64(got[i])-want[i]) / (1 + math.Abs(want[i]))
		if math.IsNaN(float64(got[i])) {
			e = math.Inf(1)
		}
		if e > worst {
			worst, at = e, i
		}
	}
	if worst > tol {
		t.Errorf("%s: worst relative error %.3g at [%d]: got %v want %v (tol %g)", what, worst, at, got[at], want[at], tol)
	}
}

func testMatMul(t *testing.T, be kernels.Backend) {
	g := newGen(1)
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		for _, comp := range computes {
			for _, ta := range []bool{false, true} {
				for _, tb := range []bool{false, true} {
					m, n, k, batch := 7, 13, 19, 3
					a := g.vec(batch*m*k, 1, dt)
					b := g.vec(n*k, 1, dt) // broadcast over the batch (stride 0)
					c0 := g.vec(batch*m*n, 1, kernels.F32)
					cb := upload(be, kernels.F32, c0)
					be.MatMul(upload(be, dt, a), upload(be, dt, b), cb, kernels.MatMulArgs{
						TransA: ta, TransB: tb, M: m, N: n, K: k, Batch: batch,
						StrideA: m * k, StrideB: 0, StrideC: m * n, Alpha: 0.5, Beta: 1, Compute: comp})
					want := make([]float64, 0, batch*m*n)
					for i := 0; i < batch; i++ {
						ref := refMatMul(ta, tb, m, n, k, a[i*m*k:(i+1)*m*k], b)
						for j, x := range ref {
							want = append(want, 0.5*x+c0[i*m*n+j])
						}
					}
					tol, _ := tols(comp)
					check(t, fmt.Sprintf("%v compute %v transA=%v transB=%v", dt, comp, ta, tb), be.ToF32(cb), want, tol)
				}
			}
		}
	}
}

func testEmbedding(t *testing.T, be kernels.Backend) {
	g := newGen(2)
	vocab, dim := 11, 6
	ids := []int32{3, 0, 10, 3, 3, 7}
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		w := g.vec(vocab*dim, 1, dt)
		out := be.Alloc(kernels.F32, len(ids)*dim)
		be.Embedding(upload(be, dt, w), ids, out, dim)
		check(t, "embedding "+dt.String(), be.ToF32(out), refEmbedding(w, ids, dim), 0)
	}
	w := g.vec(vocab*dim, 1, kernels.F32)
	c := g.vec(len(ids)*dim, 1, kernels.F32)
	dw := be.Alloc(kernels.F32, vocab*dim)
	be.EmbeddingBackward(upload(be, kernels.F32, c), ids, dw, dim)
	num := numGrad(w, func() float64 { return dot64(c, refEmbedding(w, ids, dim)) })
	check(t, "embedding dw", be.ToF32(dw), num, tolGrad)
}

func testRMSNorm(t *testing.T, be kernels.Backend) {
	g := newGen(3)
	rows, dim, eps := 5, 24, 1e-5
	x := g.vec(rows*dim, 2, kernels.F32)
	w := g.vec(dim, 1, kernels.F32)
	out, rstd := be.Alloc(kernels.F32, rows*dim), be.Alloc(kernels.F32, rows)
	be.RMSNorm(upload(be, kernels.F32, x), upload(be, kernels.F32, w), out, rstd, rows, dim, float32(eps))
	check(t, "rmsnorm", be.ToF32(out), refRMSNorm(x, w, rows, dim, eps), tolF32)

	c := g.vec(rows*dim, 1, kernels.F32)
	dx, dw := be.Alloc(kernels.F32, rows*dim), be.Alloc(kernels.F32, dim)
	be.RMSNormBackward(upload(be, kernels.F32, c), upload(be, kernels.F32, x), upload(be, kernels.F32, w), rstd, dx, dw, rows, dim)
	loss := func() float64 { return dot64(c, refRMSNorm(x, w, rows, dim, eps)) }
	check(t, "rmsnorm dx", be.ToF32(dx), numGrad(x, loss), tolGrad)
	check(t, "rmsnorm dw", be.ToF32(dw), numGrad(w, loss), tolGrad)
}

func testRoPE(t *testing.T, be kernels.Backend) {
	g := newGen(4)
	tokens, heads, hd := 6, 3, 8
	pos := []int32{0, 1, 2, 0, 1, 9}
	inv := make([]float64, hd/2)
	for i := range inv {
		inv[i] = math.Pow(10000, -float64(2*i)/float64(hd))
	}
	x := g.vec(tokens*heads*hd, 1, kernels.F32)
	out := be.Alloc(kernels.F32, len(x))
	be.RoPE(upload(be, kernels.F32, x), out, pos, tokens, heads, hd, f32(inv), false)
	check(t, "rope", be.ToF32(out), refRoPE(x, pos, tokens, heads, hd, inv), tolF32)

	c := g.vec(len(x), 1, kernels.F32)
	dx := be.Alloc(kernels.F32, len(x))
	be.RoPE(upload(be, kernels.F32, c), dx, pos, tokens, heads, hd, f32(inv), true)
	num := numGrad(x, func() float64 { return dot64(c, refRoPE(x, pos, tokens, heads, hd, inv)) })
	check(t, "rope inverse = VJP", be.ToF32(dx), num, tolGrad)
}

func testSwiGLU(t *testing.T, be kernels.Backend) {
	g := newGen(5)
	n := 1300 // more than one widening run of a bf16 input
	for _, dt := range activationDTypes(be) {
		gt, up := g.vec(n, 4, dt), g.vec(n, 2, dt)
		out := be.Alloc(kernels.F32, n)
		be.SwiGLU(upload(be, dt, gt), upload(be, dt, up), out, n)
		check(t, fmt.Sprintf("swiglu %v", dt), be.ToF32(out), refSwiGLU(gt, up), tolF32)

		c := g.vec(n, 1, kernels.F32)
		dg, du := be.Alloc(kernels.F32, n), be.Alloc(kernels.F32, n)
		be.SwiGLUBackward(upload(be, kernels.F32, c), upload(be, dt, gt), upload(be, dt, up), dg, du, n)
		loss := func() float64 { return dot64(c, refSwiGLU(gt, up)) }
		check(t, fmt.Sprintf("swiglu %v dgate", dt), be.ToF32(dg), numGrad(gt, loss), tolGrad)
		check(t, fmt.Sprintf("swiglu %v dup", dt), be.ToF32(du), numGrad(up, loss), tolGrad)
	}
}

// activationDTypes are the storage dtypes of activations be's ops read:
// F32, and BF16 too when be implements kernels.BF16Activations. The
// reference gets the same (rounded) values, so a bf16 input changes the
// tolerance of nothing: only reading it is checked.
func activationDTypes(be kernels.Backend) []kernels.DType {
	if kernels.ReadsBF16Activations(be) {
		return []kernels.DType{kernels.F32, kernels.BF16}
	}
	return []kernels.DType{kernels.F32}
}

func testAttention(t *testing.T, be kernels.Backend) {
	cases := []attnCase{
		{"causal MHA", 1, 7, 7, 2, 2, 8, 0, false},
		{"GQA packed documents", 2, 9, 9, 4, 2, 8, 0, true},
		{"MQA", 1, 5, 5, 3, 1, 4, 0, false},
		{"decode with KV cache", 2, 3, 8, 4, 2, 8, 5, false},
	}
	g := newGen(6)
	for _, comp := range computes {
		for _, act := range activationDTypes(be) {
			for _, tc := range cases {
				testAttentionCase(t, be, g, comp, act, tc)
			}
		}
	}
}

// attnCase is one attention shape of the conformance suite.
type attnCase struct {
	name                       string
	B, Tq, Tk, H, KV, hd, qoff int
	docs                       bool
}

// testAttentionCase checks one attention shape in compute comp with q, k, v
// and, in backward, out stored as act (the output itself is written F32;
// backward reads it as the model stores it).
func testAttentionCase(t *testing.T, be kernels.Backend, g *gen, comp, act kernels.DType, tc attnCase) {
	tolV, tolG := tols(comp)
	q := g.vec(tc.B*tc.Tq*tc.H*tc.hd, 1.5, act)
	k := g.vec(tc.B*tc.Tk*tc.KV*tc.hd, 1.5, act)
	v := g.vec(tc.B*tc.Tk*tc.KV*tc.hd, 1, act)
	var docs []int32
	if tc.docs {
		// row 0: documents [0,3) [3,4) [4,9); row 1: [0,6) [6,9)
		docs = []int32{0, 0, 0, 3, 4, 4, 4, 4, 4, 0, 0, 0, 0, 0, 0, 6, 6, 6}
	}
	scale := 1 / math.Sqrt(float64(tc.hd))
	args := kernels.AttnArgs{Batch: tc.B, Tq: tc.Tq, Tk: tc.Tk, Heads: tc.H, KVHeads: tc.KV, HeadDim: tc.hd,
		QOffset: tc.qoff, Scale: float32(scale), DocStart: docs, Compute: comp}
	qb, kb, vb := upload(be, act, q), upload(be, act, k), upload(be, act, v)
	out, lse := be.Alloc(kernels.F32, len(q)), be.Alloc(kernels.F32, tc.B*tc.H*tc.Tq)
	be.Attention(qb, kb, vb, out, lse, args)
	ref := func() []float64 {
		return refAttention(q, k, v, tc.B, tc.Tq, tc.Tk, tc.H, tc.KV, tc.hd, tc.qoff, scale, docs)
	}
	name := fmt.Sprintf("%s compute %v activations %v", tc.name, comp, act)
	check(t, name+" out", be.ToF32(out), ref(), tolV)
	stored := out
	if act != kernels.F32 {
		stored = be.Alloc(act, len(q))
		be.Copy(stored, out)
	}

	c := g.vec(len(q), 1, kernels.F32)
	dq, dk, dv := be.Alloc(kernels.F32, len(q)), be.Alloc(kernels.F32, len(k)), be.Alloc(kernels.F32, len(v))
	be.AttentionBackward(qb, kb, vb, stored, lse, upload(be, kernels.F32, c), dq, dk, dv, args)
	loss := func() float64 { return dot64(c, ref()) }
	check(t, name+" dq", be.ToF32(dq), numGrad(q, loss), tolG)
	check(t, name+" dk", be.ToF32(dk), numGrad(k, loss), tolG)
	check(t, name+" dv", be.ToF32(dv), numGrad(v, loss), tolG)
}

func testCE(t *testing.T, be kernels.Backend) {
	g := newGen(8)
	T, H, V, R := 11, 8, 37, 3
	labels := []int32{3, -100, 36, 0, 5, -100, -100, 12, 12, 1, 30}
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		for _, comp := range computes {
			tolV, tolG := tols(comp)
			for _, chunk := range []int{4, 1024} {
				for _, rank := range []int{0, R} {
					h := g.vec(T*H, 1, kernels.F32)
					w := g.vec(V*H, 1, dt)
					hr, wr := g.vec(T*R, 1, kernels.F32), g.vec(V*R, 1, kernels.F32)
					bufs := kernels.CEBuffers{H: upload(be, kernels.F32, h), W: upload(be, dt, w),
						DH: be.Alloc(kernels.F32, T*H), DW: be.Alloc(kernels.F32, V*H)}
					if rank > 0 {
						bufs.HR, bufs.WR = upload(be, kernels.F32, hr), upload(be, kernels.F32, wr)
						bufs.DHR, bufs.DWR = be.Alloc(kernels.F32, T*R), be.Alloc(kernels.F32, V*R)
					}
					scale := float32(0.5)
					sum, n := be.LinearCrossEntropy(bufs, labels,
						kernels.CEArgs{Tokens: T, Hidden: H, Vocab: V, Rank: rank, Chunk: chunk, GradScale: scale, Compute: comp})
					// The low-rank term is the same as concatenating [h | hr] and [W | WR].
					ref := func() float64 {
						if rank == 0 {
							s, _ := refCrossEntropy(h, w, labels, T, H, V)
							return s
						}
						s, _ := refCrossEntropy(catCols(h, hr, T, H, R), catCols(w, wr, V, H, R), labels, T, H+R, V)
						return s
					}
					name := fmt.Sprintf("%v compute %v chunk=%d rank=%d", dt, comp, chunk, rank)
					_, wantN := refCrossEntropy(h, w, labels, T, H, V)
					if n != wantN {
						t.Errorf("%s: counted %d tokens, want %d", name, n, wantN)
					}
					check(t, name+" loss", []float32{float32(sum)}, []float64{ref()}, tolV)
					loss := func() float64 { return float64(scale) * ref() }
					check(t, name+" dh", be.ToF32(bufs.DH), numGrad(h, loss), tolG)
					check(t, name+" dw", be.ToF32(bufs.DW), numGrad(w, loss), tolG)
					if rank > 0 {
						check(t, name+" dhr", be.ToF32(bufs.DHR), numGrad(hr, loss), tolG)
						check(t, name+" dwr", be.ToF32(bufs.DWR), numGrad(wr, loss), tolG)
					}
				}
			}
		}
	}
}

// testUnfusedCE checks CrossEntropy over given logits: the loss against the
// reference with W = identity, dlogits against central differences.
func testUnfusedCE(t *testing.T, be kernels.Backend) {
	g := newGen(12)
	T, V := 9, 29
	labels := []int32{3, -100, 28, 0, 5, -100, 12, 12, 1}
	eye := make([]float64, V*V)
	for i := 0; i < V; i++ {
		eye[i*V+i] = 1
	}
	z := g.vec(T*V, 3, kernels.F32)
	d := be.Alloc(kernels.F32, T*V)
	sum, n := be.CrossEntropy(upload(be, kernels.F32, z), d, labels, T, V, 0.25)
	want, wantN := refCrossEntropy(z, eye, labels, T, V, V)
	if n != wantN {
		t.Errorf("counted %d rows, want %d", n, wantN)
	}
	check(t, "unfused ce loss", []float32{float32(sum)}, []float64{want}, tolF32)
	loss := func() float64 { s, _ := refCrossEntropy(z, eye, labels, T, V, V); return 0.25 * s }
	check(t, "unfused ce dlogits", be.ToF32(d), numGrad(z, loss), tolGrad)
}

// catCols joins a [rows, p] and b [rows, q] into [rows, p+q].
func catCols(a, b []float64, rows, p, q int) []float64 {
	out := make([]float64, 0, rows*(p+q))
	for r := 0; r < rows; r++ {
		out = append(append(out, a[r*p:(r+1)*p]...), b[r*q:(r+1)*q]...)
	}
	return out
}

func testElementwise(t *testing.T, be kernels.Backend) {
	g := newGen(9)
	n := 100
	a, b := g.vec(n, 1, kernels.F32), g.vec(n, 1, kernels.F32)
	out := be.Alloc(kernels.F32, n)
	be.Add(upload(be, kernels.F32, a), upload(be, kernels.F32, b), out)
	want := make([]float64, n)
	var ss float64
	for i := range want {
		want[i] = a[i] + b[i]
		ss += a[i] * a[i]
	}
	check(t, "add", be.ToF32(out), want, tolF32)
	be.AddScaled(out, upload(be, kernels.F32, b), -1)
	check(t, "addscaled", be.ToF32(out), a, tolF32)
	be.Scale(out, 2)
	for i := range want {
		want[i] = 2 * a[i]
	}
	check(t, "scale", be.ToF32(out), want, tolF32)
	be.Mul(out, upload(be, kernels.F32, b))
	for i := range want {
		want[i] *= b[i]
	}
	check(t, "mul", be.ToF32(out), want, tolF32)
}

func testAdamW(t *testing.T, be kernels.Backend) {
	g := newGen(10)
	n := 64
	p := g.vec(n, 1, kernels.F32)
	pb := upload(be, kernels.F32, p)
	mb, vb := be.Alloc(kernels.F32, n), be.Alloc(kernels.F32, n)
	m, v := make([]float64, n), make([]float64, n)
	args := kernels.AdamWArgs{LR: 1e-2, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.1}
	for step := 1; step <= 3; step++ {
		grad := g.vec(n, 1, kernels.F32)
		args.Step = step
		be.AdamW(pb, upload(be, kernels.F32, grad), mb, vb, args)
		b1, b2, lr := 0.9, 0.999, 1e-2
		for i := range p {
			p[i] *= 1 - lr*0.1
			m[i] = b1*m[i] + (1-b1)*grad[i]
			v[i] = b2*v[i] + (1-b2)*grad[i]*grad[i]
			mh := m[i] / (1 - math.Pow(b1, float64(step)))
			vh := v[i] / (1 - math.Pow(b2, float64(step)))
			p[i] -= lr * mh / (math.Sqrt(vh) + 1e-8)
		}
	}
	check(t, "adamw params", be.ToF32(pb), p, tolF32)
	check(t, "adamw m", be.ToF32(mb), m, tolF32)
	check(t, "adamw v", be.ToF32(vb), v, tolF32)
}
