// Command llamatune fine-tunes and distills Llama-family models.
// Each subcommand lives in its own file and registers itself on rootCmd in init.
package main

import (
	"fmt"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"
)

var rootCmd = &cobra.Command{
	Use:           "llamatune",
	Short:         "Fine-tune and distill Llama-family models",
	SilenceUsage:  true,
	SilenceErrors: true,
}

func init() {
	rootCmd.Version = version()
	rootCmd.SetVersionTemplate("llamatune {{.Version}}\n")
}

// version is the module version (a tag for `go install ...@vX`, "(devel)"
// for a build in a checkout) with the commit it was built from and the Go
// release, as the build recorded them.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "+modified"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" {
		v += " commit " + rev + modified
	}
	return v + " " + bi.GoVersion
}

func main() {
	if err := rootCmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "llamatune:", err)
		os.Exit(exitCode(err)) // 130/143 for a run a signal stopped
	}
}
