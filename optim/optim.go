// Package optim: AdamW with f32 moments, learning-rate schedules (warmup +
// cosine / linear / constant, as HF transformers' schedulers), and global
// gradient-norm clipping.
package optim

import (
	"fmt"
	"math"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/tensor"
)

// AdamWConfig are torch.optim.AdamW's hyper-parameters.
type AdamWConfig struct {
	LR          float64
	Beta1       float64
	Beta2       float64
	Eps         float64
	WeightDecay float64
	// DecayNorms applies weight decay to 1-D tensors (norm weights) too. By
	// default they are excluded, as HF Trainer does.
	DecayNorms bool
}

// DefaultAdamW is torch's default with lr 2e-4 (a common LoRA choice).
func DefaultAdamW() AdamWConfig {
	return AdamWConfig{LR: 2e-4, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0}
}

// AdamW holds the moments of every trainable tensor. Only the tensors given
// get state: frozen weights cost nothing.
type AdamW struct {
	Config AdamWConfig
	Params []*tensor.Tensor
	Steps  int // updates done so far
	m, v   []kernels.Buffer
	be     kernels.Backend
}

// NewAdamW makes zero moments for params (which must have unique names).
func NewAdamW(be kernels.Backend, params []*tensor.Tensor, c AdamWConfig) *AdamW {
	o := &AdamW{Config: c, Params: params, be: be}
	seen := map[string]bool{}
	for _, p := range params {
		if seen[p.Name] || p.Name == "" {
			panic(fmt.Sprintf("optim: parameter name %q empty or repeated", p.Name))
		}
		seen[p.Name] = true
		o.m = append(o.m, be.Alloc(kernels.F32, p.Numel()))
		o.v = append(o.v, be.Alloc(kernels.F32, p.Numel()))
	}
	return o
}

// Step applies one update with learning rate lr to every parameter that has
// a gradient. Gradients are left as they are (the caller zeroes them).
func (o *AdamW) Step(lr float64) {
	o.Steps++
	for i, p := range o.Params {
		if p.Grad == nil {
			continue
		}
		wd := o.Config.WeightDecay
		if len(p.Shape) == 1 && !o.Config.DecayNorms {
			wd = 0
		}
		o.be.AdamW(p.Buf, p.Grad, o.m[i], o.v[i], kernels.AdamWArgs{LR: float32(lr), Beta1: float32(o.Config.Beta1),
			Beta2: float32(o.Config.Beta2), Eps: float32(o.Config.Eps), WeightDecay: float32(wd), Step: o.Steps})
	}
}

// ZeroGrad zeroes every parameter's gradient.
func (o *AdamW) ZeroGrad() {
	for _, p := range o.Params {
		p.ZeroGrad()
	}
}

// StateTensors returns the moments as safetensors entries
// ("<name>.exp_avg", "<name>.exp_avg_sq"), exactly (f32). Each is encoded
// when the writer reaches it (WriteTensor.Encode), so the moments of a fully
// fine-tuned model (twice its size) are never all encoded at once; write
// them before the next optimizer step.
func (o *AdamW) StateTensors() []checkpoint.WriteTensor {
	var out []checkpoint.WriteTensor
	enc := func(b kernels.Buffer) func() ([]byte, error) {
		return func() ([]byte, error) { return checkpoint.EncodeF32(o.be.ToF32(b)), nil }
	}
	for i, p := range o.Params {
		out = append(out,
			checkpoint.WriteTensor{Name: p.Name + ".exp_avg", DType: "F32", Shape: p.Shape, Encode: enc(o.m[i])},
			checkpoint.WriteTensor{Name: p.Name + ".exp_avg_sq", DType: "F32", Shape: p.Shape, Encode: enc(o.v[i])})
	}
	return out
}

// LoadState restores moments written by StateTensors; steps is the number of
// updates already done.
func (o *AdamW) LoadState(r *checkpoint.Reader, steps int) error {
	for i, p := range o.Params {
		for j, suffix := range []string{".exp_avg", ".exp_avg_sq"} {
			if err := r.Expect(p.Name+suffix, p.Shape); err != nil {
				return fmt.Errorf("optimizer state: %w", err)
			}
			v, err := r.F32(p.Name + suffix)
			if err != nil {
				return err
			}
			dst := o.m[i]
			if j == 1 {
				dst = o.v[i]
			}
			o.be.Copy(dst, o.be.FromF32(kernels.F32, v))
		}
	}
	o.Steps = steps
	return nil
}

// GradNorm is the global L2 norm of the gradients of params.
func GradNorm(be kernels.Backend, params []*tensor.Tensor) float64 {
	var s float64
	for _, p := range params {
		if p.Grad != nil {
			s += be.SumSquares(p.Grad)
		}
	}
	return math.Sqrt(s)
}

// ClipGradNorm scales all gradients so that their global norm is at most
// maxNorm (torch.nn.utils.clip_grad_norm_), returning the norm before
// clipping. maxNorm ≤ 0 only measures.
func ClipGradNorm(be kernels.Backend, params []*tensor.Tensor, maxNorm float64) float64 {
	n := GradNorm(be, params)
	if maxNorm > 0 && n > maxNorm && !math.IsNaN(n) && !math.IsInf(n, 0) {
		s := float32(maxNorm / (n + 1e-6))
		for _, p := range params {
			if p.Grad != nil {
				be.Scale(p.Grad, s)
			}
		}
	}
	return n
}

// Schedule is a learning-rate schedule over optimizer updates.
type Schedule struct {
	Kind        string // "cosine" (default), "linear", "constant"
	WarmupSteps int
	TotalSteps  int
	// MinLRRatio is the floor of cosine/linear decay as a fraction of the peak.
	MinLRRatio float64
}

// Factor is the multiplier of the peak LR for update number step (0-based),
// as transformers' get_{cosine,linear,constant}_schedule_with_warmup: linear
// warmup from 0 over WarmupSteps, then decay to MinLRRatio at TotalSteps.
func (s Schedule) Factor(step int) float64 {
	if step < s.WarmupSteps {
		return float64(step) / float64(max(1, s.WarmupSteps))
	}
	progress := float64(step-s.WarmupSteps) / float64(max(1, s.TotalSteps-s.WarmupSteps))
	progress = math.Min(progress, 1)
	var f float64
	switch s.Kind {
	case "constant":
		return 1
	case "linear":
		f = 1 - progress
	default:
		f = 0.5 * (1 + math.Cos(math.Pi*progress))
	}
	return s.MinLRRatio + (1-s.MinLRRatio)*f
}
