package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/optim"
)

// Run trains until MaxSteps, the end of the data, or ctx is cancelled.
// Cancellation is honoured between micro-batches and, inside one, between
// decoder layers of the forward and backward passes (tensor.Tape.Cancel):
// the step under way is dropped, the last completed step is saved (unless a
// checkpoint of it exists already; nothing when no step completed), and Run
// returns with Interrupted set and a nil error.
func Run(ctx context.Context, o Options) (Result, error) {
	r := &runner{ctx: ctx, o: o.withDefaults()}
	defer r.close()
	if err := r.open(); err != nil {
		return r.res, err
	}
	freshStart := r.st.Step == 0
	if r.o.EvalAtStart && r.o.OpenEval != nil && freshStart {
		if err := r.evalOnly(0, "before training"); err != nil {
			return r.res, err
		}
	}
	for r.o.MaxSteps <= 0 || r.st.Step < r.o.MaxSteps {
		micro, err := r.nextMicroBatches()
		if err != nil || r.res.Interrupted || len(micro) == 0 {
			if err != nil {
				return r.res, err
			}
			break
		}
		m, err := r.step(micro)
		if err != nil || r.res.Interrupted {
			if err != nil {
				return r.res, err
			}
			break
		}
		if err := r.afterStep(m); err != nil {
			return r.res, err
		}
	}
	err := r.finish(freshStart) // sets r.res.Steps: call it before reading r.res
	return r.res, err
}

// withDefaults fills the options Run treats as optional.
func (o Options) withDefaults() Options {
	o.GradAccum = max(o.GradAccum, 1)
	o.LogEvery = max(o.LogEvery, 1)
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Loss == nil {
		o.Loss = CrossEntropy(o.Model)
	}
	return o
}

// runner is one Run under way: what it opened and where it stands.
type runner struct {
	ctx context.Context
	o   Options
	res Result

	opt        *optim.AdamW
	st         state        // the last completed step (what a checkpoint saves)
	saved      int          // the step whose checkpoint exists (0: none)
	lastCursor *data.Cursor // the data cursor after the last completed step
	start      time.Time    // of the run, moved back by a resumed run's elapsed time

	batches Batches
	metrics *os.File
	prog    *progress
}

// open prepares the run directory (temporary checkpoints of a crash
// removed; a fresh run refused where an earlier one left checkpoints),
// resumes from a checkpoint when asked, and opens the data and
// metrics.jsonl (trimmed to the resumed step).
func (r *runner) open() error {
	o := r.o
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return fmt.Errorf("creating run directory: %w", err)
	}
	if err := (checkpoint.Run{Dir: o.OutDir}).CleanTemp(o.Log); err != nil {
		return err
	}
	if o.Resume == "" {
		if last, err := LatestCheckpoint(o.OutDir); err == nil {
			return fmt.Errorf("run directory %s already holds checkpoints of an earlier run (latest %s): continue it with --resume, or pick another output_dir (or delete that one)", o.OutDir, last)
		}
	}
	r.opt = optim.NewAdamW(o.Model.Backend(), o.Trainable, o.Optim)
	if o.Resume != "" {
		dir, err := resolveResume(o.OutDir, o.Resume)
		if err != nil {
			return err
		}
		if r.st, err = loadCheckpoint(dir, o, r.opt); err != nil {
			return err
		}
		r.saved, r.res.LastCkpt = r.st.Step, dir
		fmt.Fprintf(o.Log, "resumed from %s at step %d\n", dir, r.st.Step)
	}
	r.lastCursor = r.st.Cursor
	var err error
	if r.batches, err = o.OpenData(r.st.Cursor); err != nil {
		return err
	}
	r.metrics, err = os.OpenFile(filepath.Join(o.OutDir, "metrics.jsonl"), os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("opening metrics.jsonl: %w", err)
	}
	if err := trimMetrics(r.metrics, r.st.Step); err != nil {
		return err
	}
	r.prog = newProgress(o.Log, o.TTY, o.MaxSteps)
	r.prog.resumed(r.st.Step)
	r.start = time.Now().Add(-r.st.elapsed()) // elapsed_sec goes on across a resume
	if o.Meta.BaseModel != "" {               // the base's content fingerprint, once for every checkpoint
		if h, err := llama.WeightsFingerprint(o.Meta.BaseModel); err == nil {
			r.st.BaseWeights = h
		}
	}
	return nil
}

// close ends the progress line, closes metrics.jsonl, reports what the data
// pipeline dropped or skipped, and closes the data.
func (r *runner) close() {
	if r.prog != nil {
		r.prog.done()
	}
	if r.metrics != nil {
		r.metrics.Close()
	}
	if r.batches != nil {
		reportData(r.o.Log, r.batches) // before Close: documents dropped, bad rows skipped
		r.batches.Close()
	}
}

// nextMicroBatches gathers the next step's micro-batches (the loss is
// normalized by the trained-token count of all of them together). None
// means the data has ended (an error if no step was made); a cancelled ctx
// sets Interrupted.
func (r *runner) nextMicroBatches() ([]*data.Batch, error) {
	var micro []*data.Batch
	for len(micro) < r.o.GradAccum && r.ctx.Err() == nil {
		b, err := r.batches.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		micro = append(micro, b)
	}
	if r.ctx.Err() != nil {
		r.res.Interrupted = true
		return nil, nil
	}
	if len(micro) == 0 && r.st.Step == 0 {
		return nil, fmt.Errorf("the training data yields no batch: check data.seq_len, truncation and the chat template (llamatune data inspect shows what the pipeline makes)")
	}
	return micro, nil
}

// step runs one optimizer step over micro: forward and backward of each
// micro-batch (after Rollout, when set, replaced it), clipping and AdamW
// (skipped, with on_nan: skip, when the loss or the gradient norm is not
// finite). Stopped inside, it drops the partial gradients and sets
// Interrupted: weights, optimizer, cursor and RNG are still those of the last
// completed step.
func (r *runner) step(micro []*data.Batch) (StepMetrics, error) {
	o, st := r.o, &r.st
	cursor := &micro[len(micro)-1].Cursor
	m := StepMetrics{Step: st.Step + 1}
	t0 := time.Now() // tokens/s counts the sampling of on-policy batches too
	micro, onPolicy, err := r.rollout(micro)
	if err != nil {
		if r.ctx.Err() != nil {
			return m, r.stoppedInside()
		}
		return m, fmt.Errorf("step %d: %w", m.Step, err)
	}
	total, tokens := 0, 0
	for _, b := range micro {
		total += countTargets(b)
		tokens += len(b.InputIDs)
	}
	m.TrainedTokens, m.Tokens = total, tokens
	cancel := func() bool { return r.ctx.Err() != nil }
	for i, b := range micro {
		if o.LoRA != nil {
			o.LoRA.SetStep(uint64(st.Micro + i))
		}
		l, p, err := forwardBackward(o.Model.Backend(), o.Loss, b, float64(max(total, 1)), total > 0, cancel)
		if err != nil && (errors.Is(err, errStopped) || r.ctx.Err() != nil) {
			// Stopped inside the step (or its loss failed because of the
			// stop, e.g. a teacher request).
			return m, r.stoppedInside()
		}
		if err != nil {
			return m, err
		}
		m.Loss += l
		p.addTo(&m.Parts)
	}
	st.Micro += len(micro)
	st.OnPolicy += onPolicy
	if o.Rollout != nil {
		share := float64(st.OnPolicy) / float64(max(st.Micro, 1))
		m.OnPolicyShare = &share
	}
	r.lastCursor = cursor
	m.GradNorm = optim.ClipGradNorm(o.Model.Backend(), o.Trainable, o.MaxGradNorm)
	m.LR = o.Optim.LR * o.Schedule.Factor(st.Step)
	if bad(m.Loss) || bad(m.GradNorm) {
		if o.OnNaN != "skip" {
			r.opt.ZeroGrad()
			return m, fmt.Errorf("step %d: %w (loss %v, grad norm %v); lower the learning rate, check the data, or set on_nan: skip", m.Step, ErrNaN, m.Loss, m.GradNorm)
		}
		m.Skipped = true
		fmt.Fprintf(o.Log, "step %d: non-finite loss %v or grad norm %v: update skipped\n", m.Step, m.Loss, m.GradNorm)
	} else {
		r.opt.Step(m.LR)
	}
	r.opt.ZeroGrad()
	st.Step++
	m.ElapsedSec = time.Since(r.start).Seconds()
	m.TokensPerSec = float64(tokens) / time.Since(t0).Seconds()
	r.res.Losses = append(r.res.Losses, m.Loss)
	return m, nil
}

// stoppedInside drops the partial work of a step that a stop interrupted
// and marks the run interrupted.
func (r *runner) stoppedInside() error {
	r.opt.ZeroGrad()
	r.prog.done()
	fmt.Fprintf(r.o.Log, "stopped inside step %d: its partial work is dropped\n", r.st.Step+1)
	r.res.Interrupted = true
	return nil
}

// rollout lets Options.Rollout replace the step's micro-batches and counts
// the ones it replaced.
func (r *runner) rollout(micro []*data.Batch) ([]*data.Batch, int, error) {
	if r.o.Rollout == nil {
		return micro, 0, nil
	}
	out := make([]*data.Batch, len(micro))
	n := 0
	for i, b := range micro {
		nb, replaced, err := r.o.Rollout(r.ctx, r.st.Step+1, i, b)
		if err != nil {
			return nil, 0, err
		}
		if replaced {
			n++
		}
		out[i] = nb
	}
	return out, n, nil
}

// afterStep evaluates when it is due, writes the step's metrics.jsonl line
// and progress, saves a checkpoint when due, and calls AfterStep.
func (r *runner) afterStep(m StepMetrics) error {
	o, step := r.o, r.st.Step
	if o.OpenEval != nil && o.EvalEvery > 0 && step%o.EvalEvery == 0 {
		var err error
		if m.EvalLoss, err = Evaluate(o.Model, o.OpenEval, o.EvalBatches); err != nil {
			return err
		}
		m.EvalPPL = math.Exp(m.EvalLoss)
		r.res.EvalLosses = append(r.res.EvalLosses, m.EvalLoss)
	}
	line, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("step %d: encoding its metrics.jsonl line: %w", m.Step, err)
	}
	if err := r.writeMetrics(line); err != nil {
		return err
	}
	if step%o.LogEvery == 0 || m.EvalLoss != 0 {
		r.prog.step(m)
	}
	if o.SaveEvery > 0 && step%o.SaveEvery == 0 {
		if err := r.save(); err != nil {
			return err
		}
	}
	if o.AfterStep != nil {
		o.AfterStep(m)
	}
	return nil
}

// finish saves the last completed step unless its checkpoint exists (an
// interrupted fresh run with no step leaves nothing behind) and evaluates
// at the end when the last step did not.
func (r *runner) finish(freshStart bool) error {
	o, st := r.o, r.st
	r.res.Steps = st.Step
	if r.res.Interrupted {
		r.prog.done()
	}
	switch {
	case r.res.Interrupted && st.Step == 0:
		fmt.Fprintf(o.Log, "interrupted before step 1 completed: nothing to save\n")
		if freshStart {
			// Leave nothing a fresh run would trip over (at most an
			// evaluation before training was logged).
			r.metrics.Close()
			r.metrics = nil
			os.Remove(filepath.Join(o.OutDir, "metrics.jsonl"))
		}
		return nil
	case st.Step == r.saved:
		if r.res.Interrupted {
			fmt.Fprintf(o.Log, "interrupted at step %d, whose checkpoint %s is already saved\n", st.Step, r.res.LastCkpt)
		}
	default:
		if r.res.Interrupted {
			fmt.Fprintf(o.Log, "interrupted at step %d: saving its checkpoint\n", st.Step)
		}
		if err := r.save(); err != nil {
			return err
		}
	}
	if o.OpenEval != nil && !r.res.Interrupted && (o.EvalEvery <= 0 || st.Step%o.EvalEvery != 0) {
		return r.evalOnly(st.Step, fmt.Sprintf("at step %d", st.Step))
	}
	return nil
}

// save writes the checkpoint of the last completed step.
func (r *runner) save() error {
	r.st.Cursor = r.lastCursor
	r.st.ElapsedSec = time.Since(r.start).Seconds()
	dir, err := saveCheckpoint(r.o, r.opt, r.st)
	if err != nil {
		return err
	}
	r.res.LastCkpt, r.saved = dir, r.st.Step
	return nil
}

// evalOnly evaluates outside a training step (before the first, after the
// last) and logs a metrics line without training fields.
func (r *runner) evalOnly(step int, when string) error {
	l, err := Evaluate(r.o.Model, r.o.OpenEval, r.o.EvalBatches)
	if err != nil {
		return err
	}
	r.res.EvalLosses = append(r.res.EvalLosses, l)
	line, err := json.Marshal(evalLine{Step: step, EvalLoss: finite(l), EvalPPL: finite(math.Exp(l))})
	if err != nil {
		return fmt.Errorf("encoding a metrics.jsonl line: %w", err)
	}
	if err := r.writeMetrics(line); err != nil {
		return err
	}
	fmt.Fprintf(r.o.Log, "eval %s: loss %.4f, perplexity %.5g\n", when, l, math.Exp(l))
	return nil
}

func (r *runner) writeMetrics(line []byte) error {
	if _, err := r.metrics.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("writing metrics.jsonl: %w", err)
	}
	return nil
}
