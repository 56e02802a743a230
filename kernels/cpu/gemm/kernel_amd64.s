//go:build amd64

#include "textflag.h"

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

// ROW32_BETA(lo, hi): row = alpha*acc + beta*row at (DI), then DI += ldc.
// Z28 = alpha, Z29 = beta.
#define ROW32_BETA(lo, hi) \
	VMULPS Z28, lo, lo \
	VMULPS Z28, hi, hi \
	VFMADD231PS (DI), Z29, lo \
	VFMADD231PS 64(DI), Z29, hi \
	VMOVUPS lo, (DI) \
	VMOVUPS hi, 64(DI) \
	ADDQ DX, DI

// ROW32(lo, hi): row = alpha*acc (C not read), then DI += ldc.
#define ROW32(lo, hi) \
	VMULPS Z28, lo, lo \
	VMULPS Z28, hi, hi \
	VMOVUPS lo, (DI) \
	VMOVUPS hi, 64(DI) \
	ADDQ DX, DI

// func sgemmKernel14x32AVX512(k int, a, b, c *float32, ldc int, alpha, beta float32)
TEXT ·sgemmKernel14x32AVX512(SB), NOSPLIT, $0-48
	MOVQ k+0(FP), CX
	MOVQ a+8(FP), AX
	MOVQ b+16(FP), BX
	MOVQ c+24(FP), DI
	MOVQ ldc+32(FP), DX
	SHLQ $2, DX                 // ldc in bytes

	// Warm the C tile (14 rows × 128 bytes) while the k loop runs.
	MOVQ DI, R9
	PREFETCHT0 (R9)
	PREFETCHT0 124(R9)
	ADDQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 124(R9)
	ADDQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 124(R9)
	ADDQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 124(R9)
	ADDQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 124(R9)
	ADDQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 124(R9)
	ADDQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 124(R9)
	ADDQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 124(R9)
	ADDQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 124(R9)
	ADDQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 124(R9)
	ADDQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 124(R9)
	ADDQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 124(R9)
	ADDQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 124(R9)
	ADDQ DX, R9
	PREFETCHT0 (R9)
	PREFETCHT0 124(R9)

	VPXORD Z0, Z0, Z0
	VPXORD Z1, Z1, Z1
	VPXORD Z2, Z2, Z2
	VPXORD Z3, Z3, Z3
	VPXORD Z4, Z4, Z4
	VPXORD Z5, Z5, Z5
	VPXORD Z6, Z6, Z6
	VPXORD Z7, Z7, Z7
	VPXORD Z8, Z8, Z8
	VPXORD Z9, Z9, Z9
	VPXORD Z10, Z10, Z10
	VPXORD Z11, Z11, Z11
	VPXORD Z12, Z12, Z12
	VPXORD Z13, Z13, Z13
	VPXORD Z14, Z14, Z14
	VPXORD Z15, Z15, Z15
	VPXORD Z16, Z16, Z16
	VPXORD Z17, Z17, Z17
	VPXORD Z18, Z18, Z18
	VPXORD Z19, Z19, Z19
	VPXORD Z20, Z20, Z20
	VPXORD Z21, Z21, Z21
	VPXORD Z22, Z22, Z22
	VPXORD Z23, Z23, Z23
	VPXORD Z24, Z24, Z24
	VPXORD Z25, Z25, Z25
	VPXORD Z26, Z26, Z26
	VPXORD Z27, Z27, Z27

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
	ROW32_BETA(Z0, Z1)
	ROW32_BETA(Z2, Z3)
	ROW32_BETA(Z4, Z5)
	ROW32_BETA(Z6, Z7)
	ROW32_BETA(Z8, Z9)
	ROW32_BETA(Z10, Z11)
	ROW32_BETA(Z12, Z13)
	ROW32_BETA(Z14, Z15)
	ROW32_BETA(Z16, Z17)
	ROW32_BETA(Z18, Z19)
	ROW32_BETA(Z20, Z21)
	ROW32_BETA(Z22, Z23)
	ROW32_BETA(Z24, Z25)
	ROW32_BETA(Z26, Z27)
	VZEROUPPER
	RET

avx512store0:
	ROW32(Z0, Z1)
	ROW32(Z2, Z3)
	ROW32(Z4, Z5)
	ROW32(Z6, Z7)
	ROW32(Z8, Z9)
	ROW32(Z10, Z11)
	ROW32(Z12, Z13)
	ROW32(Z14, Z15)
	ROW32(Z16, Z17)
	ROW32(Z18, Z19)
	ROW32(Z20, Z21)
	ROW32(Z22, Z23)
	ROW32(Z24, Z25)
	ROW32(Z26, Z27)
	VZEROUPPER
	RET
