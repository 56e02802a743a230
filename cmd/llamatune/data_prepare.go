package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/llamatune/llamatune/data"
)

func init() {
	var (
		out  string
		eval bool
	)
	cmd := &cobra.Command{
		Use:   "prepare JOB.yaml --out DIR",
		Short: "Pre-tokenize and pack the job's data into Arrow shards",
		Long: `Run the job's data through tokenizer, chat template, loss masks and packer once and write
the packed rows to DIR as Arrow IPC files (part-NNNNN.arrow) with the columns input_ids,
labels, position_ids and doc_start (list<int32>, seq_len each) and num_tokens, plus
llamatune_prepared.json. Point a job's dataset path at DIR to train from it without a tokenizer
pass: the rows are split back into their documents and packed again. One pass is written
(data.epochs applies when training from DIR).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return fmt.Errorf("data prepare: --out DIR is required")
			}
			job, err := loadDataJob(args[0], *sets(cmd))
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runPrepare(ctx, job, args[0], out, eval, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "output directory (required; must not hold a prepared dataset)")
	cmd.Flags().BoolVar(&eval, "eval", false, "prepare the eval data instead of the training data")
	addSetFlag(cmd)
	dataCmd.AddCommand(cmd)
}

// runPrepare writes the prepared dataset of job to out. When ctx is cancelled
// (Ctrl-C) or anything fails, the shards written so far are removed: out
// holds either a whole dataset with its manifest or nothing of this run.
func runPrepare(ctx context.Context, job *dataJob, jobFile, out string, eval bool, stdout, stderr io.Writer) (err error) {
	o, tok, err := job.split(eval)
	if err != nil {
		return err
	}
	onePass(&o, stderr)
	p, err := data.New(o, nil)
	if err != nil {
		return err
	}
	defer p.Close()
	tokName := ""
	if tok != nil {
		tokName = tok.Kind()
	}
	w, err := data.NewPreparedWriter(out, o.SeqLen, o.Packing, p.Options().PadID, tokName)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			if aerr := w.Abort(); aerr != nil {
				fmt.Fprintf(stderr, "data prepare: could not remove the unfinished shards in %s: %v (delete them by hand)\n", out, aerr)
			} else {
				fmt.Fprintf(stderr, "data prepare: removed the unfinished shards from %s\n", out)
			}
		}
	}()
	report := newProgress(stderr)
	start := time.Now()
	for {
		b, err := p.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if err := w.Write(b); err != nil {
			return err
		}
		report(p.Stats(), false)
		if ctx.Err() != nil {
			return fmt.Errorf("data prepare: interrupted after %d rows; nothing kept in %s, run it again to prepare the data", p.Stats().Rows, out)
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	report(p.Stats(), true)
	s := p.Stats()
	rows, tokens, trained, shards := w.PreparedSummary()
	el := time.Since(start).Seconds()
	fmt.Fprintf(stdout, "wrote %s: %d rows of %d tokens in %d shard(s); %d examples, %d tokens (%d trained), packing efficiency %.1f%%, %d truncated, %d bad rows skipped; %.0f tokens/s\n",
		out, rows, o.SeqLen, shards, s.Examples, tokens, trained, 100*s.Efficiency(), s.Truncated, s.BadRows, float64(tokens)/max(el, 1e-9))
	return nil
}

// countBar is a progress bar counting units on a terminal, nil when w is
// not one (the callers then print a plain line now and then).
func countBar(w io.Writer, desc, units string) *progressbar.ProgressBar {
	f, ok := w.(*os.File)
	if !ok || !isTerminal(f) {
		return nil
	}
	return progressbar.NewOptions64(-1,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowCount(),
		progressbar.OptionSetItsString(units),
		progressbar.OptionShowIts(),
		progressbar.OptionThrottle(200*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
}

// newProgress returns a reporter: a progress bar on a terminal, a plain line every 5 s otherwise.
func newProgress(w io.Writer) func(s data.Stats, final bool) {
	if bar := countBar(w, "preparing", "rows"); bar != nil {
		var last int64
		return func(s data.Stats, final bool) {
			bar.Add64(s.Rows - last)
			last = s.Rows
			if final {
				bar.Finish()
			}
		}
	}
	start, next := time.Now(), time.Now().Add(5*time.Second)
	return func(s data.Stats, final bool) {
		if now := time.Now(); now.After(next) || final {
			next = now.Add(5 * time.Second)
			el := now.Sub(start).Seconds()
			fmt.Fprintf(w, "prepare: %d examples, %d rows, %d tokens, %.0f tokens/s\n", s.Examples, s.Rows, s.Tokens, float64(s.Tokens)/max(el, 1e-9))
		}
	}
}
