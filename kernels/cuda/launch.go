package cuda

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"unsafe"
)

const nvrtcInvalidOption = 5 // NVRTC_ERROR_INVALID_OPTION

// kernelFamily maps every kernel to the source file (family) defining it.
var kernelFamily = map[string]string{
	"add_f32": "elementwise", "add_scaled": "elementwise", "scale_f32": "elementwise", "mul_f32": "elementwise",
	"f32_to_bf16": "elementwise", "bf16_to_f32": "elementwise", "swiglu_fwd": "elementwise",
	"swiglu_bwd": "elementwise", "sum_squares_partial": "elementwise",
	"adamw":         "adamw",
	"embedding_fwd": "embedding", "embedding_bwd": "embedding",
	"rmsnorm_fwd": "rmsnorm", "rmsnorm_bwd_dx": "rmsnorm", "rmsnorm_bwd_dw": "rmsnorm",
	"rope":     "rope",
	"attn_fwd": "attention", "attn_bwd_dot": "attention", "attn_bwd_dq": "attention", "attn_bwd_dkdv": "attention",
	"ce_rows": "loss", "kd_rows": "loss",
}

// module loads the family's kernels: from the on-disk cache when an image
// for this source, GPU and NVRTC is there, else compiled by NVRTC (CUBIN for
// the device's SM; PTX for the newest architecture NVRTC knows when it
// predates the GPU) and then cached.
func (be *Backend) module(family string) (uintptr, error) {
	if m, ok := be.modules[family]; ok {
		return m, nil
	}
	src, err := programSource(family)
	if err != nil {
		return 0, err
	}
	variants := [][]string{compileOptions(be.major, be.minor), ptxFallbackOptions(be.major, be.minor)}
	load := func(img []byte) (uintptr, error) {
		var mod uintptr
		err := be.l.cuErr("cuModuleLoadData", ccall(be.l.cu.cuModuleLoadData, uintptr(unsafe.Pointer(&mod)), uintptr(unsafe.Pointer(&img[0]))))
		return mod, err
	}
	if be.cache != "" {
		for _, opts := range variants {
			key := cacheKey(family, src, opts, be.major, be.minor, be.nvMaj, be.nvMin)
			if img, _ := os.ReadFile(filepath.Join(be.cache, key)); len(img) > 0 {
				if mod, err := load(img); err == nil { // else stale or corrupt: recompile
					be.modules[family] = mod
					return mod, nil
				}
			}
		}
	}
	for vi, opts := range variants {
		img, err := be.l.compile(family, src, opts)
		var ce *CompileError
		var cerr *CUDAError
		if vi == 0 && errors.As(err, &ce) && errors.As(ce.Err, &cerr) && cerr.Code == nvrtcInvalidOption {
			continue // this NVRTC predates the GPU: try PTX
		}
		if err != nil {
			return 0, err
		}
		mod, err := load(img)
		if err != nil {
			return 0, fmt.Errorf("loading %s.cu compiled with %v: %w", family, opts, err)
		}
		writeCache(be.cache, cacheKey(family, src, opts, be.major, be.minor, be.nvMaj, be.nvMin), img)
		be.modules[family] = mod
		return mod, nil
	}
	return 0, fmt.Errorf("cuda: no way to compile %s.cu for sm_%d%d", family, be.major, be.minor)
}

func (be *Backend) function(op, name string) uintptr {
	if f, ok := be.funcs[name]; ok {
		return f
	}
	family, ok := kernelFamily[name]
	if !ok {
		panic(fmt.Sprintf("cuda.%s: unknown kernel %q", op, name))
	}
	mod, err := be.module(family)
	must(op, err)
	var f uintptr
	cn := cstr(name)
	must(op, be.l.cuErr("cuModuleGetFunction("+name+")", ccall(be.l.cu.cuModuleGetFunction, uintptr(unsafe.Pointer(&f)), mod, uintptr(unsafe.Pointer(&cn[0])))))
	be.funcs[name] = f
	return f
}

// packArgs lays kernel arguments out as cuLaunchKernel wants them: one
// 8-byte slot per argument holding its value (ints as int32, float32 and
// float64 by bits, device pointers as uint64), and an array of pointers to
// the slots. The slots live in one Go heap allocation the caller keeps alive
// through the launch.
func packArgs(args ...any) (slots []uint64, err error) {
	slots = make([]uint64, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case uint64:
			slots[i] = v
		case int:
			if v < math.MinInt32 || v > math.MaxInt32 {
				return nil, fmt.Errorf("argument %d: %d does not fit a C int", i, v)
			}
			slots[i] = uint64(uint32(int32(v)))
		case int32:
			slots[i] = uint64(uint32(v))
		case int64:
			slots[i] = uint64(v)
		case bool:
			if v {
				slots[i] = 1
			}
		case float32:
			slots[i] = uint64(math.Float32bits(v))
		case float64:
			slots[i] = math.Float64bits(v)
		default:
			return nil, fmt.Errorf("argument %d: unsupported type %T", i, a)
		}
	}
	return slots, nil
}

type dim3 [3]uint32

// launch queues kernel name on the stream.
func (be *Backend) launch(op, name string, grid dim3, block uint32, shared int, args ...any) {
	f := be.function(op, name)
	if shared > defaultSharedMax && be.sharedSet[name] < shared {
		const attrMaxDynamicShared = 8 // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
		must(op, be.l.cuErr("cuFuncSetAttribute("+name+")", ccall(be.l.cu.cuFuncSetAttribute, f, attrMaxDynamicShared, uintptr(shared))))
		be.sharedSet[name] = shared
	}
	slots, err := packArgs(args...)
	if err != nil {
		panic(fmt.Sprintf("cuda.%s: kernel %s: %v", op, name, err))
	}
	params := make([]uintptr, len(slots)+1)
	for i := range slots {
		params[i] = uintptr(unsafe.Pointer(&slots[i]))
	}
	for i := range grid {
		if grid[i] == 0 {
			grid[i] = 1
		}
	}
	r := ccall(be.l.cu.cuLaunchKernel, f, uintptr(grid[0]), uintptr(grid[1]), uintptr(grid[2]),
		uintptr(block), 1, 1, uintptr(shared), be.stream, uintptr(unsafe.Pointer(&params[0])), 0)
	runtime.KeepAlive(slots)
	must(op, be.l.cuErr("cuLaunchKernel("+name+")", r))
}

// launch1D runs a grid-stride elementwise kernel over n elements.
func (be *Backend) launch1D(op, name string, n int, args ...any) {
	if n == 0 {
		return
	}
	be.launch(op, name, dim3{grid1D(n), 1, 1}, blockElementwise, 0, args...)
}

// --- GEMM -------------------------------------------------------------------

const (
	cudaR32F        = 0  // CUDA_R_32F
	cudaR16BF       = 14 // CUDA_R_16BF
	cublasCompute32 = 68 // CUBLAS_COMPUTE_32F
	cublasOpN       = 0
	cublasOpT       = 1
)

// operand is a matrix argument of gemm: device address, storage type,
// leading dimension (row-major: elements between rows) and batch stride.
type operand struct {
	ptr    uint64
	bf16   bool
	ld     int
	stride int
}

// cublasCall is a row-major GEMM expressed for column-major cuBLAS:
// C = op(A)·op(B) row-major is Cᵀ = op(B)ᵀ·op(A)ᵀ column-major, and a
// row-major matrix is its transpose column-major, so cuBLAS gets B first,
// with the same transpose flags, and m, n swapped.
type cublasCall struct {
	transa, transb int
	m, n, k        int
	a, b           operand
	ldc, strideC   int
}

func rowMajorToCublas(transA, transB bool, M, N, K int, a, b operand, ldc, strideC int) cublasCall {
	op := func(t bool) int {
		if t {
			return cublasOpT
		}
		return cublasOpN
	}
	return cublasCall{transa: op(transB), transb: op(transA), m: N, n: M, k: K, a: b, b: a, ldc: ldc, strideC: strideC}
}

// gemm: C[b] = alpha·op(A[b])·op(B[b]) + beta·C[b], row-major, f32
// accumulate, C F32. A and B must have the same storage type.
func (be *Backend) gemm(op string, transA, transB bool, M, N, K, batch int, alpha float32, a, b operand, beta float32, c uint64, ldc, strideC int) {
	if M == 0 || N == 0 || batch == 0 {
		return
	}
	if a.bf16 != b.bf16 {
		panic(fmt.Sprintf("cuda.%s: gemm operands of different storage types", op))
	}
	cc := rowMajorToCublas(transA, transB, M, N, K, a, b, ldc, strideC)
	dt := uintptr(cudaR32F)
	if a.bf16 {
		dt = cudaR16BF
	}
	algoDefault := int64(-1)
	r := ccall(be.l.cublas.gemmStridedBatchedEx, be.cublas, uintptr(cc.transa), uintptr(cc.transb),
		uintptr(cc.m), uintptr(cc.n), uintptr(max(cc.k, 0)), uintptr(unsafe.Pointer(&alpha)),
		uintptr(cc.a.ptr), dt, uintptr(max(cc.a.ld, 1)), uintptr(int64(cc.a.stride)),
		uintptr(cc.b.ptr), dt, uintptr(max(cc.b.ld, 1)), uintptr(int64(cc.b.stride)),
		uintptr(unsafe.Pointer(&beta)), uintptr(c), cudaR32F, uintptr(max(cc.ldc, 1)), uintptr(int64(cc.strideC)),
		uintptr(batch), cublasCompute32, uintptr(algoDefault))
	must(op, cublasErr("cublasGemmStridedBatchedEx", r))
}
