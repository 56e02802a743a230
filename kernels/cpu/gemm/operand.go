package gemm

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/llamatune/llamatune/kernels/nf4"
)

// Operand is a row-major matrix stored as float32, as bfloat16 bits or as
// an NF4-quantized tensor (exactly one of F32, BF16 and NF4 is set). A bf16
// operand is read in place: its values are widened (or paired for the bf16
// kernel) as they are packed, so a frozen bf16 weight is never copied to
// f32 as a whole. An NF4 operand (a frozen QLoRA base weight) is
// dequantized the same way, only the runs a panel needs at a time: to f32
// (code·absmax) for f32 panels, to that value rounded to bf16 for the bf16
// kernel's pair panels and in BF16 precision.
type Operand struct {
	F32  []float32
	BF16 []uint16
	NF4  *nf4.Tensor
}

func (o Operand) len() int {
	switch {
	case o.NF4 != nil:
		return o.NF4.N
	case o.BF16 != nil:
		return len(o.BF16)
	}
	return len(o.F32)
}

// ToBF16 writes dst[i] = bf16(src[i]) (round to nearest even) for
// i < len(src), as the GEMM rounds its operands in BF16 precision:
// vcvtneps2bf16 where the bf16 kernel runs (denormals flush to zero, as its
// products treat them), else the same rounding in Go. A value stored with
// it is the exact operand a BF16-precision GEMM would make of src.
func ToBF16(dst []uint16, src []float32) { toBF16(dst, src) }

// Precision is how a product is computed.
type Precision uint8

const (
	// F32: operands as they are (bf16 widened exactly), f32 products and sums.
	F32 Precision = iota
	// BF16: operands rounded to bf16 (round to nearest even), exact
	// products, f32 accumulation: the semantics of a bf16 tensor-core or
	// AVX512_BF16 GEMM. Without AVX512_BF16 the rounded values are widened
	// and the f32 kernel runs (same values, up to summation order).
	BF16
)

func (p Precision) String() string {
	if p == BF16 {
		return "bf16"
	}
	return "f32"
}

// Gemm computes C = alpha*op(A)*op(B) + beta*C like Sgemm, for operands in
// f32 or bf16 storage and in precision prec (see Precision).
func Gemm(prec Precision, transA, transB bool, m, n, k int, alpha float32, a Operand, lda int, b Operand, ldb int, beta float32, c []float32, ldc int) {
	if prec == F32 && a.F32 != nil && b.F32 != nil {
		Sgemm(transA, transB, m, n, k, alpha, a.F32, lda, b.F32, ldb, beta, c, ldc)
		return
	}
	checkDims(transA, transB, m, n, k, a.len(), lda, b.len(), ldb, len(c), ldc)
	if m == 0 || n == 0 {
		return
	}
	if k == 0 || alpha == 0 {
		scaleC(m, n, beta, c, ldc)
		return
	}
	if int64(m)*int64(n)*int64(k) <= smallWork {
		// Tiny: f32 copies of the (small) operands and the reference loops.
		ra, rb := m*k, k*n
		SgemmRef(transA, transB, m, n, k, alpha, widen(a, prec, ra, lda, transA, m, k), ldOf(transA, m, k),
			widen(b, prec, rb, ldb, transB, k, n), ldOf(transB, k, n), beta, c, ldc)
		return
	}
	run(&problem{prec: prec, transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
		a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc})
}

// ldOf is the row stride of a dense copy of op(X) (rows×cols, stored
// transposed when trans).
func ldOf(trans bool, rows, cols int) int {
	if trans {
		return rows
	}
	return cols
}

// widen copies a stored rows×cols operand (cols×rows when trans) densely as
// f32, rounding to bf16 in BF16 precision.
func widen(o Operand, prec Precision, n, ld int, trans bool, rows, cols int) []float32 {
	sr, sc := rows, cols
	if trans {
		sr, sc = cols, rows
	}
	out := make([]float32, 0, n)
	for i := 0; i < sr; i++ {
		for j := 0; j < sc; j++ {
			out = append(out, value(o, i*ld+j, prec == BF16))
		}
	}
	return out
}

// value reads element i of o as f32 (rounded to bf16 when round).
func value(o Operand, i int, round bool) float32 {
	if o.NF4 != nil {
		v := o.NF4.At(i)
		if round {
			v = bf16ToF32(f32ToBF16(v))
		}
		return v
	}
	if o.BF16 != nil {
		return bf16ToF32(o.BF16[i])
	}
	if round {
		return bf16ToF32(f32ToBF16(o.F32[i]))
	}
	return o.F32[i]
}

// packPanel fills one w-wide micro-panel from n runs of op(X) starting at
// element off of x (stride ld between runs when alongP, else between k
// steps): element (r, p) for r < n, p < kb is x[off+r*ld+p] when alongP,
// x[off+p*ld+r] otherwise; runs n..w-1 are zero.
//
// Without pairs the panel is f32: panel[p*w+r], bf16 widened exactly and
// f32 rounded to bf16 when the problem's precision is BF16 (the caller only
// uses this path then, or for bf16 storage). With pairs (the bf16 kernel)
// the panel holds (kb+1)/2 rows of w 32-bit slots: slot [q*w+r] has element
// (r, 2q) in its low half and (r, 2q+1) in its high half (zero past kb).
//
// round says the problem's precision is BF16; packPanel only needs it for
// NF4 storage (see packNF4).
func packPanel(ws *workspace, panel []float32, w int, x Operand, off, ld, n, kb int, alongP, pairs, round bool) {
	switch {
	case x.NF4 != nil:
		packNF4(ws.scratch(), panel, w, x.NF4, off, ld, n, kb, alongP, pairs, round)
		return
	case pairs && x.F32 != nil:
		packF32Pairs(ws.scratch(), panel, w, x.F32, off, ld, n, kb, alongP)
		return
	case pairs:
		packBF16Pairs(panel, w, x.BF16, off, ld, n, kb, alongP)
		return
	case x.BF16 != nil && alongP:
		packBF16Widen(ws.scratch(), panel, w, x.BF16, off, ld, n, kb)
		return
	}
	// f32 panels from f32 rounded to bf16, or from bf16 read across k.
	panel = panel[:kb*w]
	conv := func(d []float32, lo, hi, stride int) { // d[j*stride] = x[lo+j], j < hi-lo
		if x.BF16 != nil {
			for j, h := range x.BF16[lo:hi] {
				d[j*stride] = bf16ToF32(h)
			}
			return
		}
		for j, f := range x.F32[lo:hi] {
			d[j*stride] = bf16ToF32(f32ToBF16(f))
		}
	}
	if alongP {
		for r := 0; r < n; r++ {
			conv(panel[r:], off+r*ld, off+r*ld+kb, w)
		}
	} else {
		for p := 0; p < kb; p++ {
			conv(panel[p*w:], off+p*ld, off+p*ld+n, 1)
		}
	}
	if n < w {
		for p := 0; p < kb; p++ {
			clear(panel[p*w+n : p*w+w])
		}
	}
}

// packBF16Pairs fills a pair panel from bf16 storage. Read along p (a
// weight W [out, in] as op(B) of x·Wᵀ, the most frequent packing of a LoRA
// step) a pair is two adjacent values, one 32-bit word, so the panel is a
// 32-bit transpose (transposeRuns) where the words are aligned; read across
// p (W as op(B) of dy·W) it interleaves the words of two rows
// (interleavePanel). An odd last pair has a zero high half.
func packBF16Pairs(panel []float32, w int, x []uint16, off, ld, n, kb int, alongP bool) {
	kp, whole := (kb+1)/2, kb/2
	slots := unsafe.Slice((*uint32)(unsafe.Pointer(&panel[0])), kp*w)
	switch {
	case alongP && off%2 == 0 && ld%2 == 0 && whole > 0:
		words := unsafe.Slice((*float32)(unsafe.Pointer(&x[0])), len(x)/2)
		transposeRuns(panel, w, words[off/2:], ld/2, n, whole)
	case alongP:
		for r := 0; r < n; r++ {
			s := x[off+r*ld : off+r*ld+2*whole]
			for q := 0; q < whole; q++ {
				slots[q*w+r] = uint32(s[2*q]) | uint32(s[2*q+1])<<16
			}
		}
	default:
		interleavePanel(slots, w, x[off:], ld, n, whole)
	}
	if kb%2 == 1 { // the last pair holds one value
		last := slots[(kp-1)*w : kp*w]
		for r := range last {
			last[r] = 0
			if r < n {
				i := off + (kb-1)*ld + r
				if alongP {
					i = off + r*ld + kb - 1
				}
				last[r] = uint32(x[i])
			}
		}
	}
	if n < w {
		for q := 0; q < whole; q++ {
			clear(slots[q*w+n : q*w+w])
		}
	}
}

// packTmp bounds the k values the converting packers take at once (every
// kernel's kc is at most this).
const packTmp = 512

// scratch is the worker's conversion buffer for packPanel: 32 runs of
// packTmp+2 bf16 values (also viewed as 4 runs of packTmp f32). It is
// allocated once per workspace: a fresh array per panel would be zeroed
// every call.
func (ws *workspace) scratch() []uint16 {
	if ws.conv == nil {
		ws.conv = make([]uint16, 32*(packTmp+2))
	}
	return ws.conv
}

// packBF16Widen fills an f32 panel from bf16 storage read along p (a
// weight as op(B) of x·Wᵀ in f32 compute): four runs at a time are widened
// into scratch and transposed (transpose4).
func packBF16Widen(scratch []uint16, panel []float32, w int, x []uint16, off, ld, n, kb int) {
	checkPackTmp(kb, n)
	tmp := unsafe.Slice((*float32)(unsafe.Pointer(&scratch[0])), 4*packTmp)
	panel = panel[:kb*w]
	for r := 0; r < n; r += 4 {
		rows := min(4, n-r)
		for i := 0; i < rows; i++ {
			t := tmp[i*kb : (i+1)*kb]
			for p, h := range x[off+(r+i)*ld : off+(r+i)*ld+kb] {
				t[p] = bf16ToF32(h)
			}
		}
		if rows == 4 {
			transpose4(panel[r:], w, tmp, kb, kb)
			continue
		}
		for i := 0; i < rows; i++ {
			for p, v := range tmp[i*kb : (i+1)*kb] {
				panel[p*w+r+i] = v
			}
		}
	}
	if n < w {
		for p := 0; p < kb; p++ {
			clear(panel[p*w+n : p*w+w])
		}
	}
}

// packF32Pairs is packPanel's path for f32 storage into pair panels (the
// activations of a bf16 GEMM): each run is first rounded to bf16 as a whole
// (toBF16: one vcvtneps2bf16 per 16 values on AVX512_BF16), then the words
// are paired — by the 32-bit transpose along p, by interleaving two rows
// otherwise.
func packF32Pairs(scratch []uint16, panel []float32, w int, x []float32, off, ld, n, kb int, alongP bool) {
	checkPackTmp(kb, n)
	kp := (kb + 1) / 2
	if alongP {
		tmp := scratch
		kbe := 2 * kp // row stride in tmp: whole pairs, the odd tail zero
		for r := 0; r < n; r++ {
			row := tmp[r*kbe : r*kbe+kbe]
			toBF16(row, x[off+r*ld:off+r*ld+kb])
			if kb < kbe {
				row[kb] = 0
			}
		}
		words := unsafe.Slice((*float32)(unsafe.Pointer(&tmp[0])), len(tmp)/2)
		transposeRuns(panel, w, words, kp, n, kp)
		return
	}
	// Runs are short (n ≤ 32): copied into 32-wide f32 rows first, so the
	// conversion always takes whole blocks of 16.
	t0, t1 := scratch[:32], scratch[32:64]
	f := unsafe.Slice((*float32)(unsafe.Pointer(&scratch[64])), 64)
	f0, f1 := f[:32], f[32:]
	m := (n + 15) &^ 15
	clear(f0[n:m])
	clear(f1[n:m])
	slots := unsafe.Slice((*uint32)(unsafe.Pointer(&panel[0])), kp*w)
	for q := 0; q < kp; q++ {
		lo := off + 2*q*ld
		copy(f0, x[lo:lo+n])
		toBF16(t0[:m], f0[:m])
		if 2*q+1 < kb {
			copy(f1, x[lo+ld:lo+ld+n])
			toBF16(t1[:m], f1[:m])
		} else {
			clear(t1[:n])
		}
		row := slots[q*w : q*w+w]
		interleave(row[:n], t0[:n], t1[:n])
		clear(row[n:])
	}
}

// checkPackTmp panics unless a block of kb k values and n runs fits the
// converting packers' scratch (kc ≤ packTmp, register tiles ≤ 32 wide).
func checkPackTmp(kb, n int) {
	if kb > packTmp || n > 32 {
		panic(fmt.Sprintf("gemm: packing %d runs of %d values, scratch holds 32 of %d", n, kb, packTmp))
	}
}

// f32ToBF16 rounds to nearest even (NaN stays NaN); the same conversion as
// kernels.F32ToBF16, repeated here so gemm stays a leaf package.
func f32ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	return uint16((u + 0x7fff + (u>>16)&1) >> 16)
}

func bf16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// checkDims panics when an operand of the given length is too short for its
// dimensions and stride.
func checkDims(transA, transB bool, m, n, k, la, lda, lb, ldb, lc, ldc int) {
	if m < 0 || n < 0 || k < 0 {
		panic(fmt.Sprintf("gemm: negative dimension m=%d n=%d k=%d", m, n, k))
	}
	ar, ac := m, k
	if transA {
		ar, ac = k, m
	}
	br, bc := k, n
	if transB {
		br, bc = n, k
	}
	check := func(name string, l, rows, cols, ld int) {
		if rows == 0 || cols == 0 {
			return
		}
		if ld < cols {
			panic(fmt.Sprintf("gemm: ld%s=%d < %d columns", name, ld, cols))
		}
		if need := (rows-1)*ld + cols; l < need {
			panic(fmt.Sprintf("gemm: len(%s)=%d < %d needed for %d×%d with ld=%d", name, l, need, rows, cols, ld))
		}
	}
	if m > 0 && n > 0 && k > 0 {
		check("a", la, ar, ac, lda)
		check("b", lb, br, bc, ldb)
	}
	check("c", lc, m, n, ldc)
}

// packNF4 is packPanel's path for NF4 storage (a frozen QLoRA weight): the
// runs the panel needs are dequantized into scratch, then placed as bf16 or
// f32 storage would be. Pair panels get bf16 values (code·absmax rounded to
// nearest even) paired by packBF16Pairs; f32 panels get the f32 values,
// rounded to bf16 when round (BF16 precision on the f32 kernels). Either
// way only 64-value blocks of the tensor are touched, never a whole copy.
func packNF4(scratch []uint16, panel []float32, w int, t *nf4.Tensor, off, ld, n, kb int, alongP, pairs, round bool) {
	checkPackTmp(kb, n)
	if pairs {
		if alongP {
			// n runs of kb values along p, at an even stride so that
			// pairs are aligned 32-bit words (packBF16Pairs' fast path).
			kbe := kb + kb&1
			for r := 0; r < n; r++ {
				t.DequantizeBF16(scratch[r*kbe:r*kbe+kb], off+r*ld)
			}
			packBF16Pairs(panel, w, scratch, 0, kbe, n, kb, true)
			return
		}
		// kb runs of n values across p (W as op(B) of dy·W).
		for p := 0; p < kb; p++ {
			t.DequantizeBF16(scratch[p*n:p*n+n], off+p*ld)
		}
		packBF16Pairs(panel, w, scratch, 0, n, n, kb, false)
		return
	}
	panel = panel[:kb*w]
	roundAll := func(v []float32) {
		if round {
			for i, f := range v {
				v[i] = bf16ToF32(f32ToBF16(f))
			}
		}
	}
	if alongP {
		// Four runs at a time into scratch, then transposed (transpose4).
		tmp := unsafe.Slice((*float32)(unsafe.Pointer(&scratch[0])), 4*packTmp)
		for r := 0; r < n; r += 4 {
			rows := min(4, n-r)
			for i := 0; i < rows; i++ {
				run := tmp[i*kb : (i+1)*kb]
				t.DequantizeF32(run, off+(r+i)*ld)
				roundAll(run)
			}
			if rows == 4 {
				transpose4(panel[r:], w, tmp, kb, kb)
				continue
			}
			for i := 0; i < rows; i++ {
				for p, v := range tmp[i*kb : (i+1)*kb] {
					panel[p*w+r+i] = v
				}
			}
		}
	} else {
		for p := 0; p < kb; p++ {
			run := panel[p*w : p*w+n]
			t.DequantizeF32(run, off+p*ld)
			roundAll(run)
		}
	}
	if n < w {
		for p := 0; p < kb; p++ {
			clear(panel[p*w+n : p*w+w])
		}
	}
}
