package cuda

import (
	"fmt"
	"github.com/llamatune/llamatune/internal/switches"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
)

// EnvLibDir names the directories (separated by the OS list separator, ':'
// on Linux) searched first for the CUDA libraries.
const EnvLibDir = switches.CUDALibDir

// libSpec is one shared library we load and the file names it goes by,
// most preferred first. Globs (with '*') are expanded in each directory.
type libSpec struct {
	what  string // for error messages: "NVIDIA driver"
	names []string
	hint  string // what to do when it is missing
}

var (
	libCUDA = libSpec{"NVIDIA driver", []string{"libcuda.so.1", "libcuda.so"},
		"install the NVIDIA driver, or set " + EnvLibDir + " to the directory holding libcuda.so.1"}
	libNVRTC = libSpec{"NVRTC (CUDA runtime compiler)", []string{"libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.1[0-9]*", "libnvrtc.so.11.2", "libnvrtc.so.*"},
		"install the CUDA toolkit (or the nvidia-cuda-nvrtc wheel) and set " + EnvLibDir + " to its lib directory"}
	libCUBLASLt = libSpec{"cuBLASLt", []string{"libcublasLt.so", "libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.1[0-9]*", "libcublasLt.so.*"},
		"install cuBLAS from the CUDA toolkit (or the nvidia-cublas wheel) and set " + EnvLibDir + " to its lib directory"}
	libCUBLAS = libSpec{"cuBLAS", []string{"libcublas.so", "libcublas.so.13", "libcublas.so.12", "libcublas.so.1[0-9]*", "libcublas.so.*"},
		"install cuBLAS from the CUDA toolkit (or the nvidia-cublas wheel) and set " + EnvLibDir + " to its lib directory"}
)

// searchDirs is the directory search order: $LLAMATUNE_CUDA_LIB_DIR, then
// $CUDA_HOME/$CUDA_PATH, then the usual install places. After these the
// plain soname is handed to the dynamic loader (LD_LIBRARY_PATH, ld.so.cache).
func searchDirs(getenv func(string) string) []string {
	var dirs []string
	add := func(d string) {
		if d == "" {
			return
		}
		for _, have := range dirs {
			if have == d {
				return
			}
		}
		dirs = append(dirs, d)
	}
	for _, d := range filepath.SplitList(getenv(EnvLibDir)) {
		add(d)
	}
	for _, env := range []string{"CUDA_HOME", "CUDA_PATH"} {
		if root := getenv(env); root != "" {
			add(filepath.Join(root, "lib64"))
			add(filepath.Join(root, "lib"))
		}
	}
	arch := "x86_64"
	if runtime.GOARCH == "arm64" {
		arch = "sbsa"
	}
	multi := map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}[runtime.GOARCH]
	add("/usr/local/cuda/lib64")
	add("/usr/local/cuda/targets/" + arch + "-linux/lib")
	if multi != "" {
		add("/usr/lib/" + multi)
		add("/lib/" + multi)
	}
	add("/usr/lib64")
	add("/usr/lib/wsl/lib") // the driver under WSL2
	return dirs
}

// candidates lists the paths tried for spec, in order: every name in every
// directory (globs expanded, newest version first), then the bare names for
// the system loader when useSystem is set.
func candidates(spec libSpec, dirs []string, useSystem bool) []string {
	var out []string
	seen := map[string]bool{}
	push := func(p string) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, d := range dirs {
		for _, n := range spec.names {
			if strings.ContainsAny(n, "*?[") {
				m, _ := filepath.Glob(filepath.Join(d, n))
				sort.Sort(sort.Reverse(sort.StringSlice(m)))
				for _, p := range m {
					push(p)
				}
				continue
			}
			p := filepath.Join(d, n)
			if _, err := os.Stat(p); err == nil {
				push(p)
			}
		}
	}
	if useSystem {
		for _, n := range spec.names {
			if !strings.ContainsAny(n, "*?[") {
				push(n)
			}
		}
	}
	return out
}

// LibError says which library could not be opened and where we looked.
type LibError struct {
	Lib   string   // e.g. "libcuda.so.1"
	What  string   // e.g. "NVIDIA driver"
	Dirs  []string // directories searched
	Tried []string // paths handed to dlopen, with their errors
	Hint  string
}

func (e *LibError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "cuda: no %s (%s) found in ", e.What, e.Lib)
	if len(e.Dirs) == 0 {
		b.WriteString("(no directories)")
	} else {
		b.WriteString(strings.Join(e.Dirs, ", "))
	}
	b.WriteString(" or the system library path; ")
	b.WriteString(e.Hint)
	if len(e.Tried) > 0 {
		fmt.Fprintf(&b, " (tried: %s)", strings.Join(e.Tried, "; "))
	}
	return b.String()
}

// openLib dlopens the first candidate of spec that loads.
func openLib(spec libSpec, dirs []string, useSystem bool) (uintptr, string, error) {
	var tried []string
	for _, p := range candidates(spec, dirs, useSystem) {
		h, err := dlopen(p)
		if err == nil {
			return h, p, nil
		}
		tried = append(tried, fmt.Sprintf("%s: %v", p, err))
	}
	return 0, "", &LibError{Lib: spec.names[0], What: spec.what, Dirs: dirs, Tried: tried, Hint: spec.hint}
}

// symbols binds each named C function of lib into the uintptr it points to.
func bindSymbols(h uintptr, libPath string, syms map[string]*uintptr) error {
	var missing []string
	for name, dst := range syms {
		p, err := dlsym(h, name)
		if err != nil || p == 0 {
			missing = append(missing, name)
			continue
		}
		*dst = p
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("cuda: %s lacks %s (too old a version? CUDA 12 or newer is needed)", libPath, strings.Join(missing, ", "))
	}
	return nil
}
