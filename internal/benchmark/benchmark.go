// Package benchmark holds the measurements behind `llamatune bench` and the
// go test benchmarks: GEMM throughput and a full training step.
package benchmark

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
)

// GEMMResult is one GEMM measurement.
type GEMMResult struct {
	Compute kernels.DType
	M, N, K int
	Reps    int
	Best    time.Duration
	GFLOPS  float64 // at the best repetition
}

func (r GEMMResult) String() string {
	return fmt.Sprintf("gemm %dx%dx%d, %s compute: %.1f GFLOP/s (best of %d, %v, %d threads)", r.M, r.N, r.K, strings.ToLower(r.Compute.String()), r.GFLOPS, r.Reps, r.Best, runtime.GOMAXPROCS(0))
}

// GEMM times C = A·B for m×k by k×n f32 matrices on the CPU backend, in
// compute precision dt (F32, or BF16: operands rounded to bf16, f32 sums).
func GEMM(m, n, k, reps int, dt kernels.DType) GEMMResult {
	be := cpu.New()
	r := rand.New(rand.NewPCG(1, 2))
	rnd := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = r.Float32() - 0.5
		}
		return v
	}
	a, b := be.FromF32(kernels.F32, rnd(m*k)), be.FromF32(kernels.F32, rnd(k*n))
	c := be.Alloc(kernels.F32, m*n)
	args := kernels.MatMulArgs{M: m, N: n, K: k, Alpha: 1, Compute: dt}
	be.MatMul(a, b, c, args) // warm up (pack buffers, page faults)
	best := time.Duration(1 << 62)
	for i := 0; i < reps; i++ {
		t0 := time.Now()
		be.MatMul(a, b, c, args)
		best = min(best, time.Since(t0))
	}
	return GEMMResult{Compute: dt, M: m, N: n, K: k, Reps: reps, Best: best, GFLOPS: 2 * float64(m) * float64(n) * float64(k) / best.Seconds() / 1e9}
}

// TokenizerResult is one tokenizer measurement.
type TokenizerResult struct {
	Kind                 string
	Bytes, Tokens        int
	SingleMBps, BatchMBs float64
}

func (r TokenizerResult) String() string {
	return fmt.Sprintf("tokenizer %s: %d bytes -> %d tokens; encode %.1f MB/s on one core, batch encode (lines) %.1f MB/s on %d cores",
		r.Kind, r.Bytes, r.Tokens, r.SingleMBps, r.BatchMBs, runtime.GOMAXPROCS(0))
}

// Tokenizer times the embedded Llama 3 or Llama 2 tokenizer on text: one
// Encode of the whole text, and BatchEncode of its lines. Every repetition
// loads a fresh tokenizer, so its word caches start cold (repeated text would
// otherwise be served from them); the best repetition is reported.
func Tokenizer(kind, text string, reps int) (TokenizerResult, error) {
	dir, err := os.MkdirTemp("", "llamatune-bench-tok-")
	if err != nil {
		return TokenizerResult{}, err
	}
	defer os.RemoveAll(dir)
	if err := tokenizer.WriteFiles(dir, kind); err != nil {
		return TokenizerResult{}, err
	}
	lines := strings.SplitAfter(text, "\n")
	res := TokenizerResult{Kind: kind, Bytes: len(text)}
	best := func(f func(tokenizer.Tokenizer)) (float64, error) {
		d := time.Duration(1 << 62)
		for i := 0; i < max(reps, 1); i++ {
			tok, err := tokenizer.Load(dir)
			if err != nil {
				return 0, err
			}
			t0 := time.Now()
			f(tok)
			d = min(d, time.Since(t0))
		}
		return float64(len(text)) / d.Seconds() / 1e6, nil
	}
	if res.SingleMBps, err = best(func(t tokenizer.Tokenizer) { res.Tokens = len(t.Encode(text)) }); err != nil {
		return res, err
	}
	res.BatchMBs, err = best(func(t tokenizer.Tokenizer) { t.BatchEncode(lines) })
	return res, err
}
