package distill

import (
	"context"
	"fmt"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/tensor"
	"github.com/llamatune/llamatune/train"
)

// LossConfig chooses the distillation objective (see kernels.KDArgs).
type LossConfig struct {
	Kind        kernels.KDKind
	Beta        float64 // JSD weight of the teacher, in (0, 1)
	Temperature float64
	KDWeight    float64 // loss = KDWeight·T²·KD + (1−KDWeight)·CE
	TopK        int     // > 0: use the teacher's top-k even when it could give its full distribution
	Renorm      bool    // sparse: renormalize the top-k instead of a tail bucket (forward KL only)
	Chunk       int     // positions per logits chunk (default the student's CEChunk)
	// OnPolicy, when set, made some batches from the student's own samples:
	// those are trained on the divergence alone (KDWeight 1, as TRL's GKD),
	// since cross-entropy on its own samples would only reinforce them.
	OnPolicy *OnPolicy
}

// ParseKind maps forward_kl | reverse_kl | jsd to a kernels.KDKind.
func ParseKind(s string) (kernels.KDKind, error) {
	switch s {
	case "forward_kl", "":
		return kernels.ForwardKL, nil
	case "reverse_kl":
		return kernels.ReverseKL, nil
	case "jsd":
		return kernels.JSD, nil
	}
	return 0, fmt.Errorf("unknown distillation loss %q (forward_kl, reverse_kl, jsd)", s)
}

// KDLoss is a train.LossFunc: the student's fused lm_head + KD loss against
// teacher on every trained position of the batch (the same next-token targets
// as cross-entropy: labels shifted within each document). A DenseTeacher is
// run on the same packed batch without a tape, and its logits are made chunk
// by chunk inside the loss; other teachers give top-k log-probs. Its parts
// are "kd" (the divergence at temperature T, before the KDWeight·T² weight)
// and "ce" (the student's cross-entropy on the labels), each per trained
// token like the total. A batch c.OnPolicy made is weighed with KDWeight 1
// (its ce part, the student's cross-entropy on its own samples, is still
// reported).
func KDLoss(ctx context.Context, student *llama.Model, teacher Teacher, c LossConfig) train.LossFunc {
	args := kernels.KDArgs{Kind: c.Kind, Beta: float32(c.Beta), Temperature: float32(c.Temperature),
		KDWeight: float32(c.KDWeight), Renorm: c.Renorm, Chunk: c.Chunk}
	if args.Chunk <= 0 {
		args.Chunk = student.CEChunk
	}
	V := student.Config.VocabSize
	return func(tp *tensor.Tape, b *data.Batch, normalizer float64) (*tensor.Tensor, train.LossParts, error) {
		in := train.Input(b)
		h, err := student.Hidden(tp, in)
		if err != nil {
			return nil, nil, err
		}
		hr, wr, err := student.LMHeadLowRank(tp, h)
		if err != nil {
			return nil, nil, err
		}
		targets := llama.ShiftLabels(b.Labels, b.Rows, b.SeqLen, b.DocStart)
		var kt tensor.KDTeacher
		if dt, ok := teacher.(DenseTeacher); ok && c.TopK == 0 {
			tm := dt.Model()
			if tm.Config.VocabSize != V {
				return nil, nil, fmt.Errorf("distill: teacher vocab_size %d != student vocab_size %d; logit distillation needs one tokenizer (set distill.cross_tokenizer: uld to distill across tokenizers)", tm.Config.VocabSize, V)
			}
			ttp := llama.NewInferenceTape(tm.Backend())
			defer ttp.Release() // the teacher's activations live until the loss is computed
			if kt.Hidden, err = tm.Hidden(ttp, in); err != nil {
				return nil, nil, fmt.Errorf("distill: teacher forward: %w", err)
			}
			kt.LMHead = tm.LMHead
		} else {
			k := c.TopK
			if k <= 0 {
				return nil, nil, fmt.Errorf("distill: the teacher gives only top-k log-probs; set top_k")
			}
			top, err := teacher.TopK(ctx, b, k)
			if err != nil {
				return nil, nil, err
			}
			n := len(b.InputIDs)
			if top.K != k || len(top.IDs) != n*k || len(top.LogProbs) != n*k {
				return nil, nil, fmt.Errorf("distill: teacher returned top-%d with %d ids for %d positions, want top-%d", top.K, len(top.IDs), n, k)
			}
			for i, t := range targets {
				if t == kernels.IgnoreIndex {
					continue
				}
				for _, id := range top.IDs[i*k : (i+1)*k] {
					if id < 0 || int(id) >= V {
						return nil, nil, fmt.Errorf("distill: teacher top-k id %d at position %d is outside the student vocabulary (%d)", id, i, V)
					}
				}
			}
			kt = tensor.KDTeacher{K: k, IDs: top.IDs, LogProbs: top.LogProbs}
		}
		a := args
		if c.OnPolicy != nil && c.OnPolicy.Sampled(b) {
			a.KDWeight = 1
		}
		loss, kdSum, ceSum, count := tp.LinearKD(h, student.LMHead, hr, wr, kt, targets, a, normalizer)
		if normalizer <= 0 {
			normalizer = float64(max(count, 1)) // as LinearKD does
		}
		return loss, train.LossParts{"kd": kdSum / normalizer, "ce": ceSum / normalizer}, nil
	}
}
