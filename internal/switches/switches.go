// Package switches is every LLAMATUNE_* environment switch llamatune reads,
// read here and nowhere else. Switches are not job keys (those are
// LLAMATUNE_<KEY>__<KEY>=value, applied by configs): they choose a code path
// for cross-checking or a machine's quirk, and the result never depends on
// them beyond rounding.
package switches

import (
	"os"
	"strings"
)

// The switches, with what each does.
const (
	// NoFused = 1: full logits and an unfused cross-entropy instead of the
	// fused chunked lm_head + loss, to cross-check it (read by llama.New).
	NoFused = "LLAMATUNE_NO_FUSED"
	// NoMemCheck = 1: validate/train warn instead of refusing a job the
	// memory estimate says will not fit.
	NoMemCheck = "LLAMATUNE_NO_MEMCHECK"
	// GemmNoAVX512 = 1: the CPU GEMM keeps to its AVX2 kernels.
	GemmNoAVX512 = "LLAMATUNE_GEMM_NO_AVX512"
	// GemmNoBF16 = 1: bf16 compute runs on the f32 kernels (operands rounded
	// in packing), as on CPUs without AVX512_BF16.
	GemmNoBF16 = "LLAMATUNE_GEMM_NO_BF16"
	// VMathNoAVX512 = 1: the vectorized exp/max keep to AVX2.
	VMathNoAVX512 = "LLAMATUNE_VMATH_NO_AVX512"
	// CUDALibDir: where libcuda, cuBLAS and NVRTC are (searched first).
	CUDALibDir = "LLAMATUNE_CUDA_LIB_DIR"
	// CUDACache: where compiled CUDA kernels are cached (default the user
	// cache directory).
	CUDACache = "LLAMATUNE_CUDA_CACHE"
	// CUDATF32 = 1: cuBLAS may use TF32 tensor cores for f32 GEMMs.
	CUDATF32 = "LLAMATUNE_CUDA_TF32"

	// Test and benchmark switches (go test only).
	TestBig      = "LLAMATUNE_BIG"       // data: the 2 GB streaming test
	TestBigDir   = "LLAMATUNE_BIG_DIR"   // its directory
	TestBigChild = "LLAMATUNE_BIG_CHILD" // set in the child process it starts
	TestGemmTune = "LLAMATUNE_GEMM_TUNE" // gemm: the blocking sweep
	// TestPEFTGolden: the directory of the transformers+peft goldens
	// (model/llama TestGoldenPEFT; default testdata/golden/tiny_llama_peft).
	TestPEFTGolden = "LLAMATUNE_PEFT_GOLDEN"
)

// All lists every switch.
var All = []string{NoFused, NoMemCheck, GemmNoAVX512, GemmNoBF16, VMathNoAVX512, CUDALibDir, CUDACache, CUDATF32,
	TestBig, TestBigDir, TestBigChild, TestGemmTune, TestPEFTGolden}

// On reports whether switch name is set to something other than "", "0" or
// "false".
func On(name string) bool {
	switch strings.ToLower(strings.TrimSpace(os.Getenv(name))) {
	case "", "0", "false":
		return false
	}
	return true
}

// Value is the switch's value ("" when unset).
func Value(name string) string { return os.Getenv(name) }

// Is reports whether name (with or without the LLAMATUNE_ prefix) is a switch.
func Is(name string) bool {
	if !strings.HasPrefix(name, "LLAMATUNE_") {
		name = "LLAMATUNE_" + name
	}
	for _, s := range All {
		if s == name {
			return true
		}
	}
	return false
}
