package benchmark

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"time"

	"github.com/llamatune/llamatune/kernels"
)

// KernelShapes are the shapes of the kernel benchmarks, shared with the
// torch-eager side (tools/gpu/bench_torch.py reads the same file,
// tools/gpu/shapes.json): Tokens = Batch·Seq rows go through RMSNorm, RoPE,
// SwiGLU and the fused lm_head losses; attention runs Batch rows of Seq
// tokens, causal, one document per row.
type KernelShapes struct {
	Batch        int `json:"batch"`
	Seq          int `json:"seq"`
	Hidden       int `json:"hidden"`
	Intermediate int `json:"intermediate"`
	Heads        int `json:"heads"`
	KVHeads      int `json:"kv_heads"`
	HeadDim      int `json:"head_dim"`
	Vocab        int `json:"vocab"`
	CEChunk      int `json:"ce_chunk"`
	Reps         int `json:"reps"`
}

// LoadKernelShapes reads the named set of a shapes file
// ({"gpu": {...}, "dry": {...}}).
func LoadKernelShapes(path, set string) (KernelShapes, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return KernelShapes{}, err
	}
	var sets map[string]json.RawMessage
	if err := json.Unmarshal(raw, &sets); err != nil {
		return KernelShapes{}, fmt.Errorf("%s: %w", path, err)
	}
	m, ok := sets[set]
	if !ok {
		return KernelShapes{}, fmt.Errorf("%s: no shape set %q", path, set)
	}
	var s KernelShapes
	if err := json.Unmarshal(m, &s); err != nil {
		return KernelShapes{}, fmt.Errorf("%s: set %q: %w", path, set, err)
	}
	if s.Batch <= 0 || s.Seq <= 0 || s.Hidden <= 0 || s.Intermediate <= 0 || s.Heads <= 0 ||
		s.KVHeads <= 0 || s.HeadDim <= 0 || s.Vocab <= 0 || s.Heads%s.KVHeads != 0 || s.HeadDim%2 != 0 {
		return KernelShapes{}, fmt.Errorf("%s: set %q: every size must be > 0, heads a multiple of kv_heads, head_dim even: %+v", path, set, s)
	}
	if s.CEChunk <= 0 {
		s.CEChunk = 1024
	}
	if s.Reps <= 0 {
		s.Reps = 10
	}
	return s, nil
}

// KernelResult is one kernel's timing: the median and best of Reps
// iterations of forward + backward, after one warm-up.
type KernelResult struct {
	Name     string  `json:"name"`
	Shape    string  `json:"shape"`
	MedianMS float64 `json:"median_ms"`
	MinMS    float64 `json:"min_ms"`
	Reps     int     `json:"reps"`
}

func (r KernelResult) String() string {
	return fmt.Sprintf("%-10s %-44s median %9.3f ms  min %9.3f ms  (%d reps)", r.Name, r.Shape, r.MedianMS, r.MinMS, r.Reps)
}

// Kernels times forward + backward of RMSNorm, RoPE, SwiGLU, attention,
// the fused linear cross-entropy and the fused KD loss on be, at s, with
// the storage the trainer uses (activations F32, frozen weights BF16) and
// GEMM compute cd. A backend with a Sync method (CUDA) is synchronized
// around each timed iteration.
func Kernels(be kernels.Backend, s KernelShapes, cd kernels.DType) []KernelResult {
	sync := func() {}
	if sy, ok := be.(interface{ Sync() }); ok {
		sync = sy.Sync
	}
	T := s.Batch * s.Seq
	var out []KernelResult
	timeit := func(name, shape string, f func()) {
		f()
		sync()
		ds := make([]float64, s.Reps)
		for i := range ds {
			t0 := time.Now()
			f()
			sync()
			ds[i] = float64(time.Since(t0).Microseconds()) / 1e3
		}
		slices.Sort(ds)
		out = append(out, KernelResult{Name: name, Shape: shape, MedianMS: ds[len(ds)/2], MinMS: ds[0], Reps: s.Reps})
	}
	f32 := func(n int, scale float32) kernels.Buffer { return be.FromF32(kernels.F32, fillSin(n, scale)) }
	var bufs []kernels.Buffer
	keep := func(b ...kernels.Buffer) { bufs = append(bufs, b...) }
	defer func() {
		for _, b := range bufs {
			be.Free(b)
		}
	}()

	{ // RMSNorm [T, hidden], bf16 weight
		x, w := f32(T*s.Hidden, 1), be.FromF32(kernels.BF16, fillSin(s.Hidden, 0.1))
		y, rstd, dx, dw := be.Alloc(kernels.F32, T*s.Hidden), be.Alloc(kernels.F32, T), be.Alloc(kernels.F32, T*s.Hidden), be.Alloc(kernels.F32, s.Hidden)
		keep(x, w, y, rstd, dx, dw)
		timeit("rmsnorm", fmt.Sprintf("[%d,%d]", T, s.Hidden), func() {
			be.RMSNorm(x, w, y, rstd, T, s.Hidden, 1e-5)
			be.RMSNormBackward(y, x, w, rstd, dx, nil, T, s.Hidden)
		})
	}
	{ // RoPE on q [T, heads, head_dim]: forward, then the inverse (its backward)
		pos := make([]int32, T)
		for i := range pos {
			pos[i] = int32(i % s.Seq)
		}
		inv := make([]float32, s.HeadDim/2)
		for i := range inv {
			inv[i] = float32(1 / math.Pow(500000, float64(2*i)/float64(s.HeadDim)))
		}
		n := T * s.Heads * s.HeadDim
		x, y, dx := f32(n, 1), be.Alloc(kernels.F32, n), be.Alloc(kernels.F32, n)
		keep(x, y, dx)
		timeit("rope", fmt.Sprintf("[%d,%d,%d]", T, s.Heads, s.HeadDim), func() {
			be.RoPE(x, y, pos, T, s.Heads, s.HeadDim, inv, false)
			be.RoPE(y, dx, pos, T, s.Heads, s.HeadDim, inv, true)
		})
	}
	{ // SwiGLU [T, intermediate]
		n := T * s.Intermediate
		g, u, y, dg, du := f32(n, 2), f32(n, 1), be.Alloc(kernels.F32, n), be.Alloc(kernels.F32, n), be.Alloc(kernels.F32, n)
		keep(g, u, y, dg, du)
		timeit("swiglu", fmt.Sprintf("[%d,%d]", T, s.Intermediate), func() {
			be.SwiGLU(g, u, y, n)
			be.SwiGLUBackward(y, g, u, dg, du, n)
		})
	}
	{ // attention: causal GQA, one document per row
		a := kernels.AttnArgs{Batch: s.Batch, Tq: s.Seq, Tk: s.Seq, Heads: s.Heads, KVHeads: s.KVHeads, HeadDim: s.HeadDim,
			Scale: 1 / float32(math.Sqrt(float64(s.HeadDim))), Compute: cd}
		nq, nk := T*s.Heads*s.HeadDim, T*s.KVHeads*s.HeadDim
		q, k, v := f32(nq, 1), f32(nk, 1), f32(nk, 1)
		o, lse := be.Alloc(kernels.F32, nq), be.Alloc(kernels.F32, s.Batch*s.Heads*s.Seq)
		dq, dk, dv := be.Alloc(kernels.F32, nq), be.Alloc(kernels.F32, nk), be.Alloc(kernels.F32, nk)
		keep(q, k, v, o, lse, dq, dk, dv)
		timeit("attention", fmt.Sprintf("b%d t%d h%d kv%d d%d causal", s.Batch, s.Seq, s.Heads, s.KVHeads, s.HeadDim), func() {
			be.Attention(q, k, v, o, lse, a)
			be.AttentionBackward(q, k, v, o, lse, o, dq, dk, dv, a)
		})
	}
	labels := make([]int32, T)
	for i := range labels {
		labels[i] = int32((i * 7919) % s.Vocab)
	}
	h, w := f32(T*s.Hidden, 1), be.FromF32(kernels.BF16, fillSin(s.Vocab*s.Hidden, 0.02))
	dh := be.Alloc(kernels.F32, T*s.Hidden)
	keep(h, w, dh)
	{ // fused lm_head + CE; frozen lm_head: gradient to h only
		args := kernels.CEArgs{Tokens: T, Hidden: s.Hidden, Vocab: s.Vocab, Chunk: s.CEChunk, GradScale: 1 / float32(T), Compute: cd}
		timeit("linear_ce", fmt.Sprintf("[%d,%d]x[%d,%d]", T, s.Hidden, s.Vocab, s.Hidden), func() {
			be.LinearCrossEntropy(kernels.CEBuffers{H: h, W: w, DH: dh}, labels, args)
		})
	}
	{ // fused KD: dense teacher of the same width, forward KL, T=1, pure KD
		th, tw := f32(T*s.Hidden, 1), be.FromF32(kernels.BF16, fillSin(s.Vocab*s.Hidden, 0.03))
		keep(th, tw)
		args := kernels.KDArgs{Tokens: T, Hidden: s.Hidden, Vocab: s.Vocab, TeacherHidden: s.Hidden, Kind: kernels.ForwardKL,
			Temperature: 1, KDWeight: 1, Chunk: s.CEChunk, GradScale: 1 / float32(T), Compute: cd}
		timeit("linear_kd", fmt.Sprintf("[%d,%d]x[%d,%d] dense teacher", T, s.Hidden, s.Vocab, s.Hidden), func() {
			be.LinearKD(kernels.KDBuffers{Student: kernels.CEBuffers{H: h, W: w, DH: dh}, TH: th, TW: tw}, labels, args)
		})
	}
	return out
}

// fillSin is a deterministic, non-constant fill.
func fillSin(n int, s float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = s * float32(math.Sin(float64(i)*0.37))
	}
	return v
}
