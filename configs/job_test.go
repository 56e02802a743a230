package configs

import (
	"errors"
	"github.com/llamatune/llamatune/kernels"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// tinyJob writes a model directory with a config.json and a data file next to a job file
// and returns the job file's path.
func tinyJob(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "model"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, text := range map[string]string{
		"model/config.json": `{"model_type": "llama"}`,
		"train.jsonl":       `{"text": "hello"}` + "\n",
		"job.yaml":          body,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "job.yaml")
}

const minimalJob = `
model: model
data:
  datasets: [{path: train.jsonl}]
  seq_len: 64
`

func mustContain(t *testing.T, err error, wants ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want %q", wants)
	}
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
}

func TestDefaults(t *testing.T) {
	path := tinyJob(t, minimalJob)
	j, err := Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(path)
	if j.Model != filepath.Join(dir, "model") || j.Data.Datasets[0].Path != filepath.Join(dir, "train.jsonl") {
		t.Errorf("paths not resolved against the job dir: %q %q", j.Model, j.Data.Datasets[0].Path)
	}
	if j.Method != "lora" || j.LoRA.R != 16 || j.LoRA.Alpha != 32 || j.LoRA.Dropout != 0.05 ||
		!reflect.DeepEqual(j.LoRA.TargetModules, DefaultTargetModules) || j.LoRA.RSLoRA {
		t.Errorf("lora defaults: %+v", j.LoRA)
	}
	o := j.Optimizer
	if o.Name != "adamw" || o.LR != 2e-4 || !reflect.DeepEqual(o.Betas, []float64{0.9, 0.999}) || o.Eps != 1e-8 ||
		o.WeightDecay != 0 || o.MaxGradNorm != 1 {
		t.Errorf("optimizer defaults: %+v", o)
	}
	if j.Schedule.Type != "cosine" || j.Batch.MicroBatchSize != 1 || j.Batch.GradAccum != 1 || j.MaxSteps != 0 ||
		j.Precision.Weights != "f32" || j.Device != "cpu" || j.Checkpoint.KeepLast != 3 || j.Logging.Every != 1 ||
		j.Logging.Plot == nil || !*j.Logging.Plot || j.Export.DType != "BF16" || j.Export.GGUFType != "F16" ||
		j.OutputDir != filepath.Join("runs", "job") || j.Seed != 42 || j.OnNaN != "stop" {
		t.Errorf("defaults: %+v", j)
	}
	d := j.Data
	if !*d.Packing || d.PackPool != 8 || d.Truncation != "truncate" || *d.ShuffleBuffer != 10000 || *d.Seed != 42 ||
		d.Epochs != 1 || d.Template != "auto" || d.TrainOn != "assistant" || d.BadRows != "fail" ||
		d.Datasets[0].Format != "auto" || d.Datasets[0].Weight != 1 {
		t.Errorf("data defaults: %+v", d)
	}

	// Method-dependent and explicit zeros.
	j, err = Load(tinyJob(t, minimalJob+`
method: full
seed: 0
lora: {r: 4, dropout: 0}
optimizer: {max_grad_norm: 0}
checkpoint: {keep_last: 0}
logging: {plot: false}
export: {dtype: f16, gguf_type: q8_0}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if j.Optimizer.LR != 2e-5 || j.Seed != 0 || *j.Data.Seed != 0 || j.LoRA.Alpha != 8 || j.LoRA.Dropout != 0 ||
		j.Optimizer.MaxGradNorm != 0 || j.Checkpoint.KeepLast != 0 || *j.Logging.Plot || j.Export.DType != "F16" ||
		j.Export.GGUFType != "Q8_0" {
		t.Errorf("explicit values: %+v", j)
	}

	// A job built in Go.
	g := &Job{Model: "/m", Data: Data{Datasets: []Dataset{{Path: "/d.jsonl"}}, SeqLen: 32}}
	g.ApplyDefaults()
	SkipFileChecks = true
	defer func() { SkipFileChecks = false }()
	if err := g.Validate(); err != nil || g.Optimizer.MaxGradNorm != 1 || g.LoRA.R != 16 {
		t.Errorf("ApplyDefaults: %v %+v", err, g)
	}
}

func TestUnknownKeysDidYouMean(t *testing.T) {
	_, err := Load(tinyJob(t, minimalJob+`
optimzer: {lr: 1e-4}
lora:
  alpah: 16
  r: 8
schedule: {warmup_step: 10}
data2: 1
`), nil)
	mustContain(t, err,
		`optimzer (line 7): unknown key; did you mean "optimizer"?`,
		`lora.alpah (line 9): unknown key; did you mean "alpha"?`,
		`schedule.warmup_step (line 11): unknown key; did you mean "warmup_steps"?`,
		`data2 (line 12): unknown key; did you mean "data"?`)
	var ce *Error
	if !errors.As(err, &ce) || len(ce.Problems) != 4 || !strings.HasSuffix(ce.File, "job.yaml") {
		t.Fatalf("want *Error with 4 problems: %#v", err)
	}
	// Deep in the data section (CheckKeys from data.go).
	_, err = Load(tinyJob(t, `
model: model
data:
  datasets: [{path: train.jsonl, colums: {text: body}}]
  seq_len: 64
`), nil)
	mustContain(t, err, `data.datasets[0].colums (line 4): unknown key; did you mean "columns"?`)
}

func TestManyErrorsAtOnce(t *testing.T) {
	_, err := Load(tinyJob(t, `
model: model
method: lora
lora: {r: 0, alpha: -1, dropout: 1.5, target_modules: [q_proj, qk_proj, q_proj], layers: [-1]}
data:
  datasets: [{path: train.jsonl, format: parket}]
  seq_len: 0
optimizer: {name: sgd, lr: -1, betas: [0.9, 1.5], eps: 0, weight_decay: -0.1}
schedule: {type: cosin, warmup_steps: 10, warmup_ratio: 0.1, min_lr_ratio: 2}
batch: {micro_batch_size: 0, grad_accum: -2}
max_steps: 5
precision: {weights: fp8, compute: fp16}
device: tpu
checkpoint: {every: -1}
eval: {every: 10}
logging: {every: 0}
export: {formats: [hf, onnx], dtype: int4}
on_nan: ignore
`), nil)
	mustContain(t, err,
		"lora.r: must be >= 1, got 0",
		"lora.alpha: must be > 0",
		"lora.dropout: must be in [0, 1)",
		`lora.target_modules[1]: "qk_proj" is not one of`,
		"lora.target_modules[2]: q_proj is listed twice",
		"lora.layers[0]",
		`data.datasets[0].format: "parket"`,
		"data.seq_len: must be > 0",
		`optimizer.name: "sgd" is not one of adamw`,
		"optimizer.lr: must be > 0",
		"optimizer.betas[1]: must be in (0, 1), got 1.5",
		"optimizer.eps: must be > 0",
		"optimizer.weight_decay",
		`schedule.type: "cosin" is not one of cosine, linear, constant; did you mean "cosine"?`,
		"schedule: set warmup_steps (10) or warmup_ratio (0.1), not both",
		"schedule.warmup_steps: 10 leaves no steps after warm-up (max_steps is 5)",
		"schedule.min_lr_ratio",
		"batch.micro_batch_size: must be >= 1, got 0",
		"batch.grad_accum: must be >= 1, got -2",
		`precision.weights: "fp8"`,
		`precision.compute: "fp16" is not one of auto, bf16, f32`,
		`device: "tpu"`,
		"checkpoint.every",
		"eval.every: 10, but there is no eval data",
		"logging.every: must be >= 1, got 0",
		`export.formats[1]: "onnx"`,
		`export.dtype: "INT4"`,
		`on_nan: "ignore"`)
	var ce *Error
	if !errors.As(err, &ce) || len(ce.Problems) < 28 {
		t.Fatalf("want every problem: %v", err)
	}

	// Cross-field: peft needs lora, a device this binary lacks (this test
	// links only the CPU backend), forever without max_steps, missing model/data.
	_, err = Load(tinyJob(t, minimalJob+`
method: full
export: {formats: [peft]}
device: npu
`), nil)
	mustContain(t, err, "export.formats[0]: peft exports a LoRA adapter, but method is full",
		`device: "npu" is not a backend of this binary; use one of: cpu`)
	_, err = Load(tinyJob(t, "data: {datasets: [{path: train.jsonl, epochs: -1}], seq_len: 8}\n"), nil)
	mustContain(t, err, "model: missing", "max_steps: 0 means until the data ends, but data repeats forever")
	_, err = Load(tinyJob(t, "model: model\n"), nil)
	mustContain(t, err, "data: missing section")
	if strings.Contains(err.Error(), "data.seq_len") {
		t.Errorf("missing data section also reported field by field: %v", err)
	}
}

func TestTypeErrors(t *testing.T) {
	_, err := Load(tinyJob(t, minimalJob+`
max_steps: lots
lora: {target_modules: q_proj, r: [1]}
seed: -1
optimizer: {betas: [0.9, high]}
batch: 4
`), nil)
	mustContain(t, err,
		`max_steps (line 7): want an integer, got "lots"`,
		`lora.target_modules (line 8): want a list like [a, b], got "q_proj"`,
		`lora.r (line 8): want an integer, got a list`,
		`seed (line 9): want a non-negative integer, got "-1"`,
		`optimizer.betas[1] (line 10): want a number, got "high"`,
		`batch (line 11): want a mapping of keys, got "4"`)
	if strings.Contains(err.Error(), "optimizer.betas[1]: must be") || strings.Contains(err.Error(), "batch.micro") {
		t.Errorf("type errors repeated by validation: %v", err)
	}
	_, err = Load(tinyJob(t, minimalJob+"max_steps: 1\nmax_steps: 2\n"), nil)
	mustContain(t, err, "max_steps (line 7): duplicate key (first at line 6)")
}

func TestMalformedYAML(t *testing.T) {
	path := tinyJob(t, "model: model\ndata:\n  seq_len: 64\n   bad: [1\n")
	_, err := Load(path, nil)
	mustContain(t, err, path+": line 4: not valid YAML")
	_, err = Load(tinyJob(t, "- a\n- b\n"), nil)
	mustContain(t, err, "a job is a mapping")
	_, err = Load(filepath.Join(t.TempDir(), "nope.yaml"), nil)
	mustContain(t, err, "nope.yaml")
}

func TestSetOverrides(t *testing.T) {
	path := tinyJob(t, minimalJob+"lora: {r: 8}\n")
	j, err := Load(path, []string{
		"lora.r=32",
		"optimizer.lr=1e-4",                               // creates a missing section
		"lora.target_modules=[q_proj,v_proj]",             // list value
		"data.datasets[0].path=other.jsonl",               // index into a list
		"data.datasets[1]={path: train.jsonl, weight: 3}", // [len] appends
		"data.eval.fraction=0.1",                          // creates a nested missing key
		"eval.every=5",
		"max_steps=10",
		"data.template={% for m in messages %}{{ m.content }}{% endfor %}",
		"output_dir=",
	})
	mustContain(t, err, "data.datasets[0].path: "+filepath.Join(filepath.Dir(path), "other.jsonl")+" does not exist")
	SkipFileChecks = true
	defer func() { SkipFileChecks = false }()
	j, err = Load(path, []string{
		"lora.r=32",
		"optimizer.lr=1e-4",
		"lora.target_modules=[q_proj,v_proj]",
		"data.datasets[0].path=other.jsonl",
		"data.datasets[1]={path: train.jsonl, weight: 3}",
		"data.eval.fraction=0.1",
		"eval.every=5",
		"max_steps=10",
		"data.template={% for m in messages %}{{ m.content }}{% endfor %}",
	})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(path)
	if j.LoRA.R != 32 || j.LoRA.Alpha != 64 || j.Optimizer.LR != 1e-4 || !reflect.DeepEqual(j.LoRA.TargetModules, []string{"q_proj", "v_proj"}) ||
		j.Data.Datasets[0].Path != filepath.Join(dir, "other.jsonl") || len(j.Data.Datasets) != 2 || j.Data.Datasets[1].Weight != 3 ||
		j.Data.Eval == nil || j.Data.Eval.Fraction != 0.1 || j.Eval.Every != 5 || j.MaxSteps != 10 ||
		!strings.HasPrefix(j.Data.Template, "{% for m") {
		t.Errorf("overrides not applied: %+v", j)
	}

	// Bad overrides name themselves.
	_, err = Load(path, []string{
		"optimizer.lrr=1",
		"optimzer.lr=1",
		"lora.r.x=1",
		"data.datasets[5].path=x",
		"data.datasets[0]={pth: x}",
		"max_steps",
		"lora.target_modules=[q_proj",
		"seed=abc",
	})
	mustContain(t, err,
		`--set optimizer.lrr=1: optimizer.lrr: unknown key; did you mean "lr"?`,
		`--set optimzer.lr=1: optimzer: unknown key; did you mean "optimizer"?`,
		"--set lora.r.x=1: lora.r.x: lora.r is a single value",
		"--set data.datasets[5].path=x: data.datasets[5]: index 5 is past the end of the list (1 entries)",
		`--set data.datasets[0]={pth: x}: data.datasets[0].pth: unknown key; did you mean "path"?`,
		"--set max_steps: want key=value",
		`--set lora.target_modules=[q_proj: lora.target_modules: value "[q_proj" is not valid YAML`,
		`seed: want a non-negative integer, got "abc"`)
}

func TestEnvOverrides(t *testing.T) {
	path := tinyJob(t, minimalJob+"optimizer: {lr: 3e-4}\n")
	t.Setenv("LLAMATUNE_OPTIMIZER__LR", "1e-4")
	t.Setenv("LLAMATUNE_MAX_STEPS", "10")
	t.Setenv("LLAMATUNE_DATA__SEQ_LEN", "256")
	t.Setenv("LLAMATUNE_LORA__TARGET_MODULES", "[q_proj, k_proj]")
	t.Setenv("LLAMATUNE_DATA__DATASETS__0__WEIGHT", "2")
	t.Setenv("LLAMATUNE_NO_FUSED", "1") // not a job key: left alone
	j, err := Load(path, []string{"max_steps=20"})
	if err != nil {
		t.Fatal(err)
	}
	if j.Optimizer.LR != 1e-4 || j.MaxSteps != 20 || j.Data.SeqLen != 256 || j.Data.Datasets[0].Weight != 2 ||
		!reflect.DeepEqual(j.LoRA.TargetModules, []string{"q_proj", "k_proj"}) {
		t.Errorf("env overrides (then --set wins): %+v", j)
	}
	t.Setenv("LLAMATUNE_OPTIMIZER__LRR", "1")
	t.Setenv("LLAMATUNE_OPTIMZER__LR", "1")
	_, err = Load(path, nil)
	mustContain(t, err, `LLAMATUNE_OPTIMIZER__LRR=1: optimizer.lrr: unknown key; did you mean "lr"?`,
		`LLAMATUNE_OPTIMZER__LR: optimzer: unknown key; did you mean "optimizer"?`)
}

func TestYAMLRoundTrip(t *testing.T) {
	path := tinyJob(t, minimalJob+`
lora: {r: 8, dropout: 0, layers: [0, 1]}
optimizer: {max_grad_norm: 0}
data:
  datasets: [{path: train.jsonl, type: text, columns: {text: body}}]
  seq_len: 64
  eval: {fraction: 0.1}
eval: {every: 3}
seed: 0
`)
	_, err := Load(path, nil)
	mustContain(t, err, "data (line 9): duplicate key")
	path = tinyJob(t, `
model: model
lora: {r: 8, dropout: 0, layers: [0, 1]}
optimizer: {max_grad_norm: 0}
data:
  datasets: [{path: train.jsonl, type: text, columns: {text: body}}]
  seq_len: 64
  eval: {fraction: 0.1}
eval: {every: 3}
seed: 0
export: {formats: [peft, gguf]}
`)
	j, err := Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := j.YAML()
	if err != nil {
		t.Fatal(err)
	}
	again := filepath.Join(t.TempDir(), "resolved.yaml")
	if err := os.WriteFile(again, b, 0o644); err != nil {
		t.Fatal(err)
	}
	k, err := Load(again, nil)
	if err != nil {
		t.Fatalf("resolved YAML does not load: %v\n%s", err, b)
	}
	b2, _ := k.YAML()
	if string(b) != string(b2) || j.Hash() != k.Hash() || j.DataHash() != k.DataHash() || len(j.Hash()) != 16 {
		t.Fatalf("round trip differs:\n%s\n---\n%s", b, b2)
	}
	if k.Optimizer.MaxGradNorm != 0 || k.Seed != 0 || k.LoRA.Dropout != 0 {
		t.Errorf("explicit zeros lost: %+v", k)
	}
	// Key order is the schema's.
	s := string(b)
	if !(strings.Index(s, "model:") < strings.Index(s, "method:") && strings.Index(s, "method:") < strings.Index(s, "lora:") &&
		strings.Index(s, "export:") < strings.Index(s, "on_nan:")) {
		t.Errorf("key order:\n%s", s)
	}
	// Hashes move with what they cover.
	k.MaxSteps = 7
	if k.Hash() == j.Hash() || k.DataHash() != j.DataHash() {
		t.Error("Hash/DataHash")
	}
	k.Data.SeqLen = 65
	if k.DataHash() == j.DataHash() {
		t.Error("DataHash ignores data")
	}

	// DataOptions reuses Data.Options with the job's batch size.
	tr, ev, err := j.DataOptions(DataEnv{})
	if err != nil || tr.BatchRows != 1 || tr.SeqLen != 64 || ev == nil || tr.Datasets[0].Path != filepath.Join(filepath.Dir(path), "train.jsonl") {
		t.Errorf("DataOptions: %+v %v %v", tr, ev, err)
	}
}

func TestFileChecks(t *testing.T) {
	path := tinyJob(t, `
model: nomodel
data:
  datasets: [{path: missing.jsonl}, {path: "shards/*.parquet"}]
  seq_len: 64
`)
	_, err := Load(path, nil)
	mustContain(t, err, "model: "+filepath.Join(filepath.Dir(path), "nomodel")+" does not exist",
		"data.datasets[0].path: ", "missing.jsonl does not exist",
		"data.datasets[1].path: no files match")
	os.Remove(filepath.Join(filepath.Dir(path), "model", "config.json"))
	_, err = Load(path, []string{"model=model", "data.datasets=[{path: train.jsonl}]"})
	mustContain(t, err, "has no config.json")

	// A GGUF file is a model; another file is not.
	dir := filepath.Dir(path)
	for _, f := range []string{"m.gguf", "m.bin"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("GGUF"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Load(path, []string{"model=m.gguf", "data.datasets=[{path: train.jsonl}]"}); err != nil {
		t.Errorf("model: m.gguf: %v", err)
	}
	_, err = Load(path, []string{"model=m.bin", "data.datasets=[{path: train.jsonl}]"})
	mustContain(t, err, "m.bin is a file", ".gguf")
}

func TestExamplesValidate(t *testing.T) {
	SkipFileChecks = true
	defer func() { SkipFileChecks = false }()
	if !kernels.Registered("cuda") { // the examples for big models run on GPU
		kernels.Register("cuda", func() (kernels.Backend, error) { return nil, errors.New("a fake for validation") })
	}
	names, err := fs.Glob(Examples, "examples/*.yaml")
	if err != nil || len(names) < 5 {
		t.Fatalf("embedded examples: %v %v", names, err)
	}
	for _, name := range names {
		t.Run(filepath.Base(name), func(t *testing.T) {
			j, err := Load(name, nil)
			if err != nil {
				t.Fatal(err)
			}
			if j.Data.SeqLen <= 0 || len(j.Data.Datasets) == 0 || j.Model == "" {
				t.Errorf("incomplete: %+v", j)
			}
			b, err := j.YAML()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := LoadBytes(b, name, nil); err != nil {
				t.Errorf("resolved YAML does not load: %v", err)
			}
		})
	}
	j, err := Load("examples/quickstart.yaml", nil)
	if err != nil || j.Device != "cpu" || j.LoRA.R != 8 || j.Data.SeqLen != 128 || j.MaxSteps != 60 {
		t.Errorf("quickstart: %+v %v", j, err)
	}
}

func TestPrecisionCompute(t *testing.T) {
	j, err := Load(tinyJob(t, minimalJob), nil)
	if err != nil {
		t.Fatal(err)
	}
	if j.Precision.Compute != DefaultCompute {
		t.Errorf("precision.compute defaults to %q, want %q", j.Precision.Compute, DefaultCompute)
	}
	for in, want := range map[string]string{"BF16": "bf16", "f32": "f32"} {
		j, err := Load(tinyJob(t, minimalJob+"precision: {compute: "+in+"}\n"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if j.Precision.Compute != want {
			t.Errorf("compute: %s read as %q, want %q", in, j.Precision.Compute, want)
		}
	}
	_, err = Load(tinyJob(t, minimalJob+"precision: {computee: bf16}\n"), nil)
	mustContain(t, err, "precision.computee", `did you mean "compute"?`)
}

// Integer keys refuse fractions, wherever the value comes from (yaml alone would make 2.5
// into 2 without a word); whole numbers written as floats are fine.
func TestWholeNumbers(t *testing.T) {
	path := tinyJob(t, minimalJob+`batch:
  micro_batch_size: 2.5
lora: {r: 8, layers: [0, 1.5]}
max_steps: -.inf
seed: -3.0
checkpoint: {every: 1e2}
`)
	_, err := Load(path, nil)
	mustContain(t, err,
		"batch.micro_batch_size (line 7): 2.5 is not a whole number; write an integer (2 or 3)",
		"lora.layers[1] (line 8): 1.5 is not a whole number",
		"max_steps (line 9): -.inf is not a whole number",
		`seed (line 10): want a non-negative integer, got -3.0`)
	if strings.Contains(err.Error(), "checkpoint.every") {
		t.Errorf("1e2 is a whole number:\n%v", err)
	}

	path = tinyJob(t, minimalJob)
	_, err = Load(path, []string{"batch.micro_batch_size=2.5", "data.datasets[0]={path: train.jsonl, epochs: 1.5}"})
	mustContain(t, err,
		"--set batch.micro_batch_size=2.5: batch.micro_batch_size: 2.5 is not a whole number",
		"--set data.datasets[0]={path: train.jsonl, epochs: 1.5}: data.datasets[0].epochs: 1.5 is not a whole number")

	t.Setenv("LLAMATUNE_BATCH__GRAD_ACCUM", "0.5")
	_, err = Load(path, nil)
	mustContain(t, err, "LLAMATUNE_BATCH__GRAD_ACCUM=0.5: batch.grad_accum: 0.5 is not a whole number")

	t.Setenv("LLAMATUNE_BATCH__GRAD_ACCUM", "4.0")
	SkipFileChecks = true
	defer func() { SkipFileChecks = false }()
	j, err := Load(path, []string{"batch.micro_batch_size=2e0", "lora.r=1e1"})
	if err != nil {
		t.Fatal(err)
	}
	if j.Batch.GradAccum != 4 || j.Batch.MicroBatchSize != 2 || j.LoRA.R != 10 {
		t.Errorf("whole numbers written as floats: %+v %+v", j.Batch, j.LoRA)
	}
}

func TestUseDoRA(t *testing.T) {
	j, err := Load(tinyJob(t, minimalJob+"lora: {use_dora: true}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !j.LoRA.UseDoRA {
		t.Error("lora.use_dora: true read as false")
	}
	_, err = Load(tinyJob(t, minimalJob+"lora: {use_dora: true, target_modules: [q_proj, lm_head]}\n"), nil)
	mustContain(t, err, "lora.use_dora: DoRA does not support lm_head")
	_, err = Load(tinyJob(t, minimalJob+"method: full\nlora: {use_dora: true}\n"), nil)
	mustContain(t, err, "lora.use_dora: true only applies to method lora")
}

// precision.weights: nf4 (QLoRA) is accepted for LoRA on the cpu, refused
// with full fine-tuning and on cuda, each with what to do instead.
func TestWeightsNF4(t *testing.T) {
	j, err := Load(tinyJob(t, minimalJob+"precision: {weights: NF4}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if j.Precision.Weights != "nf4" || j.Method != "lora" {
		t.Errorf("weights %q method %q, want nf4 lora", j.Precision.Weights, j.Method)
	}
	_, err = Load(tinyJob(t, minimalJob+"method: full\nprecision: {weights: nf4}\n"), nil)
	mustContain(t, err, "precision.weights: nf4 quantizes frozen base weights (QLoRA); full fine-tuning trains every weight")
	if !kernels.Registered("cuda") {
		kernels.Register("cuda", func() (kernels.Backend, error) { return nil, errors.New("a fake for validation") })
	}
	_, err = Load(tinyJob(t, minimalJob+"device: cuda\nprecision: {weights: nf4}\n"), nil)
	mustContain(t, err, "precision.weights: nf4 runs on device: cpu only")
	_, err = Load(tinyJob(t, minimalJob+"precision: {weights: nf8}\n"), nil)
	mustContain(t, err, `precision.weights: "nf8" is not one of f32, bf16, nf4`)
}
