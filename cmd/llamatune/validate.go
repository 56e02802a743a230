package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/llamatune/llamatune/configs"
)

func init() {
	var sets *[]string
	cmd := &cobra.Command{
		Use:   "validate JOB.yaml [--set key=value]...",
		Short: "Print the resolved job (every default filled in), or every problem in it at once",
		Long: `Reads a job file strictly, applies LLAMATUNE_* environment overrides and then --set
overrides, fills in defaults and checks every value. Prints the resolved job as YAML, or every
problem (one per line, each with its key path) and exits non-zero.

Overrides: --set optimizer.lr=1e-4 --set data.datasets[0].path=x.jsonl
           --set lora.target_modules=[q_proj,v_proj]
Environment: LLAMATUNE_OPTIMIZER__LR=1e-4 (double underscore between levels), LLAMATUNE_MAX_STEPS=10

It also estimates, from the model's config.json, the memory the job needs (base weights,
adapters, gradients, AdamW state, activations with and without activation_checkpointing, the
buffers of one step), printed as # comments, and refuses a job that cannot fit in this machine's
MemAvailable (device cpu), a lora.r above a targeted layer's min(in, out), or a data.seq_len over
the model's max_position_embeddings. LLAMATUNE_NO_MEMCHECK=1 turns the memory refusal into a warning.

A model named by Hugging Face Hub repository id (model: org/name) is fetched without its weights
(config and tokenizer only: enough for these checks); train, distill and eval fetch the rest.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
			hubMetadataOnly = true // a Hub model: config and tokenizer only (see download.go)
			job, err := configs.Load(args[0], *sets)
			hubMetadataOnly = false
			if err != nil {
				return reportProblems(err, stderr)
			}
			b, err := job.YAML()
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "# %s (hash %s, data hash %s)\n", args[0], job.Hash(), job.DataHash())
			if configs.SkipFileChecks {
				fmt.Fprintln(stdout, "# memory: not estimated (file checks are off)")
			} else if _, err := checkMemory(job, stdout, "# "); err != nil {
				return reportProblems(err, stderr)
			}
			_, err = stdout.Write(b)
			return err
		},
	}
	sets = addSetFlag(cmd)
	rootCmd.AddCommand(cmd)
}

// reportProblems prints each problem of a *configs.Error on its own line
// to stderr and returns a one-line summary; other errors come back as they are.
func reportProblems(err error, stderr io.Writer) error {
	var ce *configs.Error
	if errors.As(err, &ce) {
		for _, p := range ce.Problems {
			fmt.Fprintf(stderr, "%s: %v\n", ce.File, p)
		}
		return fmt.Errorf("%s: %d problem(s)", ce.File, len(ce.Problems))
	}
	return err
}

// addSetFlag adds the repeatable --set key=value flag (job overrides) to cmd and returns the
// values it collects, for configs.Load.
func addSetFlag(cmd *cobra.Command) *[]string {
	var sets []string
	cmd.Flags().StringArrayVar(&sets, "set", nil,
		"override a job key, e.g. --set optimizer.lr=1e-4 --set lora.target_modules=[q_proj,v_proj] (repeatable; wins over LLAMATUNE_* env)")
	return &sets
}
