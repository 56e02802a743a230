package cuda

import (
	"fmt"
	"github.com/llamatune/llamatune/internal/switches"
	"sync"
	"unsafe"
)

// The C entry points we call, bound by bindSymbols. Every call goes through
// ccall with 64-bit integer/pointer slots; CUresult, nvrtcResult and
// cublasStatus_t come back in the low 32 bits.
type driverAPI struct {
	cuInit, cuDriverGetVersion, cuDeviceGet, cuDeviceGetCount, cuDeviceGetName, cuDeviceGetAttribute uintptr
	cuDevicePrimaryCtxRetain, cuCtxSetCurrent, cuCtxSynchronize                                      uintptr
	cuStreamCreate, cuStreamSynchronize, cuStreamDestroy                                             uintptr
	cuModuleLoadData, cuModuleGetFunction, cuFuncSetAttribute, cuLaunchKernel                        uintptr
	cuMemAllocAsync, cuMemFreeAsync, cuMemcpyHtoDAsync, cuMemcpyDtoHAsync, cuMemcpyDtoDAsync         uintptr
	cuMemsetD8Async, cuDeviceGetDefaultMemPool, cuMemPoolSetAttribute, cuGetErrorName, cuMemGetInfo  uintptr
}

func (d *driverAPI) symbols() map[string]*uintptr {
	return map[string]*uintptr{
		"cuInit": &d.cuInit, "cuDriverGetVersion": &d.cuDriverGetVersion, "cuDeviceGet": &d.cuDeviceGet,
		"cuDeviceGetCount": &d.cuDeviceGetCount, "cuDeviceGetName": &d.cuDeviceGetName,
		"cuDeviceGetAttribute": &d.cuDeviceGetAttribute, "cuDevicePrimaryCtxRetain": &d.cuDevicePrimaryCtxRetain,
		"cuCtxSetCurrent": &d.cuCtxSetCurrent, "cuCtxSynchronize": &d.cuCtxSynchronize,
		"cuStreamCreate": &d.cuStreamCreate, "cuStreamSynchronize": &d.cuStreamSynchronize,
		"cuStreamDestroy_v2": &d.cuStreamDestroy, "cuModuleLoadData": &d.cuModuleLoadData,
		"cuModuleGetFunction": &d.cuModuleGetFunction, "cuFuncSetAttribute": &d.cuFuncSetAttribute,
		"cuLaunchKernel": &d.cuLaunchKernel, "cuMemAllocAsync": &d.cuMemAllocAsync, "cuMemFreeAsync": &d.cuMemFreeAsync,
		"cuMemcpyHtoDAsync_v2": &d.cuMemcpyHtoDAsync, "cuMemcpyDtoHAsync_v2": &d.cuMemcpyDtoHAsync,
		"cuMemcpyDtoDAsync_v2": &d.cuMemcpyDtoDAsync, "cuMemsetD8Async": &d.cuMemsetD8Async,
		"cuDeviceGetDefaultMemPool": &d.cuDeviceGetDefaultMemPool, "cuMemPoolSetAttribute": &d.cuMemPoolSetAttribute,
		"cuGetErrorName": &d.cuGetErrorName, "cuMemGetInfo_v2": &d.cuMemGetInfo,
	}
}

type nvrtcAPI struct {
	version, createProgram, compileProgram, destroyProgram, getErrorString       uintptr
	getProgramLogSize, getProgramLog, getPTXSize, getPTX, getCUBINSize, getCUBIN uintptr
}

func (n *nvrtcAPI) symbols() map[string]*uintptr {
	return map[string]*uintptr{
		"nvrtcVersion": &n.version, "nvrtcCreateProgram": &n.createProgram, "nvrtcCompileProgram": &n.compileProgram,
		"nvrtcDestroyProgram": &n.destroyProgram, "nvrtcGetErrorString": &n.getErrorString,
		"nvrtcGetProgramLogSize": &n.getProgramLogSize, "nvrtcGetProgramLog": &n.getProgramLog,
		"nvrtcGetPTXSize": &n.getPTXSize, "nvrtcGetPTX": &n.getPTX, "nvrtcGetCUBINSize": &n.getCUBINSize,
		"nvrtcGetCUBIN": &n.getCUBIN,
	}
}

type cublasAPI struct {
	create, setStream, setMathMode, gemmStridedBatchedEx uintptr
}

func (c *cublasAPI) symbols() map[string]*uintptr {
	return map[string]*uintptr{
		"cublasCreate_v2": &c.create, "cublasSetStream_v2": &c.setStream, "cublasSetMathMode": &c.setMathMode,
		"cublasGemmStridedBatchedEx": &c.gemmStridedBatchedEx,
	}
}

// libs is everything loaded once per process.
type libs struct {
	cu     driverAPI
	nvrtc  nvrtcAPI
	cublas cublasAPI
	paths  map[string]string // what → path loaded
}

var (
	loadOnce sync.Once
	loaded   *libs
	loadErr  error
)

// load opens libcuda, NVRTC and cuBLAS(Lt) once, searching searchDirs.
func load() (*libs, error) {
	loadOnce.Do(func() { loaded, loadErr = loadFrom(searchDirs(switches.Value), true) })
	return loaded, loadErr
}

func loadFrom(dirs []string, useSystem bool) (*libs, error) {
	if !dlSupported {
		return nil, errNoDLSupport
	}
	l := &libs{paths: map[string]string{}}
	steps := []struct {
		spec libSpec
		syms map[string]*uintptr
	}{
		{libCUDA, l.cu.symbols()},
		{libNVRTC, l.nvrtc.symbols()},
		{libCUBLASLt, nil}, // opened first (RTLD_GLOBAL) so libcublas finds it wherever it lives
		{libCUBLAS, l.cublas.symbols()},
	}
	for _, s := range steps {
		h, path, err := openLib(s.spec, dirs, useSystem)
		if err != nil {
			return nil, err
		}
		l.paths[s.spec.names[0]] = path
		if s.syms != nil {
			if err := bindSymbols(h, path, s.syms); err != nil {
				return nil, err
			}
		}
	}
	return l, nil
}

var errNoDLSupport = fmt.Errorf("cuda: this OS cannot load the CUDA libraries without cgo (Linux only)")

// CUresult names, from cuda.h.
var cuResultNames = map[int32]string{
	0: "CUDA_SUCCESS", 1: "CUDA_ERROR_INVALID_VALUE", 2: "CUDA_ERROR_OUT_OF_MEMORY",
	3: "CUDA_ERROR_NOT_INITIALIZED", 4: "CUDA_ERROR_DEINITIALIZED", 34: "CUDA_ERROR_STUB_LIBRARY",
	46: "CUDA_ERROR_DEVICE_UNAVAILABLE", 100: "CUDA_ERROR_NO_DEVICE", 101: "CUDA_ERROR_INVALID_DEVICE",
	200: "CUDA_ERROR_INVALID_IMAGE", 201: "CUDA_ERROR_INVALID_CONTEXT", 209: "CUDA_ERROR_NO_BINARY_FOR_GPU",
	218: "CUDA_ERROR_INVALID_PTX", 222: "CUDA_ERROR_UNSUPPORTED_PTX_VERSION", 300: "CUDA_ERROR_INVALID_SOURCE",
	400: "CUDA_ERROR_INVALID_HANDLE", 500: "CUDA_ERROR_NOT_FOUND", 600: "CUDA_ERROR_NOT_READY",
	700: "CUDA_ERROR_ILLEGAL_ADDRESS", 701: "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", 702: "CUDA_ERROR_LAUNCH_TIMEOUT",
	710: "CUDA_ERROR_ASSERT", 716: "CUDA_ERROR_MISALIGNED_ADDRESS", 719: "CUDA_ERROR_LAUNCH_FAILED",
	801: "CUDA_ERROR_NOT_SUPPORTED", 803: "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
	804: "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE", 999: "CUDA_ERROR_UNKNOWN",
}

var cublasStatusNames = map[int32]string{
	0: "CUBLAS_STATUS_SUCCESS", 1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED",
	7: "CUBLAS_STATUS_INVALID_VALUE", 8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR",
	13: "CUBLAS_STATUS_EXECUTION_FAILED", 14: "CUBLAS_STATUS_INTERNAL_ERROR", 15: "CUBLAS_STATUS_NOT_SUPPORTED",
	16: "CUBLAS_STATUS_LICENSE_ERROR",
}

var nvrtcResultNames = map[int32]string{
	0: "NVRTC_SUCCESS", 1: "NVRTC_ERROR_OUT_OF_MEMORY", 2: "NVRTC_ERROR_PROGRAM_CREATION_FAILURE",
	3: "NVRTC_ERROR_INVALID_INPUT", 4: "NVRTC_ERROR_INVALID_PROGRAM", 5: "NVRTC_ERROR_INVALID_OPTION",
	6: "NVRTC_ERROR_COMPILATION", 7: "NVRTC_ERROR_BUILTIN_OPERATION_FAILURE",
	11: "NVRTC_ERROR_INTERNAL_ERROR",
}

func codeName(table map[int32]string, prefix string, code int32) string {
	if n, ok := table[code]; ok {
		return n
	}
	return fmt.Sprintf("%s(%d)", prefix, code)
}

// CUDAError is a failed driver, NVRTC or cuBLAS call.
type CUDAError struct {
	Call string // "cuMemAllocAsync"
	Code int32
	Name string // "CUDA_ERROR_OUT_OF_MEMORY"
}

func (e *CUDAError) Error() string {
	return fmt.Sprintf("cuda: %s failed: %s (%d)", e.Call, e.Name, e.Code)
}

// cuErr turns a CUresult into an error (nil on success).
func (l *libs) cuErr(call string, r uintptr) error {
	code := int32(r)
	if code == 0 {
		return nil
	}
	name := codeName(cuResultNames, "CUresult", code)
	if _, known := cuResultNames[code]; !known && l != nil && l.cu.cuGetErrorName != 0 {
		var p uintptr
		if ccall(l.cu.cuGetErrorName, uintptr(code), uintptr(unsafe.Pointer(&p))) == 0 && p != 0 {
			name = goString(p)
		}
	}
	return &CUDAError{Call: call, Code: code, Name: name}
}

func cublasErr(call string, r uintptr) error {
	if code := int32(r); code != 0 {
		return &CUDAError{Call: call, Code: code, Name: codeName(cublasStatusNames, "cublasStatus", code)}
	}
	return nil
}

func nvrtcErr(call string, r uintptr) error {
	if code := int32(r); code != 0 {
		return &CUDAError{Call: call, Code: code, Name: codeName(nvrtcResultNames, "nvrtcResult", code)}
	}
	return nil
}

// cstr is a NUL-terminated copy of s on the Go heap.
func cstr(s string) []byte { return append([]byte(s), 0) }
