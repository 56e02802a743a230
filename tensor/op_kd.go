package tensor

import (
	"fmt"

	"github.com/llamatune/llamatune/kernels"
)

// KDTeacher is the teacher side of LinearKD: a dense teacher's final hidden
// states and lm_head (frozen, no gradient), or sparse top-k ids and log-probs
// per position.
type KDTeacher struct {
	Hidden, LMHead *Tensor   // dense: [T, teacher hidden], [vocab, teacher hidden]
	K              int       // sparse: ids and log-probs per position
	IDs            []int32   // [T·K]
	LogProbs       []float32 // [T·K]
}

// LinearKD is the fused student lm_head + distillation loss (kernels.KDArgs):
//
//	loss = Σ_counted [KDWeight·T²·D(teacher_T ‖ student_T) + (1−KDWeight)·CE] / normalizer
//
// h [T, hidden] and W [vocab, hidden] are the student's final hidden states and
// lm_head, hr/wr an optional low-rank lm_head term (as LinearCrossEntropyLowRank).
// args' shape fields are filled in here. Returns the loss, the unweighted
// sums of D and CE, and the counted positions.
func (tp *Tape) LinearKD(h, w, hr, wr *Tensor, teacher KDTeacher, labels []int32, args kernels.KDArgs, normalizer float64) (loss *Tensor, kdSum, ceSum float64, count int) {
	if len(h.Shape) != 2 || len(w.Shape) != 2 || h.Shape[1] != w.Shape[1] || len(labels) != h.Shape[0] {
		panic(fmt.Sprintf("tensor.LinearKD: h %v, W %v, %d labels", h.Shape, w.Shape, len(labels)))
	}
	T, H, V := h.Shape[0], h.Shape[1], w.Shape[0]
	args.Tokens, args.Hidden, args.Vocab = T, H, V
	args.Compute = tp.Compute
	b := kernels.KDBuffers{Student: kernels.CEBuffers{H: h.Buf, W: w.Buf}}
	if hr != nil {
		args.Rank = hr.Shape[1]
		b.Student.HR, b.Student.WR = hr.Buf, wr.Buf
	}
	if teacher.Hidden != nil {
		if teacher.Hidden.Shape[0] != T || teacher.LMHead.Shape[0] != V || teacher.Hidden.Shape[1] != teacher.LMHead.Shape[1] {
			panic(fmt.Sprintf("tensor.LinearKD: teacher hidden %v, lm_head %v for student h %v, W %v", teacher.Hidden.Shape, teacher.LMHead.Shape, h.Shape, w.Shape))
		}
		args.TeacherHidden = teacher.Hidden.Shape[1]
		b.TH, b.TW = teacher.Hidden.Buf, teacher.LMHead.Buf
	} else {
		args.K = teacher.K
		b.TopKIDs, b.TopKLogProbs = teacher.IDs, teacher.LogProbs
	}
	count, normalizer = lossNormalizer(labels, normalizer)
	args.GradScale = float32(1 / normalizer)
	loss = tp.result(tp.alloc(1), []int{1}, h, w, hr, wr)
	grad := func(t *Tensor, n int) kernels.Buffer {
		if loss.requiresGrad && t != nil && t.requiresGrad {
			return tp.alloc(n)
		}
		return nil
	}
	b.Student.DH, b.Student.DW = grad(h, T*H), grad(w, V*H)
	if hr != nil {
		b.Student.DHR, b.Student.DWR = grad(hr, T*args.Rank), grad(wr, V*args.Rank)
	}
	kdSum, ceSum, _ = tp.be.LinearKD(b, labels, args)
	a, t2 := float64(args.KDWeight), float64(args.Temperature)*float64(args.Temperature)
	total := (a*t2*kdSum + (1-a)*ceSum) / normalizer
	tp.be.Copy(loss.Buf, tp.be.FromF32(kernels.F32, []float32{float32(total)}))
	if loss.requiresGrad {
		tp.recordSavedGrads(loss, savedGrad{h, b.Student.DH}, savedGrad{w, b.Student.DW},
			savedGrad{hr, b.Student.DHR}, savedGrad{wr, b.Student.DWR})
	}
	return loss, kdSum, ceSum, count
}
