// Package cuda is the NVIDIA GPU backend of kernels.Backend, without cgo:
// libcuda (driver API), NVRTC and cuBLAS are opened at run time with purego,
// kernels are CUDA C embedded in the binary (src/*.cu) and compiled by NVRTC
// at first use (cached on disk), GEMMs go to cuBLAS (bf16 or f32 in, f32
// accumulate), memory comes from the driver's stream-ordered pool
// (cuMemAllocAsync/cuMemFreeAsync), and every op is queued on one stream.
//
// On a machine without the NVIDIA driver New returns an error naming the
// library it could not open and where it looked; set LLAMATUNE_CUDA_LIB_DIR
// to point at the CUDA libraries. See README.md.
package cuda

import (
	"fmt"
	"github.com/llamatune/llamatune/internal/switches"
	"runtime"
	"sync"
	"unsafe"

	"github.com/llamatune/llamatune/kernels"
)

// EnvTF32 = "1" lets cuBLAS use TF32 tensor cores for F32 GEMMs (faster, ~1e-3
// relative error; the conformance suite expects it off).
const EnvTF32 = switches.CUDATF32

// Buffer is device memory: Len elements of DType at Ptr.
type Buffer struct {
	be      *Backend
	ptr     uint64
	n       int
	dt      kernels.DType
	cleanup runtime.Cleanup
	freed   bool
}

func (b *Buffer) Len() int             { return b.n }
func (b *Buffer) DType() kernels.DType { return b.dt }

// Ptr is the CUdeviceptr of the first element (0 for an empty buffer).
func (b *Buffer) Ptr() uint64 { return b.ptr }

// Backend runs kernels.Backend ops on one GPU, in order on one stream. Its
// methods are safe for concurrent use (they serialize).
type Backend struct {
	l            *libs
	mu           sync.Mutex
	dev          int32
	ctx          uintptr
	stream       uintptr
	cublas       uintptr
	major, minor int
	nvMaj, nvMin int
	devName      string
	cache        string
	modules      map[string]uintptr
	funcs        map[string]uintptr
	sharedSet    map[string]int

	pendMu  sync.Mutex
	pending []uint64 // device pointers of collected buffers, freed at the next op
}

var (
	availOnce   sync.Once
	availOK     bool
	availReason string
)

// Available reports whether a CUDA GPU can be used, and if not, why (the
// library that could not be opened, or the driver's error).
func Available() (bool, string) {
	availOnce.Do(func() {
		l, err := load()
		if err != nil {
			availReason = err.Error()
			return
		}
		if err := l.cuErr("cuInit", ccall(l.cu.cuInit, 0)); err != nil {
			availReason = fmt.Sprintf("%v (driver library %s)", err, l.paths[libCUDA.names[0]])
			return
		}
		var n int32
		if err := l.cuErr("cuDeviceGetCount", ccall(l.cu.cuDeviceGetCount, uintptr(unsafe.Pointer(&n)))); err != nil {
			availReason = err.Error()
			return
		}
		if n == 0 {
			availReason = "cuda: the NVIDIA driver is installed but sees no GPU"
			return
		}
		availOK = true
	})
	return availOK, availReason
}

// New opens GPU 0 (see NewDevice).
func New() (*Backend, error) { return NewDevice(0) }

func init() {
	kernels.Register("cuda", func() (kernels.Backend, error) {
		b, err := New()
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return b, nil
	})
}

// NewDevice opens the GPU with the given ordinal: its primary context, a
// non-blocking stream, the default memory pool (kept, not trimmed, between
// steps) and a cuBLAS handle. Kernels compile lazily.
func NewDevice(ordinal int) (*Backend, error) {
	l, err := load()
	if err != nil {
		return nil, err
	}
	be := &Backend{l: l, modules: map[string]uintptr{}, funcs: map[string]uintptr{}, sharedSet: map[string]int{},
		cache: cacheDir(switches.Value)}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := l.cuErr("cuInit", ccall(l.cu.cuInit, 0)); err != nil {
		return nil, err
	}
	var count int32
	if err := l.cuErr("cuDeviceGetCount", ccall(l.cu.cuDeviceGetCount, uintptr(unsafe.Pointer(&count)))); err != nil {
		return nil, err
	}
	if ordinal < 0 || ordinal >= int(count) {
		return nil, fmt.Errorf("cuda: GPU %d requested, the driver sees %d", ordinal, count)
	}
	if err := l.cuErr("cuDeviceGet", ccall(l.cu.cuDeviceGet, uintptr(unsafe.Pointer(&be.dev)), uintptr(ordinal))); err != nil {
		return nil, err
	}
	name := make([]byte, 256)
	if ccall(l.cu.cuDeviceGetName, uintptr(unsafe.Pointer(&name[0])), uintptr(len(name)), uintptr(be.dev)) == 0 {
		be.devName = cString(name)
	}
	var maj, mnr int32
	const ccMajor, ccMinor = 75, 76 // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_{MAJOR,MINOR}
	if err := l.cuErr("cuDeviceGetAttribute", ccall(l.cu.cuDeviceGetAttribute, uintptr(unsafe.Pointer(&maj)), ccMajor, uintptr(be.dev))); err != nil {
		return nil, err
	}
	if err := l.cuErr("cuDeviceGetAttribute", ccall(l.cu.cuDeviceGetAttribute, uintptr(unsafe.Pointer(&mnr)), ccMinor, uintptr(be.dev))); err != nil {
		return nil, err
	}
	be.major, be.minor = int(maj), int(mnr)
	if err := l.cuErr("cuDevicePrimaryCtxRetain", ccall(l.cu.cuDevicePrimaryCtxRetain, uintptr(unsafe.Pointer(&be.ctx)), uintptr(be.dev))); err != nil {
		return nil, err
	}
	if err := l.cuErr("cuCtxSetCurrent", ccall(l.cu.cuCtxSetCurrent, be.ctx)); err != nil {
		return nil, err
	}
	const streamNonBlocking = 1
	if err := l.cuErr("cuStreamCreate", ccall(l.cu.cuStreamCreate, uintptr(unsafe.Pointer(&be.stream)), streamNonBlocking)); err != nil {
		return nil, err
	}
	var pool uintptr
	if err := l.cuErr("cuDeviceGetDefaultMemPool", ccall(l.cu.cuDeviceGetDefaultMemPool, uintptr(unsafe.Pointer(&pool)), uintptr(be.dev))); err != nil {
		return nil, fmt.Errorf("%w (the stream-ordered allocator needs CUDA 11.2+ and a GPU that supports memory pools)", err)
	}
	threshold := ^uint64(0)        // keep freed memory in the pool: steps reuse it
	const attrReleaseThreshold = 4 // CU_MEMPOOL_ATTR_RELEASE_THRESHOLD
	if err := l.cuErr("cuMemPoolSetAttribute", ccall(l.cu.cuMemPoolSetAttribute, pool, attrReleaseThreshold, uintptr(unsafe.Pointer(&threshold)))); err != nil {
		return nil, err
	}
	if err := cublasErr("cublasCreate_v2", ccall(l.cublas.create, uintptr(unsafe.Pointer(&be.cublas)))); err != nil {
		return nil, err
	}
	if err := cublasErr("cublasSetStream_v2", ccall(l.cublas.setStream, be.cublas, be.stream)); err != nil {
		return nil, err
	}
	if switches.On(EnvTF32) {
		const tf32TensorOpMath = 3 // CUBLAS_TF32_TENSOR_OP_MATH
		ccall(l.cublas.setMathMode, be.cublas, tf32TensorOpMath)
	}
	if be.nvMaj, be.nvMin, err = l.nvrtcVersion(); err != nil {
		return nil, err
	}
	return be, nil
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

func (be *Backend) Name() string { return "cuda" }

// Device describes the GPU: name, compute capability, NVRTC version.
func (be *Backend) Device() string {
	return fmt.Sprintf("%s (sm_%d%d, NVRTC %d.%d)", be.devName, be.major, be.minor, be.nvMaj, be.nvMin)
}

// enter serializes ops, pins the goroutine to its OS thread with the
// context current (CUDA contexts are per thread), and frees buffers the GC
// collected. Call as: defer be.enter()().
func (be *Backend) enter() func() {
	be.mu.Lock()
	runtime.LockOSThread()
	if err := be.l.cuErr("cuCtxSetCurrent", ccall(be.l.cu.cuCtxSetCurrent, be.ctx)); err != nil {
		runtime.UnlockOSThread()
		be.mu.Unlock()
		panic(err)
	}
	be.pendMu.Lock()
	pend := be.pending
	be.pending = nil
	be.pendMu.Unlock()
	for _, p := range pend {
		be.freeDev(p)
	}
	return func() {
		runtime.UnlockOSThread()
		be.mu.Unlock()
	}
}

// must panics with the op's name when a CUDA call failed (kernels are math
// code: a failure there is a broken invariant or a dead device).
func must(op string, err error) {
	if err != nil {
		panic(fmt.Sprintf("cuda.%s: %v", op, err))
	}
}

// Sync waits until every queued op has finished.
func (be *Backend) Sync() {
	defer be.enter()()
	be.sync("Sync")
}

func (be *Backend) sync(op string) {
	must(op, be.l.cuErr("cuStreamSynchronize", ccall(be.l.cu.cuStreamSynchronize, be.stream)))
}

// --- memory -----------------------------------------------------------------

func (be *Backend) allocDev(op string, bytes int) uint64 {
	if bytes == 0 {
		return 0
	}
	var p uint64
	must(op, be.l.cuErr("cuMemAllocAsync", ccall(be.l.cu.cuMemAllocAsync, uintptr(unsafe.Pointer(&p)), uintptr(bytes), be.stream)))
	return p
}

func (be *Backend) freeDev(p uint64) {
	if p != 0 {
		must("Free", be.l.cuErr("cuMemFreeAsync", ccall(be.l.cu.cuMemFreeAsync, uintptr(p), be.stream)))
	}
}

func (be *Backend) memset0(op string, p uint64, bytes int) {
	if bytes > 0 {
		must(op, be.l.cuErr("cuMemsetD8Async", ccall(be.l.cu.cuMemsetD8Async, uintptr(p), 0, uintptr(bytes), be.stream)))
	}
}

func (be *Backend) htod(op string, dst uint64, src unsafe.Pointer, bytes int) {
	if bytes > 0 {
		must(op, be.l.cuErr("cuMemcpyHtoDAsync", ccall(be.l.cu.cuMemcpyHtoDAsync, uintptr(dst), uintptr(src), uintptr(bytes), be.stream)))
	}
}

// dtoh copies to host memory and waits for it.
func (be *Backend) dtoh(op string, dst unsafe.Pointer, src uint64, bytes int) {
	if bytes > 0 {
		must(op, be.l.cuErr("cuMemcpyDtoHAsync", ccall(be.l.cu.cuMemcpyDtoHAsync, uintptr(dst), uintptr(src), uintptr(bytes), be.stream)))
	}
	be.sync(op)
}

// newBuffer allocates (not zeroed) and arranges for the GC to free it if the
// caller never calls Free.
func (be *Backend) newBuffer(op string, dt kernels.DType, n int) *Buffer {
	if n < 0 {
		panic(fmt.Sprintf("cuda.%s: negative length %d", op, n))
	}
	b := &Buffer{be: be, ptr: be.allocDev(op, n*dt.Size()), n: n, dt: dt}
	if b.ptr != 0 {
		b.cleanup = runtime.AddCleanup(b, func(p uint64) {
			be.pendMu.Lock()
			be.pending = append(be.pending, p)
			be.pendMu.Unlock()
		}, b.ptr)
	}
	return b
}

func (be *Backend) Alloc(dt kernels.DType, n int) kernels.Buffer {
	defer be.enter()()
	b := be.newBuffer("Alloc", dt, n)
	be.memset0("Alloc", b.ptr, n*dt.Size())
	return b
}

func (be *Backend) FromF32(dt kernels.DType, v []float32) kernels.Buffer {
	defer be.enter()()
	b := be.newBuffer("FromF32", dt, len(v))
	if len(v) == 0 {
		return b
	}
	if dt == kernels.BF16 {
		h := make([]uint16, len(v))
		for i, f := range v {
			h[i] = kernels.F32ToBF16(f)
		}
		be.htod("FromF32", b.ptr, unsafe.Pointer(&h[0]), 2*len(h))
		runtime.KeepAlive(h)
	} else {
		be.htod("FromF32", b.ptr, unsafe.Pointer(&v[0]), 4*len(v))
		runtime.KeepAlive(v)
	}
	return b
}

func (be *Backend) ToF32(kb kernels.Buffer) []float32 {
	b := be.buf("ToF32", kb)
	defer be.enter()()
	out := make([]float32, b.n)
	if b.n == 0 {
		return out
	}
	if b.dt == kernels.BF16 {
		h := make([]uint16, b.n)
		be.dtoh("ToF32", unsafe.Pointer(&h[0]), b.ptr, 2*b.n)
		for i, x := range h {
			out[i] = kernels.BF16ToF32(x)
		}
		return out
	}
	be.dtoh("ToF32", unsafe.Pointer(&out[0]), b.ptr, 4*b.n)
	return out
}

func (be *Backend) Copy(dst, src kernels.Buffer) {
	d, s := be.buf("Copy", dst), be.buf("Copy", src)
	if d.n != s.n {
		panic(fmt.Sprintf("cuda.Copy: length %d != %d", d.n, s.n))
	}
	defer be.enter()()
	if d.n == 0 {
		return
	}
	switch {
	case d.dt == s.dt:
		must("Copy", be.l.cuErr("cuMemcpyDtoDAsync", ccall(be.l.cu.cuMemcpyDtoDAsync, uintptr(d.ptr), uintptr(s.ptr), uintptr(d.n*d.dt.Size()), be.stream)))
	case d.dt == kernels.F32:
		be.launch1D("Copy", "bf16_to_f32", d.n, d.ptr, s.ptr, int64(d.n))
	default:
		be.launch1D("Copy", "f32_to_bf16", d.n, d.ptr, s.ptr, int64(d.n))
	}
}

func (be *Backend) Zero(kb kernels.Buffer) {
	defer be.enter()()
	b := be.buf("Zero", kb)
	be.memset0("Zero", b.ptr, b.n*b.dt.Size())
}

// Free returns the memory to the stream's pool (after queued work using it).
func (be *Backend) Free(kb kernels.Buffer) {
	b, ok := kb.(*Buffer)
	if !ok || b == nil || b.freed {
		return
	}
	defer be.enter()()
	b.freed = true
	if b.ptr != 0 {
		b.cleanup.Stop()
		be.freeDev(b.ptr)
		b.ptr = 0
	}
}

// buf unwraps a buffer of this backend.
func (be *Backend) buf(op string, kb kernels.Buffer) *Buffer {
	b, ok := kb.(*Buffer)
	if !ok || b == nil {
		panic(fmt.Sprintf("cuda.%s: buffer %T is not a CUDA buffer", op, kb))
	}
	if b.freed {
		panic(fmt.Sprintf("cuda.%s: buffer of %d %v used after Free", op, b.n, b.dt))
	}
	if b.be != be {
		panic(fmt.Sprintf("cuda.%s: buffer belongs to another CUDA backend", op))
	}
	return b
}

// f32 unwraps an F32 buffer (the CPU backend's F32 check); nil stays 0.
func (be *Backend) f32(op string, kb kernels.Buffer) *Buffer {
	if kb == nil {
		return nil
	}
	b := be.buf(op, kb)
	if b.dt != kernels.F32 {
		panic(fmt.Sprintf("cuda.%s: want an F32 buffer, have %v of %d", op, b.dt, b.n))
	}
	return b
}

// ptr is b's device pointer, 0 for nil.
func ptr(b *Buffer) uint64 {
	if b == nil {
		return 0
	}
	return b.ptr
}

// at is the device address of element i of b.
func at(b *Buffer, i int) uint64 { return b.ptr + uint64(i*b.dt.Size()) }

// tmp is scratch device memory of n elements, freed (stream-ordered) by the
// returned func.
func (be *Backend) tmp(op string, dt kernels.DType, n int) (*Buffer, func()) {
	b := &Buffer{be: be, ptr: be.allocDev(op, n*dt.Size()), n: n, dt: dt}
	return b, func() { be.freeDev(b.ptr) }
}

// uploadI32 copies host ints to scratch device memory.
func (be *Backend) uploadI32(op string, v []int32) (uint64, func()) {
	b, free := be.tmp(op, kernels.F32, len(v)) // 4-byte elements
	if len(v) > 0 {
		be.htod(op, b.ptr, unsafe.Pointer(&v[0]), 4*len(v))
	}
	runtime.KeepAlive(v)
	return b.ptr, free
}

func (be *Backend) uploadF32(op string, v []float32) (uint64, func()) {
	b, free := be.tmp(op, kernels.F32, len(v))
	if len(v) > 0 {
		be.htod(op, b.ptr, unsafe.Pointer(&v[0]), 4*len(v))
	}
	runtime.KeepAlive(v)
	return b.ptr, free
}

// asF32 returns b itself when F32, else an F32 scratch copy (widened on the
// GPU) and its release func.
func (be *Backend) asF32(op string, b *Buffer) (*Buffer, func()) {
	return be.as(op, b, kernels.F32, "bf16_to_f32")
}

// asBF16 returns b itself when BF16, else a BF16 scratch copy (rounded to
// nearest even on the GPU) and its release func.
func (be *Backend) asBF16(op string, b *Buffer) (*Buffer, func()) {
	return be.as(op, b, kernels.BF16, "f32_to_bf16")
}

// as converts b to dt in scratch with the kernel conv, unless it is dt.
func (be *Backend) as(op string, b *Buffer, dt kernels.DType, conv string) (*Buffer, func()) {
	if b == nil || b.dt == dt {
		return b, func() {}
	}
	w, free := be.tmp(op, dt, b.n)
	if b.n > 0 {
		be.launch1D(op, conv, b.n, w.ptr, b.ptr, int64(b.n))
	}
	return w, free
}

// downloadF64 copies n doubles from the device and waits.
func (be *Backend) downloadF64(op string, p uint64, n int) []float64 {
	out := make([]float64, n)
	if n > 0 {
		be.dtoh(op, unsafe.Pointer(&out[0]), p, 8*n)
	}
	return out
}
