// Package train is the training loop: micro-batches with gradient
// accumulation normalized by the trained-token count of the whole step,
// clipping, AdamW with a schedule, NaN handling, periodic evaluation, metrics,
// progress, atomic checkpoints and exact resume.
package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"slices"
	"strings"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/optim"
	"github.com/llamatune/llamatune/tensor"
)

// Batches yields packed batches; Next returns io.EOF at the end.
type Batches interface {
	Next() (*data.Batch, error)
	Close() error
}

// Options configure Run. The caller builds the model, attaches adapters and
// marks the trainable tensors.
type Options struct {
	Model     *llama.Model
	LoRA      *lora.Set        // nil for full fine-tuning
	Trainable []*tensor.Tensor // tensors to update (names must be unique)

	// OpenData opens the training data at a cursor (nil: the beginning).
	OpenData func(from *data.Cursor) (Batches, error)
	// OpenEval opens held-out data from its beginning (nil: no evaluation).
	OpenEval func() (Batches, error)

	// Loss is the training objective of one micro-batch (nil: the model's
	// next-token cross-entropy). Evaluation always uses cross-entropy.
	Loss LossFunc

	GradAccum   int // micro-batches per optimizer step (≥ 1)
	MaxSteps    int // optimizer steps; the run also ends when the data does
	Optim       optim.AdamWConfig
	Schedule    optim.Schedule
	MaxGradNorm float64 // ≤ 0: no clipping

	OutDir      string // run directory (checkpoint.Run): metrics.jsonl, checkpoints/
	SaveEvery   int    // steps between checkpoints (≤ 0: only at the end)
	KeepLast    int    // checkpoints kept (≤ 0: all)
	EvalEvery   int    // steps between evaluations (≤ 0: only at the end)
	EvalBatches int    // batches per evaluation (≤ 0: all)
	EvalAtStart bool   // also evaluate before the first step (fresh runs)
	LogEvery    int    // steps between log lines (default 1)
	OnNaN       string // "skip" (drop the step) or "stop" (default)
	Seed        uint64

	Meta   Meta   // written into every checkpoint, checked on resume
	Resume string // "": fresh; "latest"; or a checkpoint directory

	Log io.Writer // progress output (nil: discard)
	TTY bool      // redraw one status line instead of printing log lines

	// AfterStep, when set, runs after every optimizer step (tests use it to
	// interrupt a run).
	AfterStep func(s StepMetrics)

	// Rollout, when set, may replace each micro-batch before its loss is
	// taken: on-policy distillation swaps a batch's completions for ones the
	// student samples itself. step is the optimizer step under way (1-based)
	// and micro the batch's index within it, so that a resumed run makes the
	// same choices; replaced says whether b was swapped. The run counts the
	// swapped batches (kept in checkpoints) and logs their share of all
	// micro-batches so far as on_policy_share. The step's loss is normalized
	// by the trained tokens of the batches Rollout returns.
	Rollout func(ctx context.Context, step, micro int, b *data.Batch) (out *data.Batch, replaced bool, err error)
}

// LossFunc returns the loss of one micro-batch on the tape: the SUM of its
// per-token losses divided by normalizer (the trained-token count of the
// whole optimizer step), so that accumulated micro-batches add up to the
// step's mean. A loss made of several terms also returns them by name
// (distillation: "kd" and "ce"), each scaled the same way, so metrics.jsonl,
// the progress line and the plot show them beside the total; nil otherwise.
type LossFunc func(tp *tensor.Tape, b *data.Batch, normalizer float64) (*tensor.Tensor, LossParts, error)

// LossParts are the named terms of a loss, each the sum of its per-token
// values divided by the step's normalizer (as the total is). They are the
// terms before any weighting, so they need not add up to the total.
type LossParts map[string]float64

// addTo accumulates p into *sum (allocating it on first use).
func (p LossParts) addTo(sum *LossParts) {
	if len(p) == 0 {
		return
	}
	if *sum == nil {
		*sum = LossParts{}
	}
	for k, v := range p {
		(*sum)[k] += v
	}
}

// String is " (kd 0.9123 ce 7.1034)" with the names in order, or "" when
// there are no parts.
func (p LossParts) String() string {
	if len(p) == 0 {
		return ""
	}
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(p)) {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s %.4f", k, p[k])
	}
	return " (" + b.String() + ")"
}

// CrossEntropy is the default LossFunc: next-token cross-entropy of m.
func CrossEntropy(m *llama.Model) LossFunc {
	return func(tp *tensor.Tape, b *data.Batch, normalizer float64) (*tensor.Tensor, LossParts, error) {
		loss, _, err := m.Loss(tp, Input(b), b.Labels, normalizer)
		return loss, nil, err
	}
}

// Meta identifies what a checkpoint belongs to.
type Meta struct {
	Method    string       `json:"method"` // lora | full
	BaseModel string       `json:"base_model"`
	ModelHash string       `json:"model_hash"` // of config.json + weight index
	DataHash  string       `json:"data_hash"`  // of the resolved data section
	JobHash   string       `json:"job_hash"`
	LoRA      *lora.Config `json:"lora,omitempty"`
	JobYAML   string       `json:"-"` // resolved job, saved as job.yaml
}

// StepMetrics is one line of metrics.jsonl.
type StepMetrics struct {
	Step          int       `json:"step"`
	Loss          float64   `json:"loss"`
	Parts         LossParts `json:"loss_parts,omitempty"` // the loss's named terms (distillation: kd, ce)
	LR            float64   `json:"lr"`
	GradNorm      float64   `json:"grad_norm"`
	TrainedTokens int       `json:"trained_tokens"`
	Tokens        int       `json:"tokens"`
	TokensPerSec  float64   `json:"tokens_per_sec"`
	ElapsedSec    float64   `json:"elapsed_sec"`
	Skipped       bool      `json:"skipped,omitempty"`
	EvalLoss      float64   `json:"eval_loss,omitempty"`
	EvalPPL       float64   `json:"eval_ppl,omitempty"`
	// OnPolicyShare is the share of the run's micro-batches so far that
	// Options.Rollout replaced (on-policy distillation); nil without one.
	OnPolicyShare *float64 `json:"on_policy_share,omitempty"`
}

// MarshalJSON writes a metrics.jsonl line. JSON has no NaN or infinity: a
// non-finite loss or grad norm (a step on_nan: skip dropped) is written as
// null, so every line stays well-formed and "skipped": true says why.
func (m StepMetrics) MarshalJSON() ([]byte, error) {
	type plain StepMetrics
	p := plain(m)
	p.TokensPerSec, p.ElapsedSec, p.LR = finiteOr0(m.TokensPerSec), finiteOr0(m.ElapsedSec), finiteOr0(m.LR)
	p.EvalLoss, p.EvalPPL, p.Parts = 0, 0, nil
	var parts map[string]*float64
	if len(m.Parts) > 0 {
		parts = map[string]*float64{}
		for k, v := range m.Parts {
			parts[k] = finite(v)
		}
	}
	return json.Marshal(struct {
		Step     int                 `json:"step"`
		Loss     *float64            `json:"loss"`
		Parts    map[string]*float64 `json:"loss_parts,omitempty"`
		GradNorm *float64            `json:"grad_norm"`
		plain
		EvalLoss *float64 `json:"eval_loss,omitempty"`
		EvalPPL  *float64 `json:"eval_ppl,omitempty"`
	}{m.Step, finite(m.Loss), parts, finite(m.GradNorm), p, nonZero(m.EvalLoss), nonZero(m.EvalPPL)})
}

// finite is &x, or nil (JSON null) when x is NaN or infinite.
func finite(x float64) *float64 {
	if bad(x) {
		return nil
	}
	return &x
}

// nonZero is finite(x), or nil when x is 0 (not measured at this step).
func nonZero(x float64) *float64 {
	if x == 0 {
		return nil
	}
	return finite(x)
}

func finiteOr0(x float64) float64 {
	if bad(x) {
		return 0
	}
	return x
}

// evalLine is a metrics.jsonl line of an evaluation outside a training step
// (before the first, after the last): no training fields. A non-finite
// value is null.
type evalLine struct {
	Step     int      `json:"step"`
	EvalLoss *float64 `json:"eval_loss"`
	EvalPPL  *float64 `json:"eval_ppl"`
}

// Result summarizes a run.
type Result struct {
	Steps       int
	Losses      []float64 // training loss per step, this process only
	EvalLosses  []float64
	Interrupted bool
	LastCkpt    string
}

// ErrNaN is returned when the loss is not finite and OnNaN is "stop".
var ErrNaN = errors.New("loss is NaN or infinite")

func bad(x float64) bool { return math.IsNaN(x) || math.IsInf(x, 0) }

// Input is the model input of a packed batch.
func Input(b *data.Batch) *llama.Input {
	return &llama.Input{Rows: b.Rows, SeqLen: b.SeqLen, InputIDs: b.InputIDs, PositionIDs: b.PositionIDs, DocStart: b.DocStart}
}

// countTargets is the number of next-token targets that carry loss.
func countTargets(b *data.Batch) int {
	n := 0
	for _, t := range llama.ShiftLabels(b.Labels, b.Rows, b.SeqLen, b.DocStart) {
		if t != kernels.IgnoreIndex {
			n++
		}
	}
	return n
}

// errStopped: forwardBackward was stopped by its cancel func between layers;
// the gradients it accumulated are partial.
var errStopped = errors.New("stopped between layers")

// forwardBackward accumulates the gradient of the micro-batch's loss (already
// divided by the step's normalizer) and returns that loss and its parts.
// cancel is asked between layers (forward and backward); when it says stop,
// errStopped.
func forwardBackward(be kernels.Backend, loss LossFunc, b *data.Batch, normalizer float64, backward bool, cancel func() bool) (float64, LossParts, error) {
	tp := tensor.NewTape(be)
	tp.Cancel = cancel
	defer tp.Release()
	l, parts, err := loss(tp, b, normalizer)
	if errors.Is(err, tensor.ErrCanceled) || tp.Canceled() {
		return 0, nil, errStopped
	}
	if err != nil {
		return 0, nil, err
	}
	v := float64(l.Item())
	if backward && l.RequiresGrad() {
		tp.Backward(l)
		if tp.Canceled() {
			return 0, nil, errStopped
		}
	}
	return v, parts, nil
}

// Evaluate is the mean next-token loss over the trained tokens of up to
// maxBatches held-out batches (≤ 0: all).
func Evaluate(m *llama.Model, open func() (Batches, error), maxBatches int) (float64, error) {
	bs, err := open()
	if err != nil {
		return 0, err
	}
	defer bs.Close()
	var sum float64
	count := 0
	for i := 0; maxBatches <= 0 || i < maxBatches; i++ {
		b, err := bs.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, err
		}
		tp := tensor.NewTape(m.Backend())
		tp.NoGrad, tp.Inference = true, true              // eval mode: no dropout
		loss, n, err := m.Loss(tp, Input(b), b.Labels, 1) // normalizer 1: the sum
		if err != nil {
			return 0, err
		}
		sum += float64(loss.Item())
		count += n
		tp.Release()
	}
	if count == 0 {
		return 0, fmt.Errorf("evaluation data has no trained tokens")
	}
	return sum / float64(count), nil
}

// trimMetrics drops the lines of steps after step (a resumed run rewrites
// them; a fresh run starts empty).
func trimMetrics(f *os.File, step int) error {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	raw, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("reading metrics.jsonl: %w", err)
	}
	var keep []byte
	for _, line := range strings.SplitAfter(string(raw), "\n") {
		var m StepMetrics
		if json.Unmarshal([]byte(line), &m) == nil && m.Step <= step && step > 0 {
			keep = append(keep, line...)
		}
	}
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("rewriting metrics.jsonl: %w", err)
	}
	_, err = f.Write(keep)
	return err
}
