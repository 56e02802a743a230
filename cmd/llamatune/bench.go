package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/llamatune/llamatune/internal/benchmark"
	"github.com/llamatune/llamatune/internal/quickstart"
)

func init() {
	bench := &cobra.Command{Use: "bench", Short: "Measure GEMM GFLOP/s and training-step tokens/s on this machine"}
	var size, reps int
	gemm := &cobra.Command{
		Use:   "gemm [--size N] [--reps R]",
		Short: "f32 GEMM N×N×N on the CPU backend",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			fmt.Println(benchmark.GEMM(size, size, size, reps))
			return nil
		},
	}
	gemm.Flags().IntVar(&size, "size", 1024, "matrix size")
	gemm.Flags().IntVar(&reps, "reps", 10, "repetitions (the best is reported)")
	var o benchmark.StepOptions
	step := &cobra.Command{
		Use:   "step",
		Short: "full fine-tuning step (forward, backward, AdamW) of a random model",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			r, err := benchmark.Step(o)
			if err != nil {
				return err
			}
			fmt.Println(r)
			return nil
		},
	}
	step.Flags().IntVar(&o.Layers, "layers", 4, "decoder layers")
	step.Flags().IntVar(&o.Hidden, "hidden", 256, "hidden size")
	step.Flags().IntVar(&o.Vocab, "vocab", 8192, "vocabulary size")
	step.Flags().IntVar(&o.Rows, "batch", 4, "rows per step")
	step.Flags().IntVar(&o.SeqLen, "seq", 256, "tokens per row")
	step.Flags().IntVar(&o.Steps, "steps", 5, "timed steps (after one warm-up)")
	step.Flags().BoolVar(&o.Recompute, "recompute", false, "activation recomputation per layer")
	var kind, textFile string
	tok := &cobra.Command{
		Use:   "tokenizer [--kind llama3|llama2] [--text FILE]",
		Short: "tokenizer MB/s, one core and all cores (default text: the built-in War and Peace sample)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			text := quickstart.Text()
			if textFile != "" {
				b, err := os.ReadFile(textFile)
				if err != nil {
					return err
				}
				text = string(b)
			}
			r, err := benchmark.Tokenizer(kind, text, 3)
			if err != nil {
				return err
			}
			fmt.Println(r)
			return nil
		},
	}
	tok.Flags().StringVar(&kind, "kind", "llama3", "llama3 or llama2")
	tok.Flags().StringVar(&textFile, "text", "", "UTF-8 text file to encode")
	bench.AddCommand(gemm, step, tok)
	rootCmd.AddCommand(bench)
}
