package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/data/tokenizer"
)

func init() {
	var (
		n     int
		limit int64
		eval  bool
		color string
	)
	cmd := &cobra.Command{
		Use:   "inspect JOB.yaml [-n N]",
		Short: "Show rendered examples with trained vs masked tokens, and data stats",
		Long: `Show the first N examples of the job's data as the trainer will see them: the rendered
text, with the tokens that take no loss (prompt, system and user turns) set apart — dim on a
terminal, between « and » otherwise. Then one pass over the data (or --limit examples) gives
the stats: examples, tokens, trained tokens, truncated and dropped documents, and the
packing efficiency (non-pad tokens / all tokens).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			job, err := loadDataJob(args[0], *sets(cmd))
			if err != nil {
				return err
			}
			o, tok, err := job.split(eval)
			if err != nil {
				return err
			}
			out := bufio.NewWriter(cmd.OutOrStdout())
			defer out.Flush()
			useColor := color == "always" || (color == "auto" && isTerminal(os.Stdout))
			if err := showExamples(out, o, tok, n, useColor); err != nil {
				return err
			}
			var skipped []error
			o.OnBadRow = func(err error) {
				if len(skipped) < 5 {
					skipped = append(skipped, err)
				}
			}
			// Stats over one pass.
			o.Epochs = 1
			for i := range o.Datasets {
				o.Datasets[i].Epochs = 1
			}
			p, err := data.New(o, nil)
			if err != nil {
				return err
			}
			defer p.Close()
			for limit <= 0 || p.Stats().Examples < limit {
				if _, err := p.Next(); err == io.EOF {
					break
				} else if err != nil {
					return err
				}
			}
			printStats(out, p.Stats(), p.Options(), limit)
			for _, e := range skipped {
				fmt.Fprintf(out, "skipped: %v\n", e)
			}
			return nil
		},
	}
	cmd.Flags().IntVarP(&n, "n", "n", 3, "examples to show")
	cmd.Flags().Int64Var(&limit, "limit", 0, "compute stats over at most this many examples (0: one full pass)")
	cmd.Flags().BoolVar(&eval, "eval", false, "inspect the eval data instead of the training data")
	cmd.Flags().StringVar(&color, "color", "auto", "dim masked tokens: auto | always | never (never marks them «like this»)")
	addSetFlag(cmd)
	dataCmd.AddCommand(cmd)
}

func showExamples(out io.Writer, o data.Options, tok tokenizer.Tokenizer, n int, color bool) error {
	if n <= 0 {
		return nil
	}
	p, err := data.New(o, nil)
	if err != nil {
		return err
	}
	defer p.Close()
	types := p.Types()
	for shown := 0; shown < n; {
		ex, err := p.NextExample()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		shown++
		name := o.Datasets[ex.Example.Dataset].Name
		fmt.Fprintf(out, "── example %d · %s · %s (%s)\n", shown, ex.Example.Loc, name, types[ex.Example.Dataset])
		if ex.Err != nil {
			fmt.Fprintf(out, "   skipped: %v\n\n", ex.Err)
			continue
		}
		if len(ex.Docs) == 0 {
			fmt.Fprintf(out, "   (no document: nothing to train on, or dropped by truncation)\n\n")
			continue
		}
		for di, d := range ex.Docs {
			trained := 0
			for i, l := range d.Labels {
				if l != data.IgnoreIndex && i > 0 {
					trained++
				}
			}
			if len(ex.Docs) > 1 {
				fmt.Fprintf(out, "   [document %d/%d]\n", di+1, len(ex.Docs))
			}
			fmt.Fprintln(out, renderMasked(d, tok, color))
			fmt.Fprintf(out, "   %d tokens, %d trained\n\n", len(d.IDs), trained)
		}
	}
	if !color {
		fmt.Fprintln(out, "(text between « and » takes no loss)")
	}
	fmt.Fprintln(out)
	return nil
}

// renderMasked decodes a document, setting apart the tokens without loss. The first token
// never takes loss in a packed row, so it is shown as masked.
func renderMasked(d data.Doc, tok tokenizer.Tokenizer, color bool) string {
	var b strings.Builder
	decode := func(ids []int32) string {
		if tok == nil {
			parts := make([]string, len(ids))
			for i, id := range ids {
				parts[i] = fmt.Sprint(id)
			}
			return strings.Join(parts, " ") + " "
		}
		x := make([]int, len(ids))
		for i, id := range ids {
			x[i] = int(id)
		}
		return tok.Decode(x)
	}
	isTrained := func(i int) bool { return i > 0 && d.Labels[i] != data.IgnoreIndex }
	for s := 0; s < len(d.IDs); {
		e := s + 1
		for e < len(d.IDs) && isTrained(e) == isTrained(s) {
			e++
		}
		text := decode(d.IDs[s:e])
		switch {
		case isTrained(s):
			b.WriteString(text)
		case color:
			b.WriteString("\x1b[2m" + text + "\x1b[0m")
		default:
			b.WriteString("«" + text + "»")
		}
		s = e
	}
	return b.String()
}

func printStats(out io.Writer, s data.Stats, o data.Options, limit int64) {
	scope := "one pass"
	if limit > 0 {
		scope = fmt.Sprintf("first %d examples", limit)
	}
	pct := func(a, b int64) float64 {
		if b == 0 {
			return 0
		}
		return 100 * float64(a) / float64(b)
	}
	mode := "packed"
	if !o.Packing {
		mode = "one example per row"
	}
	fmt.Fprintf(out, "stats (%s, seq_len %d, %s):\n", scope, o.SeqLen, mode)
	fmt.Fprintf(out, "  examples          %d\n", s.Examples)
	if s.BadRows > 0 {
		fmt.Fprintf(out, "  bad rows skipped  %d\n", s.BadRows)
	}
	fmt.Fprintf(out, "  documents         %d\n", s.Docs)
	fmt.Fprintf(out, "  tokens            %d (%.1f per example)\n", s.Tokens, float64(s.Tokens)/float64(max(1, s.Examples)))
	fmt.Fprintf(out, "  trained tokens    %d (%.1f%%)\n", s.TrainedTokens, pct(s.TrainedTokens, s.Tokens))
	fmt.Fprintf(out, "  truncated         %d (policy %s)\n", s.Truncated, o.Truncation)
	if s.DroppedLong > 0 || o.Truncation == data.TruncateDrop {
		fmt.Fprintf(out, "  dropped (long)    %d (longer than seq_len %d; truncation: drop)\n", s.DroppedLong, o.SeqLen)
	}
	fmt.Fprintf(out, "  dropped (no loss) %d\n", s.DroppedNoLoss)
	fmt.Fprintf(out, "  rows              %d\n", s.Rows)
	fmt.Fprintf(out, "  padding tokens    %d\n", s.PadTokens)
	fmt.Fprintf(out, "  packing efficiency %.1f%%\n", 100*s.Efficiency())
}
