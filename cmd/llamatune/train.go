package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/export"
	"github.com/llamatune/llamatune/internal/memplan"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/optim"
	"github.com/llamatune/llamatune/tensor"
	"github.com/llamatune/llamatune/train"
)

func init() {
	var resume string
	cmd := &cobra.Command{
		Use:   "train JOB.yaml [--set k=v]... [--resume [DIR]]",
		Short: "Fine-tune a model (LoRA or full) as the job says",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			job, err := configs.Load(args[0], *sets(cmd))
			if err != nil {
				return err
			}
			if job.Distill != nil {
				fmt.Fprintln(os.Stderr, "note: `llamatune train` ignores the job's distill: section; `llamatune distill` uses it")
			}
			if cmd.Flags().Changed("resume") && resume == "" {
				resume = "latest"
			}
			ctx, stop := interruptible(os.Stderr, filepath.Join(job.OutputDir, "checkpoints"))
			defer stop()
			_, err = runTrain(ctx, job, resume, os.Stdout)
			return err
		},
	}
	addSetFlag(cmd)
	cmd.Flags().StringVar(&resume, "resume", "", "resume from a checkpoint dir, or the run's latest when given without a value")
	cmd.Flags().Lookup("resume").NoOptDefVal = "latest"
	rootCmd.AddCommand(cmd)

	evalCmd := &cobra.Command{
		Use:   "eval JOB.yaml [--set k=v]... [--checkpoint DIR]",
		Short: "Held-out loss and perplexity of the job's model (or a checkpoint of it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			job, err := configs.Load(args[0], *sets(cmd))
			if err != nil {
				return err
			}
			ckpt, _ := cmd.Flags().GetString("checkpoint")
			return runEval(job, ckpt, os.Stdout)
		},
	}
	addSetFlag(evalCmd)
	evalCmd.Flags().String("checkpoint", "", "evaluate this checkpoint (or run directory: its latest) instead of the base model")
	rootCmd.AddCommand(evalCmd)

	rootCmd.AddCommand(&cobra.Command{
		Use:   "plot RUN_DIR",
		Short: "Draw RUN_DIR/metrics.jsonl as RUN_DIR/loss.png",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			path, err := train.PlotRun(args[0])
			if err == nil {
				fmt.Println("wrote", path)
			}
			return err
		},
	})
}

func sets(cmd *cobra.Command) *[]string {
	v, _ := cmd.Flags().GetStringArray("set")
	return &v
}

// session is a loaded model with its data, ready to train or evaluate.
type session struct {
	job        *configs.Job
	model      *llama.Model
	lora       *lora.Set
	trainable  []*tensor.Tensor
	trainData  data.Options
	evalData   *data.Options
	modelHash  string
	runDir     string
	dataLoaded bool
}

func openSession(job *configs.Job) (*session, error) {
	be, err := jobBackend(job)
	if err != nil {
		return nil, err
	}
	dt := kernels.F32 // full fine-tuning: every weight trains, in f32
	if job.Method != "full" {
		dt = frozenDType(job) // the frozen base; adapters stay f32
	}
	m, err := llama.Load(job.Model, be, dt)
	if err != nil {
		return nil, err
	}
	m.Compute = computeDType(job)
	m.Recompute = job.Precision.ActivationCheckpointing
	tok, err := tokenizer.Load(job.Model)
	if err != nil {
		return nil, err
	}
	if tok.VocabSize() > m.Config.VocabSize {
		return nil, fmt.Errorf("tokenizer of %s has %d ids but the model's vocab_size is %d: tokenizer and model do not match", job.Model, tok.VocabSize(), m.Config.VocabSize)
	}
	env := configs.DataEnv{Tokenizer: tok, VocabSize: m.Config.VocabSize, BatchRows: job.Batch.MicroBatchSize, TokenizerKind: tok.Kind()}
	if env.ChatTemplate, err = modelChatTemplate(job.Model, job.Data.Template); err != nil {
		return nil, err
	}
	s := &session{job: job, model: m, runDir: job.OutputDir}
	if s.trainData, s.evalData, err = job.Data.Options(env); err != nil {
		return nil, err
	}
	if s.modelHash, err = llama.Fingerprint(job.Model); err != nil {
		return nil, err
	}
	return s, nil
}

// makeTrainable attaches adapters (lora) or unfreezes weights (full).
func (s *session) makeTrainable() error {
	j := s.job
	if j.Method == "full" {
		frozen := map[string]bool{}
		for _, l := range j.Full.FreezeLayers {
			for _, n := range s.model.Names() {
				if len(n) > 0 && hasLayerPrefix(n, l) {
					frozen[n] = true
				}
			}
		}
		if j.Full.FreezeEmbeddings {
			frozen["model.embed_tokens.weight"] = true
		}
		for _, n := range s.model.Names() {
			if !frozen[n] {
				s.trainable = append(s.trainable, s.model.Param(n).SetRequiresGrad(true))
			}
		}
		return nil
	}
	set, err := lora.Attach(s.model, lora.Config{R: j.LoRA.R, Alpha: j.LoRA.Alpha, Dropout: j.LoRA.Dropout,
		TargetModules: j.LoRA.TargetModules, RSLoRA: j.LoRA.RSLoRA, UseDoRA: j.LoRA.UseDoRA, Layers: j.LoRA.Layers}, j.Seed)
	if err != nil {
		return err
	}
	s.lora, s.trainable = set, set.Params()
	return nil
}

func hasLayerPrefix(name string, layer int) bool {
	p := fmt.Sprintf("model.layers.%d.", layer)
	return len(name) >= len(p) && name[:len(p)] == p
}

func (s *session) openTrain(from *data.Cursor) (train.Batches, error) {
	return data.New(s.trainData, from)
}

func (s *session) openEval() (train.Batches, error) { return data.New(*s.evalData, nil) }

// totalSteps is max_steps, or the optimizer steps one pass of the data makes.
func totalSteps(job *configs.Job, open func(*data.Cursor) (train.Batches, error)) (int, error) {
	if job.MaxSteps > 0 {
		return job.MaxSteps, nil
	}
	if job.Data.Epochs < 0 {
		return 0, fmt.Errorf("data.epochs is -1 (repeat forever): set max_steps")
	}
	p, err := open(nil)
	if err != nil {
		return 0, err
	}
	defer p.Close()
	n := 0
	for {
		if _, err := p.Next(); err == io.EOF {
			break
		} else if err != nil {
			return 0, err
		}
		n++
	}
	if n == 0 {
		return 0, fmt.Errorf("the training data yields no batch")
	}
	return (n + job.Batch.GradAccum - 1) / job.Batch.GradAccum, nil
}

// runTrain is the `train` recipe: load, attach, train, plot, export.
func runTrain(ctx context.Context, job *configs.Job, resume string, out io.Writer) (train.Result, error) {
	return runTrainWith(ctx, job, resume, out, runHooks{})
}

// runHooks let other recipes (quickstart, distill) reuse the train recipe.
type runHooks struct {
	evalAtStart bool
	// setup runs once the model is loaded and trainable; it may set the
	// loss (distillation) and replace the training data (offline teacher
	// shards). The returned cleanup runs at the end.
	setup func(ctx context.Context, s *session, o *train.Options) (cleanup func(), err error)
}

func runTrainWith(ctx context.Context, job *configs.Job, resume string, out io.Writer, hooks runHooks) (train.Result, error) {
	avail, err := checkMemory(job, out, "")
	if err != nil {
		return train.Result{}, err
	}
	limitHeap(avail)
	memplan.TightenGC(job.Method != "full" && frozenDType(job) == kernels.NF4)
	s, err := openSession(job)
	if err != nil {
		return train.Result{}, err
	}
	if err := s.makeTrainable(); err != nil {
		return train.Result{}, err
	}
	yaml, err := job.YAML()
	if err != nil {
		return train.Result{}, err
	}
	meta := train.Meta{Method: job.Method, BaseModel: job.Model, ModelHash: s.modelHash, DataHash: job.DataHash(),
		JobHash: job.Hash(), JobYAML: string(yaml)}
	if s.lora != nil {
		c := s.lora.Config
		meta.LoRA = &c
	}
	tty := false
	if f, ok := out.(*os.File); ok {
		tty = isTerminal(f)
	}
	o := train.Options{
		Model: s.model, LoRA: s.lora, Trainable: s.trainable,
		OpenData:  s.openTrain,
		GradAccum: job.Batch.GradAccum,
		Optim: optim.AdamWConfig{LR: job.Optimizer.LR, Beta1: job.Optimizer.Betas[0], Beta2: job.Optimizer.Betas[1],
			Eps: job.Optimizer.Eps, WeightDecay: job.Optimizer.WeightDecay},
		MaxGradNorm: job.Optimizer.MaxGradNorm,
		OutDir:      job.OutputDir, SaveEvery: job.Checkpoint.Every, KeepLast: job.Checkpoint.KeepLast,
		EvalEvery: job.Eval.Every, EvalBatches: job.Eval.Batches, LogEvery: job.Logging.Every,
		OnNaN: job.OnNaN, Seed: job.Seed, Meta: meta, Resume: resume, Log: out, TTY: tty, EvalAtStart: hooks.evalAtStart,
	}
	if hooks.setup != nil {
		cleanup, err := hooks.setup(ctx, s, &o)
		if err != nil {
			return train.Result{}, err
		}
		defer cleanup()
	}
	if job.MaxSteps <= 0 {
		fmt.Fprintln(out, "max_steps is 0: counting the optimizer steps of one pass over the data first…")
	}
	total, err := totalSteps(job, o.OpenData)
	if err != nil {
		return train.Result{}, err
	}
	warmup := job.Schedule.WarmupSteps
	if warmup == 0 && job.Schedule.WarmupRatio > 0 {
		warmup = int(math.Ceil(job.Schedule.WarmupRatio * float64(total)))
	}
	o.MaxSteps = total
	o.Schedule = optim.Schedule{Kind: job.Schedule.Type, WarmupSteps: warmup, TotalSteps: total, MinLRRatio: job.Schedule.MinLRRatio}
	if s.evalData != nil {
		o.OpenEval = s.openEval
	}
	fmt.Fprintf(out, "training %s (%s, %d trainable tensors, %d parameters) for %d steps into %s\n",
		job.Model, job.Method, len(s.trainable), countParams(s.trainable), total, job.OutputDir)
	res, err := train.Run(ctx, o)
	if err != nil {
		return res, err
	}
	if res.Interrupted && res.LastCkpt == "" {
		// Stopped before step 1 completed: no checkpoint, no plot.
		return res, interruptedBy(ctx, "")
	}
	if job.Logging.Plot == nil || *job.Logging.Plot {
		if path, err := train.PlotRun(job.OutputDir); err == nil {
			fmt.Fprintln(out, "loss curve:", path)
		}
	}
	fmt.Fprintln(out, "checkpoint:", res.LastCkpt)
	if res.Interrupted {
		fmt.Fprintln(out, "stopped early; continue with --resume")
		return res, interruptedBy(ctx, res.LastCkpt)
	}
	return res, exportAll(job, res.LastCkpt, out)
}

// exportAll writes the job's export formats from a checkpoint into RUN/export/.
func exportAll(job *configs.Job, ckpt string, out io.Writer) error {
	if len(job.Export.Formats) == 0 {
		return nil
	}
	src, err := export.ResolveSource(ckpt, "")
	if err != nil {
		return err
	}
	dir := filepath.Join(job.OutputDir, "export")
	for _, f := range job.Export.Formats {
		var path string
		switch f {
		case "hf":
			path = filepath.Join(dir, "hf")
			err = export.HF(src, path, job.Export.DType, 0)
		case "peft":
			path = filepath.Join(dir, "peft")
			err = export.PEFT(src, path)
		case "gguf":
			path = filepath.Join(dir, "model-"+job.Export.GGUFType+".gguf")
			err = export.GGUF(src, path, job.Export.GGUFType)
		default:
			err = fmt.Errorf("unknown export format %q", f)
		}
		if err != nil {
			return fmt.Errorf("export %s: %w", f, err)
		}
		fmt.Fprintf(out, "exported %s: %s\n", f, path)
	}
	return nil
}

func countParams(ts []*tensor.Tensor) int {
	n := 0
	for _, t := range ts {
		n += t.Numel()
	}
	return n
}

// runEval prints the held-out loss of the base model or of a checkpoint.
func runEval(job *configs.Job, ckpt string, out io.Writer) error {
	s, err := openSession(job)
	if err != nil {
		return err
	}
	if s.evalData == nil {
		return fmt.Errorf("the job has no held-out data: set data.eval.fraction or data.eval.datasets")
	}
	if ckpt != "" {
		src, err := export.ResolveSource(ckpt, job.Model)
		if err != nil {
			return err
		}
		if s.model, _, err = export.Open(src); err != nil {
			return err
		}
		s.model.Compute = computeDType(job)
	}
	loss, err := train.Evaluate(s.model, s.openEval, job.Eval.Batches)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "held-out loss %.4f, perplexity %.5g\n", loss, math.Exp(loss))
	return nil
}
