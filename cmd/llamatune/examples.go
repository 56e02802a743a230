package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/configs"
)

// The example jobs are embedded in the binary (configs.Examples), so
// `llamatune examples` lists and copies them on a machine with no checkout,
// as torchtune's `tune ls` and `tune cp` do.
func init() {
	var force bool
	cmd := &cobra.Command{
		Use:   "examples [list | copy NAME [DEST]]",
		Short: "List the example jobs, or copy one to edit",
		Long: `list (the default) prints each example job built into llamatune with its first comment line.
copy NAME [DEST] writes the example NAME (with or without .yaml) to DEST: a file path, or a
directory to put NAME.yaml in (default: the current directory). An existing file is kept
unless --force.`,
		Args: cobra.MaximumNArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 || args[0] == "list" {
				if len(args) > 1 {
					return fmt.Errorf("examples list takes no arguments")
				}
				return listExamples(cmd.OutOrStdout())
			}
			if args[0] != "copy" {
				return fmt.Errorf("examples: unknown action %q; use list or copy NAME [DEST]", args[0])
			}
			if len(args) < 2 {
				return fmt.Errorf("examples copy: name the example (llamatune examples lists them)")
			}
			dest := "."
			if len(args) == 3 {
				dest = args[2]
			}
			out, err := copyExample(args[1], dest, force)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s; edit model: and data: there, then: llamatune validate %s\n", out, out)
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "overwrite an existing file")
	rootCmd.AddCommand(cmd)
}

// exampleNames are the embedded examples' names without .yaml, sorted.
func exampleNames() []string {
	files, _ := fs.Glob(configs.Examples, "examples/*.yaml")
	names := make([]string, len(files))
	for i, f := range files {
		names[i] = strings.TrimSuffix(path.Base(f), ".yaml")
	}
	return names
}

func listExamples(w io.Writer) error {
	names := exampleNames()
	width := 0
	for _, n := range names {
		width = max(width, len(n))
	}
	for _, n := range names {
		raw, err := configs.Examples.ReadFile("examples/" + n + ".yaml")
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%-*s  %s\n", width, n, firstComment(raw))
	}
	return nil
}

// firstComment is the text of the first comment line of a job file.
func firstComment(raw []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); strings.HasPrefix(l, "#") {
			if t := strings.TrimSpace(strings.TrimLeft(l, "#")); t != "" {
				return t
			}
		}
	}
	return ""
}

// copyExample writes example name to dest (a file, or a directory to hold
// NAME.yaml) atomically and returns the path written.
func copyExample(name, dest string, force bool) (string, error) {
	name = strings.TrimSuffix(name, ".yaml")
	raw, err := configs.Examples.ReadFile("examples/" + name + ".yaml")
	if err != nil {
		return "", fmt.Errorf("examples copy: no example %q; there are: %s", name, strings.Join(exampleNames(), ", "))
	}
	out := dest
	if st, err := os.Stat(dest); err == nil && st.IsDir() || strings.HasSuffix(dest, string(os.PathSeparator)) {
		out = filepath.Join(dest, name+".yaml")
	}
	if _, err := os.Stat(out); err == nil && !force {
		return "", fmt.Errorf("examples copy: %s exists; pass --force to overwrite it", out)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", fmt.Errorf("examples copy: %w", err)
	}
	err = checkpoint.WriteAtomic(out, func(w io.Writer) error {
		_, err := w.Write(raw)
		return err
	})
	return out, err
}
