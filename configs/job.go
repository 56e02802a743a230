package configs

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/kernels"
	_ "github.com/llamatune/llamatune/kernels/cpu" // device: cpu is always there
)

// Job is a whole training job, as written in a job YAML file.
//
// Load reads one strictly: unknown keys, values of the wrong type and invalid values are all
// reported at once, each with its key path. Zero values and absent keys take the defaults
// documented on each field; YAML returns the resolved job with every default filled in.
type Job struct {
	Model      string     `yaml:"model"`  // Hugging Face model directory, .gguf file, or Hub repo id org/name[@rev] (required)
	Method     string     `yaml:"method"` // lora (default) | full
	LoRA       LoRA       `yaml:"lora"`
	Full       Full       `yaml:"full"`
	Data       Data       `yaml:"data"` // required
	Optimizer  Optimizer  `yaml:"optimizer"`
	Schedule   Schedule   `yaml:"schedule"`
	Batch      Batch      `yaml:"batch"`
	MaxSteps   int        `yaml:"max_steps"` // optimizer steps; 0 = until the data ends (data.epochs)
	Precision  Precision  `yaml:"precision"`
	Device     string     `yaml:"device"` // cpu (default) | cuda
	Checkpoint Checkpoint `yaml:"checkpoint"`
	Eval       Eval       `yaml:"eval"`
	Logging    Logging    `yaml:"logging"`
	Export     Export     `yaml:"export"`
	OutputDir  string     `yaml:"output_dir"` // run directory (default runs/<job file name>)
	Seed       uint64     `yaml:"seed"`       // default 42; also the default of data.seed
	OnNaN      string     `yaml:"on_nan"`     // stop (default) | skip (the step is dropped)
	Distill    *Distill   `yaml:"distill"`    // only for llamatune distill / teacher-logits / generate

	// File is the job file Load read ("" for a job built in Go); Dir is its directory, against
	// which relative paths were resolved. Neither is part of the YAML.
	File string `yaml:"-"`
	Dir  string `yaml:"-"`

	// set records the key paths present (non-null) in the YAML after overrides, so that an
	// explicit 0 (max_grad_norm: 0, dropout: 0, seed: 0) is kept instead of defaulted.
	set map[string]bool
}

// LoRA configures the adapters (method: lora).
type LoRA struct {
	R             int      `yaml:"r"`              // rank (default 16)
	Alpha         float64  `yaml:"alpha"`          // scaling numerator; scale = alpha/r (default 2·r)
	Dropout       float64  `yaml:"dropout"`        // on the adapter input (default 0.05)
	TargetModules []string `yaml:"target_modules"` // default: every projection of attention and MLP
	RSLoRA        bool     `yaml:"rslora"`         // scale = alpha/sqrt(r)
	UseDoRA       bool     `yaml:"use_dora"`       // DoRA: a trained magnitude per output row (PEFT use_dora)
	Layers        []int    `yaml:"layers"`         // decoder layers to adapt (default all)
}

// Full configures full fine-tuning (method: full).
type Full struct {
	FreezeLayers     []int `yaml:"freeze_layers"`     // decoder layers left untouched
	FreezeEmbeddings bool  `yaml:"freeze_embeddings"` // keep embed_tokens (and a tied lm_head) frozen
}

// Optimizer configures AdamW.
type Optimizer struct {
	Name        string    `yaml:"name"`          // adamw (the only one)
	LR          float64   `yaml:"lr"`            // peak learning rate (default 2e-4 lora, 2e-5 full)
	Betas       []float64 `yaml:"betas"`         // default [0.9, 0.999]
	Eps         float64   `yaml:"eps"`           // default 1e-8
	WeightDecay float64   `yaml:"weight_decay"`  // decoupled (default 0)
	MaxGradNorm float64   `yaml:"max_grad_norm"` // global-norm clipping (default 1.0; 0 = off)
}

// Schedule is the learning-rate schedule: linear warm-up, then decay to min_lr_ratio·lr.
type Schedule struct {
	Type        string  `yaml:"type"`         // cosine (default) | linear | constant
	WarmupSteps int     `yaml:"warmup_steps"` // steps of linear warm-up
	WarmupRatio float64 `yaml:"warmup_ratio"` // fraction of the total steps, when warmup_steps is 0
	MinLRRatio  float64 `yaml:"min_lr_ratio"` // final lr as a fraction of lr (default 0)
}

// Batch sizes. Sequence length and packing live in data:.
type Batch struct {
	MicroBatchSize int `yaml:"micro_batch_size"` // rows per forward/backward (default 1)
	GradAccum      int `yaml:"grad_accum"`       // micro-batches per optimizer step (default 1)
}

// Precision of storage and memory trade-offs.
type Precision struct {
	Weights                 string `yaml:"weights"`                  // f32 (default) | bf16 | nf4: storage of frozen base weights (nf4: QLoRA, the linear layers in 4 bits, cpu only)
	Compute                 string `yaml:"compute"`                  // auto | bf16 | f32: GEMM inputs (accumulation is f32); default DefaultCompute
	ActivationCheckpointing bool   `yaml:"activation_checkpointing"` // recompute each layer in backward
}

// Checkpoint says when to save the training state.
type Checkpoint struct {
	Every    int `yaml:"every"`     // steps between checkpoints (0 = only at the end)
	KeepLast int `yaml:"keep_last"` // checkpoints kept (default 3; 0 = keep all)
}

// Eval says when to measure held-out loss (on data.eval).
type Eval struct {
	Every   int `yaml:"every"`   // steps between evals (0 = only at the end)
	Batches int `yaml:"batches"` // batches per eval (0 = all)
}

// Logging of metrics (metrics.jsonl in the run directory).
type Logging struct {
	Every int   `yaml:"every"` // steps between metric lines (default 1)
	Plot  *bool `yaml:"plot"`  // write loss/lr plots (default true)
}

// Export says what to write at the end of the run.
type Export struct {
	Formats  []string `yaml:"formats"`   // any of hf, peft, gguf (peft only with method lora)
	DType    string   `yaml:"dtype"`     // hf safetensors dtype: F32 | BF16 (default) | F16
	GGUFType string   `yaml:"gguf_type"` // F32 | F16 (default) | BF16 | Q8_0
}

// Defaults that are not zero values.
const (
	DefaultLoRARank           = 16
	DefaultLoRADropout        = 0.05
	DefaultLoRALR             = 2e-4
	DefaultFullLR             = 2e-5
	DefaultEps                = 1e-8
	DefaultMaxGradNorm        = 1.0
	DefaultKeepLast           = 3
	DefaultJobSeed     uint64 = 42
	// DefaultCompute is precision.compute when the job does not set it:
	// auto is bf16 where the device computes it fast (CUDA tensor cores, a
	// CPU with AVX512_BF16), else f32.
	DefaultCompute = "auto"
)

// DefaultTargetModules are the linear layers LoRA adapts unless lora.target_modules says otherwise.
var DefaultTargetModules = []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

// DefaultBetas are AdamW's default betas.
var DefaultBetas = []float64{0.9, 0.999}

// SkipFileChecks turns off Validate's filesystem checks (model directory and config.json,
// data paths). Tests of job files whose models are not on this machine set it.
var SkipFileChecks bool

// Examples holds configs/examples/*.yaml (for `llamatune quickstart` and the docs).
//
//go:embed examples/*.yaml
var Examples embed.FS

// Error is what Load returns for a job with problems: the file and every problem found, each
// naming its key path. errors.Join-compatible (Unwrap returns the problems).
type Error struct {
	File     string
	Problems []error
}

func (e *Error) Error() string {
	if len(e.Problems) == 1 {
		return fmt.Sprintf("%s: %v", e.File, e.Problems[0])
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d problems:", e.File, len(e.Problems))
	for _, p := range e.Problems {
		for _, line := range strings.Split(p.Error(), "\n") {
			b.WriteString("\n  " + line)
		}
	}
	return b.String()
}

// Unwrap returns the problems.
func (e *Error) Unwrap() []error { return e.Problems }

// Load reads the job file at path, applies the LLAMATUNE_* environment overrides and then the
// --set overrides (sets, each "a.b[0].c=value"; the value is YAML, so lists are [a, b]), fills
// in defaults, resolves relative model and data paths against the file's directory and
// validates. Any problem comes back as an *Error listing all of them.
//
// Environment overrides: LLAMATUNE_<KEY>[__<KEY>...]=value, lower-cased, a double underscore
// between levels and a number for a list index: LLAMATUNE_MAX_STEPS=10,
// LLAMATUNE_OPTIMIZER__LR=1e-4, LLAMATUNE_DATA__DATASETS__0__PATH=x.jsonl. A variable whose
// first key is not a job key is ignored when it has no "__" (LLAMATUNE_NO_FUSED is a switch
// of its own) and is an error when it does.
func Load(path string, sets []string) (*Job, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read job: %v", err)
	}
	return LoadBytes(src, path, sets)
}

// LoadBytes is Load of a job whose text is already in memory; path names it in errors, sets
// the default output_dir, and its directory is where relative paths are resolved.
func LoadBytes(src []byte, path string, sets []string) (*Job, error) {
	return load(src, path, sets, (*Job).Validate)
}

// LoadData reads a job file as Load does (the same strict parsing of every section, the
// LLAMATUNE_* and --set overrides, defaults, Hub resolution) but checks only what the data
// commands (data inspect, data prepare) use: the data section, and the files it and model
// name. model may be left out: the tokenizer and chat template then come from nowhere, and
// only data that is already tokenized (input_ids) can be read.
func LoadData(path string, sets []string) (*Job, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read job: %v", err)
	}
	return load(src, path, sets, (*Job).validateData)
}

// validateData is Validate for LoadData.
func (j *Job) validateData() error {
	errs := j.Data.Validate("data")
	if !SkipFileChecks {
		errs = append(errs, j.checkFiles()...)
	}
	return errors.Join(errs...)
}

func load(src []byte, path string, sets []string, validate func(*Job) error) (*Job, error) {
	fail := func(errs ...error) error { return &Error{File: path, Problems: errs} }
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		return nil, fail(yamlSyntaxError(err))
	}
	root, err := rootMapping(&doc)
	if err != nil {
		return nil, fail(err)
	}
	var errs []error
	errs = append(errs, applyEnv(root, os.Environ())...)
	for _, s := range sets {
		if err := applySet(root, s); err != nil {
			errs = append(errs, err)
		}
	}
	j := &Job{File: path, set: map[string]bool{}}
	dec := decoder{set: j.set}
	dec.decode(root, reflect.ValueOf(j).Elem(), "")
	inFile := append(checkTopKeys(root), dec.errs...)
	sort.SliceStable(inFile, func(a, b int) bool { return errorLine(inFile[a]) < errorLine(inFile[b]) })
	errs = append(errs, inFile...)
	if !hasKey(root, "data") {
		errs = append(errs, errors.New("data: missing section; add data: {datasets: [{path: train.jsonl}], seq_len: 2048}"))
		dec.bad = append(dec.bad, "data")
	}
	if path != "" {
		if abs, err := filepath.Abs(filepath.Dir(path)); err == nil {
			j.Dir = abs
		} else {
			j.Dir = filepath.Dir(path)
		}
	}
	remote := j.pendingRemote() // values that may name Hub repositories (see Remote)
	j.resolvePaths()
	remote.restore()
	j.fillDefaults()
	if err := validate(j); err != nil {
		for _, e := range unjoin(err) {
			if !dec.covers(e.Error()) && !remote.covers(e) {
				errs = append(errs, e)
			}
		}
	}
	if len(errs) == 0 {
		errs = remote.fetch() // last: a job with other problems downloads nothing
	}
	if len(errs) > 0 {
		return nil, fail(errs...)
	}
	return j, nil
}

var errLineRE = regexp.MustCompile(`\(line (\d+)\)`)

// errorLine is the line an error message cites, or 0.
func errorLine(err error) int {
	m := errLineRE.FindStringSubmatch(err.Error())
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlSyntaxError turns "yaml: line 3: mapping values are not allowed" into
// "line 3: not valid YAML: mapping values are not allowed" (the caller adds the file).
func yamlSyntaxError(err error) error {
	if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
		return fmt.Errorf("line %s: not valid YAML: %s", m[1], m[2])
	}
	return fmt.Errorf("not valid YAML: %s", strings.TrimPrefix(err.Error(), "yaml: "))
}

// rootMapping returns the top-level mapping of a parsed document, creating an empty one for
// an empty file.
func rootMapping(doc *yaml.Node) (*yaml.Node, error) {
	if doc.Kind == 0 || len(doc.Content) == 0 {
		doc.Kind = yaml.DocumentNode
		doc.Content = []*yaml.Node{{Kind: yaml.MappingNode, Tag: "!!map"}}
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		*root = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: a job is a mapping of keys (model:, data:, ...), got %s", root.Line, nodeKind(root))
	}
	return root, nil
}

func hasKey(m *yaml.Node, key string) bool {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key && !isNull(m.Content[i+1]) {
			return true
		}
	}
	return false
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func unjoin(err error) []error {
	if u, ok := err.(interface{ Unwrap() []error }); ok {
		return u.Unwrap()
	}
	return []error{err}
}

// yamlKeys lists the yaml keys of struct type t in field order, with their fields.
func yamlKeys(t reflect.Type) ([]string, map[string]reflect.StructField) {
	var names []string
	fields := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		names = append(names, name)
		fields[name] = f
	}
	return names, fields
}

// checkTopKeys reports unknown keys anywhere in the job (CheckKeys below the top level).
func checkTopKeys(root *yaml.Node) []error {
	names, fields := yamlKeys(reflect.TypeOf(Job{}))
	var errs []error
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		f, ok := fields[k.Value]
		if !ok {
			errs = append(errs, unknownKey(k.Value, k.Line, k.Value, names))
			continue
		}
		errs = append(errs, CheckKeys(v, f.Type, k.Value)...)
	}
	return errs
}

func unknownKey(path string, line int, key string, names []string) error {
	msg := path
	if line > 0 {
		msg += fmt.Sprintf(" (line %d)", line)
	}
	msg += ": unknown key"
	if s := didYouMean(key, names); s != "" {
		msg += fmt.Sprintf("; did you mean %q?", s)
	} else {
		sorted := append([]string(nil), names...)
		sort.Strings(sorted)
		msg += "; known keys: " + strings.Join(sorted, ", ")
	}
	return errors.New(msg)
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// decoder fills a Go value from a YAML node field by field, so that every type error names
// its key path and line, and records which keys were present. Unknown keys are skipped here
// (CheckKeys reports them).
type decoder struct {
	set  map[string]bool
	errs []error
	bad  []string // paths with type errors: Validate's errors about them are not repeated
}

func (d *decoder) fail(path string, n *yaml.Node, format string, args ...any) {
	d.bad = append(d.bad, path)
	delete(d.set, path) // a bad value takes the default, so that checks of other keys stay quiet
	msg := path
	if n.Line > 0 {
		msg += fmt.Sprintf(" (line %d)", n.Line)
	}
	d.errs = append(d.errs, errors.New(msg+": "+fmt.Sprintf(format, args...)))
}

// covers reports whether an error message is about a path that already had a type error.
func (d *decoder) covers(msg string) bool {
	for _, p := range d.bad {
		if strings.HasPrefix(msg, p) && len(msg) > len(p) && strings.ContainsRune(":.[ ", rune(msg[len(p)])) {
			return true
		}
	}
	return false
}

var unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if isNull(n) {
		return
	}
	if v.CanAddr() && v.Addr().Type().Implements(unmarshalerType) {
		if err := n.Decode(v.Addr().Interface()); err != nil {
			d.fail(path, n, "%s", cleanYAMLError(err))
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		d.decode(n, p.Elem(), path)
		v.Set(p)
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			d.bad = append(d.bad, path) // CheckKeys says "want a mapping"
			return
		}
		_, fields := yamlKeys(v.Type())
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			kp := joinPath(path, k.Value)
			if line, dup := seen[k.Value]; dup {
				d.fail(kp, k, "duplicate key (first at line %d)", line)
				continue
			}
			seen[k.Value] = k.Line
			f, ok := fields[k.Value]
			if !ok {
				continue
			}
			if !isNull(val) {
				d.set[kp] = true
			}
			d.decode(val, v.FieldByIndex(f.Index), kp)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(path, n, "want a list like [a, b], got %s", nodeKind(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.decode(c, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	default:
		if n.Kind != yaml.ScalarNode {
			d.fail(path, n, "want %s, got %s", kindName(v.Kind()), nodeKind(n))
			return
		}
		if msg := notWhole(n, v.Kind()); msg != "" {
			d.fail(path, n, "%s", msg)
			return
		}
		if err := n.Decode(v.Addr().Interface()); err != nil {
			d.fail(path, n, "want %s, got %q", kindName(v.Kind()), n.Value)
		}
	}
}

// notWhole says what is wrong with a number written for an integer key that yaml would
// otherwise truncate without a word (2.5 becomes 2), or "" when there is nothing wrong.
// Whole numbers written as floats (2.0, 1e3) are accepted.
func notWhole(n *yaml.Node, k reflect.Kind) string {
	isInt := k >= reflect.Int && k <= reflect.Int64
	isUint := k >= reflect.Uint && k <= reflect.Uint64
	if !isInt && !isUint || n.ShortTag() != "!!float" {
		return ""
	}
	var f float64
	if err := n.Decode(&f); err != nil {
		return ""
	}
	switch {
	case math.IsNaN(f) || math.IsInf(f, 0):
		return fmt.Sprintf("%s is not a whole number; write an integer", n.Value)
	case f != math.Trunc(f):
		return fmt.Sprintf("%s is not a whole number; write an integer (%d or %d)", n.Value, int64(math.Floor(f)), int64(math.Ceil(f)))
	case isUint && f < 0:
		return fmt.Sprintf("want %s, got %s", kindName(k), n.Value)
	}
	return ""
}

func kindName(k reflect.Kind) string {
	switch k {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	}
	return "a " + k.String()
}

// resolvePaths makes relative model and data paths relative to the job file's directory
// (and expands a leading ~/).
func (j *Job) resolvePaths() {
	res := func(p string) string {
		if p == "" {
			return p
		}
		if p == "~" || strings.HasPrefix(p, "~/") {
			if home, err := os.UserHomeDir(); err == nil {
				return filepath.Join(home, p[1:])
			}
		}
		if j.Dir == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(j.Dir, p)
	}
	j.Model = res(j.Model)
	if d := j.Distill; d != nil {
		d.Teacher.Model, d.Teacher.Shards, d.Teacher.Tokenizer = res(d.Teacher.Model), res(d.Teacher.Shards), res(d.Teacher.Tokenizer)
	}
	for i := range j.Data.Datasets {
		j.Data.Datasets[i].Path = res(j.Data.Datasets[i].Path)
	}
	if j.Data.Eval != nil {
		for i := range j.Data.Eval.Datasets {
			j.Data.Eval.Datasets[i].Path = res(j.Data.Eval.Datasets[i].Path)
		}
	}
}

// ApplyDefaults fills in the default of every unset field of a job built in Go. A zero value
// counts as unset there; Load instead defaults only absent keys, so that an explicit
// max_grad_norm: 0 or dropout: 0 stays 0.
func (j *Job) ApplyDefaults() {
	j.set = nil
	j.fillDefaults()
}

// unset reports whether the field at path takes its default: absent from the YAML when the
// job was loaded, zero when it was built in Go.
func (j *Job) unset(path string, zero bool) bool {
	if j.set != nil {
		return !j.set[path]
	}
	return zero
}

func (j *Job) fillDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&j.Method, "lora")
	l := &j.LoRA
	if j.unset("lora.r", l.R == 0) {
		l.R = DefaultLoRARank
	}
	if j.unset("lora.alpha", l.Alpha == 0) {
		l.Alpha = 2 * float64(l.R)
	}
	if j.unset("lora.dropout", l.Dropout == 0) {
		l.Dropout = DefaultLoRADropout
	}
	if l.TargetModules == nil {
		l.TargetModules = append([]string(nil), DefaultTargetModules...)
	}
	if l.Layers == nil {
		l.Layers = []int{}
	}
	if j.Full.FreezeLayers == nil {
		j.Full.FreezeLayers = []int{}
	}

	o := &j.Optimizer
	def(&o.Name, "adamw")
	if j.unset("optimizer.lr", o.LR == 0) {
		o.LR = DefaultLoRALR
		if j.Method == "full" {
			o.LR = DefaultFullLR
		}
	}
	if o.Betas == nil {
		o.Betas = append([]float64(nil), DefaultBetas...)
	}
	if j.unset("optimizer.eps", o.Eps == 0) {
		o.Eps = DefaultEps
	}
	if j.unset("optimizer.max_grad_norm", o.MaxGradNorm == 0) {
		o.MaxGradNorm = DefaultMaxGradNorm
	}
	def(&j.Schedule.Type, "cosine")
	if j.unset("batch.micro_batch_size", j.Batch.MicroBatchSize == 0) {
		j.Batch.MicroBatchSize = 1
	}
	if j.unset("batch.grad_accum", j.Batch.GradAccum == 0) {
		j.Batch.GradAccum = 1
	}
	j.Precision.Weights = strings.ToLower(j.Precision.Weights)
	def(&j.Precision.Weights, "f32")
	j.Precision.Compute = strings.ToLower(j.Precision.Compute)
	def(&j.Precision.Compute, DefaultCompute)
	def(&j.Device, "cpu")
	if j.unset("checkpoint.keep_last", j.Checkpoint.KeepLast == 0) {
		j.Checkpoint.KeepLast = DefaultKeepLast
	}
	if j.unset("logging.every", j.Logging.Every == 0) {
		j.Logging.Every = 1
	}
	if j.Logging.Plot == nil {
		t := true
		j.Logging.Plot = &t
	}
	if j.Export.Formats == nil {
		j.Export.Formats = []string{}
	}
	j.Export.DType = strings.ToUpper(j.Export.DType)
	def(&j.Export.DType, "BF16")
	j.Export.GGUFType = strings.ToUpper(j.Export.GGUFType)
	def(&j.Export.GGUFType, "F16")
	if j.OutputDir == "" {
		name := "job"
		if j.File != "" {
			name = strings.TrimSuffix(filepath.Base(j.File), filepath.Ext(j.File))
		}
		j.OutputDir = filepath.Join("runs", name)
	}
	if j.unset("seed", j.Seed == 0) {
		j.Seed = DefaultJobSeed
	}
	if j.Distill != nil {
		j.Distill.fillDefaults(j) // after the seed: distill.generate.seed defaults to it
	}
	def(&j.OnNaN, "stop")
	j.Data.fillDefaults(j.Seed)
}

// fillDefaults writes the data package's defaults into the section, so that the resolved job
// shows them (and DataHash covers them). data.seed defaults to the job's seed.
func (d *Data) fillDefaults(seed uint64) {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	yes := func(p **bool) {
		if *p == nil {
			t := true
			*p = &t
		}
	}
	yes(&d.Packing)
	yes(&d.AddBOS)
	yes(&d.AddEOS)
	if d.PackPool == 0 {
		d.PackPool = 8
	}
	def(&d.Truncation, "truncate")
	if d.ShuffleBuffer == nil {
		n := DefaultShuffleBuffer
		d.ShuffleBuffer = &n
	}
	if d.Seed == nil {
		s := seed
		d.Seed = &s
	}
	if d.Epochs == 0 {
		d.Epochs = 1
	}
	def(&d.Stop, "all_exhausted")
	def(&d.Template, "auto")
	def(&d.TrainOn, "assistant")
	def(&d.BadRows, "fail")
	if d.Workers == 0 {
		d.Workers = 2
	}
	ds := func(list []Dataset) {
		for i := range list {
			def(&list[i].Format, "auto")
			def(&list[i].Type, "auto")
			if list[i].Weight == 0 {
				list[i].Weight = 1
			}
		}
	}
	ds(d.Datasets)
	if d.Eval != nil {
		ds(d.Eval.Datasets)
	}
}

// Validate returns every invalid value of the job at once (errors.Join), each naming its key
// path, plus the checks that involve several fields. Run it on a job with defaults filled in
// (Load does). Unless SkipFileChecks is set it also checks, with os.Stat only, that the model
// directory has a config.json and that the data paths exist.
func (j *Job) Validate() error {
	p := &problems{}
	j.validateModel(p)
	p.errs = append(p.errs, j.Data.Validate("data")...)
	j.validateOptimizer(p)
	j.validateSteps(p)
	j.validatePrecision(p)
	j.validateRun(p)
	j.validateExport(p)
	if j.Distill != nil {
		p.errs = append(p.errs, j.Distill.validate()...)
	}
	if !SkipFileChecks {
		p.errs = append(p.errs, j.checkFiles()...)
	}
	return errors.Join(p.errs...)
}

// problems collects Validate's findings, every one of them.
type problems struct{ errs []error }

func (p *problems) add(err error) {
	if err != nil {
		p.errs = append(p.errs, err)
	}
}

func (p *problems) addf(format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf(format, args...))
}

// validateModel checks model, method and the method's section (lora, full).
func (j *Job) validateModel(p *problems) {
	if j.Model == "" {
		p.addf("model: missing; set it to a Hugging Face model directory (config.json, *.safetensors, tokenizer.json)")
	}
	p.add(oneOfRequired("method", j.Method, "lora", "full"))

	// lora
	if j.Method == "lora" || j.Method == "" {
		l := j.LoRA
		s := checkpoint.LoRASettings{R: l.R, Alpha: l.Alpha, Dropout: l.Dropout, TargetModules: l.TargetModules}
		for _, q := range s.Check() {
			if q.Key == "target_modules" && l.TargetModules == nil {
				continue // unset: the default modules
			}
			p.addf("lora.%s: %s", q.Key, q.Msg)
		}
		seen := map[string]bool{}
		for i, m := range l.TargetModules {
			key := fmt.Sprintf("lora.target_modules[%d]", i)
			if err := oneOfRequired(key, m, append(append([]string(nil), DefaultTargetModules...), "lm_head", "all-linear")...); err != nil {
				p.add(err)
				continue
			}
			if seen[m] {
				p.addf("%s: %s is listed twice", key, m)
			}
			seen[m] = true
		}
		p.add(layerList("lora.layers", l.Layers))
		if l.UseDoRA && slices.Contains(l.TargetModules, "lm_head") {
			p.addf("lora.use_dora: DoRA does not support lm_head; drop lm_head from lora.target_modules or set use_dora: false")
		}
	}
	if j.Method == "full" {
		p.add(layerList("full.freeze_layers", j.Full.FreezeLayers))
		if j.LoRA.UseDoRA {
			p.addf("lora.use_dora: true only applies to method lora (method is full); remove it or set method: lora")
		}
	}
}

// validateOptimizer checks the optimizer and schedule sections.
func (j *Job) validateOptimizer(p *problems) {
	// optimizer
	o := j.Optimizer
	p.add(oneOfRequired("optimizer.name", o.Name, "adamw"))
	if !(o.LR > 0) {
		p.addf("optimizer.lr: must be > 0, got %v", o.LR)
	}
	if len(o.Betas) != 2 {
		p.addf("optimizer.betas: want exactly 2 values like [0.9, 0.999], got %d", len(o.Betas))
	}
	for i, b := range o.Betas {
		if !(b > 0 && b < 1) {
			p.addf("optimizer.betas[%d]: must be in (0, 1), got %v", i, b)
		}
	}
	if !(o.Eps > 0) {
		p.addf("optimizer.eps: must be > 0, got %v", o.Eps)
	}
	if !(o.WeightDecay >= 0) {
		p.addf("optimizer.weight_decay: must be >= 0, got %v", o.WeightDecay)
	}
	if !(o.MaxGradNorm >= 0) {
		p.addf("optimizer.max_grad_norm: must be >= 0 (0 = no clipping), got %v", o.MaxGradNorm)
	}

	// schedule
	s := j.Schedule
	p.add(oneOfRequired("schedule.type", s.Type, "cosine", "linear", "constant"))
	if s.WarmupSteps < 0 {
		p.addf("schedule.warmup_steps: must be >= 0, got %d", s.WarmupSteps)
	}
	if !(s.WarmupRatio >= 0 && s.WarmupRatio < 1) {
		p.addf("schedule.warmup_ratio: must be in [0, 1), got %v", s.WarmupRatio)
	}
	if s.WarmupSteps > 0 && s.WarmupRatio > 0 {
		p.addf("schedule: set warmup_steps (%d) or warmup_ratio (%v), not both", s.WarmupSteps, s.WarmupRatio)
	}
	if j.MaxSteps > 0 && s.WarmupSteps >= j.MaxSteps {
		p.addf("schedule.warmup_steps: %d leaves no steps after warm-up (max_steps is %d)", s.WarmupSteps, j.MaxSteps)
	}
	if !(s.MinLRRatio >= 0 && s.MinLRRatio <= 1) {
		p.addf("schedule.min_lr_ratio: must be in [0, 1], got %v", s.MinLRRatio)
	}
}

// validateSteps checks batch sizes and max_steps.
func (j *Job) validateSteps(p *problems) {
	// batch and length
	if j.Batch.MicroBatchSize < 1 {
		p.addf("batch.micro_batch_size: must be >= 1, got %d", j.Batch.MicroBatchSize)
	}
	if j.Batch.GradAccum < 1 {
		p.addf("batch.grad_accum: must be >= 1, got %d", j.Batch.GradAccum)
	}
	if j.MaxSteps < 0 {
		p.addf("max_steps: must be >= 0 (0 = until the data ends), got %d", j.MaxSteps)
	}
	if j.MaxSteps == 0 {
		forever := j.Data.Epochs < 0
		for _, d := range j.Data.Datasets {
			if d.Epochs < 0 {
				forever = true
			}
		}
		if forever {
			p.addf("max_steps: 0 means until the data ends, but data repeats forever (epochs: -1); set max_steps")
		}
	}
}

// validatePrecision checks precision and device.
func (j *Job) validatePrecision(p *problems) {
	p.add(oneOfRequired("precision.weights", j.Precision.Weights, "f32", "bf16", "nf4"))
	p.add(oneOfRequired("precision.compute", j.Precision.Compute, "auto", "bf16", "f32"))
	if !kernels.Registered(j.Device) { // backends register by name when linked in
		p.addf("device: %q is not a backend of this binary; use one of: %s", j.Device, strings.Join(kernels.Names(), ", "))
	}

	if j.Method == "full" && j.Precision.Weights == "bf16" {
		p.addf("precision.weights: bf16 stores frozen base weights; full fine-tuning trains every weight in f32 (master weights), so use f32 or method: lora")
	}
	if j.Method == "full" && j.Precision.Weights == "nf4" {
		p.addf("precision.weights: nf4 quantizes frozen base weights (QLoRA); full fine-tuning trains every weight in f32 (master weights), so use f32, or method: lora to train adapters on the 4-bit base")
	}
	if j.Device == "cuda" && j.Precision.Weights == "nf4" {
		p.addf("precision.weights: nf4 runs on device: cpu only (the CUDA backend has no NF4 GEMM yet); use precision.weights: bf16 on cuda, or device: cpu")
	}
}

// validateRun checks checkpointing, evaluation, logging, output_dir and on_nan.
func (j *Job) validateRun(p *problems) {
	if j.Checkpoint.Every < 0 {
		p.addf("checkpoint.every: must be >= 0 (0 = only at the end), got %d", j.Checkpoint.Every)
	}
	if j.Checkpoint.KeepLast < 0 {
		p.addf("checkpoint.keep_last: must be >= 0 (0 = keep all), got %d", j.Checkpoint.KeepLast)
	}
	if j.Eval.Every < 0 {
		p.addf("eval.every: must be >= 0 (0 = only at the end), got %d", j.Eval.Every)
	}
	if j.Eval.Batches < 0 {
		p.addf("eval.batches: must be >= 0 (0 = all), got %d", j.Eval.Batches)
	}
	if j.Eval.Every > 0 && (j.Data.Eval == nil || (j.Data.Eval.Fraction == 0 && len(j.Data.Eval.Datasets) == 0)) {
		p.addf("eval.every: %d, but there is no eval data; add data.eval: {fraction: 0.01} or data.eval.datasets", j.Eval.Every)
	}
	if j.Logging.Every < 1 {
		p.addf("logging.every: must be >= 1, got %d", j.Logging.Every)
	}

	if j.OutputDir == "" {
		p.addf("output_dir: missing")
	}
	p.add(oneOfRequired("on_nan", j.OnNaN, "stop", "skip"))
}

// validateExport checks the export section.
func (j *Job) validateExport(p *problems) {
	seen := map[string]bool{}
	for i, f := range j.Export.Formats {
		key := fmt.Sprintf("export.formats[%d]", i)
		if err := oneOfRequired(key, f, "hf", "peft", "gguf"); err != nil {
			p.add(err)
			continue
		}
		if seen[f] {
			p.addf("%s: %s is listed twice", key, f)
		}
		seen[f] = true
		if f == "peft" && j.Method != "lora" {
			p.addf("%s: peft exports a LoRA adapter, but method is %s; use hf or gguf", key, j.Method)
		}
	}
	p.add(oneOfRequired("export.dtype", j.Export.DType, "F32", "BF16", "F16"))
	p.add(oneOfRequired("export.gguf_type", j.Export.GGUFType, "F32", "F16", "BF16", "Q8_0"))
}

// oneOfRequired is oneOf for a value that must be set (defaults are filled in by then).
func oneOfRequired(path, v string, allowed ...string) error {
	if v == "" {
		return fmt.Errorf("%s: missing; one of %s", path, strings.Join(allowed, ", "))
	}
	return oneOf(path, v, allowed...)
}

func layerList(path string, layers []int) error {
	var errs []error
	seen := map[int]bool{}
	for i, l := range layers {
		if l < 0 {
			errs = append(errs, fmt.Errorf("%s[%d]: layer indices start at 0, got %d", path, i, l))
		} else if seen[l] {
			errs = append(errs, fmt.Errorf("%s[%d]: layer %d is listed twice", path, i, l))
		}
		seen[l] = true
	}
	return errors.Join(errs...)
}

func (j *Job) checkFiles() []error {
	var errs []error
	if j.Model != "" {
		st, err := os.Stat(j.Model)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("model: %s does not exist; point model at a Hugging Face model directory or a .gguf file", j.Model))
		case !st.IsDir() && checkpoint.IsGGUF(j.Model):
			// a GGUF base: checked when it is opened (llama.LoadConfig)
		case !st.IsDir():
			errs = append(errs, fmt.Errorf("model: %s is a file; point model at the directory that holds config.json (or at a .gguf file)", j.Model))
		default:
			if _, err := os.Stat(filepath.Join(j.Model, "config.json")); err != nil {
				errs = append(errs, fmt.Errorf("model: %s has no config.json; is it a Hugging Face model directory?", j.Model))
			}
		}
	}
	check := func(path string, ds []Dataset) {
		for i, d := range ds {
			if d.Path == "" {
				continue
			}
			p := fmt.Sprintf("%s[%d].path", path, i)
			if strings.ContainsAny(d.Path, "*?[") {
				if m, err := filepath.Glob(d.Path); err != nil || len(m) == 0 {
					errs = append(errs, fmt.Errorf("%s: no files match %s", p, d.Path))
				}
			} else if _, err := os.Stat(d.Path); err != nil {
				errs = append(errs, fmt.Errorf("%s: %s does not exist", p, d.Path))
			}
		}
	}
	check("data.datasets", j.Data.Datasets)
	if j.Data.Eval != nil {
		check("data.eval.datasets", j.Data.Eval.Datasets)
	}
	return errs
}

// YAML returns the resolved job (defaults filled in by Load) as YAML, keys in schema order.
// Load of this text gives the same job back.
func (j *Job) YAML() ([]byte, error) {
	return marshalYAML(j)
}

func marshalYAML(v any) ([]byte, error) {
	var b strings.Builder
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return []byte(b.String()), nil
}

func shortHash(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])[:16]
}

// Hash identifies the resolved job: the first 16 hex digits of the sha256 of YAML().
func (j *Job) Hash() string {
	b, err := j.YAML()
	if err != nil {
		return ""
	}
	return shortHash(b)
}

// DataHash identifies the resolved data section alone (what the data stream depends on), so
// that a resumed run can tell whether its data cursor still applies.
func (j *Job) DataHash() string {
	b, err := marshalYAML(&j.Data)
	if err != nil {
		return ""
	}
	return shortHash(b)
}

// DataOptions is Data.Options with the job's micro-batch size and directory filled in where
// env leaves them zero.
func (j *Job) DataOptions(env DataEnv) (train data.Options, eval *data.Options, err error) {
	if env.BatchRows == 0 {
		env.BatchRows = j.Batch.MicroBatchSize
	}
	if env.BaseDir == "" {
		env.BaseDir = j.Dir
	}
	return j.Data.Options(env)
}
