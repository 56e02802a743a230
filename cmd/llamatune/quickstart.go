package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/internal/quickstart"
	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/train"
)

// quickstartData is the data section of both quickstart jobs: the built-in
// text and conversations, a tenth held out.
const quickstartData = `data:
  datasets:
    - {path: data/text.jsonl, type: text}
    - {path: data/chat.jsonl, type: messages}
  seq_len: 128
  packing: true
  template: llama3
  epochs: 3
  eval: {fraction: 0.1}
`

// quickstartJob is the job the quickstart writes next to its model and data;
// `llamatune train DIR/job.yaml` runs it again.
const quickstartJob = `# Written by llamatune quickstart: LoRA on a tiny random Llama 3, on CPU.
model: model
method: lora
lora:
  r: 16
  alpha: 32
  dropout: 0.0
  target_modules: [all-linear, lm_head]
` + quickstartData + `optimizer: {lr: 0.01, weight_decay: 0.0}
schedule: {type: cosine, warmup_steps: 5}
batch: {micro_batch_size: 4, grad_accum: 1}
max_steps: 60
checkpoint: {every: 30, keep_last: 2}
eval: {every: 20}
logging: {every: 5}
export: {formats: [hf, peft, gguf], dtype: BF16, gguf_type: Q8_0}
`

// quickstartDistillJob distils the fine-tuned model (merged, exported as HF)
// into a smaller student, fully fine-tuned with the teacher's full
// distribution; `llamatune distill DIR/distill.yaml` runs it again.
const quickstartDistillJob = `# Written by llamatune quickstart: distil the fine-tuned tiny model into a smaller one.
model: student
method: full
` + quickstartData + `distill:
  teacher: {model: run/export/hf}
  loss: forward_kl
  temperature: 1.0
  kd_weight: 0.8
  top_k: 0
optimizer: {lr: 0.01, weight_decay: 0.0}
schedule: {type: cosine, warmup_steps: 3}
batch: {micro_batch_size: 4, grad_accum: 1}
max_steps: 30
checkpoint: {every: 0, keep_last: 1}
eval: {every: 15}
logging: {every: 5}
export: {formats: [hf], dtype: BF16}
`

func init() {
	var out string
	cmd := &cobra.Command{
		Use:   "quickstart [--out DIR] [--set k=v]...",
		Short: "Tiny model + built-in data on CPU: LoRA fine-tune, export HF/PEFT/GGUF, distil into a smaller student",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := interruptible(os.Stderr, filepath.Join(out, "run*", "checkpoints"))
			defer stop()
			_, err := runQuickstart(ctx, out, *sets(cmd), os.Stdout)
			return err
		},
	}
	cmd.Flags().StringVar(&out, "out", filepath.Join("runs", "quickstart"), "directory for the model, data, job and run")
	addSetFlag(cmd)
	rootCmd.AddCommand(cmd)
}

// runQuickstart writes a tiny model, the built-in data and a job into out,
// then trains and exports exactly as `llamatune train out/job.yaml` would.
func runQuickstart(ctx context.Context, out string, sets []string, w io.Writer) (train.Result, error) {
	t0 := time.Now()
	// A quickstart starts over: its earlier runs would otherwise be resumed.
	for _, d := range []string{"run", "run-distill", "run-ce"} {
		if err := os.RemoveAll(filepath.Join(out, d)); err != nil {
			return train.Result{}, err
		}
	}
	if _, err := randmodel.WriteTinyModel(filepath.Join(out, "model"), randmodel.TinyOptions{Tokenizer: "llama3"}); err != nil {
		return train.Result{}, err
	}
	if _, _, err := quickstart.WriteData(filepath.Join(out, "data")); err != nil {
		return train.Result{}, err
	}
	jobPath := filepath.Join(out, "job.yaml")
	runDir, err := filepath.Abs(filepath.Join(out, "run"))
	if err != nil {
		return train.Result{}, err
	}
	if err := os.WriteFile(jobPath, []byte(quickstartJob+"output_dir: "+runDir+"\n"), 0o644); err != nil {
		return train.Result{}, err
	}
	fmt.Fprintf(w, "wrote a tiny Llama 3 (%s), built-in text and instruction data (%s) and %s\n",
		filepath.Join(out, "model"), filepath.Join(out, "data"), jobPath)
	job, err := configs.Load(jobPath, sets)
	if err != nil {
		return train.Result{}, err
	}
	res, err := runTrainWith(ctx, job, "", w, runHooks{evalAtStart: true})
	if err != nil {
		return res, err
	}
	if n := len(res.EvalLosses); n >= 2 {
		fmt.Fprintf(w, "held-out loss: %.3f before training -> %.3f after %d steps\n", res.EvalLosses[0], res.EvalLosses[n-1], res.Steps)
	}

	// Distillation: the fine-tuned model teaches a smaller student.
	if _, err := randmodel.WriteTinyModel(filepath.Join(out, "student"), randmodel.TinyOptions{Tokenizer: "llama3", Layers: 1, Hidden: 32, Seed: 7}); err != nil {
		return res, err
	}
	distillPath := filepath.Join(out, "distill.yaml")
	if err := os.WriteFile(distillPath, []byte(quickstartDistillJob+"output_dir: "+runDir+"-distill\n"), 0o644); err != nil {
		return res, err
	}
	fmt.Fprintf(w, "\ndistilling it into a smaller student (1 layer, hidden 32): %s\n", distillPath)
	djob, err := configs.Load(distillPath, sets)
	if err != nil {
		return res, err
	}
	dres, err := runTrainWith(ctx, djob, "", w, runHooks{evalAtStart: true, setup: distillSetup})
	if err != nil {
		return res, err
	}
	if n := len(dres.EvalLosses); n >= 2 {
		fmt.Fprintf(w, "student held-out loss: %.3f before distillation -> %.3f after %d steps\n", dres.EvalLosses[0], dres.EvalLosses[n-1], dres.Steps)
	}

	// The same student, data and steps with cross-entropy alone: what KD adds.
	fmt.Fprintf(w, "\nbaseline: the same student trained with cross-entropy only\n")
	cjob, err := configs.Load(distillPath, sets)
	if err != nil {
		return res, err
	}
	cjob.OutputDir, cjob.Export.Formats = runDir+"-ce", nil
	if err := os.RemoveAll(cjob.OutputDir); err != nil {
		return res, err
	}
	cres, err := runTrainWith(ctx, cjob, "", w, runHooks{})
	if err != nil {
		return res, err
	}
	if len(dres.EvalLosses) > 0 && len(cres.EvalLosses) > 0 {
		kd, ce := dres.EvalLosses[len(dres.EvalLosses)-1], cres.EvalLosses[len(cres.EvalLosses)-1]
		fmt.Fprintf(w, "student held-out loss after %d steps: distilled %.3f, cross-entropy only %.3f (KD − CE = %+.3f nats)\n", dres.Steps, kd, ce, kd-ce)
	}
	fmt.Fprintf(w, "done in %v. Run them again into new run directories with: llamatune train %s --set output_dir=runs/again; llamatune distill %s --set output_dir=runs/again-distill\n", time.Since(t0).Round(time.Second), jobPath, distillPath)
	return res, nil
}
