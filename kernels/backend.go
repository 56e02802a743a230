// Package kernels defines the Backend interface: the small set of fused ops the
// trainer needs, over buffers a backend owns. kernels/cpu implements it in pure
// Go; kernels/cuda on NVIDIA GPUs. kernels/kerneltest checks any backend
// against the pure-Go reference, values and gradients.
//
// Conventions shared by every op:
//   - Buffers are flat, row-major. Shapes are passed as ints next to them.
//   - Backward ops ACCUMULATE into gradient buffers (dx += ...), so a tensor used
//     twice gets the sum of both contributions. A nil gradient buffer means "this
//     input does not need a gradient" and the op skips that work.
//   - Storage: BF16 buffers are accepted wherever an op reads a weight
//     (MatMul, the fused losses' W, Embedding, RMSNorm weight) and are read in
//     place (never widened as a whole). Outputs and gradients are F32;
//     activations are F32, except that a backend implementing
//     BF16Activations also reads BF16 activations where that interface says,
//     and the model then stores those in bf16 under bf16 compute. NF4 buffers (QLoRA base weights, see kernels/nf4) are frozen
//     and read only by MatMul, as either operand, dequantized block by block
//     while the GEMM packs them; backends that cannot do so do not
//     implement NF4Wrapper.
//   - Compute (the Compute field of the GEMM-bearing ops' args): F32, the
//     reference, or BF16: GEMM operands rounded to bf16 (round to nearest
//     even), exact products, f32 accumulation (what tensor cores and
//     AVX512_BF16 do). Norm statistics, softmax, RoPE angles, losses and
//     reductions stay f32 in both.
package kernels

import (
	"fmt"

	"github.com/llamatune/llamatune/kernels/nf4"
)

// DType is a storage type.
type DType uint8

const (
	F32 DType = iota
	BF16
	// NF4 is bitsandbytes' 4-bit NormalFloat with double-quantized block
	// scales (kernels/nf4): frozen weights only, made by NF4Wrapper.
	NF4
)

func (d DType) String() string {
	switch d {
	case F32:
		return "F32"
	case BF16:
		return "BF16"
	case NF4:
		return "NF4"
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// Size is the number of bytes per element. NF4 stores half a byte per
// element plus its scales (about 0.52 bytes in all, nf4.StorageBytes); Size
// rounds that up to 1, so sizes computed with it are upper bounds.
func (d DType) Size() int {
	switch d {
	case BF16:
		return 2
	case NF4:
		return 1
	}
	return 4
}

// Buffer is backend-owned storage of Len elements of DType.
type Buffer interface {
	Len() int
	DType() DType
}

// MatMulArgs describes a batched GEMM:
//
//	C[b] = Alpha * op(A[b]) · op(B[b]) + Beta * C[b]   for b in [0, Batch)
//
// op(A) is [M,K] (A stored [K,M] when TransA), op(B) is [K,N] (B stored [N,K]
// when TransB), C is [M,N]. Consecutive batches are StrideA/StrideB/StrideC
// elements apart; a stride of 0 broadcasts that operand over the batch.
type MatMulArgs struct {
	TransA, TransB            bool
	M, N, K                   int
	Batch                     int
	StrideA, StrideB, StrideC int
	Alpha, Beta               float32
	Compute                   DType // F32 or BF16 (see the package comment)
}

// AttnArgs describes causal grouped-query attention over packed rows.
//
// Q is [Batch, Tq, Heads, HeadDim]; K and V are [Batch, Tk, KVHeads, HeadDim];
// Out is [Batch, Tq, Heads, HeadDim]; LSE (softmax log-sum-exp per query, kept
// for backward) is [Batch, Heads, Tq]. Query i sits at key position QOffset+i
// (QOffset = Tk-Tq when decoding with a KV cache, 0 in training).
//
// DocStart, when non-nil, is [Batch, Tk]: the key index where the document of
// each position starts. Query i may attend to key j only when
// DocStart[b,QOffset+i] <= j <= QOffset+i, so tokens never see another
// document of the same packed row.
type AttnArgs struct {
	Batch, Tq, Tk, Heads, KVHeads, HeadDim int
	QOffset                                int
	Scale                                  float32
	DocStart                               []int32
	Compute                                DType // of Q·Kᵀ and P·V (softmax stays f32)
}

// CEArgs describes the fused lm_head + cross-entropy: logits = H·Wᵀ (plus
// HR·WRᵀ, a low-rank term such as a LoRA adapter on lm_head) are made Chunk
// rows at a time, so [Tokens, Vocab] logits never live at once. Labels hold
// the target id per row, or IgnoreIndex (-100) to skip it. The op returns the
// SUM of per-token losses and the count of counted tokens; gradients are of
// (sum · GradScale), so the caller normalizes (e.g. by the trained-token count
// of a whole accumulated step).
type CEArgs struct {
	Tokens, Hidden, Vocab int
	Rank                  int // columns of HR and WR; 0 when there is no low-rank term
	Chunk                 int
	GradScale             float32
	Compute               DType // of the logits GEMMs and their VJPs (softmax and loss stay f32)
}

// CEBuffers are the operands of LinearCrossEntropy. H [Tokens,Hidden],
// W [Vocab,Hidden]; HR [Tokens,Rank] and WR [Vocab,Rank] when Rank > 0.
// Gradient buffers may be nil (not needed); they are accumulated into.
type CEBuffers struct {
	H, W, HR, WR     Buffer
	DH, DW, DHR, DWR Buffer
}

// IgnoreIndex marks a label that carries no loss.
const IgnoreIndex = -100

// AdamWArgs are the hyper-parameters of one decoupled-weight-decay Adam step.
// Step is 1-based (bias correction uses it).
type AdamWArgs struct {
	LR, Beta1, Beta2, Eps, WeightDecay float32
	Step                               int
}

// Backend is what a compute device provides.
type Backend interface {
	Name() string

	// Memory.
	Alloc(dt DType, n int) Buffer // zero-filled
	FromF32(dt DType, v []float32) Buffer
	ToF32(b Buffer) []float32 // a copy, converted to f32
	Copy(dst, src Buffer)     // same length; converts dtype
	Zero(b Buffer)
	Free(b Buffer) // release now; the buffer must not be used again

	// GEMM (f32 accumulate). A and B may be BF16; C is F32.
	MatMul(a, b, c Buffer, args MatMulArgs)

	// Embedding: out[t,:] = w[ids[t],:]; w is [vocab, dim].
	Embedding(w Buffer, ids []int32, out Buffer, dim int)
	// EmbeddingBackward: dw[ids[t],:] += dout[t,:] (scatter-add).
	EmbeddingBackward(dout Buffer, ids []int32, dw Buffer, dim int)

	// RMSNorm over the last dim: out = x * rstd * w, rstd = 1/sqrt(mean(x²)+eps),
	// rstd [rows] saved for backward.
	RMSNorm(x, w, out, rstd Buffer, rows, dim int, eps float32)
	RMSNormBackward(dout, x, w, rstd, dx, dw Buffer, rows, dim int)

	// RoPE, rotate-half convention of HF Llama, on x [tokens, heads, headDim]
	// with position pos[t]. invFreq has headDim/2 entries. Inverse rotates by -θ
	// (that is the backward).
	RoPE(x, out Buffer, pos []int32, tokens, heads, headDim int, invFreq []float32, inverse bool)

	// SwiGLU: out = silu(gate) * up, elementwise over n.
	SwiGLU(gate, up, out Buffer, n int)
	SwiGLUBackward(dout, gate, up, dgate, dup Buffer, n int)

	// Attention (see AttnArgs). lse may be nil when no backward will follow.
	Attention(q, k, v, out, lse Buffer, args AttnArgs)
	AttentionBackward(q, k, v, out, lse, dout, dq, dk, dv Buffer, args AttnArgs)

	// LinearCrossEntropy: see CEArgs and CEBuffers. The gradient buffers
	// receive the gradient of sum·GradScale.
	LinearCrossEntropy(b CEBuffers, labels []int32, args CEArgs) (lossSum float64, count int)

	// CrossEntropy is the unfused twin of LinearCrossEntropy, over logits
	// [rows, vocab] already made: returns the loss sum and counted rows, and
	// accumulates dlogits += (softmax − onehot)·gradScale (nil: skipped).
	CrossEntropy(logits, dlogits Buffer, labels []int32, rows, vocab int, gradScale float32) (lossSum float64, count int)

	// LinearKD: the fused distillation loss (see KDArgs). Returns the sums of
	// the KD and CE parts over counted positions (unweighted) and the count;
	// gradients of (KDWeight·T²·kd + (1−KDWeight)·ce)·GradScale go to the
	// student's gradient buffers.
	LinearKD(b KDBuffers, labels []int32, args KDArgs) (kdSum, ceSum float64, count int)

	// Elementwise on n elements (all F32).
	Add(a, b, out Buffer)                 // out = a + b
	AddScaled(dst, src Buffer, s float32) // dst += s * src
	Scale(b Buffer, s float32)            // b *= s
	Mul(dst, src Buffer)                  // dst *= src, elementwise

	// Reductions.
	SumSquares(b Buffer) float64

	// AdamW updates p (F32 or BF16 master-less) in place from grad g with f32
	// moments m and v.
	AdamW(p, g, m, v Buffer, args AdamWArgs)
}

// HostMapper is implemented by backends that compute on host memory (the
// CPU). WrapHostBF16 uses v in place as a BF16 buffer — for example a frozen
// weight inside a memory-mapped safetensors file, which then costs no heap
// at all. The buffer is read-only: ops only ever read weights.
type HostMapper interface {
	WrapHostBF16(v []uint16) Buffer
}

// BF16Activations is implemented by backends whose ops also read BF16
// activations: MatMul's A and B (as for any operand), Attention's and
// AttentionBackward's q, k, v and out, SwiGLU's and SwiGLUBackward's gate
// and up, Copy's source. Under bf16 compute the model then keeps the
// activations those ops save for backward in bf16 (tensor.Tape.KeepBF16),
// as torch autocast does, halving what a layer holds; the residual stream,
// norm statistics and every gradient stay f32. A backend without it (or
// answering false) gets F32 activations only.
type BF16Activations interface {
	ReadsBF16Activations() bool
}

// ReadsBF16Activations reports whether be implements BF16Activations and
// answers true.
func ReadsBF16Activations(be Backend) bool {
	r, ok := be.(BF16Activations)
	return ok && r.ReadsBF16Activations()
}

// NF4Wrapper is implemented by backends whose MatMul reads NF4 weights
// (the CPU). WrapNF4 makes a read-only NF4 buffer of t (no copy); only
// MatMul accepts it.
type NF4Wrapper interface {
	WrapNF4(t *nf4.Tensor) Buffer
}

// KeyRange is the inclusive range [first, last] of keys that query i of batch
// row b may attend to.
func (a AttnArgs) KeyRange(b, i int) (first, last int) {
	last = a.QOffset + i
	if a.DocStart != nil {
		first = int(a.DocStart[b*a.Tk+last])
	}
	return first, last
}

// KDKind is a distillation divergence.
type KDKind uint8

const (
	ForwardKL KDKind = iota // KL(teacher ‖ student): mass-covering (Hinton et al.)
	ReverseKL               // KL(student ‖ teacher): mode-seeking
	JSD                     // generalized Jensen–Shannon with weight Beta on the teacher
)

// KDArgs describe the fused lm_head + distillation loss. Per counted position
// (label ≠ IgnoreIndex) the loss is
//
//	KDWeight·T²·D(teacher_T, student_T) + (1−KDWeight)·CE(student, label)
//
// with D the KDKind divergence between distributions at temperature T. The
// teacher is dense (TeacherHidden > 0: logits = TH·TWᵀ made chunk by chunk,
// like the student's) or sparse (K > 0: top-k ids and log-probs per position).
// Sparse teachers are compared over K+1 buckets — the K ids and one tail bucket
// holding the remaining mass (TopKTail), or over the K ids renormalized
// (TopKRenorm; forward KL only, the student keeps its full softmax).
type KDArgs struct {
	Tokens, Hidden, Vocab int
	Rank                  int // student low-rank lm_head term (see CEArgs)
	TeacherHidden         int // dense teacher hidden size; 0 for sparse
	K                     int // sparse teacher top-k; 0 for dense
	Renorm                bool
	Kind                  KDKind
	Beta                  float32 // JSD weight of the teacher in the mixture, in (0, 1)
	Temperature           float32
	KDWeight              float32
	Chunk                 int
	GradScale             float32
	Compute               DType // of the logits GEMMs and their VJPs
}

// KDBuffers are the operands of LinearKD: the student's (as for
// LinearCrossEntropy) and the teacher's, dense (TH [Tokens,TeacherHidden],
// TW [Vocab,TeacherHidden]) or sparse (TopKIDs, TopKLogProbs: [Tokens·K]).
type KDBuffers struct {
	Student      CEBuffers
	TH, TW       Buffer
	TopKIDs      []int32
	TopKLogProbs []float32
}
