package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
	"golang.org/x/term"

	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/data/tokenizer"
)

var dataCmd = &cobra.Command{
	Use:   "data",
	Short: "Look at and prepare the data of a job (inspect, prepare)",
}

func init() {
	rootCmd.AddCommand(dataCmd)
}

// dataJob is the part of a job file the data commands read: `model:` (for the tokenizer and
// chat template) and `data:`. Other top-level sections are left to the full job loader.
type dataJob struct {
	path  string
	dir   string
	model string
	data  configs.Data
}

func loadDataJob(path string, sets []string) (*dataJob, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read job: %v", err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(raw, &root); err != nil {
		return nil, fmt.Errorf("%s: not valid YAML: %v", path, err)
	}
	if len(root.Content) == 0 || root.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s: a job is a mapping with model: and data: sections", path)
	}
	j := &dataJob{path: path, dir: filepath.Dir(path)}
	var dataNode *yaml.Node
	m := root.Content[0]
	if errs := configs.ApplyOverrides(m, sets, os.Environ()); len(errs) > 0 {
		return nil, fmt.Errorf("%s: %w", path, errors.Join(errs...))
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		switch m.Content[i].Value {
		case "model":
			v := m.Content[i+1]
			if v.Kind != yaml.ScalarNode {
				// model: {path: DIR, ...} is accepted too.
				var mm struct {
					Path string `yaml:"path"`
				}
				if err := v.Decode(&mm); err != nil || mm.Path == "" {
					return nil, fmt.Errorf("%s: model (line %d): want a model directory", path, v.Line)
				}
				j.model = mm.Path
			} else {
				j.model = v.Value
			}
		case "data":
			dataNode = m.Content[i+1]
		}
	}
	if dataNode == nil {
		return nil, fmt.Errorf("%s: no data: section", path)
	}
	d, err := configs.DecodeData(dataNode, "data")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	j.data = d
	if err := j.fetchHubRefs(); err != nil { // model: / path: naming a Hub repository
		return nil, err
	}
	if j.model != "" && !filepath.IsAbs(j.model) {
		j.model = filepath.Join(j.dir, j.model) // as the full job loader: relative to the job file
	}
	return j, nil
}

// options loads the tokenizer (when the job names a model) and builds the data options.
func (j *dataJob) options(batchRows int) (train data.Options, eval *data.Options, tok tokenizer.Tokenizer, err error) {
	env := configs.DataEnv{BaseDir: j.dir, BatchRows: batchRows}
	if j.model != "" {
		tok, err = tokenizer.Load(j.model)
		if err != nil {
			return train, nil, nil, err
		}
		env.Tokenizer, env.TokenizerKind = tok, tok.Kind()
		if env.ChatTemplate, err = modelChatTemplate(j.model, j.data.Template); err != nil {
			return train, nil, nil, err
		}
	}
	train, eval, err = j.data.Options(env)
	return train, eval, tok, err
}

// isTerminal reports whether f is a terminal (progress bars, colours).
func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// onePass makes o read each dataset once and prints the first five rows it
// skips as bad to stderr.
func onePass(o *data.Options, stderr io.Writer) {
	o.Epochs = 1
	for i := range o.Datasets {
		o.Datasets[i].Epochs = 1
	}
	var bad atomic.Int64
	o.OnBadRow = func(err error) {
		if bad.Add(1) <= 5 {
			fmt.Fprintf(stderr, "skipped: %v\n", err)
		}
	}
}
