// The data section of the job schema.

package configs

import (
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"github.com/llamatune/llamatune/data"
	"go.yaml.in/yaml/v3"
)

// Data is the `data:` section of a job.
//
//	data:
//	  datasets:
//	    - path: data/chat.jsonl          # file, glob, HF save_to_disk dir, folder of shards, prepared dir
//	      format: auto                   # auto | hf | arrow | parquet | jsonl
//	      type: messages                 # auto | text | messages | prompt_completion | tokenized
//	      columns: {messages: conversations}
//	      weight: 2
//	  seq_len: 2048
//	  packing: true
//	  truncation: truncate               # truncate | split | drop
//	  shuffle_buffer: 10000
//	  seed: 42
//	  epochs: 1
//	  template: llama3                   # llama3 | llama2 | chatml | model | a Jinja template
//	  train_on: assistant                # assistant | all
//	  bad_rows: fail                     # fail | skip
//	  eval: {fraction: 0.01}             # or eval: {datasets: [...]}
type Data struct {
	Datasets      []Dataset `yaml:"datasets"`
	SeqLen        int       `yaml:"seq_len"`
	Packing       *bool     `yaml:"packing"`         // default true
	PackPool      int       `yaml:"pack_pool"`       // open rows of the best-fit packer (default 8)
	Truncation    string    `yaml:"truncation"`      // truncate (default) | split | drop
	PadID         *int      `yaml:"pad_id"`          // default: the tokenizer's EOS
	ShuffleBuffer *int      `yaml:"shuffle_buffer"`  // default 10000; 0 = keep file order
	Seed          *uint64   `yaml:"seed"`            // default 42
	Epochs        int       `yaml:"epochs"`          // default 1; -1 = repeat forever
	Stop          string    `yaml:"stop"`            // all_exhausted (default) | first_exhausted
	Template      string    `yaml:"template"`        // auto (default: the model's chat_template, else by tokenizer) | llama3 | llama2 | chatml | model | Jinja
	TrainOn       string    `yaml:"train_on"`        // assistant (default) | all
	TrainOnPrompt bool      `yaml:"train_on_prompt"` // prompt_completion: loss on the prompt too
	AddBOS        *bool     `yaml:"add_bos"`         // text / prompt_completion (default true)
	AddEOS        *bool     `yaml:"add_eos"`         // text / prompt_completion (default true)
	BadRows       string    `yaml:"bad_rows"`        // fail (default) | skip
	Workers       int       `yaml:"workers"`         // tokenizer goroutines (default 2)
	Eval          *DataEval `yaml:"eval"`
}

// DataEval is the held-out data: a fraction of the training rows, or datasets of its own.
type DataEval struct {
	Fraction float64   `yaml:"fraction"`
	Datasets []Dataset `yaml:"datasets"`
}

// Dataset is one entry of data.datasets.
type Dataset struct {
	Name    string      `yaml:"name"`
	Path    string      `yaml:"path"`
	Format  string      `yaml:"format"`
	Type    string      `yaml:"type"`
	Columns DataColumns `yaml:"columns"`
	Weight  float64     `yaml:"weight"`
	Split   string      `yaml:"split"`
	Epochs  int         `yaml:"epochs"`
}

// DataColumns maps example fields to column names.
type DataColumns struct {
	Text       string `yaml:"text"`
	Messages   string `yaml:"messages"`
	Prompt     string `yaml:"prompt"`
	Completion string `yaml:"completion"`
	InputIDs   string `yaml:"input_ids"`
	Labels     string `yaml:"labels"`
}

// DefaultShuffleBuffer and DefaultSeed are the defaults of shuffle_buffer and seed.
const (
	DefaultShuffleBuffer = 10000
	DefaultSeed          = 42
)

// DecodeData decodes a `data:` node strictly: unknown keys are errors naming the key path
// (with a did-you-mean), as are values of the wrong type. path is the node's key path ("data").
func DecodeData(node *yaml.Node, path string) (Data, error) {
	var d Data
	if node == nil {
		return d, fmt.Errorf("%s: missing section", path)
	}
	if errs := CheckKeys(node, reflect.TypeOf(d), path); len(errs) > 0 {
		return d, errors.Join(errs...)
	}
	if node.Kind == yaml.DocumentNode && len(node.Content) > 0 {
		node = node.Content[0]
	}
	dec := decoder{set: map[string]bool{}}
	dec.decode(node, reflect.ValueOf(&d).Elem(), path) // as Load: 2.5 for an integer key is an error
	if len(dec.errs) > 0 {
		return d, errors.Join(dec.errs...)
	}
	return d, nil
}

func cleanYAMLError(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "yaml: unmarshal errors:\n")
	return strings.TrimSpace(strings.ReplaceAll(s, "\n ", ";"))
}

// CheckKeys walks a YAML node against the struct type t (fields named by their yaml tags) and
// returns an error for every key that t does not have, naming its path, line and the closest
// known key. It is generic so that the full Job can reuse it.
func CheckKeys(node *yaml.Node, t reflect.Type, path string) []error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if node.Kind == yaml.DocumentNode && len(node.Content) > 0 {
		node = node.Content[0]
	}
	if node.Kind == yaml.AliasNode && node.Alias != nil {
		node = node.Alias
	}
	var errs []error
	switch t.Kind() {
	case reflect.Struct:
		if node.Kind != yaml.MappingNode {
			if node.Tag == "!!null" {
				return nil
			}
			return []error{fmt.Errorf("%s (line %d): want a mapping of keys, got %s", path, node.Line, nodeKind(node))}
		}
		fields := map[string]reflect.StructField{}
		var names []string
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if name == "" || name == "-" {
				continue
			}
			fields[name] = f
			names = append(names, name)
		}
		for i := 0; i+1 < len(node.Content); i += 2 {
			k, v := node.Content[i], node.Content[i+1]
			f, ok := fields[k.Value]
			if !ok {
				msg := fmt.Sprintf("%s.%s (line %d): unknown key", path, k.Value, k.Line)
				if s := didYouMean(k.Value, names); s != "" {
					msg += fmt.Sprintf("; did you mean %q?", s)
				} else {
					sort.Strings(names)
					msg += fmt.Sprintf("; known keys: %s", strings.Join(names, ", "))
				}
				errs = append(errs, errors.New(msg))
				continue
			}
			errs = append(errs, CheckKeys(v, f.Type, path+"."+k.Value)...)
		}
	case reflect.Slice:
		if node.Kind == yaml.SequenceNode {
			for i, c := range node.Content {
				errs = append(errs, CheckKeys(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
			}
		}
	case reflect.Map:
		if node.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(node.Content); i += 2 {
				errs = append(errs, CheckKeys(node.Content[i+1], t.Elem(), path+"."+node.Content[i].Value)...)
			}
		}
	}
	return errs
}

func nodeKind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "something else"
}

// didYouMean returns the known name closest to s, or "" when none is close.
func didYouMean(s string, names []string) string {
	best, bestD := "", 1<<30
	for _, n := range names {
		d := editDistance(strings.ToLower(s), n)
		if d < bestD {
			best, bestD = n, d
		}
	}
	if bestD <= max(2, len(s)/3) {
		return best
	}
	return ""
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func oneOf(path, v string, allowed ...string) error {
	if v == "" {
		return nil
	}
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	msg := fmt.Sprintf("%s: %q is not one of %s", path, v, strings.Join(allowed, ", "))
	if s := didYouMean(v, allowed); s != "" {
		msg += fmt.Sprintf("; did you mean %q?", s)
	}
	return errors.New(msg)
}

// Validate returns every problem of the section at once, each naming its key path.
func (d *Data) Validate(path string) []error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(d.Datasets) == 0 {
		add(fmt.Errorf("%s.datasets: empty; add at least one dataset with a path", path))
	}
	if d.SeqLen <= 0 {
		add(fmt.Errorf("%s.seq_len: must be > 0 (got %d); e.g. 2048", path, d.SeqLen))
	}
	if d.PackPool < 0 {
		add(fmt.Errorf("%s.pack_pool: must be >= 0", path))
	}
	if d.ShuffleBuffer != nil && *d.ShuffleBuffer < 0 {
		add(fmt.Errorf("%s.shuffle_buffer: must be >= 0", path))
	}
	if d.Epochs < -1 {
		add(fmt.Errorf("%s.epochs: must be >= 1, or -1 to repeat forever", path))
	}
	if d.Workers < 0 {
		add(fmt.Errorf("%s.workers: must be >= 0", path))
	}
	add(oneOf(path+".truncation", d.Truncation, "truncate", "split", "drop"))
	add(oneOf(path+".stop", d.Stop, "all_exhausted", "first_exhausted"))
	add(oneOf(path+".train_on", d.TrainOn, "assistant", "all"))
	add(oneOf(path+".bad_rows", d.BadRows, "fail", "skip"))
	if t := d.Template; t != "" && !strings.Contains(t, "{{") && !strings.Contains(t, "{%") {
		add(oneOf(path+".template", t, "auto", "llama3", "llama2", "chatml", "model"))
	}
	validateDatasets := func(p string, ds []Dataset) {
		for i, x := range ds {
			dp := fmt.Sprintf("%s[%d]", p, i)
			if x.Path == "" {
				add(fmt.Errorf("%s.path: missing", dp))
			}
			add(oneOf(dp+".format", x.Format, "auto", "hf", "arrow", "parquet", "jsonl"))
			add(oneOf(dp+".type", x.Type, "auto", "text", "messages", "prompt_completion", "tokenized"))
			if x.Weight < 0 {
				add(fmt.Errorf("%s.weight: must be > 0", dp))
			}
			if x.Epochs < -1 {
				add(fmt.Errorf("%s.epochs: must be >= 1, or -1 to repeat forever", dp))
			}
		}
	}
	validateDatasets(path+".datasets", d.Datasets)
	if d.Eval != nil {
		if d.Eval.Fraction < 0 || d.Eval.Fraction >= 1 {
			add(fmt.Errorf("%s.eval.fraction: must be in [0, 1) (got %v)", path, d.Eval.Fraction))
		}
		if d.Eval.Fraction > 0 && len(d.Eval.Datasets) > 0 {
			add(fmt.Errorf("%s.eval: set either fraction or datasets, not both", path))
		}
		validateDatasets(path+".eval.datasets", d.Eval.Datasets)
	}
	return errs
}

// DataEnv is what the data section needs from the rest of the job to become data.Options.
type DataEnv struct {
	Tokenizer     data.Tokenizer // nil is fine when every dataset is tokenized
	VocabSize     int            // for tokenized data without a tokenizer
	ChatTemplate  string         // the model's chat_template, for template: model (and auto)
	TokenizerKind string         // llama3 | llama2: the built-in template auto falls back to
	BaseDir       string         // relative dataset paths are resolved against it (the job file's dir)
	BatchRows     int            // rows per batch (the trainer's micro batch)
}

// Options turns the section into data-package options for training and, when eval data is
// configured, for evaluation (nil otherwise).
func (d *Data) Options(env DataEnv) (train data.Options, eval *data.Options, err error) {
	if errs := d.Validate("data"); len(errs) > 0 {
		return train, nil, errors.Join(errs...)
	}
	template := d.Template
	if template == "auto" || template == "" {
		switch {
		case env.ChatTemplate != "":
			template = "model"
		case env.TokenizerKind == "llama2":
			template = "llama2"
		default:
			template = "llama3"
		}
	}
	if template == "model" {
		if env.ChatTemplate == "" {
			return train, nil, errors.New("data.template: model, but the model has no chat_template in tokenizer_config.json; pick llama3, llama2 or chatml")
		}
		template = env.ChatTemplate
	}
	o := data.Options{
		Tokenizer:     env.Tokenizer,
		VocabSize:     env.VocabSize,
		Template:      template,
		TrainOn:       data.TrainOn(d.TrainOn),
		TrainOnPrompt: d.TrainOnPrompt,
		NoBOS:         d.AddBOS != nil && !*d.AddBOS,
		NoEOS:         d.AddEOS != nil && !*d.AddEOS,
		SeqLen:        d.SeqLen,
		BatchRows:     env.BatchRows,
		Packing:       d.Packing == nil || *d.Packing,
		PackPool:      d.PackPool,
		Truncation:    data.Truncation(d.Truncation),
		PadID:         -1,
		ShuffleBuffer: DefaultShuffleBuffer,
		Seed:          DefaultSeed,
		Epochs:        d.Epochs,
		Stop:          data.Stop(d.Stop),
		BadRows:       data.BadRows(d.BadRows),
		Workers:       d.Workers,
	}
	if d.PadID != nil {
		o.PadID = *d.PadID
	}
	if d.ShuffleBuffer != nil {
		o.ShuffleBuffer = *d.ShuffleBuffer
	}
	if d.Seed != nil {
		o.Seed = *d.Seed
	}
	o.Datasets = d.specs(d.Datasets, env.BaseDir)
	train = o
	if d.Eval != nil && d.Eval.Fraction > 0 {
		train.EvalFraction, train.Split = d.Eval.Fraction, data.SplitTrain
		e := o
		e.EvalFraction, e.Split = d.Eval.Fraction, data.SplitEval
		e.Datasets = d.specs(d.Datasets, env.BaseDir)
		e.ShuffleBuffer, e.Epochs, e.Stop = 0, 1, data.StopAllExhausted
		for i := range e.Datasets {
			e.Datasets[i].Epochs = 1
		}
		eval = &e
	} else if d.Eval != nil && len(d.Eval.Datasets) > 0 {
		e := o
		e.Datasets = d.specs(d.Eval.Datasets, env.BaseDir)
		e.ShuffleBuffer, e.Epochs, e.Stop = 0, 1, data.StopAllExhausted
		for i := range e.Datasets {
			e.Datasets[i].Epochs = 1
		}
		eval = &e
	}
	return train, eval, nil
}

func (d *Data) specs(ds []Dataset, base string) []data.DatasetSpec {
	out := make([]data.DatasetSpec, len(ds))
	for i, x := range ds {
		p := x.Path
		if base != "" && p != "" && !filepath.IsAbs(p) {
			p = filepath.Join(base, p)
		}
		out[i] = data.DatasetSpec{
			Name:   x.Name,
			Path:   p,
			Format: data.Format(x.Format),
			Type:   data.Type(x.Type),
			Columns: data.Columns{
				Text: x.Columns.Text, Messages: x.Columns.Messages, Prompt: x.Columns.Prompt,
				Completion: x.Columns.Completion, InputIDs: x.Columns.InputIDs, Labels: x.Columns.Labels,
			},
			Weight: x.Weight,
			Split:  x.Split,
			Epochs: x.Epochs,
		}
		if out[i].Name == "" {
			out[i].Name = x.Path
		}
	}
	return out
}
