package cuda

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"github.com/llamatune/llamatune/internal/switches"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"unsafe"
)

// Kernels are CUDA C in src/*.cu, embedded in the binary and compiled by
// NVRTC for the GPU in use the first time a family is needed. The CUBIN is
// cached on disk (see cacheDir), keyed by the source, options, the device's
// compute capability and the NVRTC version, so later runs skip the compile.
//
//go:embed src/*.cu src/*.cuh
var srcFS embed.FS

// EnvCacheDir overrides where compiled kernels are cached; "off" disables it.
const EnvCacheDir = switches.CUDACache

// families lists the kernel sources; each is one NVRTC program (common.cuh
// is prepended to it).
var families = []string{"elementwise", "adamw", "embedding", "rmsnorm", "rope", "attention", "loss"}

// programSource is common.cuh followed by src/<family>.cu.
func programSource(family string) (string, error) {
	common, err := srcFS.ReadFile("src/common.cuh")
	if err != nil {
		return "", err
	}
	body, err := srcFS.ReadFile("src/" + family + ".cu")
	if err != nil {
		return "", fmt.Errorf("cuda: no kernel source for %q: %w", family, err)
	}
	// The #include of common.cuh in each .cu is for nvcc and editors; the
	// program gets the header inline instead, so NVRTC needs no include path.
	text := strings.Replace(string(body), `#include "common.cuh"`, "// common.cuh inlined above", 1)
	return "#line 1 \"common.cuh\"\n" + string(common) + "\n#line 1 \"" + family + ".cu\"\n" + text, nil
}

// compileOptions are the NVRTC options for a device of compute capability
// major.minor: CUBIN for that exact SM (no JIT at load).
func compileOptions(major, minor int) []string {
	return []string{
		fmt.Sprintf("--gpu-architecture=sm_%d%d", major, minor),
		"--std=c++17",
		"--fmad=true",
		"-default-device",
	}
}

// cacheKey names the compiled image of one program.
func cacheKey(family, source string, opts []string, major, minor, nvrtcMajor, nvrtcMinor int) string {
	h := sha256.New()
	h.Write([]byte(source))
	for _, o := range opts {
		h.Write([]byte{0})
		h.Write([]byte(o))
	}
	sum := hex.EncodeToString(h.Sum(nil))[:20]
	ext := ".cubin"
	if isPTX(opts) {
		ext = ".ptx"
	}
	return fmt.Sprintf("%s-sm%d%d-nvrtc%d.%d-%s%s", family, major, minor, nvrtcMajor, nvrtcMinor, sum, ext)
}

// cacheDir is $LLAMATUNE_CUDA_CACHE, else <user cache dir>/llamatune/cuda
// (~/.cache/llamatune/cuda on Linux); "" when caching is off or impossible.
func cacheDir(getenv func(string) string) string {
	if d := getenv(EnvCacheDir); d != "" {
		if d == "off" {
			return ""
		}
		return d
	}
	if d := getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "llamatune", "cuda")
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".cache", "llamatune", "cuda")
	}
	return ""
}

// writeCache stores img atomically (temp file + rename); failures are ignored
// (the cache is an optimization).
func writeCache(dir, key string, img []byte) {
	if dir == "" {
		return
	}
	if os.MkdirAll(dir, 0o755) != nil {
		return
	}
	f, err := os.CreateTemp(dir, key+".tmp*")
	if err != nil {
		return
	}
	_, werr := f.Write(img)
	cerr := f.Close()
	if werr != nil || cerr != nil || os.Rename(f.Name(), filepath.Join(dir, key)) != nil {
		os.Remove(f.Name())
	}
}

// CompileError carries NVRTC's log.
type CompileError struct {
	Family string
	Err    error
	Log    string
}

func (e *CompileError) Error() string {
	return fmt.Sprintf("cuda: compiling kernels %s.cu: %v\n%s", e.Family, e.Err, e.Log)
}

func (l *libs) nvrtcVersion() (int, int, error) {
	var major, minor int32
	r := ccall(l.nvrtc.version, uintptr(unsafe.Pointer(&major)), uintptr(unsafe.Pointer(&minor)))
	return int(major), int(minor), nvrtcErr("nvrtcVersion", r)
}

// ptxFallbackOptions target a virtual architecture when NVRTC does not know
// the device's SM (a GPU newer than the NVRTC): the driver JIT-compiles the
// PTX at load.
func ptxFallbackOptions(major, minor int) []string {
	o := compileOptions(major, minor)
	o[0] = "--gpu-architecture=compute_80"
	if major*10+minor >= 90 {
		o[0] = "--gpu-architecture=compute_90"
	}
	return o
}

// isPTX says whether options ask for PTX (a compute_ target) rather than a CUBIN.
func isPTX(opts []string) bool {
	for _, o := range opts {
		if strings.HasPrefix(o, "--gpu-architecture=compute_") {
			return true
		}
	}
	return false
}

// compile runs NVRTC on source and returns a CUBIN (or NUL-terminated PTX
// when opts name a compute_ architecture).
func (l *libs) compile(family, source string, opts []string) ([]byte, error) {
	src, name := cstr(source), cstr(family+".cu")
	var prog uintptr
	r := ccall(l.nvrtc.createProgram, uintptr(unsafe.Pointer(&prog)), uintptr(unsafe.Pointer(&src[0])),
		uintptr(unsafe.Pointer(&name[0])), 0, 0, 0)
	if err := nvrtcErr("nvrtcCreateProgram", r); err != nil {
		return nil, &CompileError{Family: family, Err: err}
	}
	defer ccall(l.nvrtc.destroyProgram, uintptr(unsafe.Pointer(&prog)))
	cs := make([][]byte, len(opts))
	ptrs := make([]uintptr, len(opts)+1)
	for i, o := range opts {
		cs[i] = cstr(o)
		ptrs[i] = uintptr(unsafe.Pointer(&cs[i][0]))
	}
	r = ccall(l.nvrtc.compileProgram, prog, uintptr(len(opts)), uintptr(unsafe.Pointer(&ptrs[0])))
	runtime.KeepAlive(cs)
	if err := nvrtcErr("nvrtcCompileProgram", r); err != nil {
		return nil, &CompileError{Family: family, Err: err, Log: l.programLog(prog)}
	}
	getSize, get, what := l.nvrtc.getCUBINSize, l.nvrtc.getCUBIN, "CUBIN"
	if isPTX(opts) {
		getSize, get, what = l.nvrtc.getPTXSize, l.nvrtc.getPTX, "PTX"
	}
	var size uintptr
	if err := nvrtcErr("nvrtcGet"+what+"Size", ccall(getSize, prog, uintptr(unsafe.Pointer(&size)))); err != nil {
		return nil, &CompileError{Family: family, Err: err}
	}
	img := make([]byte, size) // PTX: size includes the NUL cuModuleLoadData needs
	if size > 0 {
		if err := nvrtcErr("nvrtcGet"+what, ccall(get, prog, uintptr(unsafe.Pointer(&img[0])))); err != nil {
			return nil, &CompileError{Family: family, Err: err}
		}
	}
	if len(img) == 0 {
		return nil, &CompileError{Family: family, Err: fmt.Errorf("NVRTC produced an empty image for options %v", opts)}
	}
	return img, nil
}

func (l *libs) programLog(prog uintptr) string {
	var size uintptr
	if ccall(l.nvrtc.getProgramLogSize, prog, uintptr(unsafe.Pointer(&size))) != 0 || size <= 1 {
		return ""
	}
	buf := make([]byte, size)
	ccall(l.nvrtc.getProgramLog, prog, uintptr(unsafe.Pointer(&buf[0])))
	return strings.TrimRight(string(buf), "\x00")
}
