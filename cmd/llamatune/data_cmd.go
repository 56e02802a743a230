package main

import (
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"github.com/spf13/cobra"
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

// dataJob is what the data commands use of a job: `model:` (for the tokenizer and chat
// template) and `data:`, read by configs.LoadData (the job loader every command uses, which
// checks only those two).
type dataJob struct {
	path  string
	dir   string
	model string
	data  configs.Data
}

func loadDataJob(path string, sets []string) (*dataJob, error) {
	hubMetadataOnly = true // a model named by Hub id: its configuration and tokenizer only
	defer func() { hubMetadataOnly = false }()
	j, err := configs.LoadData(path, sets)
	if err != nil {
		return nil, err
	}
	return &dataJob{path: path, dir: j.Dir, model: j.Model, data: j.Data}, nil
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

// split is the data options of the training split, or of the eval split
// when eval is set (an error when the job has none), with the tokenizer.
func (j *dataJob) split(eval bool) (data.Options, tokenizer.Tokenizer, error) {
	train, evalOpts, tok, err := j.options(1)
	if err != nil || !eval {
		return train, tok, err
	}
	if evalOpts == nil {
		return train, nil, fmt.Errorf("%s: no eval data (set data.eval.fraction or data.eval.datasets)", j.path)
	}
	return *evalOpts, tok, nil
}
