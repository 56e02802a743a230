package cuda

import (
	"errors"
	"github.com/llamatune/llamatune/internal/switches"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/kernels/kerneltest"
)

// TestConformance runs the shared suite on the GPU; without one it skips,
// saying what is missing.
func TestConformance(t *testing.T) {
	if ok, why := Available(); !ok {
		t.Skip("no usable CUDA GPU: " + why)
	}
	be, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("device: %s", be.Device())
	kerneltest.Run(t, be)
}

// An empty LLAMATUNE_CUDA_LIB_DIR (and nothing else to search) gives an
// error naming the library, the directories tried and the variable to set.
func TestMissingDriverError(t *testing.T) {
	empty := t.TempDir()
	dirs := searchDirs(func(k string) string {
		if k == EnvLibDir {
			return empty
		}
		return ""
	})
	if dirs[0] != empty {
		t.Fatalf("search order %v does not start with %s", dirs, EnvLibDir)
	}
	_, err := loadFrom([]string{empty}, false)
	var le *LibError
	if !errors.As(err, &le) {
		t.Fatalf("want a *LibError, have %v", err)
	}
	msg := err.Error()
	for _, want := range []string{"no NVIDIA driver (libcuda.so.1) found in " + empty, EnvLibDir} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
}

// A directory holding a file that is not a library: dlopen's own error is
// reported next to the path.
func TestBrokenLibraryError(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "libcuda.so.1"), []byte("not an ELF file"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := loadFrom([]string{dir}, false)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "libcuda.so.1")+":") {
		t.Fatalf("want the broken path and dlopen's error in %v", err)
	}
}

func TestSearchOrder(t *testing.T) {
	env := map[string]string{EnvLibDir: "/a:/b", "CUDA_HOME": "/opt/cuda"}
	dirs := searchDirs(func(k string) string { return env[k] })
	want := []string{"/a", "/b", "/opt/cuda/lib64", "/opt/cuda/lib", "/usr/local/cuda/lib64"}
	for i, w := range want {
		if i >= len(dirs) || dirs[i] != w {
			t.Fatalf("search order %v, want it to start %v", dirs, want)
		}
	}
	seen := map[string]bool{}
	for _, d := range dirs {
		if seen[d] {
			t.Errorf("%s listed twice", d)
		}
		seen[d] = true
	}
}

func TestCandidatesGlobNewestFirst(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"libnvrtc.so.12", "libnvrtc.so.13", "libnvrtc-builtins.so.12"} {
		os.WriteFile(filepath.Join(dir, n), nil, 0o644)
	}
	got := candidates(libNVRTC, []string{dir}, true)
	want := []string{filepath.Join(dir, "libnvrtc.so.13"), filepath.Join(dir, "libnvrtc.so.12")}
	if len(got) < 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("candidates %v, want to start with %v", got, want)
	}
	for _, p := range got {
		if strings.Contains(p, "builtins") {
			t.Errorf("%s is not NVRTC", p)
		}
	}
	if got[len(got)-1] != "libnvrtc.so.11.2" {
		t.Errorf("bare sonames for the system loader should come last: %v", got)
	}
}

func TestResultNames(t *testing.T) {
	var l *libs
	err := l.cuErr("cuMemAllocAsync", 2)
	if err == nil || err.Error() != "cuda: cuMemAllocAsync failed: CUDA_ERROR_OUT_OF_MEMORY (2)" {
		t.Errorf("have %v", err)
	}
	if l.cuErr("x", 0) != nil {
		t.Error("CUDA_SUCCESS is not an error")
	}
	if e := l.cuErr("x", 12345); !strings.Contains(e.Error(), "CUresult(12345)") {
		t.Errorf("unknown code: %v", e)
	}
	if e := cublasErr("cublasGemmStridedBatchedEx", 15); !strings.Contains(e.Error(), "CUBLAS_STATUS_NOT_SUPPORTED") {
		t.Errorf("have %v", e)
	}
	if e := nvrtcErr("nvrtcCompileProgram", 6); !strings.Contains(e.Error(), "NVRTC_ERROR_COMPILATION") {
		t.Errorf("have %v", e)
	}
}

func TestCacheKeyAndDir(t *testing.T) {
	src, err := programSource("rope")
	if err != nil {
		t.Fatal(err)
	}
	o := compileOptions(9, 0)
	k := cacheKey("rope", src, o, 9, 0, 12, 4)
	if !strings.HasPrefix(k, "rope-sm90-nvrtc12.4-") || !strings.HasSuffix(k, ".cubin") {
		t.Errorf("key %q", k)
	}
	for _, other := range []string{
		cacheKey("rope", src+" ", o, 9, 0, 12, 4),
		cacheKey("rope", src, compileOptions(8, 0), 8, 0, 12, 4),
		cacheKey("rope", src, o, 9, 0, 12, 5),
	} {
		if other == k {
			t.Errorf("key does not change with source, arch or NVRTC version: %s", k)
		}
	}
	if k != cacheKey("rope", src, o, 9, 0, 12, 4) {
		t.Error("key is not deterministic")
	}
	env := map[string]string{"HOME": "/home/u"}
	get := func(k string) string { return env[k] }
	if d := cacheDir(get); d != "/home/u/.cache/llamatune/cuda" {
		t.Errorf("cache dir %q", d)
	}
	env["XDG_CACHE_HOME"] = "/x"
	if d := cacheDir(get); d != "/x/llamatune/cuda" {
		t.Errorf("cache dir %q", d)
	}
	env[EnvCacheDir] = "off"
	if d := cacheDir(get); d != "" {
		t.Errorf("cache off gives %q", d)
	}
	dir := t.TempDir()
	writeCache(dir, "k.cubin", []byte("img"))
	if b, err := os.ReadFile(filepath.Join(dir, "k.cubin")); err != nil || string(b) != "img" {
		t.Errorf("cache write: %q %v", b, err)
	}
}

// Every kernel the host launches is defined, extern "C", in its family's
// source; every family has a source.
func TestKernelTable(t *testing.T) {
	srcs := map[string]string{}
	for _, f := range families {
		s, err := programSource(f)
		if err != nil {
			t.Fatal(err)
		}
		srcs[f] = s
	}
	for name, fam := range kernelFamily {
		s, ok := srcs[fam]
		if !ok {
			t.Errorf("kernel %s: family %s not in families", name, fam)
			continue
		}
		if !strings.Contains(s, `extern "C" __global__ void `+name+"(") {
			t.Errorf("kernel %s not defined in %s.cu", name, fam)
		}
	}
}

func TestGeometry(t *testing.T) {
	if g := grid1D(0); g != 1 {
		t.Errorf("grid1D(0)=%d", g)
	}
	if g := grid1D(257); g != 2 {
		t.Errorf("grid1D(257)=%d", g)
	}
	if g := grid1D(1 << 40); g != maxGrid1D {
		t.Errorf("grid1D(huge)=%d", g)
	}
	for _, c := range [][3]int{{1, 512, 32}, {100, 512, 128}, {100000, 512, 512}, {64, 64, 64}} {
		if b := rowBlock(c[0], c[1]); b != c[2] || b%32 != 0 {
			t.Errorf("rowBlock(%d,%d)=%d want %d", c[0], c[1], b, c[2])
		}
	}
	for _, rows := range []int{1, 5, 64, 65, 1000, 100000, 1 << 20} {
		bands, per := rmsDWBands(rows)
		if bands > 1024 || bands*per < rows || (bands-1)*per >= rows {
			t.Errorf("rmsDWBands(%d) = %d×%d", rows, bands, per)
		}
	}
	if s := attnFwdShared(128); s > defaultSharedMax {
		t.Errorf("head dim 128 forward needs %d bytes of shared memory (no opt-in)", s)
	}
	if attnDQShared(128) > defaultSharedMax || attnDKDVShared(128) > defaultSharedMax {
		t.Error("head dim 128 backward needs shared memory opt-in")
	}
	if s := attnFwdShared(attnMaxHeadDim); s > 227<<10 {
		t.Errorf("head dim 256 needs %d bytes, above an H100's 227 KiB", s)
	}
	sp := chunks(11, 4, 1024)
	if len(sp) != 3 || sp[2] != (span{8, 11}) {
		t.Errorf("chunks(11,4) = %v", sp)
	}
	if sp := chunks(11, 0, 1024); len(sp) != 1 || sp[0] != (span{0, 11}) {
		t.Errorf("chunks default = %v", sp)
	}
}

func TestPackArgs(t *testing.T) {
	s, err := packArgs(uint64(0xdeadbeef00), -100, float32(1), 2.0, int64(-1), true)
	if err != nil {
		t.Fatal(err)
	}
	want := []uint64{0xdeadbeef00, 0xffffff9c, 0x3f800000, 0x4000000000000000, ^uint64(0), 1}
	for i := range want {
		if s[i] != want[i] {
			t.Errorf("slot %d = %#x want %#x", i, s[i], want[i])
		}
	}
	if _, err := packArgs(1 << 40); err == nil {
		t.Error("int overflow not caught")
	}
	if _, err := packArgs("x"); err == nil {
		t.Error("unsupported type not caught")
	}
}

// Row-major C = op(A)·op(B) maps onto column-major cuBLAS with the operands
// swapped; checked against a plain column-major GEMM on the host.
func TestRowMajorToCublas(t *testing.T) {
	for _, ta := range []bool{false, true} {
		for _, tb := range []bool{false, true} {
			M, N, K := 3, 4, 5
			A := make([]float64, M*K)
			B := make([]float64, K*N)
			for i := range A {
				A[i] = float64(i%7) - 3
			}
			for i := range B {
				B[i] = float64(i%5) - 2
			}
			lda, ldb := K, N
			if ta {
				lda = M
			}
			if tb {
				ldb = K
			}
			c := rowMajorToCublas(ta, tb, M, N, K, operand{ptr: 1, ld: lda}, operand{ptr: 2, ld: ldb}, N, 0)
			if c.a.ptr != 2 || c.b.ptr != 1 || c.m != N || c.n != M {
				t.Fatalf("operands not swapped: %+v", c)
			}
			mats := map[uint64][]float64{1: A, 2: B}
			// column-major element (r, col) of an operand with leading dim ld
			get := func(o operand, trans bool, r, col int) float64 {
				if trans {
					r, col = col, r
				}
				return mats[o.ptr][r+col*o.ld]
			}
			C := make([]float64, M*N) // column-major m×n with ldc = N  ⇔ row-major M×N
			for i := 0; i < c.m; i++ {
				for j := 0; j < c.n; j++ {
					var s float64
					for p := 0; p < c.k; p++ {
						s += get(c.a, c.transa == cublasOpT, i, p) * get(c.b, c.transb == cublasOpT, p, j)
					}
					C[i+j*c.ldc] = s
				}
			}
			for i := 0; i < M; i++ {
				for j := 0; j < N; j++ {
					var s float64
					for p := 0; p < K; p++ {
						var av, bv float64
						if ta {
							av = A[p*M+i]
						} else {
							av = A[i*K+p]
						}
						if tb {
							bv = B[j*K+p]
						} else {
							bv = B[p*N+j]
						}
						s += av * bv
					}
					if C[i*N+j] != s {
						t.Fatalf("transA=%v transB=%v: C[%d,%d]=%v want %v", ta, tb, i, j, C[i*N+j], s)
					}
				}
			}
		}
	}
}

// NVRTC needs no GPU: where libnvrtc can be opened, every kernel family is
// compiled through the same purego path the backend uses.
func TestNVRTCCompile(t *testing.T) {
	l := &libs{}
	h, path, err := openLib(libNVRTC, searchDirs(switches.Value), true)
	if err != nil {
		t.Skip("NVRTC not installed: " + err.Error())
	}
	if err := bindSymbols(h, path, l.nvrtc.symbols()); err != nil {
		t.Skip(err)
	}
	maj, mnr, err := l.nvrtcVersion()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: NVRTC %d.%d", path, maj, mnr)
	for _, f := range families {
		src, err := programSource(f)
		if err != nil {
			t.Fatal(err)
		}
		img, err := l.compile(f, src, compileOptions(9, 0))
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if len(img) < 4 || string(img[1:4]) != "ELF" {
			t.Errorf("%s: NVRTC output is not an ELF CUBIN (%d bytes)", f, len(img))
		}
	}
	// The PTX fallback (NVRTC older than the GPU) gives NUL-terminated PTX.
	src, _ := programSource("rope")
	ptx, err := l.compile("rope", src, ptxFallbackOptions(9, 0))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(ptx), ".target sm_90") || ptx[len(ptx)-1] != 0 {
		t.Errorf("PTX fallback: want NUL-terminated sm_90 PTX, have %d bytes", len(ptx))
	}
	// A broken program reports NVRTC's log.
	_, err = l.compile("broken", "extern \"C\" __global__ void k() { undefined_thing(); }", compileOptions(9, 0))
	var ce *CompileError
	if !errors.As(err, &ce) || !strings.Contains(ce.Log, "undefined_thing") {
		t.Errorf("want a CompileError with the log, have %v", err)
	}
}

// Where nvcc is installed, each .cu (with common.cuh) compiles to sm_90 PTX.
func TestNVCCCompile(t *testing.T) {
	nvcc, err := exec.LookPath("nvcc")
	if err != nil {
		t.Skip("nvcc not installed; the kernel sources are not compile-checked by nvcc here")
	}
	out := t.TempDir()
	for _, f := range families {
		cmd := exec.Command(nvcc, "--ptx", "-arch=sm_90", "-std=c++17", "-Werror", "all-warnings",
			"-o", filepath.Join(out, f+".ptx"), filepath.Join("src", f+".cu"))
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("nvcc %s.cu: %v\n%s", f, err, b)
		}
	}
}
