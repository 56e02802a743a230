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
