package train

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// progress prints one line per logged step, or on a TTY redraws a status
// line with a bar and ETA.
type progress struct {
	w     io.Writer
	tty   bool
	total int
	start time.Time
	step0 int // step this process started at (a resumed run's checkpoint)
	drawn bool
}

// resumed sets the step this process started from: the ETA is the rate of
// the steps this process made times the steps left.
func (p *progress) resumed(step int) { p.step0 = step }

func newProgress(w io.Writer, tty bool, total int) *progress {
	return &progress{w: w, tty: tty, total: total, start: time.Now()}
}

func (p *progress) step(m StepMetrics) {
	eta := ""
	if done := m.Step - p.step0; p.total > 0 && done > 0 {
		left := time.Duration(float64(time.Since(p.start)) / float64(done) * float64(p.total-m.Step))
		eta = " eta " + left.Round(time.Second).String()
	}
	evalPart := ""
	if m.EvalLoss != 0 {
		evalPart = fmt.Sprintf(" eval_loss %.4f ppl %.5g", m.EvalLoss, m.EvalPPL)
	}
	onPolicy := ""
	if m.OnPolicyShare != nil {
		onPolicy = fmt.Sprintf(" on_policy %.2f", *m.OnPolicyShare)
	}
	line := fmt.Sprintf("step %d/%d loss %.4f%s lr %.3g grad_norm %.3g tok/s %.0f%s%s%s",
		m.Step, p.total, m.Loss, m.Parts.String(), m.LR, m.GradNorm, m.TokensPerSec, onPolicy, evalPart, eta)
	if !p.tty {
		fmt.Fprintln(p.w, line)
		return
	}
	bar := ""
	if p.total > 0 {
		const width = 24
		n := width * m.Step / p.total
		bar = "[" + strings.Repeat("=", n) + strings.Repeat(" ", width-n) + "] "
	}
	fmt.Fprintf(p.w, "\r\033[K%s%s", bar, line)
	p.drawn = true
	if m.EvalLoss != 0 {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

// done ends a drawn status line (before other output, and at the end).
func (p *progress) done() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}
