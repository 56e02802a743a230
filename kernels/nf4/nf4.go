// Package nf4 is the 4-bit NormalFloat (NF4) quantization of QLoRA
// (Dettmers et al., 2023) as bitsandbytes implements it: blocks of 64
// values scaled by their absolute maximum, each value replaced by the
// nearest of 16 code values, two codes per byte, and the block scales
// themselves double-quantized (minus their mean, 8-bit dynamic code in
// blocks of 256, one f32 scale per 256).
//
// Layout (as bitsandbytes stores a quantized tensor, flattened row-major):
//
//	Packed[i/2]   element i's 4-bit code: the HIGH nibble for even i, the
//	              low nibble for odd i (kQuantizeBlockwise: q[2j]<<4 | q[2j+1])
//	QAbsmax[b]    block b's (elements 64b..64b+63) absmax, minus Offset,
//	              as an index into DynamicMap scaled by Absmax2[b/256]
//	Absmax2[c]    absolute maximum of (absmax − Offset) over blocks 256c..
//	Offset        mean of all block absmax values
//
// so element i dequantizes to Code[q_i] · (DynamicMap[QAbsmax[b]]·Absmax2[b/256] + Offset)
// with b = i/64, every product and sum in f32 (bitsandbytes' dequantize_4bit
// with compress_statistics=True). BF16 outputs round that f32 value to
// nearest even.
//
// The package is a leaf: the GEMM packing (kernels/cpu/gemm) reads a Tensor
// block by block, so a quantized weight never exists as a whole in f32 or
// bf16.
package nf4

import (
	"fmt"
	"math"
	"runtime"
	"sync"
)

// BlockSize is the number of values sharing one absmax (bitsandbytes'
// QLoRA default).
const BlockSize = 64

// ScaleBlockSize is the number of block absmax values sharing one
// second-level scale in the double quantization.
const ScaleBlockSize = 256

// Code is the NF4 code table, as float32 constants exactly as in
// bitsandbytes (dDequantizeNF4): the quantiles of N(0,1) normalized to
// [-1, 1], 7 negative and 8 positive halves with an exact zero.
var Code = [16]float32{
	-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
	-0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
	0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
	0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
}

// thresholds are the decision points of bitsandbytes' dQuantizeNF4 tree
// (the midpoints of adjacent codes, as its float32 literals), ascending: a
// scaled value x gets the code with index #{t : x > t}. Ties go to the
// lower code, NaN to code 0, like the tree.
var thresholds = [15]float32{
	-0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
	-0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
	0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
	0.5016634166240692, 0.6427869200706482, 0.8614784181118011,
}

// QuantizeValue returns the NF4 code index of x (a value already divided
// by its block's absmax), walking the same 4-level tree as bitsandbytes.
func QuantizeValue(x float32) uint8 {
	// Branch-free descent (each level a compare and a SETcc): weights are
	// noise to a branch predictor.
	t := &thresholds
	q := b2i(x > t[7]) << 3
	q += b2i(x > t[q+3]) << 2
	q += b2i(x > t[q+1]) << 1
	q += b2i(x > t[q])
	return uint8(q)
}

func b2i(b bool) int {
	var i int
	if b {
		i = 1
	}
	return i
}

// DynamicMap is the code of bitsandbytes' 8-bit blockwise quantization
// (used here for the block scales): create_dynamic_map(signed=True,
// max_exponent_bits=7, total_bits=8), that is for i = 0..6 the 2^i
// midpoints of linspace(0.1, 1, 2^i+1) times ±10^(i-6), plus 0 and 1,
// sorted. The constants are the float32 values torch computes for it
// (torch 1.13 on x86-64, as bitsandbytes builds the map at run time);
// torch's vectorized linspace rounds differently from a plain float32 loop
// in the last bit of 40 of them, so the map is spelled out rather than
// recomputed. TestDynamicMap checks it against the definition in float64
// (within 2 float32 ulps) and against tools/golden/nf4_ref.py's torch map
// (exactly).
var DynamicMap = [256]float32{
	-0.992968738079071, -0.9789062142372131, -0.96484375, -0.9507812261581421, -0.9367187023162842, -0.922656238079071,
	-0.9085937738418579, -0.89453125, -0.8804687261581421, -0.8664062023162842, -0.852343738079071, -0.8382812142372131,
	-0.82421875, -0.8101562261581421, -0.7960937023162842, -0.782031238079071, -0.7679687738418579, -0.75390625,
	-0.7398437857627869, -0.725781261920929, -0.7117187976837158, -0.6976562738418579, -0.68359375, -0.6695312857627869,
	-0.655468761920929, -0.641406238079071, -0.6273437738418579, -0.61328125, -0.5992187261581421, -0.585156261920929,
	-0.5710937976837158, -0.5570312738418579, -0.54296875, -0.5289062261581421, -0.514843761920929, -0.500781238079071,
	-0.4867187738418579, -0.47265625, -0.4585937261581421, -0.44453126192092896, -0.43046873807907104, -0.41640621423721313,
	-0.40234375, -0.3882812261581421, -0.37421876192092896, -0.36015623807907104, -0.34609371423721313, -0.33203125,
	-0.3179687261581421, -0.30390626192092896, -0.28984373807907104, -0.2757812738418579, -0.26171875, -0.24765625596046448,
	-0.23359376192092896, -0.21953125298023224, -0.20546874403953552, -0.19140625, -0.17734374105930328, -0.16328124701976776,
	-0.14921875298023224, -0.13515624403953552, -0.12109375, -0.10703125596046448, -0.09859374910593033, -0.09578124433755875,
	-0.09296875447034836, -0.09015624970197678, -0.08734375238418579, -0.08453124761581421, -0.08171874284744263, -0.07890625298023224,
	-0.07609374821186066, -0.07328125089406967, -0.07046874612569809, -0.0676562562584877, -0.06484375149011612, -0.06203124672174454,
	-0.05921875312924385, -0.05640624836087227, -0.053593751043081284, -0.05078125, -0.047968748956918716, -0.04515625163912773,
	-0.04234374687075615, -0.039531249552965164, -0.03671875223517418, -0.0339062474668026, -0.031093750149011612, -0.02828124724328518,
	-0.025468749925494194, -0.02265625074505806, -0.019843749701976776, -0.017031250521540642, -0.014218750409781933, -0.011406250298023224,
	-0.009718749672174454, -0.009156249463558197, -0.008593750186264515, -0.008031249977648258, -0.0074687497690320015, -0.006906250026077032,
	-0.006343749817460775, -0.005781250074505806, -0.0052187503315508366, -0.0046562496572732925, -0.004093749914318323, -0.0035312497057020664,
	-0.002968749962747097, -0.002406249986961484, -0.001843750011175871, -0.001281249918974936, -0.0009437500848434865, -0.0008312499849125743,
	-0.0007187500596046448, -0.0006062500760890543, -0.000493750034365803, -0.0003812500217463821, -0.0002687500382307917, -0.00015625001105945557,
	-8.874999912222847e-5, -6.625000241911039e-5, -4.374999844003469e-5, -2.1249998098937795e-5, -7.749999895168003e-6, -3.250000190746505e-6,
	-5.500000384017767e-7, 0.0, 5.500000384017767e-7, 3.250000190746505e-6, 7.749999895168003e-6, 2.1249998098937795e-5,
	4.374999844003469e-5, 6.625000241911039e-5, 8.874999912222847e-5, 0.00015625001105945557, 0.0002687500382307917, 0.0003812500217463821,
	0.000493750034365803, 0.0006062500760890543, 0.0007187500596046448, 0.0008312499849125743, 0.0009437500848434865, 0.001281249918974936,
	0.001843750011175871, 0.002406249986961484, 0.002968749962747097, 0.0035312497057020664, 0.004093749914318323, 0.0046562496572732925,
	0.0052187503315508366, 0.005781250074505806, 0.006343749817460775, 0.006906250026077032, 0.0074687497690320015, 0.008031249977648258,
	0.008593750186264515, 0.009156249463558197, 0.009718749672174454, 0.011406250298023224, 0.014218750409781933, 0.017031250521540642,
	0.019843749701976776, 0.02265625074505806, 0.025468749925494194, 0.02828124724328518, 0.031093750149011612, 0.0339062474668026,
	0.03671875223517418, 0.039531249552965164, 0.04234374687075615, 0.04515625163912773, 0.047968748956918716, 0.05078125,
	0.053593751043081284, 0.05640624836087227, 0.05921875312924385, 0.06203124672174454, 0.06484375149011612, 0.0676562562584877,
	0.07046874612569809, 0.07328125089406967, 0.07609374821186066, 0.07890625298023224, 0.08171874284744263, 0.08453124761581421,
	0.08734375238418579, 0.09015624970197678, 0.09296875447034836, 0.09578124433755875, 0.09859374910593033, 0.10703125596046448,
	0.12109375, 0.13515624403953552, 0.14921875298023224, 0.16328124701976776, 0.17734374105930328, 0.19140625,
	0.20546874403953552, 0.21953125298023224, 0.23359376192092896, 0.24765625596046448, 0.26171875, 0.2757812738418579,
	0.28984373807907104, 0.30390626192092896, 0.3179687261581421, 0.33203125, 0.34609371423721313, 0.36015623807907104,
	0.37421876192092896, 0.3882812261581421, 0.40234375, 0.41640621423721313, 0.43046873807907104, 0.44453126192092896,
	0.4585937261581421, 0.47265625, 0.4867187738418579, 0.500781238079071, 0.514843761920929, 0.5289062261581421,
	0.54296875, 0.5570312738418579, 0.5710937976837158, 0.585156261920929, 0.5992187261581421, 0.61328125,
	0.6273437738418579, 0.641406238079071, 0.655468761920929, 0.6695312857627869, 0.68359375, 0.6976562738418579,
	0.7117187976837158, 0.725781261920929, 0.7398437857627869, 0.75390625, 0.7679687738418579, 0.782031238079071,
	0.7960937023162842, 0.8101562261581421, 0.82421875, 0.8382812142372131, 0.852343738079071, 0.8664062023162842,
	0.8804687261581421, 0.89453125, 0.9085937738418579, 0.922656238079071, 0.9367187023162842, 0.9507812261581421,
	0.96484375, 0.9789062142372131, 0.992968738079071, 1.0,
}

// quantize8 returns the index of the DynamicMap value nearest to x (ties:
// the lower index), after clamping x to [-1, 1] — bitsandbytes'
// quantize_blockwise on its CPU/default backend (argmin |x − code|).
func quantize8(x float32) uint8 {
	x = min(max(x, -1), 1)
	// Binary search for the first code ≥ x, then compare the neighbours.
	lo, hi := 0, 255
	for lo < hi {
		mid := (lo + hi) / 2
		if DynamicMap[mid] < x {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	best := lo
	if lo > 0 {
		// argmin keeps the first of equal distances: prefer lo-1 on ties.
		if abs32(x-DynamicMap[lo-1]) <= abs32(DynamicMap[lo]-x) {
			best = lo - 1
		}
	}
	if math.IsNaN(float64(x)) {
		return 0
	}
	return uint8(best)
}

func abs32(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }

// Tensor is an NF4-quantized tensor of N values (see the package comment
// for the layout). It is read-only once made. Quantize and QuantizeBF16
// keep Packed and QAbsmax outside the Go heap (an anonymous mapping on
// unix): Free releases them.
type Tensor struct {
	N       int
	Packed  []byte    // (N+1)/2 bytes
	QAbsmax []uint8   // ceil(N/BlockSize)
	Absmax2 []float32 // ceil(len(QAbsmax)/ScaleBlockSize)
	Offset  float32

	free func()
}

// Free releases the tensor's storage now; it must not be used afterwards
// (its slices point at unmapped memory). Harmless twice or on a Tensor made
// by hand.
func (t *Tensor) Free() {
	if t.free != nil {
		t.free()
		t.free = nil
	}
	t.Packed, t.QAbsmax, t.N = nil, nil, 0
}

// Bytes is the tensor's storage size.
func (t *Tensor) Bytes() int64 {
	return int64(len(t.Packed)) + int64(len(t.QAbsmax)) + 4*int64(len(t.Absmax2)) + 4
}

// StorageBytes is the size of an n-value tensor's storage (for memory plans).
func StorageBytes(n int64) int64 {
	blocks := (n + BlockSize - 1) / BlockSize
	return (n+1)/2 + blocks + 4*((blocks+ScaleBlockSize-1)/ScaleBlockSize) + 4
}

// Quantize quantizes f32 values.
func Quantize(v []float32) *Tensor {
	return quantize(len(v), func(dst []float32, off int) { copy(dst, v[off:]) })
}

// QuantizeBF16 quantizes bfloat16 values (for example a weight inside a
// memory-mapped safetensors file), reading them 64 at a time: the source is
// never widened as a whole.
func QuantizeBF16(v []uint16) *Tensor {
	return quantize(len(v), func(dst []float32, off int) {
		for i := range dst {
			dst[i] = math.Float32frombits(uint32(v[off+i]) << 16)
		}
	})
}

// quantize runs the two passes: blocks of 64 to codes and f32 absmax
// (parallel over the cores), then the double quantization of the absmax
// values. read(dst, off) fills dst with values off..off+len(dst)-1.
func quantize(n int, read func(dst []float32, off int)) *Tensor {
	blocks := (n + BlockSize - 1) / BlockSize
	np := (n + 1) / 2
	mem, free := allocBytes(np + blocks)
	t := &Tensor{N: n, Packed: mem[:np:np], QAbsmax: mem[np:],
		Absmax2: make([]float32, (blocks+ScaleBlockSize-1)/ScaleBlockSize), free: free}
	absmax := make([]float32, blocks)
	parallel(blocks, func(lo, hi int) {
		var buf [BlockSize]float32
		for b := lo; b < hi; b++ {
			off := b * BlockSize
			vals := buf[:min(BlockSize, n-off)]
			read(vals, off)
			var m float32
			for _, x := range vals {
				m = max(m, abs32(x))
			}
			absmax[b] = m
			inv := 1 / m // as the CUDA kernel: multiply by the reciprocal (0 → NaN → code 0)
			for j := 0; j < len(vals); j += 2 {
				q := QuantizeValue(vals[j]*inv) << 4
				if j+1 < len(vals) {
					q |= QuantizeValue(vals[j+1] * inv)
				}
				t.Packed[(off+j)/2] = q
			}
		}
	})
	// Double quantization: absmax − mean, 8-bit dynamic code per 256.
	var sum float64
	for _, a := range absmax {
		sum += float64(a)
	}
	if blocks > 0 {
		t.Offset = float32(sum / float64(blocks))
	}
	for c := range t.Absmax2 {
		lo, hi := c*ScaleBlockSize, min((c+1)*ScaleBlockSize, blocks)
		var m float32
		for _, a := range absmax[lo:hi] {
			m = max(m, abs32(a-t.Offset))
		}
		t.Absmax2[c] = m
		inv := 1 / m
		for b := lo; b < hi; b++ {
			t.QAbsmax[b] = quantize8((absmax[b] - t.Offset) * inv)
		}
	}
	return t
}

// parallel splits [0, n) over the cores.
func parallel(n int, fn func(lo, hi int)) {
	threads := min(runtime.GOMAXPROCS(0), max(n/1024, 1))
	if threads <= 1 {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	for t := 0; t < threads; t++ {
		lo, hi := t*n/threads, (t+1)*n/threads
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(lo, hi)
		}()
	}
	wg.Wait()
}

// Absmax is block b's dequantized scale: DynamicMap[q]·Absmax2 + Offset,
// in f32 as bitsandbytes computes it.
func (t *Tensor) Absmax(b int) float32 {
	// The explicit conversion rounds the product: no fused multiply-add,
	// as bitsandbytes (dequantize_blockwise, then += offset).
	return float32(DynamicMap[t.QAbsmax[b]]*t.Absmax2[b/ScaleBlockSize]) + t.Offset
}

// Code4 is element i's 4-bit code.
func (t *Tensor) Code4(i int) uint8 {
	b := t.Packed[i>>1]
	if i&1 == 0 {
		return b >> 4
	}
	return b & 15
}

// At is element i dequantized (f32).
func (t *Tensor) At(i int) float32 { return Code[t.Code4(i)] * t.Absmax(i/BlockSize) }

// DequantizeF32 writes elements off..off+len(dst)-1 into dst.
func (t *Tensor) DequantizeF32(dst []float32, off int) {
	t.check(off, len(dst))
	for len(dst) > 0 {
		b := off / BlockSize
		n := min(len(dst), (b+1)*BlockSize-off)
		var lut [16]float32
		s := t.Absmax(b)
		for i, c := range Code {
			lut[i] = c * s
		}
		d := dst[:n]
		i := off
		if i&1 == 1 {
			d[0] = lut[t.Packed[i>>1]&15]
			d = d[1:]
			i++
		}
		p := t.Packed[i>>1:]
		for j := 0; j+1 < len(d); j += 2 {
			q := p[j>>1]
			d[j], d[j+1] = lut[q>>4], lut[q&15]
		}
		if len(d)&1 == 1 {
			d[len(d)-1] = lut[p[(len(d)-1)>>1]>>4]
		}
		dst, off = dst[n:], off+n
	}
}

// DequantizeBF16 writes elements off..off+len(dst)-1 into dst as bf16 bits
// (the f32 value rounded to nearest even).
func (t *Tensor) DequantizeBF16(dst []uint16, off int) {
	t.check(off, len(dst))
	for len(dst) > 0 {
		b := off / BlockSize
		n := min(len(dst), (b+1)*BlockSize-off)
		var lut [16]uint16
		s := t.Absmax(b)
		for i, c := range Code {
			lut[i] = F32ToBF16(c * s)
		}
		d := dst[:n]
		i := off
		if i&1 == 1 {
			d[0] = lut[t.Packed[i>>1]&15]
			d = d[1:]
			i++
		}
		p := t.Packed[i>>1:]
		for j := 0; j+1 < len(d); j += 2 {
			q := p[j>>1]
			d[j], d[j+1] = lut[q>>4], lut[q&15]
		}
		if len(d)&1 == 1 {
			d[len(d)-1] = lut[p[(len(d)-1)>>1]>>4]
		}
		dst, off = dst[n:], off+n
	}
}

func (t *Tensor) check(off, n int) {
	if off < 0 || n < 0 || off+n > t.N {
		panic(fmt.Sprintf("nf4: elements [%d, %d) outside a tensor of %d", off, off+n, t.N))
	}
}

// F32ToBF16 rounds to nearest even (NaN stays NaN), as kernels.F32ToBF16.
func F32ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	return uint16((u + 0x7fff + (u>>16)&1) >> 16)
}
