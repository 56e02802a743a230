//go:build amd64

#include "textflag.h"
#include "kernel14x32_amd64.h"

// ---------------------------------------------------------------------------
// AVX2 + FMA 6×16 micro-kernel.
//
// Register layout (ymm = 8 float32):
//
//	Y0  Y1     row 0 of the tile: C[0, 0:8], C[0, 8:16]
//	Y2  Y3     row 1
//	Y4  Y5     row 2
//	Y6  Y7     row 3
//	Y8  Y9     row 4
//	Y10 Y11    row 5
//	Y12 Y13    B[p, 0:8], B[p, 8:16] (one row of the packed B micro-panel)
//	Y14 Y15    A[i, p] broadcast to all lanes (alternating, so consecutive
//	           broadcasts do not serialise on one register)
//
// Each step p does 2 vector loads of B, 6 broadcasts of A and 12 FMAs:
// 12 independent accumulators hide the 4-cycle FMA latency on two FMA pipes.
// The packed A panel advances 6 floats (24 bytes) per step, B 16 floats (64).
// ---------------------------------------------------------------------------

// STEP6x16(aoff, boff): one rank-1 update with A at aoff(AX), B at boff(BX).
#define STEP6x16(aoff, boff) \
	VMOVUPS boff(BX), Y12 \
	VMOVUPS (boff+32)(BX), Y13 \
	VBROADCASTSS (aoff+0)(AX), Y14 \
	VFMADD231PS Y12, Y14, Y0 \
	VFMADD231PS Y13, Y14, Y1 \
	VBROADCASTSS (aoff+4)(AX), Y15 \
	VFMADD231PS Y12, Y15, Y2 \
	VFMADD231PS Y13, Y15, Y3 \
	VBROADCASTSS (aoff+8)(AX), Y14 \
	VFMADD231PS Y12, Y14, Y4 \
	VFMADD231PS Y13, Y14, Y5 \
	VBROADCASTSS (aoff+12)(AX), Y15 \
	VFMADD231PS Y12, Y15, Y6 \
	VFMADD231PS Y13, Y15, Y7 \
	VBROADCASTSS (aoff+16)(AX), Y14 \
	VFMADD231PS Y12, Y14, Y8 \
	VFMADD231PS Y13, Y14, Y9 \
	VBROADCASTSS (aoff+20)(AX), Y15 \
	VFMADD231PS Y12, Y15, Y10 \
	VFMADD231PS Y13, Y15, Y11

// ROW16_BETA(lo, hi): row = alpha*acc + beta*row at (DI), then DI += ldc.
// Y14 = alpha, Y15 = beta.
#define ROW16_BETA(lo, hi) \
	VMULPS Y14, lo, lo \
	VMULPS Y14, hi, hi \
	VFMADD231PS (DI), Y15, lo \
	VFMADD231PS 32(DI), Y15, hi \
	VMOVUPS lo, (DI) \
	VMOVUPS hi, 32(DI) \
	ADDQ DX, DI

// ROW16(lo, hi): row = alpha*acc (C not read), then DI += ldc.
#define ROW16(lo, hi) \
	VMULPS Y14, lo, lo \
	VMULPS Y14, hi, hi \
	VMOVUPS lo, (DI) \
	VMOVUPS hi, 32(DI) \
	ADDQ DX, DI

// func sgemmKernel6x16AVX2(k int, a, b, c *float32, ldc int, alpha, beta float32)
TEXT ·sgemmKernel6x16AVX2(SB), NOSPLIT, $0-48
	MOVQ k+0(FP), CX
	MOVQ a+8(FP), AX
	MOVQ b+16(FP), BX
	MOVQ c+24(FP), DI
	MOVQ ldc+32(FP), DX
	SHLQ $2, DX                 // ldc in bytes

	// Warm the C tile (6 rows × 64 bytes) while the k loop runs.
	MOVQ DI, R9
	PREFETCHT0 (R9)
	PREFETCHT0 60(R9)
	ADDQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 60(R9)
	ADDQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 60(R9)
	ADDQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 60(R9)
	ADDQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 60(R9)
	ADDQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 60(R9)

	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	VXORPS Y8, Y8, Y8
	VXORPS Y9, Y9, Y9
	VXORPS Y10, Y10, Y10
	VXORPS Y11, Y11, Y11

	// Main loop: 4 steps per iteration.
	MOVQ CX, R8
	SHRQ $2, R8
	JZ   avx2tail

avx2loop4:
	STEP6x16(0, 0)
	STEP6x16(24, 64)
	STEP6x16(48, 128)
	STEP6x16(72, 192)
	ADDQ $96, AX
	ADDQ $256, BX
	DECQ R8
	JNZ  avx2loop4

avx2tail:
	ANDQ $3, CX
	JZ   avx2store

avx2loop1:
	STEP6x16(0, 0)
	ADDQ $24, AX
	ADDQ $64, BX
	DECQ CX
	JNZ  avx2loop1

avx2store:
	VBROADCASTSS alpha+40(FP), Y14
	MOVL beta+44(FP), R9
	SHLL $1, R9                 // drop the sign bit: zero for +0 and -0
	JZ   avx2store0
	VBROADCASTSS beta+44(FP), Y15
	ROW16_BETA(Y0, Y1)
	ROW16_BETA(Y2, Y3)
	ROW16_BETA(Y4, Y5)
	ROW16_BETA(Y6, Y7)
	ROW16_BETA(Y8, Y9)
	ROW16_BETA(Y10, Y11)
	VZEROUPPER
	RET

avx2store0:
	ROW16(Y0, Y1)
	ROW16(Y2, Y3)
	ROW16(Y4, Y5)
	ROW16(Y6, Y7)
	ROW16(Y8, Y9)
	ROW16(Y10, Y11)
	VZEROUPPER
	RET

// ---------------------------------------------------------------------------
// AVX-512F 14×32 micro-kernel.
//
// Register layout (zmm = 16 float32):
//
//	Z0  Z1     row 0 of the tile: C[0, 0:16], C[0, 16:32]
//	Z2  Z3     row 1
//	...        ...
//	Z26 Z27    row 13
//	Z28 Z29    B[p, 0:16], B[p, 16:32] (one row of the packed B micro-panel)
//	Z30 Z31    A[i, p] broadcast to all lanes (alternating)
//
// Each step p does 2 vector loads of B, 14 broadcasts of A and 28 FMAs, so
// the loads per FMA are about half those of the 6×16 AVX2 kernel and 28
// independent accumulators cover the FMA latency. The packed A panel
// advances 14 floats (56 bytes) per step, B 32 floats (128 bytes).
// ---------------------------------------------------------------------------

// STEP14x32(aoff, boff): one rank-1 update with A at aoff(AX), B at boff(BX).
#define STEP14x32(aoff, boff) \
	VMOVUPS boff(BX), Z28 \
	VMOVUPS (boff+64)(BX), Z29 \
	VBROADCASTSS (aoff+0)(AX), Z30 \
	VFMADD231PS Z28, Z30, Z0 \
	VFMADD231PS Z29, Z30, Z1 \
	VBROADCASTSS (aoff+4)(AX), Z31 \
	VFMADD231PS Z28, Z31, Z2 \
	VFMADD231PS Z29, Z31, Z3 \
	VBROADCASTSS (aoff+8)(AX), Z30 \
	VFMADD231PS Z28, Z30, Z4 \
	VFMADD231PS Z29, Z30, Z5 \
	VBROADCASTSS (aoff+12)(AX), Z31 \
	VFMADD231PS Z28, Z31, Z6 \
	VFMADD231PS Z29, Z31, Z7 \
	VBROADCASTSS (aoff+16)(AX), Z30 \
	VFMADD231PS Z28, Z30, Z8 \
	VFMADD231PS Z29, Z30, Z9 \
	VBROADCASTSS (aoff+20)(AX), Z31 \
	VFMADD231PS Z28, Z31, Z10 \
	VFMADD231PS Z29, Z31, Z11 \
	VBROADCASTSS (aoff+24)(AX), Z30 \
	VFMADD231PS Z28, Z30, Z12 \
	VFMADD231PS Z29, Z30, Z13 \
	VBROADCASTSS (aoff+28)(AX), Z31 \
	VFMADD231PS Z28, Z31, Z14 \
	VFMADD231PS Z29, Z31, Z15 \
	VBROADCASTSS (aoff+32)(AX), Z30 \
	VFMADD231PS Z28, Z30, Z16 \
	VFMADD231PS Z29, Z30, Z17 \
	VBROADCASTSS (aoff+36)(AX), Z31 \
	VFMADD231PS Z28, Z31, Z18 \
	VFMADD231PS Z29, Z31, Z19 \
	VBROADCASTSS (aoff+40)(AX), Z30 \
	VFMADD231PS Z28, Z30, Z20 \
	VFMADD231PS Z29, Z30, Z21 \
	VBROADCASTSS (aoff+44)(AX), Z31 \
	VFMADD231PS Z28, Z31, Z22 \
	VFMADD231PS Z29, Z31, Z23 \
	VBROADCASTSS (aoff+48)(AX), Z30 \
	VFMADD231PS Z28, Z30, Z24 \
	VFMADD231PS Z29, Z30, Z25 \
	VBROADCASTSS (aoff+52)(AX), Z31 \
	VFMADD231PS Z28, Z31, Z26 \
	VFMADD231PS Z29, Z31, Z27

// func sgemmKernel14x32AVX512(k int, a, b, c *float32, ldc int, alpha, beta float32)
TEXT ·sgemmKernel14x32AVX512(SB), NOSPLIT, $0-48
	MOVQ k+0(FP), CX
	MOVQ a+8(FP), AX
	MOVQ b+16(FP), BX
	MOVQ c+24(FP), DI
	MOVQ ldc+32(FP), DX
	SHLQ $2, DX                 // ldc in bytes

	PROLOGUE14x32

	// Main loop: 4 steps per iteration.
	MOVQ CX, R8
	SHRQ $2, R8
	JZ   avx512tail

avx512loop4:
	STEP14x32(0, 0)
	STEP14x32(56, 128)
	STEP14x32(112, 256)
	STEP14x32(168, 384)
	ADDQ $224, AX
	ADDQ $512, BX
	DECQ R8
	JNZ  avx512loop4

avx512tail:
	ANDQ $3, CX
	JZ   avx512store

avx512loop1:
	STEP14x32(0, 0)
	ADDQ $56, AX
	ADDQ $128, BX
	DECQ CX
	JNZ  avx512loop1

avx512store:
	VBROADCASTSS alpha+40(FP), Z28
	MOVL beta+44(FP), R9
	SHLL $1, R9                 // drop the sign bit: zero for +0 and -0
	JZ   avx512store0
	VBROADCASTSS beta+44(FP), Z29
	STORE14x32_BETA

avx512store0:
	STORE14x32

// ---------------------------------------------------------------------------
// Packing helper (SSE, baseline amd64).
//
// func transpose4Runs(dst *float32, w int, src *float32, ld int, n4 int)
//
// Reads four runs (src, src+ld, src+2ld, src+3ld; ld in elements) of 4*n4
// values each and writes them transposed: dst[p*w + r] = run_r[p]. Each
// iteration loads a 4×4 block (runs × p), transposes it in registers with
// unpack/move-half shuffles and stores four 4-value rows of the panel.
// ---------------------------------------------------------------------------
TEXT ·transpose4Runs(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ w+8(FP), DX
	SHLQ $2, DX                 // panel row stride in bytes
	MOVQ src+16(FP), SI         // run 0
	MOVQ ld+24(FP), BX
	SHLQ $2, BX                 // run stride in bytes
	MOVQ n4+32(FP), CX
	LEAQ (SI)(BX*2), R8         // run 2
	LEAQ (DX)(DX*2), R9         // 3 panel rows
	TESTQ CX, CX
	JZ   t4done

t4loop:
	MOVUPS (SI), X0             // r0: p0 p1 p2 p3
	MOVUPS (SI)(BX*1), X1       // r1
	MOVUPS (R8), X2             // r2
	MOVUPS (R8)(BX*1), X3       // r3
	MOVAPS X0, X4
	UNPCKLPS X1, X4             // X4 = r0p0 r1p0 r0p1 r1p1
	UNPCKHPS X1, X0             // X0 = r0p2 r1p2 r0p3 r1p3
	MOVAPS X2, X5
	UNPCKLPS X3, X5             // X5 = r2p0 r3p0 r2p1 r3p1
	UNPCKHPS X3, X2             // X2 = r2p2 r3p2 r2p3 r3p3
	MOVAPS X4, X6
	MOVLHPS X5, X6              // X6 = p0: r0 r1 r2 r3
	MOVHLPS X4, X5              // X5 = p1
	MOVAPS X0, X7
	MOVLHPS X2, X7              // X7 = p2
	MOVHLPS X0, X2              // X2 = p3
	MOVUPS X6, (DI)
	MOVUPS X5, (DI)(DX*1)
	MOVUPS X7, (DI)(DX*2)
	MOVUPS X2, (DI)(R9*1)
	ADDQ $16, SI
	ADDQ $16, R8
	LEAQ (DI)(DX*4), DI
	DECQ CX
	JNZ  t4loop

t4done:
	RET

// ---------------------------------------------------------------------------
// Vector helpers for matrix-vector products (AVX2 + FMA).
// ---------------------------------------------------------------------------

// func sdotAVX2(n int, x, y *float32) float32
// Four 8-wide partial sums (32 values per iteration), then 8, then scalars.
TEXT ·sdotAVX2(SB), NOSPLIT, $0-28
	MOVQ n+0(FP), CX
	MOVQ x+8(FP), SI
	MOVQ y+16(FP), DI
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS X6, X6, X6
	MOVQ CX, R8
	SHRQ $5, R8
	JZ   dot8

dot32:
	VMOVUPS (SI), Y4
	VFMADD231PS (DI), Y4, Y0
	VMOVUPS 32(SI), Y5
	VFMADD231PS 32(DI), Y5, Y1
	VMOVUPS 64(SI), Y4
	VFMADD231PS 64(DI), Y4, Y2
	VMOVUPS 96(SI), Y5
	VFMADD231PS 96(DI), Y5, Y3
	ADDQ $128, SI
	ADDQ $128, DI
	DECQ R8
	JNZ  dot32

dot8:
	MOVQ CX, R8
	ANDQ $31, R8
	SHRQ $3, R8
	JZ   dot1

dot8loop:
	VMOVUPS (SI), Y4
	VFMADD231PS (DI), Y4, Y0
	ADDQ $32, SI
	ADDQ $32, DI
	DECQ R8
	JNZ  dot8loop

dot1:
	ANDQ $7, CX
	JZ   dotsum

dot1loop:
	VMOVSS (SI), X4
	VFMADD231SS (DI), X4, X6
	ADDQ $4, SI
	ADDQ $4, DI
	DECQ CX
	JNZ  dot1loop

dotsum:
	VADDPS Y1, Y0, Y0
	VADDPS Y3, Y2, Y2
	VADDPS Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS X1, X0, X0
	VHADDPS X0, X0, X0
	VHADDPS X0, X0, X0
	VADDSS X6, X0, X0
	VMOVSS X0, ret+24(FP)
	VZEROUPPER
	RET

// func saxpyAVX2(n int, alpha float32, x, y *float32)
// y[i] += alpha*x[i], 32 values per iteration, then 8, then scalars.
TEXT ·saxpyAVX2(SB), NOSPLIT, $0-32
	MOVQ n+0(FP), CX
	VBROADCASTSS alpha+8(FP), Y15
	MOVQ x+16(FP), SI
	MOVQ y+24(FP), DI
	MOVQ CX, R8
	SHRQ $5, R8
	JZ   axpy8

axpy32:
	VMOVUPS (DI), Y0
	VMOVUPS 32(DI), Y1
	VMOVUPS 64(DI), Y2
	VMOVUPS 96(DI), Y3
	VFMADD231PS (SI), Y15, Y0
	VFMADD231PS 32(SI), Y15, Y1
	VFMADD231PS 64(SI), Y15, Y2
	VFMADD231PS 96(SI), Y15, Y3
	VMOVUPS Y0, (DI)
	VMOVUPS Y1, 32(DI)
	VMOVUPS Y2, 64(DI)
	VMOVUPS Y3, 96(DI)
	ADDQ $128, SI
	ADDQ $128, DI
	DECQ R8
	JNZ  axpy32

axpy8:
	MOVQ CX, R8
	ANDQ $31, R8
	SHRQ $3, R8
	JZ   axpy1

axpy8loop:
	VMOVUPS (DI), Y0
	VFMADD231PS (SI), Y15, Y0
	VMOVUPS Y0, (DI)
	ADDQ $32, SI
	ADDQ $32, DI
	DECQ R8
	JNZ  axpy8loop

axpy1:
	ANDQ $7, CX
	JZ   axpydone

axpy1loop:
	VMOVSS (DI), X0
	VFMADD231SS (SI), X15, X0
	VMOVSS X0, (DI)
	ADDQ $4, SI
	ADDQ $4, DI
	DECQ CX
	JNZ  axpy1loop

axpydone:
	VZEROUPPER
	RET

// func copyRunsSSE(dst *float32, w int, src *float32, ld int, kb int)
//
// For p < kb: dst[p*w : p*w+w] = src[p*ld : p*ld+w] (ld in elements), with
// 16-byte moves plus a 2- and/or 1-value tail when w is not a multiple of 4.
TEXT ·copyRunsSSE(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ w+8(FP), DX
	MOVQ src+16(FP), SI
	MOVQ ld+24(FP), BX
	SHLQ $2, BX                 // source stride in bytes
	MOVQ kb+32(FP), CX
	MOVQ DX, R10
	SHRQ $2, R10                // 16-byte chunks per run
	ANDQ $3, DX                 // tail values per run
	TESTQ CX, CX
	JZ   cpdone

cprow:
	MOVQ SI, R8
	MOVQ R10, R9
	TESTQ R9, R9
	JZ   cptail

cpchunk:
	MOVUPS (R8), X0
	MOVUPS X0, (DI)
	ADDQ $16, R8
	ADDQ $16, DI
	DECQ R9
	JNZ  cpchunk

cptail:
	CMPQ DX, $2
	JB   cptail1
	MOVSD (R8), X0
	MOVSD X0, (DI)
	ADDQ $8, R8
	ADDQ $8, DI
	CMPQ DX, $2
	JE   cpnext

cptail1:
	TESTQ DX, DX
	JZ   cpnext
	MOVSS (R8), X0
	MOVSS X0, (DI)
	ADDQ $4, DI

cpnext:
	ADDQ BX, SI
	DECQ CX
	JNZ  cprow

cpdone:
	RET

// ---------------------------------------------------------------------------
// Pair packing helper (SSE2, baseline amd64).
//
// func interleaveBF16(dst *uint32, a, b *uint16, n8 int)
//
// dst[i] = a[i] | b[i]<<16 for i < 8*n8: the bf16 pairs of two k rows
// (punpcklwd/punpckhwd interleave the words of a and b).
// ---------------------------------------------------------------------------
TEXT ·interleaveBF16(SB), NOSPLIT, $0-32
	MOVQ dst+0(FP), DI
	MOVQ a+8(FP), SI
	MOVQ b+16(FP), DX
	MOVQ n8+24(FP), CX
	TESTQ CX, CX
	JZ   ildone

illoop:
	MOVOU (SI), X0
	MOVOU (DX), X1
	MOVO  X0, X2
	PUNPCKLWL X1, X0
	PUNPCKHWL X1, X2
	MOVOU X0, (DI)
	MOVOU X2, 16(DI)
	ADDQ $16, SI
	ADDQ $16, DX
	ADDQ $32, DI
	DECQ CX
	JNZ  illoop

ildone:
	RET

// func interleaveRuns(dst *uint32, w int, src *uint16, ld int, n8 int, kp int)
//
// For q < kp and i < 8*n8: dst[q*w+i] = src[2q*ld+i] | src[(2q+1)*ld+i]<<16
// (w and ld in elements): a whole pair panel from bf16 rows in one call.
TEXT ·interleaveRuns(SB), NOSPLIT, $0-48
	MOVQ dst+0(FP), DI
	MOVQ w+8(FP), R8
	SHLQ $2, R8                 // panel row stride in bytes
	MOVQ src+16(FP), SI
	MOVQ ld+24(FP), R9
	SHLQ $1, R9                 // source row stride in bytes
	MOVQ n8+32(FP), R10
	MOVQ kp+40(FP), R11
	TESTQ R10, R10
	JZ   irdone
	TESTQ R11, R11
	JZ   irdone

irrow:
	MOVQ DI, AX                 // this panel row
	MOVQ SI, BX                 // source row 2q
	LEAQ (SI)(R9*1), DX         // source row 2q+1
	MOVQ R10, CX

irloop:
	MOVOU (BX), X0
	MOVOU (DX), X1
	MOVO  X0, X2
	PUNPCKLWL X1, X0
	PUNPCKHWL X1, X2
	MOVOU X0, (AX)
	MOVOU X2, 16(AX)
	ADDQ $16, BX
	ADDQ $16, DX
	ADDQ $32, AX
	DECQ CX
	JNZ  irloop

	ADDQ R8, DI
	LEAQ (SI)(R9*2), SI
	DECQ R11
	JNZ  irrow

irdone:
	RET

// ---------------------------------------------------------------------------
// Packing helper (AVX-512F).
//
// func transpose16Runs(dst *float32, w int, src *float32, ld int, n16 int)
//
// Reads sixteen runs (src + r*ld, r < 16; ld in elements) of 16*n16 32-bit
// values and writes them transposed: dst[p*w + r] = run_r[p]. Each 16×16
// block is transposed in registers (Z0–Z15 the rows, Z16–Z31 scratch):
// 32-bit unpacks, 64-bit unpacks, then two rounds of 128-bit lane shuffles.
// ---------------------------------------------------------------------------
TEXT ·transpose16Runs(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ w+8(FP), DX
	SHLQ $2, DX                 // panel row stride in bytes
	MOVQ src+16(FP), SI
	MOVQ ld+24(FP), BX
	SHLQ $2, BX                 // run stride in bytes
	MOVQ n16+32(FP), CX
	TESTQ CX, CX
	JZ   t16done

t16block:
	MOVQ SI, R8
	VMOVUPS (R8), Z0
	ADDQ BX, R8
	VMOVUPS (R8), Z1
	ADDQ BX, R8
	VMOVUPS (R8), Z2
	ADDQ BX, R8
	VMOVUPS (R8), Z3
	ADDQ BX, R8
	VMOVUPS (R8), Z4
	ADDQ BX, R8
	VMOVUPS (R8), Z5
	ADDQ BX, R8
	VMOVUPS (R8), Z6
	ADDQ BX, R8
	VMOVUPS (R8), Z7
	ADDQ BX, R8
	VMOVUPS (R8), Z8
	ADDQ BX, R8
	VMOVUPS (R8), Z9
	ADDQ BX, R8
	VMOVUPS (R8), Z10
	ADDQ BX, R8
	VMOVUPS (R8), Z11
	ADDQ BX, R8
	VMOVUPS (R8), Z12
	ADDQ BX, R8
	VMOVUPS (R8), Z13
	ADDQ BX, R8
	VMOVUPS (R8), Z14
	ADDQ BX, R8
	VMOVUPS (R8), Z15
	VUNPCKLPS Z1, Z0, Z16
	VUNPCKHPS Z1, Z0, Z17
	VUNPCKLPS Z3, Z2, Z18
	VUNPCKHPS Z3, Z2, Z19
	VUNPCKLPS Z5, Z4, Z20
	VUNPCKHPS Z5, Z4, Z21
	VUNPCKLPS Z7, Z6, Z22
	VUNPCKHPS Z7, Z6, Z23
	VUNPCKLPS Z9, Z8, Z24
	VUNPCKHPS Z9, Z8, Z25
	VUNPCKLPS Z11, Z10, Z26
	VUNPCKHPS Z11, Z10, Z27
	VUNPCKLPS Z13, Z12, Z28
	VUNPCKHPS Z13, Z12, Z29
	VUNPCKLPS Z15, Z14, Z30
	VUNPCKHPS Z15, Z14, Z31
	VUNPCKLPD Z18, Z16, Z0
	VUNPCKHPD Z18, Z16, Z1
	VUNPCKLPD Z19, Z17, Z2
	VUNPCKHPD Z19, Z17, Z3
	VUNPCKLPD Z22, Z20, Z4
	VUNPCKHPD Z22, Z20, Z5
	VUNPCKLPD Z23, Z21, Z6
	VUNPCKHPD Z23, Z21, Z7
	VUNPCKLPD Z26, Z24, Z8
	VUNPCKHPD Z26, Z24, Z9
	VUNPCKLPD Z27, Z25, Z10
	VUNPCKHPD Z27, Z25, Z11
	VUNPCKLPD Z30, Z28, Z12
	VUNPCKHPD Z30, Z28, Z13
	VUNPCKLPD Z31, Z29, Z14
	VUNPCKHPD Z31, Z29, Z15
	VSHUFI32X4 $0x88, Z4, Z0, Z16
	VSHUFI32X4 $0xdd, Z4, Z0, Z20
	VSHUFI32X4 $0x88, Z5, Z1, Z17
	VSHUFI32X4 $0xdd, Z5, Z1, Z21
	VSHUFI32X4 $0x88, Z6, Z2, Z18
	VSHUFI32X4 $0xdd, Z6, Z2, Z22
	VSHUFI32X4 $0x88, Z7, Z3, Z19
	VSHUFI32X4 $0xdd, Z7, Z3, Z23
	VSHUFI32X4 $0x88, Z12, Z8, Z24
	VSHUFI32X4 $0xdd, Z12, Z8, Z28
	VSHUFI32X4 $0x88, Z13, Z9, Z25
	VSHUFI32X4 $0xdd, Z13, Z9, Z29
	VSHUFI32X4 $0x88, Z14, Z10, Z26
	VSHUFI32X4 $0xdd, Z14, Z10, Z30
	VSHUFI32X4 $0x88, Z15, Z11, Z27
	VSHUFI32X4 $0xdd, Z15, Z11, Z31
	VSHUFI32X4 $0x88, Z24, Z16, Z0
	VSHUFI32X4 $0xdd, Z24, Z16, Z8
	VSHUFI32X4 $0x88, Z25, Z17, Z1
	VSHUFI32X4 $0xdd, Z25, Z17, Z9
	VSHUFI32X4 $0x88, Z26, Z18, Z2
	VSHUFI32X4 $0xdd, Z26, Z18, Z10
	VSHUFI32X4 $0x88, Z27, Z19, Z3
	VSHUFI32X4 $0xdd, Z27, Z19, Z11
	VSHUFI32X4 $0x88, Z28, Z20, Z4
	VSHUFI32X4 $0xdd, Z28, Z20, Z12
	VSHUFI32X4 $0x88, Z29, Z21, Z5
	VSHUFI32X4 $0xdd, Z29, Z21, Z13
	VSHUFI32X4 $0x88, Z30, Z22, Z6
	VSHUFI32X4 $0xdd, Z30, Z22, Z14
	VSHUFI32X4 $0x88, Z31, Z23, Z7
	VSHUFI32X4 $0xdd, Z31, Z23, Z15
	MOVQ DI, R8
	VMOVUPS Z0, (R8)
	ADDQ DX, R8
	VMOVUPS Z1, (R8)
	ADDQ DX, R8
	VMOVUPS Z2, (R8)
	ADDQ DX, R8
	VMOVUPS Z3, (R8)
	ADDQ DX, R8
	VMOVUPS Z4, (R8)
	ADDQ DX, R8
	VMOVUPS Z5, (R8)
	ADDQ DX, R8
	VMOVUPS Z6, (R8)
	ADDQ DX, R8
	VMOVUPS Z7, (R8)
	ADDQ DX, R8
	VMOVUPS Z8, (R8)
	ADDQ DX, R8
	VMOVUPS Z9, (R8)
	ADDQ DX, R8
	VMOVUPS Z10, (R8)
	ADDQ DX, R8
	VMOVUPS Z11, (R8)
	ADDQ DX, R8
	VMOVUPS Z12, (R8)
	ADDQ DX, R8
	VMOVUPS Z13, (R8)
	ADDQ DX, R8
	VMOVUPS Z14, (R8)
	ADDQ DX, R8
	VMOVUPS Z15, (R8)
	ADDQ $64, SI                // next 16 values of each run
	MOVQ DX, R9
	SHLQ $4, R9
	ADDQ R9, DI                 // next 16 panel rows
	DECQ CX
	JNZ  t16block

t16done:
	VZEROUPPER
	RET
