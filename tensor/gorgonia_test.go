package tensor_test

// Gradients of the tape ops against an independent oracle: gorgonia (float64,
// symbolic differentiation). Every test builds the same function twice — once
// with our tape on the CPU backend (f32), once as a gorgonia graph made only of
// generic ops (matmul, elementwise, exp/log/sigmoid/sqrt, sum) — and compares
// the loss and the gradient of every trainable input.
//
// Everything on the gorgonia side is a 2-D matrix. Broadcasts, row sums, row
// and column selections are written as products with constant matrices (ones
// vectors, 0/1 selectors), masks as 0/1 matrices multiplied after exp, so the
// oracle leans on nothing but gorgonia's matmul and elementwise VJPs.

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	G "gorgonia.org/gorgonia"
	gt "gorgonia.org/tensor"

	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/tensor"
)

// ---------------------------------------------------------------------------
// Shared helpers

func randVals(r *rand.Rand, n int, scale float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = (r.Float32()*2 - 1) * scale
	}
	return v
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)) }

// checkClose asserts |ours − oracle| ≤ 1e-3·(1+|oracle|) elementwise.
func checkClose(t *testing.T, name string, ours []float32, oracle []float64) {
	t.Helper()
	if ours == nil {
		t.Errorf("%s: ours is nil (no gradient), oracle has %d values", name, len(oracle))
		return
	}
	if len(ours) != len(oracle) {
		t.Errorf("%s: %d values, oracle %d", name, len(ours), len(oracle))
		return
	}
	worst, at := 0.0, -1
	bad := 0
	for i := range ours {
		d := math.Abs(float64(ours[i]) - oracle[i])
		tol := 1e-3 * (1 + math.Abs(oracle[i]))
		if d > tol || math.IsNaN(float64(ours[i])) {
			bad++
		}
		if r := d / tol; r > worst || math.IsNaN(d) {
			worst, at = r, i
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d/%d values out of tolerance; worst at %d: ours %.7g oracle %.7g",
			name, bad, len(ours), at, ours[at], oracle[at])
	}
}

func checkScalar(t *testing.T, name string, ours float32, oracle float64) {
	t.Helper()
	checkClose(t, name, []float32{ours}, []float64{oracle})
}

// ours: a trainable or frozen F32 leaf.
func param(be kernels.Backend, v []float32, shape ...int) *tensor.Tensor {
	return tensor.FromF32(be, kernels.F32, v, shape...).SetRequiresGrad(true)
}

func frozen(be kernels.Backend, v []float32, shape ...int) *tensor.Tensor {
	return tensor.FromF32(be, kernels.F32, v, shape...)
}

// dotLoss is sum(y ⊙ C) as a [1,1] tensor on our tape: Reshape y to a row and
// take Linear with the frozen row C.
func dotLoss(tp *tensor.Tape, y *tensor.Tensor, c []float32) *tensor.Tensor {
	row := tp.Reshape(y, 1, y.Numel())
	return tp.Linear(row, frozen(tp.Backend(), c, 1, len(c)))
}

// ---------------------------------------------------------------------------
// The gorgonia side

type oracle struct {
	t *testing.T
	g *G.ExprGraph
	n int
}

func newOracle(t *testing.T) *oracle { return &oracle{t: t, g: G.NewGraph()} }

func (o *oracle) must(n *G.Node, err error) *G.Node {
	o.t.Helper()
	if err != nil {
		o.t.Fatalf("gorgonia: %v", err)
	}
	return n
}

func (o *oracle) mat64(v []float64, r, c int) *G.Node {
	if len(v) != r*c {
		o.t.Fatalf("oracle.mat: %d values for [%d,%d]", len(v), r, c)
	}
	o.n++
	back := append([]float64(nil), v...)
	return G.NewMatrix(o.g, gt.Float64, G.WithShape(r, c), G.WithName(fmt.Sprintf("m%d", o.n)),
		G.WithValue(gt.New(gt.WithShape(r, c), gt.WithBacking(back))))
}

func (o *oracle) mat(v []float32, r, c int) *G.Node {
	f := make([]float64, len(v))
	for i, x := range v {
		f[i] = float64(x)
	}
	return o.mat64(f, r, c)
}

func (o *oracle) fill(r, c int, val float64) *G.Node {
	v := make([]float64, r*c)
	for i := range v {
		v[i] = val
	}
	return o.mat64(v, r, c)
}

func (o *oracle) dims(x *G.Node) (int, int) {
	s := x.Shape()
	if len(s) != 2 {
		o.t.Fatalf("oracle: node of shape %v, want a matrix", s)
	}
	return s[0], s[1]
}

func (o *oracle) mm(a, b *G.Node) *G.Node  { return o.must(G.Mul(a, b)) }
func (o *oracle) had(a, b *G.Node) *G.Node { return o.must(G.HadamardProd(a, b)) }
func (o *oracle) add(a, b *G.Node) *G.Node { return o.must(G.Add(a, b)) }
func (o *oracle) sub(a, b *G.Node) *G.Node { return o.must(G.Sub(a, b)) }
func (o *oracle) tr(a *G.Node) *G.Node     { return o.must(G.Transpose(a)) }

// linear: x·Wᵀ.
func (o *oracle) linear(x, w *G.Node) *G.Node { return o.mm(x, o.tr(w)) }

// scale: s·x (as a product with a constant matrix).
func (o *oracle) scale(x *G.Node, s float64) *G.Node {
	r, c := o.dims(x)
	return o.had(x, o.fill(r, c, s))
}

// rowSum: [n,c] → [n,1].
func (o *oracle) rowSum(x *G.Node) *G.Node {
	_, c := o.dims(x)
	return o.mm(x, o.fill(c, 1, 1))
}

// bcol: [n,1] → [n,c] (copy along columns).
func (o *oracle) bcol(v *G.Node, c int) *G.Node { return o.mm(v, o.fill(1, c, 1)) }

// brow: [1,c] → [n,c] (copy along rows).
func (o *oracle) brow(v *G.Node, n int) *G.Node { return o.mm(o.fill(n, 1, 1), v) }

// dot: sum(y ⊙ C).
func (o *oracle) dot(y *G.Node, c []float32) *G.Node {
	r, cc := o.dims(y)
	return o.must(G.Sum(o.had(y, o.mat(c, r, cc))))
}

// sel: the 0/1 matrix [n, total] picking rows [start, start+n) (left-multiply
// selects rows; its transpose right-multiplied selects columns).
func (o *oracle) sel(start, n, total int) *G.Node {
	v := make([]float64, n*total)
	for i := 0; i < n; i++ {
		v[i*total+start+i] = 1
	}
	return o.mat64(v, n, total)
}

func (o *oracle) embedding(w *G.Node, ids []int32) *G.Node {
	vocab, _ := o.dims(w)
	oh := make([]float64, len(ids)*vocab)
	for t, id := range ids {
		oh[t*vocab+int(id)] = 1
	}
	return o.mm(o.mat64(oh, len(ids), vocab), w)
}

// rmsnorm: x [N,D], w [1,D].
func (o *oracle) rmsnorm(x, w *G.Node, eps float32) *G.Node {
	n, d := o.dims(x)
	ms := o.mm(o.must(G.Square(x)), o.fill(d, 1, 1/float64(d)))
	r := o.must(G.Inverse(o.must(G.Sqrt(o.add(ms, o.fill(n, 1, float64(eps)))))))
	return o.had(o.had(x, o.bcol(r, d)), o.brow(w, n))
}

// rope (HF rotate-half): x·cos + rotate_half(x)·sin, rotate_half as a signed
// permutation matrix, block-diagonal over heads.
func (o *oracle) rope(x *G.Node, pos []int32, heads, hd int, invFreq []float32) *G.Node {
	T, W := o.dims(x)
	half := hd / 2
	cosv, sinv := make([]float64, T*W), make([]float64, T*W)
	for t := 0; t < T; t++ {
		for h := 0; h < heads; h++ {
			for d := 0; d < hd; d++ {
				th := float64(pos[t]) * float64(invFreq[d%half])
				cosv[t*W+h*hd+d] = math.Cos(th)
				sinv[t*W+h*hd+d] = math.Sin(th)
			}
		}
	}
	rot := make([]float64, W*W) // (x·R)[j] = Σ_i x[i] R[i,j]
	for h := 0; h < heads; h++ {
		b := h * hd
		for d := 0; d < half; d++ {
			rot[(b+d+half)*W+b+d] = -1 // out[d] = −x[d+half]
			rot[(b+d)*W+b+d+half] = 1  // out[d+half] = x[d]
		}
	}
	return o.add(o.had(x, o.mat64(cosv, T, W)), o.had(o.mm(x, o.mat64(rot, W, W)), o.mat64(sinv, T, W)))
}

func (o *oracle) swiglu(g, u *G.Node) *G.Node {
	return o.had(o.had(g, o.must(G.Sigmoid(g))), u)
}

// attnMask is the 0/1 [Tq,Tk] matrix of allowed (query, key) pairs of batch
// row b, written from the AttnArgs contract, not from KeyRange.
func attnMask(a kernels.AttnArgs, b int) []float64 {
	m := make([]float64, a.Tq*a.Tk)
	for i := 0; i < a.Tq; i++ {
		p := a.QOffset + i
		for j := 0; j < a.Tk; j++ {
			ok := j <= p
			if a.DocStart != nil {
				ok = ok && int(a.DocStart[b*a.Tk+p]) <= j
			}
			if ok {
				m[i*a.Tk+j] = 1
			}
		}
	}
	return m
}

// attention: softmax(Scale·QKᵀ) over the allowed keys, per (batch row, head),
// head h reading kv head h/(Heads/KVHeads). The mask multiplies exp(s), so a
// masked key contributes exactly nothing to either the value or the gradient.
func (o *oracle) attention(q, k, v *G.Node, a kernels.AttnArgs) *G.Node {
	group := a.Heads / a.KVHeads
	hd := a.HeadDim
	var out *G.Node
	for b := 0; b < a.Batch; b++ {
		rq := o.sel(b*a.Tq, a.Tq, a.Batch*a.Tq)
		rk := o.sel(b*a.Tk, a.Tk, a.Batch*a.Tk)
		mask := o.mat64(attnMask(a, b), a.Tq, a.Tk)
		for h := 0; h < a.Heads; h++ {
			kh := h / group
			cq := o.tr(o.sel(h*hd, hd, a.Heads*hd))
			ck := o.tr(o.sel(kh*hd, hd, a.KVHeads*hd))
			qb := o.mm(o.mm(rq, q), cq)
			kb := o.mm(o.mm(rk, k), ck)
			vb := o.mm(o.mm(rk, v), ck)
			s := o.scale(o.mm(qb, o.tr(kb)), float64(a.Scale))
			e := o.had(o.must(G.Exp(s)), mask)
			p := o.had(e, o.bcol(o.must(G.Inverse(o.rowSum(e))), a.Tk))
			ob := o.mm(p, vb) // [Tq, hd]
			// place back: rows of batch b, columns of head h
			placed := o.mm(o.mm(o.tr(rq), ob), o.tr(cq))
			if out == nil {
				out = placed
			} else {
				out = o.add(out, placed)
			}
		}
	}
	return out
}

// crossEntropy: −Σ_t onehot ⊙ logsoftmax(h·Wᵀ) / normalizer over the counted
// tokens (normalizer ≤ 0: their count).
func (o *oracle) crossEntropy(h, w *G.Node, labels []int32, normalizer float64) *G.Node {
	T, _ := o.dims(h)
	V, _ := o.dims(w)
	count := 0
	for _, l := range labels {
		if l != kernels.IgnoreIndex {
			count++
		}
	}
	if normalizer <= 0 {
		normalizer = float64(max(count, 1))
	}
	oh := make([]float64, T*V)
	for t, l := range labels {
		if l != kernels.IgnoreIndex {
			oh[t*V+int(l)] = -1 / normalizer
		}
	}
	z := o.linear(h, w)
	lse := o.must(G.Log(o.rowSum(o.must(G.Exp(z)))))
	logp := o.sub(z, o.bcol(lse, V))
	return o.must(G.Sum(o.had(logp, o.mat64(oh, T, V))))
}

// run differentiates cost with respect to wrt and evaluates the graph; it
// returns the cost and one flat gradient per wrt node.
func (o *oracle) run(cost *G.Node, wrt ...*G.Node) (float64, [][]float64) {
	o.t.Helper()
	grads, err := G.Grad(cost, wrt...)
	if err != nil {
		o.t.Fatalf("gorgonia.Grad: %v", err)
	}
	vm := G.NewTapeMachine(o.g)
	defer vm.Close()
	if err := vm.RunAll(); err != nil {
		o.t.Fatalf("gorgonia run: %v", err)
	}
	out := make([][]float64, len(grads))
	for i, g := range grads {
		out[i] = append([]float64(nil), flat64(o.t, g.Value())...)
	}
	return scalar64(o.t, cost.Value()), out
}

func (o *oracle) values(n *G.Node) []float64 { return flat64(o.t, n.Value()) }

func flat64(t *testing.T, v G.Value) []float64 {
	t.Helper()
	switch d := v.Data().(type) {
	case []float64:
		return append([]float64(nil), d...)
	case float64:
		return []float64{d}
	}
	t.Fatalf("gorgonia value of type %T", v.Data())
	return nil
}

func scalar64(t *testing.T, v G.Value) float64 {
	t.Helper()
	f := flat64(t, v)
	if len(f) != 1 {
		t.Fatalf("gorgonia cost has %d values", len(f))
	}
	return f[0]
}

// ---------------------------------------------------------------------------
// Per-op tests

func TestGorgoniaLinear(t *testing.T) {
	r := newRand(1)
	const N, In, Out = 5, 7, 3
	xv, wv, cv := randVals(r, N*In, 1), randVals(r, Out*In, 1), randVals(r, N*Out, 1)

	be := cpu.New()
	tp := tensor.NewTape(be)
	x, w := param(be, xv, N, In), param(be, wv, Out, In)
	loss := dotLoss(tp, tp.Linear(x, w), cv)
	tp.Backward(loss)

	o := newOracle(t)
	gx, gw := o.mat(xv, N, In), o.mat(wv, Out, In)
	cost, grads := o.run(o.dot(o.linear(gx, gw), cv), gx, gw)

	checkScalar(t, "loss", loss.Item(), cost)
	checkClose(t, "dx", x.GradF32(), grads[0])
	checkClose(t, "dW", w.GradF32(), grads[1])
	tp.Release()
}

func TestGorgoniaLinearFrozenWeight(t *testing.T) {
	r := newRand(2)
	const N, In, Out = 4, 6, 5
	xv, wv, cv := randVals(r, N*In, 1), randVals(r, Out*In, 1), randVals(r, N*Out, 1)

	be := cpu.New()
	tp := tensor.NewTape(be)
	x, w := param(be, xv, N, In), frozen(be, wv, Out, In)
	loss := dotLoss(tp, tp.Linear(x, w), cv)
	tp.Backward(loss)
	if w.Grad != nil {
		t.Errorf("frozen W got a gradient buffer")
	}
	if w.RequiresGrad() {
		t.Errorf("frozen W requires grad")
	}

	o := newOracle(t)
	gx, gw := o.mat(xv, N, In), o.mat(wv, Out, In)
	_, grads := o.run(o.dot(o.linear(gx, gw), cv), gx)
	checkClose(t, "dx", x.GradF32(), grads[0])
	tp.Release()

	// The same with a frozen x and trainable W: x never gets a gradient.
	tp = tensor.NewTape(be)
	x2, w2 := frozen(be, xv, N, In), param(be, wv, Out, In)
	tp.Backward(dotLoss(tp, tp.Linear(x2, w2), cv))
	if x2.Grad != nil {
		t.Errorf("frozen x got a gradient buffer")
	}
	o = newOracle(t)
	gx, gw = o.mat(xv, N, In), o.mat(wv, Out, In)
	_, grads = o.run(o.dot(o.linear(gx, gw), cv), gw)
	checkClose(t, "dW", w2.GradF32(), grads[0])
	tp.Release()
}

func TestGorgoniaEmbedding(t *testing.T) {
	r := newRand(3)
	const V, D = 6, 5
	ids := []int32{2, 0, 2, 5, 2, 0, 1}
	wv, cv := randVals(r, V*D, 1), randVals(r, len(ids)*D, 1)

	be := cpu.New()
	tp := tensor.NewTape(be)
	w := param(be, wv, V, D)
	y := tp.Embedding(w, ids)
	loss := dotLoss(tp, y, cv)
	tp.Backward(loss)

	o := newOracle(t)
	gw := o.mat(wv, V, D)
	gy := o.embedding(gw, ids)
	cost, grads := o.run(o.dot(gy, cv), gw)
	checkClose(t, "out", y.F32(), o.values(gy))
	checkScalar(t, "loss", loss.Item(), cost)
	checkClose(t, "dW", w.GradF32(), grads[0])
	// Row 3 and 4 are never looked up: exactly zero.
	g := w.GradF32()
	for _, row := range []int{3, 4} {
		for j := 0; j < D; j++ {
			if g[row*D+j] != 0 {
				t.Errorf("dW[%d,%d] = %g, want 0 (id never used)", row, j, g[row*D+j])
			}
		}
	}
	tp.Release()
}

func TestGorgoniaRMSNorm(t *testing.T) {
	r := newRand(4)
	const N, D = 5, 8
	const eps = 1e-5
	xv, wv, cv := randVals(r, N*D, 2), randVals(r, D, 1), randVals(r, N*D, 1)
	for i := range wv {
		wv[i] += 1
	}

	be := cpu.New()
	tp := tensor.NewTape(be)
	x, w := param(be, xv, N, D), param(be, wv, D)
	y := tp.RMSNorm(x, w, eps)
	loss := dotLoss(tp, y, cv)
	tp.Backward(loss)

	o := newOracle(t)
	gx, gw := o.mat(xv, N, D), o.mat(wv, 1, D)
	gy := o.rmsnorm(gx, gw, eps)
	cost, grads := o.run(o.dot(gy, cv), gx, gw)
	checkClose(t, "out", y.F32(), o.values(gy))
	checkScalar(t, "loss", loss.Item(), cost)
	checkClose(t, "dx", x.GradF32(), grads[0])
	checkClose(t, "dw", w.GradF32(), grads[1])
	tp.Release()
}

func ropeFreqs(hd int, theta float64) []float32 {
	f := make([]float32, hd/2)
	for i := range f {
		f[i] = float32(1 / math.Pow(theta, float64(2*i)/float64(hd)))
	}
	return f
}

func TestGorgoniaRoPE(t *testing.T) {
	r := newRand(5)
	const heads, hd = 3, 8
	pos := []int32{0, 1, 2, 0, 1, 7, 3}
	T := len(pos)
	invFreq := ropeFreqs(hd, 10000)
	xv, cv := randVals(r, T*heads*hd, 1), randVals(r, T*heads*hd, 1)

	be := cpu.New()
	tp := tensor.NewTape(be)
	x := param(be, xv, T, heads*hd)
	y := tp.RoPE(x, pos, heads, hd, invFreq)
	loss := dotLoss(tp, y, cv)
	tp.Backward(loss)

	o := newOracle(t)
	gx := o.mat(xv, T, heads*hd)
	gy := o.rope(gx, pos, heads, hd, invFreq)
	cost, grads := o.run(o.dot(gy, cv), gx)
	checkClose(t, "out", y.F32(), o.values(gy))
	checkScalar(t, "loss", loss.Item(), cost)
	checkClose(t, "dx", x.GradF32(), grads[0])

	// Position restarts: tokens 0 and 3 share position 0, so RoPE is the identity there.
	yv := y.F32()
	for j := 0; j < heads*hd; j++ {
		for _, tok := range []int{0, 3} {
			if yv[tok*heads*hd+j] != xv[tok*heads*hd+j] {
				t.Fatalf("RoPE at position 0 changed token %d col %d: %g → %g", tok, j, xv[tok*heads*hd+j], yv[tok*heads*hd+j])
			}
		}
	}
	tp.Release()
}

func TestGorgoniaSwiGLU(t *testing.T) {
	r := newRand(6)
	const N, D = 4, 9
	gv, uv, cv := randVals(r, N*D, 3), randVals(r, N*D, 2), randVals(r, N*D, 1)

	be := cpu.New()
	tp := tensor.NewTape(be)
	g, u := param(be, gv, N, D), param(be, uv, N, D)
	y := tp.SwiGLU(g, u)
	loss := dotLoss(tp, y, cv)
	tp.Backward(loss)

	o := newOracle(t)
	gg, gu := o.mat(gv, N, D), o.mat(uv, N, D)
	gy := o.swiglu(gg, gu)
	cost, grads := o.run(o.dot(gy, cv), gg, gu)
	checkClose(t, "out", y.F32(), o.values(gy))
	checkScalar(t, "loss", loss.Item(), cost)
	checkClose(t, "dgate", g.GradF32(), grads[0])
	checkClose(t, "dup", u.GradF32(), grads[1])
	tp.Release()
}

// Add, Scale and Reshape chained, with a tensor used twice (its gradient must
// be the sum of both uses) and a reshape that changes the matrix layout.
func TestGorgoniaAddScaleReshape(t *testing.T) {
	r := newRand(7)
	const N, D, Out = 4, 6, 5
	av, bv, wv := randVals(r, N*D, 1), randVals(r, N*D, 1), randVals(r, Out*N, 1)
	cv := randVals(r, D*Out, 1)

	be := cpu.New()
	tp := tensor.NewTape(be)
	a, b, w := param(be, av, N, D), param(be, bv, N, D), param(be, wv, Out, N)
	// y = 0.7·(a+b) + a ; z = reshape(y, [D,N]) ; u = z·Wᵀ ; v = −1.5·u
	y := tp.Add(tp.Scale(tp.Add(a, b), 0.7), a)
	z := tp.Reshape(y, D, N)
	v := tp.Scale(tp.Linear(z, w), -1.5)
	loss := dotLoss(tp, v, cv)
	tp.Backward(loss)

	o := newOracle(t)
	ga, gb, gw := o.mat(av, N, D), o.mat(bv, N, D), o.mat(wv, Out, N)
	gy := o.add(o.scale(o.add(ga, gb), 0.7), ga)
	gz := o.must(G.Reshape(gy, gt.Shape{D, N}))
	gv := o.scale(o.linear(gz, gw), -1.5)
	cost, grads := o.run(o.dot(gv, cv), ga, gb, gw)
	checkClose(t, "out", v.F32(), o.values(gv))
	checkScalar(t, "loss", loss.Item(), cost)
	checkClose(t, "da", a.GradF32(), grads[0])
	checkClose(t, "db", b.GradF32(), grads[1])
	checkClose(t, "dW", w.GradF32(), grads[2])
	tp.Release()
}

// ---------------------------------------------------------------------------
// Attention

type attnCase struct {
	name   string
	args   kernels.AttnArgs
	freeze string // "", "q", "k" or "v": that input is frozen
}

func runAttnCase(t *testing.T, c attnCase, seed uint64) {
	a := c.args
	r := newRand(seed)
	qn, kn := a.Batch*a.Tq*a.Heads*a.HeadDim, a.Batch*a.Tk*a.KVHeads*a.HeadDim
	qv, kv, vv := randVals(r, qn, 1.5), randVals(r, kn, 1.5), randVals(r, kn, 1)
	cv := randVals(r, qn, 1)

	be := cpu.New()
	tp := tensor.NewTape(be)
	mk := func(name string, v []float32, rows, cols int) *tensor.Tensor {
		if c.freeze == name {
			return frozen(be, v, rows, cols)
		}
		return param(be, v, rows, cols)
	}
	q := mk("q", qv, a.Batch*a.Tq, a.Heads*a.HeadDim)
	k := mk("k", kv, a.Batch*a.Tk, a.KVHeads*a.HeadDim)
	v := mk("v", vv, a.Batch*a.Tk, a.KVHeads*a.HeadDim)
	out := tp.Attention(q, k, v, a)
	loss := dotLoss(tp, out, cv)
	tp.Backward(loss)

	o := newOracle(t)
	gq := o.mat(qv, a.Batch*a.Tq, a.Heads*a.HeadDim)
	gk := o.mat(kv, a.Batch*a.Tk, a.KVHeads*a.HeadDim)
	gv := o.mat(vv, a.Batch*a.Tk, a.KVHeads*a.HeadDim)
	gout := o.attention(gq, gk, gv, a)
	var wrt []*G.Node
	var ours []*tensor.Tensor
	var names []string
	for _, p := range []struct {
		name string
		g    *G.Node
		t    *tensor.Tensor
	}{{"q", gq, q}, {"k", gk, k}, {"v", gv, v}} {
		if p.name == c.freeze {
			if p.t.Grad != nil {
				t.Errorf("frozen %s got a gradient buffer", p.name)
			}
			continue
		}
		wrt, ours, names = append(wrt, p.g), append(ours, p.t), append(names, p.name)
	}
	cost, grads := o.run(o.dot(gout, cv), wrt...)
	checkClose(t, "out", out.F32(), o.values(gout))
	checkScalar(t, "loss", loss.Item(), cost)
	for i := range ours {
		checkClose(t, "d"+names[i], ours[i].GradF32(), grads[i])
	}
	tp.Release()
}

func TestGorgoniaAttention(t *testing.T) {
	// Two packed rows: row 0 holds documents [0,3) [3,5) [5,6); row 1 [0,2) [2,6).
	doc := []int32{0, 0, 0, 3, 3, 5, 0, 0, 2, 2, 2, 2}
	gqa := kernels.AttnArgs{Batch: 2, Tq: 6, Tk: 6, Heads: 4, KVHeads: 2, HeadDim: 4, Scale: 0.5, DocStart: doc}
	causal := gqa
	causal.DocStart = nil
	mha := gqa
	mha.KVHeads = 4
	mqa := gqa
	mqa.KVHeads = 1
	// Decoding-style: 3 queries at key positions 3..5 of 6 keys.
	offset := kernels.AttnArgs{Batch: 2, Tq: 3, Tk: 6, Heads: 4, KVHeads: 2, HeadDim: 4, QOffset: 3, Scale: 0.5, DocStart: doc}
	for i, c := range []attnCase{
		{name: "gqa-causal-docs", args: gqa},
		{name: "gqa-causal", args: causal},
		{name: "mha-docs", args: mha},
		{name: "mqa-docs", args: mqa},
		{name: "qoffset-docs", args: offset},
		{name: "frozen-k", args: gqa, freeze: "k"},
		{name: "frozen-q", args: gqa, freeze: "q"},
	} {
		t.Run(c.name, func(t *testing.T) { runAttnCase(t, c, uint64(100+i)) })
	}
}

// Packed documents must not see each other: the output rows of a document do
// not move when every other document's q, k and v change; the oracle with the
// document mask matches ours and the one with only the causal mask does not
// (so the comparison above is sensitive to the boundaries); and the gradient
// of a loss on one document's outputs is zero on every other document's k, v.
func TestGorgoniaAttentionDocIsolation(t *testing.T) {
	doc := []int32{0, 0, 0, 3, 3, 3, 3}
	a := kernels.AttnArgs{Batch: 1, Tq: 7, Tk: 7, Heads: 4, KVHeads: 2, HeadDim: 4, Scale: 0.5, DocStart: doc}
	W, KW := a.Heads*a.HeadDim, a.KVHeads*a.HeadDim
	r := newRand(11)
	qv, kv, vv := randVals(r, 7*W, 1.5), randVals(r, 7*KW, 1.5), randVals(r, 7*KW, 1)
	be := cpu.New()

	run := func(qv, kv, vv []float32) []float32 {
		tp := tensor.NewTape(be)
		tp.NoGrad = true
		out := tp.Attention(frozen(be, qv, 7, W), frozen(be, kv, 7, KW), frozen(be, vv, 7, KW), a)
		return out.F32()
	}
	base := run(qv, kv, vv)
	// Perturb document 0 (rows 0..2): document 1's outputs (rows 3..6) must be bit-identical.
	q2, k2, v2 := append([]float32(nil), qv...), append([]float32(nil), kv...), append([]float32(nil), vv...)
	for i := 0; i < 3*W; i++ {
		q2[i] += 0.9
	}
	for i := 0; i < 3*KW; i++ {
		k2[i] -= 1.1
		v2[i] += 2.3
	}
	pert := run(q2, k2, v2)
	for i := 3 * W; i < 7*W; i++ {
		if pert[i] != base[i] {
			t.Fatalf("doc 1 output %d changed when doc 0 changed: %g → %g", i, base[i], pert[i])
		}
	}
	// And perturbing document 1 leaves document 0 alone.
	q3, k3, v3 := append([]float32(nil), qv...), append([]float32(nil), kv...), append([]float32(nil), vv...)
	for i := 3 * KW; i < 7*KW; i++ {
		k3[i] += 0.7
		v3[i] -= 1.9
	}
	for i := 3 * W; i < 7*W; i++ {
		q3[i] *= -1
	}
	pert = run(q3, k3, v3)
	for i := 0; i < 3*W; i++ {
		if pert[i] != base[i] {
			t.Fatalf("doc 0 output %d changed when doc 1 changed: %g → %g", i, base[i], pert[i])
		}
	}

	// Masked oracle matches; causal-only oracle differs on document 1's rows.
	o := newOracle(t)
	gq, gk, gv := o.mat(qv, 7, W), o.mat(kv, 7, KW), o.mat(vv, 7, KW)
	docOut := o.attention(gq, gk, gv, a)
	causalArgs := a
	causalArgs.DocStart = nil
	causalOut := o.attention(gq, gk, gv, causalArgs)
	vm := G.NewTapeMachine(o.g)
	if err := vm.RunAll(); err != nil {
		t.Fatal(err)
	}
	vm.Close()
	checkClose(t, "out vs document-masked oracle", base, o.values(docOut))
	cvals := o.values(causalOut)
	diff := 0.0
	for i := 3 * W; i < 7*W; i++ {
		diff = max(diff, math.Abs(float64(base[i])-cvals[i]))
	}
	if diff < 1e-2 {
		t.Errorf("doc-1 rows match the causal-only oracle too (max diff %g): the test cannot see the boundary", diff)
	}

	// Loss on document 1's outputs only: zero gradient on document 0's k, v, q.
	tp := tensor.NewTape(be)
	q, k, v := param(be, qv, 7, W), param(be, kv, 7, KW), param(be, vv, 7, KW)
	cv := make([]float32, 7*W)
	copy(cv[3*W:], randVals(r, 4*W, 1))
	tp.Backward(dotLoss(tp, tp.Attention(q, k, v, a), cv))
	for _, p := range []struct {
		name  string
		g     []float32
		width int
	}{{"dq", q.GradF32(), W}, {"dk", k.GradF32(), KW}, {"dv", v.GradF32(), KW}} {
		for i := 0; i < 3*p.width; i++ {
			if p.g[i] != 0 {
				t.Fatalf("%s[%d] = %g: document 0 got gradient from document 1's loss", p.name, i, p.g[i])
			}
		}
	}
	tp.Release()
}

// ---------------------------------------------------------------------------
// LinearCrossEntropy

func TestGorgoniaLinearCrossEntropy(t *testing.T) {
	const T, H, V = 11, 6, 9
	// Chunk 3: chunk [3,6) is entirely ignored, the last chunk is partial.
	labels := []int32{4, 0, -100, -100, -100, -100, 8, 2, 2, -100, 7}
	ignored := make([]int32, T)
	for i := range ignored {
		ignored[i] = kernels.IgnoreIndex
	}
	for _, c := range []struct {
		name       string
		labels     []int32
		normalizer float64
		chunk      int
		upstream   float32 // loss is scaled by this before Backward (1: plain)
		frozenW    bool
	}{
		{"mean-chunk3", labels, 0, 3, 1, false},
		{"normalizer10-chunk4", labels, 10, 4, 1, false},
		{"mean-chunk1", labels, 0, 1, 1, false},
		{"mean-whole", labels, 0, 64, 1, false},
		{"mean-upstream2.5", labels, 0, 3, 2.5, false},
		{"mean-frozenW", labels, 0, 5, 1, true},
		{"all-ignored", ignored, 0, 3, 1, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRand(21)
			hv, wv := randVals(r, T*H, 1.5), randVals(r, V*H, 1.5)
			be := cpu.New()
			tp := tensor.NewTape(be)
			h := param(be, hv, T, H)
			var w *tensor.Tensor
			if c.frozenW {
				w = frozen(be, wv, V, H)
			} else {
				w = param(be, wv, V, H)
			}
			want := 0
			for _, l := range c.labels {
				if l != kernels.IgnoreIndex {
					want++
				}
			}
			loss, count := tp.LinearCrossEntropy(h, w, c.labels, c.normalizer, c.chunk)
			if count != want {
				t.Errorf("count = %d, want %d", count, want)
			}
			top := loss
			if c.upstream != 1 {
				top = tp.Scale(loss, c.upstream)
			}
			tp.Backward(top)

			o := newOracle(t)
			gh, gw := o.mat(hv, T, H), o.mat(wv, V, H)
			gl := o.crossEntropy(gh, gw, c.labels, c.normalizer)
			wrt := []*G.Node{gh}
			if !c.frozenW {
				wrt = append(wrt, gw)
			}
			cost, grads := o.run(o.must(G.Sum(o.scale(o.must(G.Reshape(gl, gt.Shape{1, 1})), float64(c.upstream)))), wrt...)
			checkScalar(t, "loss", top.Item(), cost)
			checkClose(t, "dh", h.GradF32(), grads[0])
			if c.frozenW {
				if w.Grad != nil {
					t.Errorf("frozen W got a gradient buffer")
				}
			} else {
				checkClose(t, "dW", w.GradF32(), grads[1])
			}
			// Ignored rows get exactly zero gradient.
			g := h.GradF32()
			for tok, l := range c.labels {
				if l != kernels.IgnoreIndex {
					continue
				}
				for j := 0; j < H; j++ {
					if g[tok*H+j] != 0 {
						t.Fatalf("dh[%d,%d] = %g for an ignored label", tok, j, g[tok*H+j])
					}
				}
			}
			tp.Release()
		})
	}
}

// ---------------------------------------------------------------------------
// A transformer block, end to end

type blockCfg struct {
	T, D, Heads, KVHeads, HD, FF, V int
	ids, pos, docStart, labels      []int32
	invFreq                         []float32
	eps                             float32
	chunk                           int
}

type pspec struct {
	name  string
	shape []int
}

func (c blockCfg) specs() []pspec {
	return []pspec{
		{"embed", []int{c.V, c.D}},
		{"norm1", []int{c.D}},
		{"wq", []int{c.Heads * c.HD, c.D}},
		{"wk", []int{c.KVHeads * c.HD, c.D}},
		{"wv", []int{c.KVHeads * c.HD, c.D}},
		{"wo", []int{c.D, c.Heads * c.HD}},
		{"norm2", []int{c.D}},
		{"wg", []int{c.FF, c.D}},
		{"wu", []int{c.FF, c.D}},
		{"wd", []int{c.D, c.FF}},
		{"normf", []int{c.D}},
		{"lm", []int{c.V, c.D}},
	}
}

func defaultBlock() blockCfg {
	return blockCfg{
		T: 8, D: 8, Heads: 4, KVHeads: 2, HD: 4, FF: 12, V: 10,
		ids:      []int32{3, 1, 4, 1, 5, 9, 2, 6},
		pos:      []int32{0, 1, 2, 3, 0, 1, 2, 0},
		docStart: []int32{0, 0, 0, 0, 4, 4, 4, 7},
		labels:   []int32{1, 4, 1, -100, 9, 2, -100, 3},
		invFreq:  ropeFreqs(4, 10000),
		eps:      1e-5,
		chunk:    3,
	}
}

func blockValues(c blockCfg, seed uint64) map[string][]float32 {
	r := newRand(seed)
	vals := map[string][]float32{}
	for _, s := range c.specs() {
		n := 1
		for _, d := range s.shape {
			n *= d
		}
		if len(s.shape) == 1 { // norm weights around 1
			v := randVals(r, n, 0.3)
			for i := range v {
				v[i] += 1
			}
			vals[s.name] = v
		} else {
			vals[s.name] = randVals(r, n, 0.6)
		}
	}
	return vals
}

func (c blockCfg) attnArgs() kernels.AttnArgs {
	return kernels.AttnArgs{Batch: 1, Tq: c.T, Tk: c.T, Heads: c.Heads, KVHeads: c.KVHeads, HeadDim: c.HD,
		Scale: float32(1 / math.Sqrt(float64(c.HD))), DocStart: c.docStart}
}

// ourLayer: RMSNorm → q/k/v → RoPE → attention → o → +residual → RMSNorm →
// SwiGLU MLP → +residual.
func ourLayer(tp *tensor.Tape, p map[string]*tensor.Tensor, c blockCfg, x *tensor.Tensor) *tensor.Tensor {
	h := tp.RMSNorm(x, p["norm1"], c.eps)
	q := tp.RoPE(tp.Linear(h, p["wq"]), c.pos, c.Heads, c.HD, c.invFreq)
	k := tp.RoPE(tp.Linear(h, p["wk"]), c.pos, c.KVHeads, c.HD, c.invFreq)
	v := tp.Linear(h, p["wv"])
	a := tp.Attention(q, k, v, c.attnArgs())
	x1 := tp.Add(x, tp.Linear(a, p["wo"]))
	h2 := tp.RMSNorm(x1, p["norm2"], c.eps)
	m := tp.SwiGLU(tp.Linear(h2, p["wg"]), tp.Linear(h2, p["wu"]))
	return tp.Add(x1, tp.Linear(m, p["wd"]))
}

// ourModel: embedding → layer (optionally through Recompute) → final norm → CE.
func ourModel(tp *tensor.Tape, p map[string]*tensor.Tensor, c blockCfg, recompute bool) *tensor.Tensor {
	x := tp.Embedding(p["embed"], c.ids)
	var y *tensor.Tensor
	if recompute {
		y = tp.Recompute(x, func(tp *tensor.Tape, x *tensor.Tensor) *tensor.Tensor { return ourLayer(tp, p, c, x) })
	} else {
		y = ourLayer(tp, p, c, x)
	}
	loss, _ := tp.LinearCrossEntropy(tp.RMSNorm(y, p["normf"], c.eps), p["lm"], c.labels, 0, c.chunk)
	return loss
}

func ourParams(be kernels.Backend, c blockCfg, vals map[string][]float32) map[string]*tensor.Tensor {
	p := map[string]*tensor.Tensor{}
	for _, s := range c.specs() {
		p[s.name] = param(be, vals[s.name], s.shape...)
	}
	return p
}

// oracleModel builds the same model in gorgonia; it returns the loss and the
// parameter nodes in specs() order.
func oracleModel(o *oracle, c blockCfg, vals map[string][]float32) (*G.Node, []*G.Node) {
	p := map[string]*G.Node{}
	var nodes []*G.Node
	for _, s := range c.specs() {
		r, cc := 1, s.shape[0]
		if len(s.shape) == 2 {
			r, cc = s.shape[0], s.shape[1]
		}
		p[s.name] = o.mat(vals[s.name], r, cc)
		nodes = append(nodes, p[s.name])
	}
	x := o.embedding(p["embed"], c.ids)
	h := o.rmsnorm(x, p["norm1"], c.eps)
	q := o.rope(o.linear(h, p["wq"]), c.pos, c.Heads, c.HD, c.invFreq)
	k := o.rope(o.linear(h, p["wk"]), c.pos, c.KVHeads, c.HD, c.invFreq)
	v := o.linear(h, p["wv"])
	a := o.attention(q, k, v, c.attnArgs())
	x1 := o.add(x, o.linear(a, p["wo"]))
	h2 := o.rmsnorm(x1, p["norm2"], c.eps)
	m := o.swiglu(o.linear(h2, p["wg"]), o.linear(h2, p["wu"]))
	y := o.add(x1, o.linear(m, p["wd"]))
	return o.crossEntropy(o.rmsnorm(y, p["normf"], c.eps), p["lm"], c.labels, 0), nodes
}

func TestGorgoniaBlock(t *testing.T) {
	c := defaultBlock()
	vals := blockValues(c, 31)
	be := cpu.New()
	tp := tensor.NewTape(be)
	p := ourParams(be, c, vals)
	loss := ourModel(tp, p, c, false)
	tp.Backward(loss)

	o := newOracle(t)
	gl, nodes := oracleModel(o, c, vals)
	cost, grads := o.run(gl, nodes...)
	checkScalar(t, "loss", loss.Item(), cost)
	for i, s := range c.specs() {
		checkClose(t, "d"+s.name, p[s.name].GradF32(), grads[i])
	}
	tp.Release()
}

// Two Backward calls on two tapes accumulate into the leaves (grad = sum), and
// ZeroGrad resets them.
func TestGorgoniaGradAccumulation(t *testing.T) {
	c1 := defaultBlock()
	c2 := defaultBlock()
	c2.ids = []int32{7, 7, 0, 8, 2, 2, 5, 1}
	c2.labels = []int32{-100, 3, 3, 0, 6, 1, 8, -100}
	c2.pos = []int32{0, 1, 0, 1, 2, 3, 4, 5}
	c2.docStart = []int32{0, 0, 2, 2, 2, 2, 2, 2}
	vals := blockValues(c1, 41)
	be := cpu.New()
	p := ourParams(be, c1, vals)

	o := newOracle(t)
	l1, n1 := oracleModel(o, c1, vals)
	_, g1 := o.run(l1, n1...)
	o = newOracle(t)
	l2, n2 := oracleModel(o, c2, vals)
	_, g2 := o.run(l2, n2...)

	step := func(c blockCfg) {
		tp := tensor.NewTape(be)
		tp.Backward(ourModel(tp, p, c, false))
		tp.Release()
	}
	specs := c1.specs()
	// Micro-batch 1, then 2, without zeroing: grad = g1 + g2.
	step(c1)
	for i, s := range specs {
		checkClose(t, "after 1: d"+s.name, p[s.name].GradF32(), g1[i])
	}
	step(c2)
	for i, s := range specs {
		sum := make([]float64, len(g1[i]))
		for j := range sum {
			sum[j] = g1[i][j] + g2[i][j]
		}
		checkClose(t, "after 1+2: d"+s.name, p[s.name].GradF32(), sum)
	}
	// ZeroGrad: all zero, then a fresh micro-batch 2 alone gives g2.
	for _, s := range specs {
		p[s.name].ZeroGrad()
		for j, v := range p[s.name].GradF32() {
			if v != 0 {
				t.Fatalf("after ZeroGrad d%s[%d] = %g", s.name, j, v)
			}
		}
	}
	step(c2)
	for i, s := range specs {
		checkClose(t, "after zero+2: d"+s.name, p[s.name].GradF32(), g2[i])
	}
	// Twice the same micro-batch doubles the gradient. (Not bit for bit: the
	// kernels accumulate row by row straight into the leaf gradient.)
	for _, s := range specs {
		p[s.name].ZeroGrad()
	}
	step(c1)
	step(c1)
	for i, s := range specs {
		twice := make([]float64, len(g1[i]))
		for j := range twice {
			twice[j] = 2 * g1[i][j]
		}
		checkClose(t, "after 1+1: d"+s.name, p[s.name].GradF32(), twice)
	}
}

// Recompute gives the same gradients as the direct run (bit for bit: the same
// kernels in the same order), and both match gorgonia.
func TestGorgoniaRecompute(t *testing.T) {
	c := defaultBlock()
	vals := blockValues(c, 51)
	be := cpu.New()

	pd := ourParams(be, c, vals)
	tp := tensor.NewTape(be)
	ld := ourModel(tp, pd, c, false)
	tp.Backward(ld)
	lossDirect := ld.Item()
	tp.Release()

	pr := ourParams(be, c, vals)
	tp = tensor.NewTape(be)
	lr := ourModel(tp, pr, c, true)
	tp.Backward(lr)
	lossRecomputed := lr.Item()
	tp.Release()

	if lossDirect != lossRecomputed {
		t.Errorf("loss: direct %g, recomputed %g", lossDirect, lossRecomputed)
	}
	o := newOracle(t)
	gl, nodes := oracleModel(o, c, vals)
	cost, grads := o.run(gl, nodes...)
	checkScalar(t, "loss", lossRecomputed, cost)
	for i, s := range c.specs() {
		d, r := pd[s.name].GradF32(), pr[s.name].GradF32()
		if r == nil {
			t.Errorf("recomputed: d%s is nil", s.name)
			continue
		}
		for j := range d {
			if d[j] != r[j] {
				t.Errorf("d%s[%d]: direct %g, recomputed %g", s.name, j, d[j], r[j])
				break
			}
		}
		checkClose(t, "recomputed d"+s.name, r, grads[i])
	}

	// Recompute on an input that needs no gradient (a frozen embedding): the
	// parameters inside still get theirs, the input gets none.
	pf := ourParams(be, c, vals)
	pf["embed"].SetRequiresGrad(false)
	tp = tensor.NewTape(be)
	tp.Backward(ourModel(tp, pf, c, true))
	tp.Release()
	if pf["embed"].Grad != nil {
		t.Errorf("frozen embedding got a gradient through Recompute")
	}
	for i, s := range c.specs() {
		if s.name == "embed" {
			continue
		}
		checkClose(t, "frozen-input recomputed d"+s.name, pf[s.name].GradF32(), grads[i])
	}
}

// A DoRA layer with its row norm detached, as lora builds it:
// y = DoRAScale(x·Wᵀ + s·(x·Aᵀ)·Bᵀ, m, n) with n a constant. The oracle
// multiplies by ones[N,1]·(m ⊙ 1/n) — n enters as a constant matrix.
func TestGorgoniaDoRAScale(t *testing.T) {
	r := newRand(11)
	const N, In, Out, R, s = 4, 6, 5, 2, float32(1.5)
	xv, wv, av, bv, cv := randVals(r, N*In, 1), randVals(r, Out*In, 1), randVals(r, R*In, 1), randVals(r, Out*R, 1), randVals(r, N*Out, 1)
	mv, norm := randVals(r, Out, 1), randVals(r, Out, 1)
	inv := make([]float32, Out)
	for j := range norm {
		norm[j] = 1 + float32(math.Abs(float64(norm[j])))
		inv[j] = 1 / norm[j]
	}

	be := cpu.New()
	tp := tensor.NewTape(be)
	x, w, a, b, m := param(be, xv, N, In), frozen(be, wv, Out, In), param(be, av, R, In), param(be, bv, Out, R), param(be, mv, Out)
	y := tp.DoRAScale(tp.AddLinear(tp.Linear(x, w), tp.Linear(x, a), b, s), m, norm)
	loss := dotLoss(tp, y, cv)
	tp.Backward(loss)

	o := newOracle(t)
	gx, gw, ga, gb, gm := o.mat(xv, N, In), o.mat(wv, Out, In), o.mat(av, R, In), o.mat(bv, Out, R), o.mat(mv, 1, Out)
	z := o.add(o.linear(gx, gw), o.scale(o.linear(o.linear(gx, ga), gb), float64(s)))
	gy := o.had(z, o.brow(o.had(gm, o.mat(inv, 1, Out)), N))
	cost, grads := o.run(o.dot(gy, cv), gx, ga, gb, gm)
	checkClose(t, "out", y.F32(), o.values(gy))
	checkScalar(t, "loss", loss.Item(), cost)
	checkClose(t, "dx", x.GradF32(), grads[0])
	checkClose(t, "dA", a.GradF32(), grads[1])
	checkClose(t, "dB", b.GradF32(), grads[2])
	checkClose(t, "dm", m.GradF32(), grads[3])
	tp.Release()
}
