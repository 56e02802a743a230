package distill

import (
	"context"
	"fmt"
	"io"
	"math"
	"sync"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/tensor"
	"github.com/llamatune/llamatune/train"
)

// ULDConfig configures the cross-tokenizer loss (ULDLoss).
type ULDConfig struct {
	Temperature float64 // both softmaxes are taken at T
	KDWeight    float64 // loss = KDWeight·ULD + (1−KDWeight)·CE
	TopK        int     // sorted probabilities compared per position (0: DefaultULDTopK)
	Chunk       int     // student positions per logits chunk (0: from DefaultLogitBudget)
	// Student and Teacher are the two tokenizers: the student's batch is
	// decoded with the first and re-encoded with the second.
	Student, Teacher tokenizer.Tokenizer
	// Log, when set, gets one line on the first batch: how many of its
	// trained positions the alignment paired with a teacher position.
	Log io.Writer
	// OnPolicy, when set, made some batches from the student's own samples
	// (on-policy cross-tokenizer distillation): those are trained on ULD
	// alone (KDWeight 1), as KDLoss does.
	OnPolicy *OnPolicy
}

// ULDLoss is a train.LossFunc for a teacher with another tokenizer:
// Universal Logit Distillation (uldRow) at the student positions Align pairs
// with teacher positions, plus the student's cross-entropy on every trained
// position:
//
//	loss = [KDWeight·Σ_aligned ULD + (1−KDWeight)·Σ_trained CE] / normalizer
//
// The teacher runs on its own tokenization of the batch's text (Align): an
// InProcess teacher gives its exact sorted probabilities at temperature T;
// any other (a server) gives its top-k log-probabilities, which are at
// temperature 1, so it needs T = 1. The
// student's logits for the ULD term are made chunk by chunk and not kept:
// each chunk is recomputed in the backward pass (tensor.Tape.Recompute), so
// [tokens × vocab] never exists at once. Its parts are "uld" and "ce", each
// per trained token like the total. A batch c.OnPolicy made is weighed with
// KDWeight 1 (its ce part is still reported).
func ULDLoss(ctx context.Context, student *llama.Model, teacher Teacher, c ULDConfig) train.LossFunc {
	k := c.TopK
	if k <= 0 {
		k = DefaultULDTopK
	}
	V := student.Config.VocabSize
	chunk := c.Chunk
	if chunk <= 0 {
		chunk = max(1, DefaultLogitBudget/4/V) // logits, their copy and gradient
	}
	invT := float32(1 / c.Temperature)
	var once sync.Once
	return func(tp *tensor.Tape, b *data.Batch, normalizer float64) (*tensor.Tensor, train.LossParts, error) {
		w := c.KDWeight
		if c.OnPolicy != nil && c.OnPolicy.Sampled(b) {
			w = 1 // the student's own samples: no cross-entropy on them
		}
		if c.Temperature <= 0 || w < 0 || w > 1 || c.Student == nil || c.Teacher == nil {
			return nil, nil, fmt.Errorf("distill: ULD needs temperature > 0, kd_weight in [0, 1] and both tokenizers")
		}
		targets := llama.ShiftLabels(b.Labels, b.Rows, b.SeqLen, b.DocStart)
		al := &Alignment{}
		if w > 0 { // kd_weight 0: cross-entropy alone, no teacher
			al = Align(b, c.Student, c.Teacher)
		}
		var spos, tpos []int32
		for i, s := range al.Student {
			if targets[s] != kernels.IgnoreIndex {
				spos, tpos = append(spos, s), append(tpos, al.TeacherPos[i])
			}
		}
		var q []float32
		if len(spos) > 0 {
			var err error
			if q, err = teacherSortedProbs(ctx, teacher, al.Teacher, tpos, k, c.Temperature); err != nil {
				return nil, nil, fmt.Errorf("distill: teacher forward: %w", err)
			}
		}
		h, err := student.Hidden(tp, train.Input(b))
		if err != nil {
			return nil, nil, err
		}
		hr, wr, err := student.LMHeadLowRank(tp, h)
		if err != nil {
			return nil, nil, err
		}
		ce, count := tp.LinearCrossEntropyLowRank(h, student.LMHead, hr, wr, targets, normalizer, student.CEChunk)
		if normalizer <= 0 {
			normalizer = float64(max(count, 1)) // as the cross-entropy does
		}
		if c.Log != nil {
			once.Do(func() {
				fmt.Fprintf(c.Log, "ULD: %d of the first batch's %d trained positions are paired with a teacher position (%.0f%%)\n",
					len(spos), count, 100*float64(len(spos))/float64(max(count, 1)))
			})
		}
		ceVal := float64(ce.Item())
		total := tp.Scale(ce, float32(1-w))
		var uldSum float64
		for c0 := 0; c0 < len(spos); c0 += chunk {
			c1 := min(c0+chunk, len(spos))
			s, sum := uldChunk(tp, student, h, hr, wr, spos[c0:c1], q[c0*k:c1*k], k, invT)
			uldSum += sum
			total = tp.Add(total, tp.Scale(s, float32(w/normalizer)))
		}
		// The ULD chunks are surrogates (their gradient is right, their value
		// is not the loss): set the value the trainer reports.
		val := (1-w)*ceVal + w*uldSum/normalizer
		be := tp.Backend()
		v := be.FromF32(kernels.F32, []float32{float32(val)})
		be.Copy(total.Buf, v)
		be.Free(v)
		return total, train.LossParts{"uld": uldSum / normalizer, "ce": ceVal}, nil
	}
}

// uldChunk is the ULD term of the student positions pos: q [len(pos), k]
// holds the teacher's sorted probabilities there. It returns a scalar
// surrogate on tp whose gradient is that of Σ ULD (its value is ⟨z, dULD/dz⟩,
// not the loss) and the sum of ULD over the positions.
//
// Forward and VJP side by side: z = h[pos]·Wᵀ (+ hr[pos]·wrᵀ, the lm_head's
// LoRA term) are the chunk's logits [C, V]; G = dΣULD/dz is made on the host
// (uldRows) and the surrogate is ⟨z, G⟩ = Linear(z as [1, C·V], G as
// [1, C·V]) with G held constant, whose VJP is dz = G, which the Linear ops
// carry on to h, W, hr and wr. The chunk runs inside Recompute: its logits
// are freed after the forward pass and made again in the backward pass.
// With bf16 compute (tp.Compute) that last GEMM reads G rounded to bf16, a
// relative error of at most 2⁻⁹ per element of the gradient.
func uldChunk(tp *tensor.Tape, m *llama.Model, h, hr, wr *tensor.Tensor, pos []int32, q []float32, k int, invT float32) (*tensor.Tensor, float64) {
	C, V := len(pos), m.Config.VocabSize
	hc := tp.Embedding(h, pos) // the chunk's rows of h (scatter-add back)
	var hrc *tensor.Tensor
	if hr != nil {
		hrc = tp.Embedding(hr, pos)
	}
	var sum float64
	first := true
	s := tp.Recompute(hc, func(sub *tensor.Tape, x *tensor.Tensor) *tensor.Tensor {
		z := sub.Linear(x, m.LMHead)
		if hrc != nil {
			z = sub.AddLinear(z, hrc, wr, 1)
		}
		g := make([]float32, C*V)
		l := uldRows(z.F32(), C, q, k, invT, g, 1)
		if first { // the forward pass (the backward pass makes the same again)
			sum, first = l, false
		}
		be := sub.Backend()
		g0 := tensor.FromF32(be, kernels.F32, g, 1, C*V)
		gt := sub.Scale(g0, 1) // owned by sub: freed with it
		be.Free(g0.Buf)
		return sub.Linear(sub.Reshape(z, 1, C*V), gt)
	})
	return s, sum
}

// teacherSortedProbs is the teacher's k largest next-token probabilities at
// temperature T at positions of b, descending: [len(positions)·k] (see
// InProcess.SortedProbs). A teacher that only gives top-k log-probabilities
// (a server) gives them at temperature 1: T must be 1, and slots it leaves
// empty (MissingLogProb) become 0.
func teacherSortedProbs(ctx context.Context, t Teacher, b *data.Batch, positions []int32, k int, temperature float64) ([]float32, error) {
	if ip, ok := t.(*InProcess); ok {
		return ip.SortedProbs(ctx, b, positions, k, temperature)
	}
	if temperature != 1 {
		return nil, fmt.Errorf("distill.temperature: %g: teacher %s gives log-probabilities at temperature 1 only, so cross-tokenizer distillation from it needs temperature 1", temperature, t.Info().Name)
	}
	top, err := t.TopK(ctx, b, k)
	if err != nil {
		return nil, err
	}
	n := b.Rows * b.SeqLen
	if top.K != k || len(top.LogProbs) != n*k {
		return nil, fmt.Errorf("teacher %s returned top-%d with %d log-probs for %d positions, want top-%d", t.Info().Name, top.K, len(top.LogProbs), n, k)
	}
	out := make([]float32, len(positions)*k)
	for i, p := range positions {
		for j, lp := range top.LogProbs[int(p)*k : (int(p)+1)*k] {
			if lp > MissingLogProb {
				out[i*k+j] = float32(math.Exp(float64(lp)))
			}
		}
	}
	return out, nil
}
