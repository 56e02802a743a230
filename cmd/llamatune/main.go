// Command llamatune fine-tunes and distills Llama-family models.
// Each subcommand lives in its own file and registers itself on rootCmd in init.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

var rootCmd = &cobra.Command{
	Use:           "llamatune",
	Short:         "Fine-tune and distill Llama-family models",
	SilenceUsage:  true,
	SilenceErrors: true,
}

func main() {
	if err := rootCmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "llamatune:", err)
		os.Exit(exitCode(err)) // 130/143 for a run a signal stopped
	}
}
