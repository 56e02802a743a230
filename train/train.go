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
	"path/filepath"
	"slices"
	"strings"
	"time"

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

	OutDir      string // run directory: metrics.jsonl, checkpoints/, final/
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
	Method     string       `json:"method"` // lora | full
	BaseModel  string       `json:"base_model"`
	ModelHash  string       `json:"model_hash"` // of config.json + weight index
	DataHash   string       `json:"data_hash"`  // of the resolved data section
	JobHash    string       `json:"job_hash"`
	LoRA       *lora.Config `json:"lora,omitempty"`
	JobYAML    string       `json:"-"` // resolved job, saved as job.yaml
	Tokenizers []string     `json:"-"` // files copied into final/ exports
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

// Run trains until MaxSteps, the end of the data, or ctx is cancelled.
// Cancellation is honoured between micro-batches and, inside one, between
// decoder layers of the forward and backward passes (tensor.Tape.Cancel):
// the step under way is dropped, the last completed step is saved (unless a
// checkpoint of it exists already; nothing when no step completed), and Run
// returns with Interrupted set and a nil error.
func Run(ctx context.Context, o Options) (res Result, err error) {
	if o.GradAccum < 1 {
		o.GradAccum = 1
	}
	if o.LogEvery < 1 {
		o.LogEvery = 1
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return res, fmt.Errorf("creating run directory: %w", err)
	}
	if err := cleanTempCheckpoints(o.OutDir, o.Log); err != nil {
		return res, err
	}
	if o.Resume == "" {
		if last, err := LatestCheckpoint(o.OutDir); err == nil {
			return res, fmt.Errorf("run directory %s already holds checkpoints of an earlier run (latest %s): continue it with --resume, or pick another output_dir (or delete that one)", o.OutDir, last)
		}
	}
	be := o.Model.Backend()
	if o.Loss == nil {
		o.Loss = CrossEntropy(o.Model)
	}
	opt := optim.NewAdamW(be, o.Trainable, o.Optim)
	st := state{}
	var cursor *data.Cursor
	saved := 0 // the step whose checkpoint exists (0: none)
	if o.Resume != "" {
		dir, err := resolveResume(o.OutDir, o.Resume)
		if err != nil {
			return res, err
		}
		if st, err = loadCheckpoint(dir, o, opt); err != nil {
			return res, err
		}
		cursor = st.Cursor
		saved, res.LastCkpt = st.Step, dir
		fmt.Fprintf(o.Log, "resumed from %s at step %d\n", dir, st.Step)
	}
	batches, err := o.OpenData(cursor)
	if err != nil {
		return res, err
	}
	defer batches.Close()
	defer reportData(o.Log, batches) // before Close: documents dropped, bad rows skipped
	metrics, err := os.OpenFile(filepath.Join(o.OutDir, "metrics.jsonl"), os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o644)
	if err != nil {
		return res, fmt.Errorf("opening metrics.jsonl: %w", err)
	}
	defer metrics.Close()
	if err := trimMetrics(metrics, st.Step); err != nil {
		return res, err
	}
	// evalOnly evaluates outside a training step (before the first, after
	// the last) and logs a metrics line without training fields.
	evalOnly := func(step int, when string) error {
		l, err := Evaluate(o.Model, o.OpenEval, o.EvalBatches)
		if err != nil {
			return err
		}
		res.EvalLosses = append(res.EvalLosses, l)
		line, err := json.Marshal(evalLine{Step: step, EvalLoss: finite(l), EvalPPL: finite(math.Exp(l))})
		if err != nil {
			return fmt.Errorf("encoding a metrics.jsonl line: %w", err)
		}
		if _, err := metrics.Write(append(line, '\n')); err != nil {
			return fmt.Errorf("writing metrics.jsonl: %w", err)
		}
		fmt.Fprintf(o.Log, "eval %s: loss %.4f, perplexity %.5g\n", when, l, math.Exp(l))
		return nil
	}
	if o.EvalAtStart && o.OpenEval != nil && st.Step == 0 {
		if err := evalOnly(0, "before training"); err != nil {
			return res, err
		}
	}
	prog := newProgress(o.Log, o.TTY, o.MaxSteps)
	defer prog.done()
	prog.resumed(st.Step)
	start := time.Now().Add(-st.elapsed()) // elapsed_sec goes on across a resume
	if o.Meta.BaseModel != "" {            // the base's content fingerprint, once for every checkpoint
		if h, err := llama.WeightsFingerprint(o.Meta.BaseModel); err == nil {
			st.BaseWeights = h
		}
	}
	var lastCursor *data.Cursor = cursor
	save := func() error {
		st.Cursor = lastCursor
		st.ElapsedSec = time.Since(start).Seconds()
		dir, err := saveCheckpoint(o, opt, st)
		if err != nil {
			return err
		}
		res.LastCkpt, saved = dir, st.Step
		return nil
	}
	freshStart := st.Step == 0
	cancel := func() bool { return ctx.Err() != nil }
	for o.MaxSteps <= 0 || st.Step < o.MaxSteps {
		// Gather the step's micro-batches first: the loss is normalized by
		// the trained-token count of all of them together.
		var micro []*data.Batch
		for len(micro) < o.GradAccum && ctx.Err() == nil {
			b, err := batches.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return res, err
			}
			micro = append(micro, b)
		}
		if ctx.Err() != nil {
			res.Interrupted = true
			break
		}
		if len(micro) == 0 {
			if st.Step == 0 {
				return res, fmt.Errorf("the training data yields no batch: check data.seq_len, truncation and the chat template (llamatune data inspect shows what the pipeline makes)")
			}
			break
		}
		total, tokens := 0, 0
		for _, b := range micro {
			total += countTargets(b)
			tokens += len(b.InputIDs)
		}
		t0 := time.Now()
		var lossSum float64
		var parts LossParts
		for i, b := range micro {
			if o.LoRA != nil {
				o.LoRA.SetStep(uint64(st.Micro + i))
			}
			l, p, err := forwardBackward(o.Model.Backend(), o.Loss, b, float64(max(total, 1)), total > 0, cancel)
			if err != nil && (errors.Is(err, errStopped) || ctx.Err() != nil) {
				// Stopped inside the step (or its loss failed because of
				// the stop, e.g. a teacher request): drop the partial
				// gradients; weights, optimizer, cursor and RNG are still
				// those of the last completed step.
				res.Interrupted = true
				break
			}
			if err != nil {
				return res, err
			}
			lossSum += l
			p.addTo(&parts)
		}
		if res.Interrupted {
			opt.ZeroGrad()
			prog.done()
			fmt.Fprintf(o.Log, "stopped inside step %d: its partial work is dropped\n", st.Step+1)
			break
		}
		st.Micro += len(micro)
		lastCursor = &micro[len(micro)-1].Cursor
		m := StepMetrics{Step: st.Step + 1, Loss: lossSum, Parts: parts, TrainedTokens: total, Tokens: tokens}
		m.GradNorm = optim.ClipGradNorm(be, o.Trainable, o.MaxGradNorm)
		m.LR = o.Optim.LR * o.Schedule.Factor(st.Step)
		if bad(m.Loss) || bad(m.GradNorm) {
			if o.OnNaN != "skip" {
				opt.ZeroGrad()
				return res, fmt.Errorf("step %d: %w (loss %v, grad norm %v); lower the learning rate, check the data, or set on_nan: skip", m.Step, ErrNaN, m.Loss, m.GradNorm)
			}
			m.Skipped = true
			fmt.Fprintf(o.Log, "step %d: non-finite loss %v or grad norm %v: update skipped\n", m.Step, m.Loss, m.GradNorm)
		} else {
			opt.Step(m.LR)
		}
		opt.ZeroGrad()
		st.Step++
		m.ElapsedSec = time.Since(start).Seconds()
		m.TokensPerSec = float64(tokens) / time.Since(t0).Seconds()
		res.Losses = append(res.Losses, m.Loss)
		if o.OpenEval != nil && o.EvalEvery > 0 && st.Step%o.EvalEvery == 0 {
			if m.EvalLoss, err = Evaluate(o.Model, o.OpenEval, o.EvalBatches); err != nil {
				return res, err
			}
			m.EvalPPL = math.Exp(m.EvalLoss)
			res.EvalLosses = append(res.EvalLosses, m.EvalLoss)
		}
		line, err := json.Marshal(m)
		if err != nil {
			return res, fmt.Errorf("step %d: encoding its metrics.jsonl line: %w", m.Step, err)
		}
		if _, err := metrics.Write(append(line, '\n')); err != nil {
			return res, fmt.Errorf("writing metrics.jsonl: %w", err)
		}
		if st.Step%o.LogEvery == 0 || m.EvalLoss != 0 {
			prog.step(m)
		}
		if o.SaveEvery > 0 && st.Step%o.SaveEvery == 0 {
			if err := save(); err != nil {
				return res, err
			}
		}
		if o.AfterStep != nil {
			o.AfterStep(m)
		}
	}
	res.Steps = st.Step
	if res.Interrupted {
		prog.done()
	}
	switch {
	case res.Interrupted && st.Step == 0:
		fmt.Fprintf(o.Log, "interrupted before step 1 completed: nothing to save\n")
		if freshStart {
			// Leave nothing a fresh run would trip over (at most an
			// evaluation before training was logged).
			metrics.Close()
			os.Remove(filepath.Join(o.OutDir, "metrics.jsonl"))
		}
		return res, nil
	case st.Step == saved:
		if res.Interrupted {
			fmt.Fprintf(o.Log, "interrupted at step %d, whose checkpoint %s is already saved\n", st.Step, res.LastCkpt)
		}
	default:
		if res.Interrupted {
			fmt.Fprintf(o.Log, "interrupted at step %d: saving its checkpoint\n", st.Step)
		}
		if err := save(); err != nil {
			return res, err
		}
	}
	if o.OpenEval != nil && !res.Interrupted && (o.EvalEvery <= 0 || st.Step%o.EvalEvery != 0) {
		if err := evalOnly(st.Step, fmt.Sprintf("at step %d", st.Step)); err != nil {
			return res, err
		}
	}
	return res, nil
}

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
		tp.NoGrad = true
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
