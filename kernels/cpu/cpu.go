// Package cpu is the pure-Go backend: every op of kernels.Backend, parallel
// over cores, f32 compute. BF16 weights are widened on the fly.
package cpu

import (
	"fmt"
	"runtime"
	"sync"
	"unsafe"

	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu/gemm"
	"github.com/llamatune/llamatune/kernels/nf4"
)

// Buffer is CPU storage: exactly one of F32/BF16/NF4 is set.
type Buffer struct {
	dt   kernels.DType
	f32  []float32
	bf16 []uint16
	nf4  *nf4.Tensor // a frozen QLoRA weight (WrapNF4)
	// owned: the storage was made by Alloc (not Wrap*), so Free may hand
	// it to the next Alloc.
	owned bool
}

func (b *Buffer) Len() int {
	switch b.dt {
	case kernels.BF16:
		return len(b.bf16)
	case kernels.NF4:
		if b.nf4 == nil { // freed
			return 0
		}
		return b.nf4.N
	}
	return len(b.f32)
}
func (b *Buffer) DType() kernels.DType { return b.dt }

// Backend is the CPU backend. The zero value is ready to use.
type Backend struct{}

// New returns the CPU backend.
func New() *Backend { return &Backend{} }

func init() {
	kernels.Register("cpu", func() (kernels.Backend, error) { return New(), nil })
}

func (*Backend) Name() string { return "cpu" }

// ReadsBF16Activations: Attention and SwiGLU read BF16 activations in
// place (kernels.BF16Activations).
func (*Backend) ReadsBF16Activations() bool { return true }

// F32 returns the f32 storage of b (no copy). It panics for BF16 buffers.
func F32(b kernels.Buffer) []float32 {
	if b == nil {
		return nil
	}
	cb := b.(*Buffer)
	if cb.dt != kernels.F32 {
		panic(fmt.Sprintf("cpu: want an F32 buffer, have %v of %d", cb.dt, cb.Len()))
	}
	return cb.f32
}

// BF16 returns the bf16 storage of b (no copy). It panics for F32 buffers.
func BF16(b kernels.Buffer) []uint16 {
	cb := b.(*Buffer)
	if cb.dt != kernels.BF16 {
		panic(fmt.Sprintf("cpu: want a BF16 buffer, have %v of %d", cb.dt, cb.Len()))
	}
	return cb.bf16
}

// WrapF32 makes a buffer that shares v.
func WrapF32(v []float32) *Buffer { return &Buffer{dt: kernels.F32, f32: v} }

// WrapBF16 makes a buffer that shares v.
func WrapBF16(v []uint16) *Buffer { return &Buffer{dt: kernels.BF16, bf16: v} }

// operand is a GEMM view of b, bf16 and NF4 storage read in place.
func operand(b kernels.Buffer) gemm.Operand {
	cb := b.(*Buffer)
	switch cb.dt {
	case kernels.BF16:
		return gemm.Operand{BF16: cb.bf16}
	case kernels.NF4:
		return gemm.Operand{NF4: cb.nf4}
	}
	return gemm.Operand{F32: cb.f32}
}

// elems returns elements [lo, hi) of o as f32: in place for f32 storage,
// widened into tmp (hi−lo ≤ len(tmp)) for bf16.
func elems(o gemm.Operand, lo, hi int, tmp []float32) []float32 {
	if o.BF16 == nil {
		return o.F32[lo:hi]
	}
	t := tmp[:hi-lo]
	for i, h := range o.BF16[lo:hi] {
		t[i] = kernels.BF16ToF32(h)
	}
	return t
}

// precision maps a Compute dtype to the GEMM precision.
func precision(dt kernels.DType) gemm.Precision {
	if dt == kernels.BF16 {
		return gemm.BF16
	}
	return gemm.F32
}

// FastBF16 reports whether BF16 compute runs faster than F32 here: the CPU
// has AVX512_BF16, so bf16 GEMMs use its pair kernel. Elsewhere BF16
// compute is the same math on the f32 kernels, with an extra rounding pass.
func FastBF16() bool { return gemm.HasBF16Kernel() }

// WrapHostBF16 uses v in place (kernels.HostMapper).
func (*Backend) WrapHostBF16(v []uint16) kernels.Buffer { return WrapBF16(v) }

// WrapNF4 uses t in place (kernels.NF4Wrapper): a frozen weight that only
// MatMul reads, dequantizing it as it packs the GEMM panels.
func (*Backend) WrapNF4(t *nf4.Tensor) kernels.Buffer { return &Buffer{dt: kernels.NF4, nf4: t} }

// asF32 returns f32 values of b: the storage itself for F32, a widened copy
// for BF16, a dequantized copy for NF4.
func asF32(b kernels.Buffer) []float32 {
	cb := b.(*Buffer)
	if cb.dt == kernels.F32 {
		return cb.f32
	}
	if cb.dt == kernels.NF4 {
		out := make([]float32, cb.nf4.N)
		cb.nf4.DequantizeF32(out, 0)
		return out
	}
	out := make([]float32, len(cb.bf16))
	parallelFor(len(out), 1<<14, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			out[i] = kernels.BF16ToF32(cb.bf16[i])
		}
	})
	return out
}

func (*Backend) Alloc(dt kernels.DType, n int) kernels.Buffer {
	if dt == kernels.NF4 {
		panic("cpu.Alloc: NF4 buffers are quantized weights; make them with FromF32 or WrapNF4")
	}
	if dt == kernels.BF16 {
		if v := recycled16.get(n); v != nil {
			return &Buffer{dt: dt, bf16: v, owned: true}
		}
		return &Buffer{dt: dt, bf16: make([]uint16, n), owned: true}
	}
	if v := recycled.get(n); v != nil {
		return &Buffer{dt: kernels.F32, f32: v, owned: true}
	}
	return &Buffer{dt: kernels.F32, f32: make([]float32, n), owned: true}
}

// FromF32 stores v as dt; NF4 quantizes it (nf4.Quantize).
func (be *Backend) FromF32(dt kernels.DType, v []float32) kernels.Buffer {
	if dt == kernels.NF4 {
		return be.WrapNF4(nf4.Quantize(v))
	}
	b := be.Alloc(dt, len(v))
	be.Copy(b, WrapF32(v))
	return b
}

func (*Backend) ToF32(b kernels.Buffer) []float32 {
	cb := b.(*Buffer)
	if cb.dt == kernels.F32 {
		return append([]float32(nil), cb.f32...)
	}
	return asF32(b)
}

func (*Backend) Copy(dst, src kernels.Buffer) {
	d, s := dst.(*Buffer), src.(*Buffer)
	if d.Len() != s.Len() {
		panic(fmt.Sprintf("cpu.Copy: length %d != %d", d.Len(), s.Len()))
	}
	switch {
	case d.dt == kernels.NF4:
		panic(fmt.Sprintf("cpu.Copy: NF4 buffers are frozen weights and cannot be written (%d elements from %v)", s.Len(), s.dt))
	case s.dt == kernels.NF4 && d.dt == kernels.F32:
		s.nf4.DequantizeF32(d.f32, 0)
	case s.dt == kernels.NF4:
		s.nf4.DequantizeBF16(d.bf16, 0)
	case d.dt == s.dt && d.dt == kernels.F32:
		copy(d.f32, s.f32)
	case d.dt == s.dt:
		copy(d.bf16, s.bf16)
	case d.dt == kernels.F32:
		parallelFor(len(d.f32), 1<<15, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				d.f32[i] = kernels.BF16ToF32(s.bf16[i])
			}
		})
	default:
		parallelFor(len(d.bf16), 1<<15, func(lo, hi int) {
			gemm.ToBF16(d.bf16[lo:hi], s.f32[lo:hi]) // the rounding of a BF16 GEMM's operands
		})
	}
}

func (*Backend) Zero(b kernels.Buffer) {
	cb := b.(*Buffer)
	clear(cb.f32)
	clear(cb.bf16)
}

// Free drops the storage: a large F32 or BF16 buffer is kept for the next
// Alloc of the same dtype and length (see bufferCache), an NF4 tensor's mapping is released,
// others go to the Go GC.
func (*Backend) Free(b kernels.Buffer) {
	if cb, ok := b.(*Buffer); ok {
		if cb.f32 != nil && cb.owned {
			recycled.put(cb.f32)
		}
		if cb.bf16 != nil && cb.owned {
			recycled16.put(cb.bf16)
		}
		if cb.nf4 != nil {
			cb.nf4.Free() // its off-heap storage
		}
		cb.f32, cb.bf16, cb.nf4 = nil, nil, nil
	}
}

// bufferCache keeps freed F32 buffers by length for reuse. A training step
// frees and allocates the same activation and gradient shapes layer after
// layer and step after step; reusing them keeps the heap at the live set
// (the Go collector would let garbage grow to about as much again before a
// collection) and spares the page faults of fresh memory. Buffers shorter
// than cacheMin go to the GC; at most cacheMax bytes are kept.
type bufferCache[T float32 | uint16] struct {
	mu    sync.Mutex
	free  map[int][][]T
	bytes int64
}

const (
	cacheMin = 1 << 12 // elements (16 KiB)
	cacheMax = 1 << 30 // bytes
)

var (
	recycled   = &bufferCache[float32]{free: map[int][][]float32{}}
	recycled16 = &bufferCache[uint16]{free: map[int][][]uint16{}}
)

// get returns a zeroed buffer of n elements, or nil.
func (c *bufferCache[T]) get(n int) []T {
	if n < cacheMin {
		return nil
	}
	c.mu.Lock()
	l := c.free[n]
	if len(l) == 0 {
		c.mu.Unlock()
		return nil
	}
	v := l[len(l)-1]
	c.free[n] = l[:len(l)-1]
	c.bytes -= c.size(n)
	c.mu.Unlock()
	clear(v)
	return v
}

// size is the bytes of n elements.
func (c *bufferCache[T]) size(n int) int64 {
	var z T
	return int64(n) * int64(unsafe.Sizeof(z))
}

func (c *bufferCache[T]) put(v []T) {
	n := len(v)
	if n < cacheMin || cap(v) != n {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bytes+c.size(n) > cacheMax {
		return
	}
	c.free[n] = append(c.free[n], v)
	c.bytes += c.size(n)
}

// parallelFor splits [0,n) into contiguous chunks of at least minChunk and runs
// them on up to GOMAXPROCS goroutines.
func parallelFor(n, minChunk int, fn func(lo, hi int)) {
	workers := runtime.GOMAXPROCS(0)
	if minChunk < 1 {
		minChunk = 1
	}
	if w := n / minChunk; w < workers {
		workers = w
	}
	if workers <= 1 {
		if n > 0 {
			fn(0, n)
		}
		return
	}
	var wg sync.WaitGroup
	chunk := (n + workers - 1) / workers
	for lo := 0; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			fn(lo, hi)
		}(lo, hi)
	}
	wg.Wait()
}
