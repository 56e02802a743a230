//go:build amd64

#include "textflag.h"

// ---------------------------------------------------------------------------
// Constant table: 14 float32 constants, each replicated 8 times (32 bytes)
// so AVX2 code can use them as full-width memory operands; AVX-512 code
// broadcasts lane 0. Values and derivation: see vmath.go.
// ---------------------------------------------------------------------------

#define C8(off, v) \
	DATA expconst<>+(off+0)(SB)/4, $v \
	DATA expconst<>+(off+4)(SB)/4, $v \
	DATA expconst<>+(off+8)(SB)/4, $v \
	DATA expconst<>+(off+12)(SB)/4, $v \
	DATA expconst<>+(off+16)(SB)/4, $v \
	DATA expconst<>+(off+20)(SB)/4, $v \
	DATA expconst<>+(off+24)(SB)/4, $v \
	DATA expconst<>+(off+28)(SB)/4, $v

#define HI 0
#define LO 32
#define LOG2E 64
#define MAGIC 96
#define LN2HI 128
#define LN2LO 160
#define Q6 192
#define Q5 224
#define Q4 256
#define Q3 288
#define Q2 320
#define ONE 352
#define INF 384
#define CLAMP 416

C8(HI, 0x42b17217)    // 88.72283: largest float32 < 128·ln2
C8(LO, 0xc2aeac4f)    // -87.33654: smallest float32 ≥ -126·ln2
C8(LOG2E, 0x3fb8aa3b) // log2(e)
C8(MAGIC, 0x4b400000) // 1.5·2^23
C8(LN2HI, 0x3f318000) // 0.693359375
C8(LN2LO, 0xb95e8083) // ln2 - 0.693359375
C8(Q6, 0x3ab511e8)    // 0.00138145401
C8(Q5, 0x3c091d10)    // 0.00836874511
C8(Q4, 0x3d2aac79)    // 0.0416683908
C8(Q3, 0x3e2aaa49)    // 0.166665204
C8(Q2, 0x3efffffe)    // 0.499999934
C8(ONE, 0x3f800000)   // 1
C8(INF, 0x7f800000)   // +Inf
C8(CLAMP, 0x42b20000) // 89: AVX-512 upper clamp (overflows in VSCALEFPS)
GLOBL expconst<>(SB), RODATA|NOPTR, $448

// ---------------------------------------------------------------------------
// AVX2 + FMA exp, 8 lanes.
//
// Loop-invariant registers:
//	Y15 shift   Y14 scale   Y13 log2e   Y12 magic (1.5·2^23)
//	Y11 ln2 hi  Y10 ln2 lo  Y9 Y8 float64 sum accumulators
//
// EXP8(X, T, R, Q): X holds src on entry; on exit Q = exp(scale·(X-shift)),
// X = scale·(X-shift), T and R clobbered.
//	t = x·log2e + magic (k = round(x·log2e) in t's low bits),
//	kf = t - magic, r = x - kf·ln2hi - kf·ln2lo,
//	Q = 1 + r(1 + r(q2 + r(q3 + r(q4 + r(q5 + r q6))))),
//	Q += k<<23 on the bits: for LO ≤ x ≤ HI, k ∈ [-126, 128] with r ≥ 0 at
//	k = -126 and r < 0 at k = 128, so the exponent stays in range.
//	Lanes outside [LO, HI] hold garbage until the fix-up: x > HI or NaN →
//	x + Inf (+Inf or NaN), x < LO → +0. (No clamp is needed.)
// ---------------------------------------------------------------------------
#define EXP8(X, T, R, Q) \
	VSUBPS Y15, X, X \
	VMULPS Y14, X, X \
	VMOVAPS X, R \
	VMOVAPS Y12, T \
	VFMADD231PS Y13, R, T \
	VSUBPS Y12, T, Q \
	VFNMADD231PS Y11, Q, R \
	VFNMADD231PS Y10, Q, R \
	VMOVUPS expconst<>+Q6(SB), Q \
	VFMADD213PS expconst<>+Q5(SB), R, Q \
	VFMADD213PS expconst<>+Q4(SB), R, Q \
	VFMADD213PS expconst<>+Q3(SB), R, Q \
	VFMADD213PS expconst<>+Q2(SB), R, Q \
	VFMADD213PS expconst<>+ONE(SB), R, Q \
	VFMADD213PS expconst<>+ONE(SB), R, Q \
	VPSLLD $23, T, T \
	VPADDD T, Q, Q \
	VADDPS expconst<>+INF(SB), X, T \
	VCMPPS $0x16, expconst<>+HI(SB), X, R \
	VBLENDVPS R, T, Q, Q \
	VCMPPS $0x11, expconst<>+LO(SB), X, R \
	VANDNPS Q, R, Q

// SUM16(A, B, T, U, XT, XU): float64 accumulators Y9, Y8 += A + B (float32 pair sum,
// then widened). T, U clobbered; XT, XU are their low halves.
#define SUM16(A, B, T, U, XT, XU) \
	VADDPS A, B, T \
	VEXTRACTF128 $1, T, XU \
	VCVTPS2PD XT, T \
	VCVTPS2PD XU, U \
	VADDPD T, Y9, Y9 \
	VADDPD U, Y8, Y8

// func expSumAVX2(dst, src *float32, n int, shift, scale float32) float64
// n > 0, n % 16 == 0. dst == nil: only sum.
TEXT ·expSumAVX2(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	VBROADCASTSS shift+24(FP), Y15
	VBROADCASTSS scale+28(FP), Y14
	VMOVUPS expconst<>+LOG2E(SB), Y13
	VMOVUPS expconst<>+MAGIC(SB), Y12
	VMOVUPS expconst<>+LN2HI(SB), Y11
	VMOVUPS expconst<>+LN2LO(SB), Y10
	VXORPD Y9, Y9, Y9
	VXORPD Y8, Y8, Y8
	SHRQ $4, CX
	TESTQ DI, DI
	JZ avx2sumonly

avx2store:
	VMOVUPS (SI), Y0
	VMOVUPS 32(SI), Y4
	EXP8(Y0, Y1, Y2, Y3)
	EXP8(Y4, Y5, Y6, Y7)
	VMOVUPS Y3, (DI)
	VMOVUPS Y7, 32(DI)
	SUM16(Y3, Y7, Y1, Y5, X1, X5)
	ADDQ $64, SI
	ADDQ $64, DI
	DECQ CX
	JNZ avx2store
	JMP avx2done

avx2sumonly:
	VMOVUPS (SI), Y0
	VMOVUPS 32(SI), Y4
	EXP8(Y0, Y1, Y2, Y3)
	EXP8(Y4, Y5, Y6, Y7)
	SUM16(Y3, Y7, Y1, Y5, X1, X5)
	ADDQ $64, SI
	DECQ CX
	JNZ avx2sumonly

avx2done:
	VADDPD Y8, Y9, Y9
	VEXTRACTF128 $1, Y9, X8
	VADDPD X8, X9, X9
	VPERMILPD $1, X9, X8
	VADDSD X8, X9, X9
	VMOVSD X9, ret+32(FP)
	VZEROUPPER
	RET

// ---------------------------------------------------------------------------
// AVX-512F exp, 16 lanes. Same math as EXP8 (bit-identical results); the
// 2^k scaling is VSCALEFPS, which overflows to +Inf by itself (x is clamped
// to 89 only so that +Inf input does not make r NaN), and lanes with x < LO
// are zeroed through the write mask (NaN compares "not less" and stays).
//
// Loop-invariant registers:
//	Z31 shift  Z30 scale  Z29 log2e  Z28 magic  Z27 ln2hi  Z26 ln2lo
//	Z25 q6 .. Z21 q2  Z20 one  Z19 LO  Z18 89  Z17 Z16 float64 sums
// ---------------------------------------------------------------------------
#define EXP16(X, T, R, Q, K) \
	VSUBPS Z31, X, X \
	VMULPS Z30, X, X \
	VCMPPS $0x15, Z19, X, K \
	VMINPS X, Z18, R \
	VMOVAPS Z28, T \
	VFMADD231PS Z29, R, T \
	VSUBPS Z28, T, T \
	VFNMADD231PS Z27, T, R \
	VFNMADD231PS Z26, T, R \
	VMOVAPS Z25, Q \
	VFMADD213PS Z24, R, Q \
	VFMADD213PS Z23, R, Q \
	VFMADD213PS Z22, R, Q \
	VFMADD213PS Z21, R, Q \
	VFMADD213PS Z20, R, Q \
	VFMADD213PS Z20, R, Q \
	VSCALEFPS.Z T, Q, K, Q

#define SUM32(A, B, T, U, YT, YU) \
	VADDPS A, B, T \
	VEXTRACTF64X4 $1, T, YU \
	VCVTPS2PD YT, T \
	VCVTPS2PD YU, U \
	VADDPD T, Z17, Z17 \
	VADDPD U, Z16, Z16

// func expSumAVX512(dst, src *float32, n int, shift, scale float32) float64
// n > 0, n % 32 == 0. dst == nil: only sum.
TEXT ·expSumAVX512(SB), NOSPLIT, $0-40
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	VBROADCASTSS shift+24(FP), Z31
	VBROADCASTSS scale+28(FP), Z30
	VBROADCASTSS expconst<>+LOG2E(SB), Z29
	VBROADCASTSS expconst<>+MAGIC(SB), Z28
	VBROADCASTSS expconst<>+LN2HI(SB), Z27
	VBROADCASTSS expconst<>+LN2LO(SB), Z26
	VBROADCASTSS expconst<>+Q6(SB), Z25
	VBROADCASTSS expconst<>+Q5(SB), Z24
	VBROADCASTSS expconst<>+Q4(SB), Z23
	VBROADCASTSS expconst<>+Q3(SB), Z22
	VBROADCASTSS expconst<>+Q2(SB), Z21
	VBROADCASTSS expconst<>+ONE(SB), Z20
	VBROADCASTSS expconst<>+LO(SB), Z19
	VBROADCASTSS expconst<>+CLAMP(SB), Z18
	VPXORQ Z17, Z17, Z17
	VPXORQ Z16, Z16, Z16
	SHRQ $5, CX
	TESTQ DI, DI
	JZ avx512sumonly

avx512store:
	VMOVUPS (SI), Z0
	VMOVUPS 64(SI), Z4
	EXP16(Z0, Z1, Z2, Z3, K1)
	EXP16(Z4, Z5, Z6, Z7, K2)
	VMOVUPS Z3, (DI)
	VMOVUPS Z7, 64(DI)
	SUM32(Z3, Z7, Z1, Z5, Y1, Y5)
	ADDQ $128, SI
	ADDQ $128, DI
	DECQ CX
	JNZ avx512store
	JMP avx512done

avx512sumonly:
	VMOVUPS (SI), Z0
	VMOVUPS 64(SI), Z4
	EXP16(Z0, Z1, Z2, Z3, K1)
	EXP16(Z4, Z5, Z6, Z7, K2)
	SUM32(Z3, Z7, Z1, Z5, Y1, Y5)
	ADDQ $128, SI
	DECQ CX
	JNZ avx512sumonly

avx512done:
	VADDPD Z16, Z17, Z0
	VEXTRACTF64X4 $1, Z0, Y1
	VADDPD Y1, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPD X1, X0, X0
	VPERMILPD $1, X0, X1
	VADDSD X1, X0, X0
	VMOVSD X0, ret+32(FP)
	VZEROUPPER
	RET

// ---------------------------------------------------------------------------
// func maxAVX2(src *float32, n int) (m float32, nan bool)
// n > 0, n % 32 == 0. Four max accumulators Y0-Y3; Y8 ORs the unordered
// (NaN) masks so that a NaN anywhere is reported.
// ---------------------------------------------------------------------------
TEXT ·maxAVX2(SB), NOSPLIT, $0-21
	MOVQ src+0(FP), SI
	MOVQ n+8(FP), CX
	SHRQ $5, CX
	VMOVUPS (SI), Y0
	VMOVAPS Y0, Y1
	VMOVAPS Y0, Y2
	VMOVAPS Y0, Y3
	VXORPS Y8, Y8, Y8

maxloop:
	VMOVUPS (SI), Y4
	VMOVUPS 32(SI), Y5
	VMOVUPS 64(SI), Y6
	VMOVUPS 96(SI), Y7
	VMAXPS Y4, Y0, Y0
	VMAXPS Y5, Y1, Y1
	VMAXPS Y6, Y2, Y2
	VMAXPS Y7, Y3, Y3
	VCMPPS $3, Y4, Y4, Y4
	VCMPPS $3, Y5, Y5, Y5
	VCMPPS $3, Y6, Y6, Y6
	VCMPPS $3, Y7, Y7, Y7
	VORPS Y4, Y5, Y5
	VORPS Y6, Y7, Y7
	VORPS Y5, Y8, Y8
	VORPS Y7, Y8, Y8
	ADDQ $128, SI
	DECQ CX
	JNZ maxloop

	VMAXPS Y1, Y0, Y0
	VMAXPS Y3, Y2, Y2
	VMAXPS Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VMAXPS X1, X0, X0
	VPERMILPS $0x4e, X0, X1
	VMAXPS X1, X0, X0
	VPERMILPS $0xb1, X0, X1
	VMAXPS X1, X0, X0
	VMOVSS X0, m+16(FP)
	VMOVMSKPS Y8, AX
	TESTL AX, AX
	SETNE nan+20(FP)
	VZEROUPPER
	RET
