//go:build linux

package gemm

import (
	"github.com/llamatune/llamatune/internal/switches"
	"math"
	"math/rand"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// TestTuneBlocking compares kernels and cache-blocking choices on a shared,
// noisy machine: the candidates run round-robin, interleaved, and the best
// wall time of each is reported, together with the best process CPU time
// (converted to GFLOP/s per busy core), which other tenants' load disturbs
// far less. Run with
//
//	LLAMATUNE_GEMM_TUNE=1 go test -run TuneBlocking -v ./kernels/cpu/gemm/
func TestTuneBlocking(t *testing.T) {
	if !switches.On(switches.TestGemmTune) {
		t.Skip("set LLAMATUNE_GEMM_TUNE=1 to run")
	}
	saved, savedNarrow := bestKernel, narrowKernel
	defer func() { bestKernel, narrowKernel = saved, savedNarrow }()
	narrowKernel = nil

	var cands []*kernelSpec
	for _, ks := range supportedKernels() {
		if ks == genericKernel {
			continue
		}
		cands = append(cands, ks)
		for _, kc := range []int{128, 160, 192, 256, 320} {
			v := *ks
			v.kc = kc
			if v.kc == ks.kc {
				continue
			}
			cands = append(cands, &v)
		}
	}
	type shape struct {
		tA, tB  bool
		m, n, k int
	}
	shapes := []shape{{false, false, 1024, 1024, 1024}, {false, true, 512, 2048, 512}, {false, false, 512, 512, 2048}}
	r := rand.New(rand.NewSource(1))
	for _, s := range shapes {
		a, b, c := randSlice(r, s.m*s.k), randSlice(r, s.k*s.n), make([]float32, s.m*s.n)
		lda, ldb := s.k, s.n
		if s.tA {
			lda = s.m
		}
		if s.tB {
			ldb = s.k
		}
		best := make([]time.Duration, len(cands))
		bestCPU := make([]time.Duration, len(cands))
		for i := range best {
			best[i], bestCPU[i] = math.MaxInt64, math.MaxInt64
		}
		for rep := 0; rep < 10; rep++ {
			for i, ks := range cands {
				bestKernel = ks
				c0 := cpuTime()
				t0 := time.Now()
				Sgemm(s.tA, s.tB, s.m, s.n, s.k, 1, a, lda, b, ldb, 0, c, s.n)
				best[i] = min(best[i], time.Since(t0))
				bestCPU[i] = min(bestCPU[i], cpuTime()-c0)
			}
		}
		for i, ks := range cands {
			t.Logf("%v %-14s mc=%4d kc=%4d nc=%5d  wall %6.1f GFLOP/s  per-core %6.1f GFLOP/s", s, ks.name, ks.mc, ks.kc, ks.nc,
				GFLOPS(s.m, s.n, s.k, best[i]), GFLOPS(s.m, s.n, s.k, bestCPU[i]))
		}
	}
}

// cpuTime is the CPU time the process has used so far
// (clock_gettime(CLOCK_PROCESS_CPUTIME_ID), precise unlike getrusage).
func cpuTime() time.Duration {
	var ts syscall.Timespec
	const clockProcessCPUTimeID = 2
	syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockProcessCPUTimeID, uintptr(unsafe.Pointer(&ts)), 0)
	return time.Duration(ts.Nano())
}
