package main

import (
	"fmt"
	"github.com/llamatune/llamatune/internal/switches"
	"io"
	"os"
	"runtime/debug"

	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/internal/memplan"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/model/llama"
)

// noMemCheckEnv turns the refusal into a warning (the estimate can be wrong).
const noMemCheckEnv = switches.NoMemCheck

// memOptions maps a job onto the estimate's options.
func memOptions(job *configs.Job, fileBF16 bool) memplan.Options {
	return memplan.Options{
		Method: job.Method, WeightsBF16: job.Precision.Weights == "bf16",
		WeightsNF4: job.Precision.Weights == "nf4", FileBF16: fileBF16,
		R: job.LoRA.R, Dropout: job.LoRA.Dropout, TargetModules: job.LoRA.TargetModules, Layers: job.LoRA.Layers, UseDoRA: job.LoRA.UseDoRA,
		FreezeLayers: job.Full.FreezeLayers, FreezeEmbeddings: job.Full.FreezeEmbeddings,
		SeqLen: job.Data.SeqLen, MicroBatch: job.Batch.MicroBatchSize, Recompute: job.Precision.ActivationCheckpointing,
		ComputeBF16: computeDType(job) == kernels.BF16, BF16Activations: job.Device == "cpu",
	}
}

// checkMemory prints, as lines starting with prefix, what the job needs —
// before anything is loaded — and refuses a job that cannot work: a LoRA
// rank or sequence length the model cannot take, or (device cpu) more
// memory than MemAvailable. It returns MemAvailable when it checked it.
func checkMemory(job *configs.Job, out io.Writer, prefix string) (avail int64, err error) {
	c, err := llama.LoadConfig(job.Model)
	if err != nil {
		return 0, fmt.Errorf("model: %w", err)
	}
	o := memOptions(job, memplan.FileBF16(job.Model))
	if problems := memplan.Check(c, o, job.Model); len(problems) > 0 {
		return 0, &configs.Error{File: job.File, Problems: problems}
	}
	e := memplan.Compute(c, o)
	fmt.Fprintf(out, "%smemory estimate (%s, data.seq_len %d × batch.micro_batch_size %d = %d tokens per micro-batch, device %s):\n",
		prefix, job.Method, o.SeqLen, o.MicroBatch, o.SeqLen*o.MicroBatch, job.Device)
	for _, l := range e.Lines() {
		fmt.Fprintln(out, prefix+l)
	}
	total := e.Total
	if d := job.Distill; d != nil && d.Teacher.Model != "" {
		tc, err := llama.LoadConfig(d.Teacher.Model)
		if err != nil {
			return 0, fmt.Errorf("distill.teacher.model: %w", err)
		}
		weights, dt := 4*memplan.ParamCount(tc), "f32"
		switch job.Precision.Weights {
		case "bf16":
			weights, dt = 2*memplan.ParamCount(tc), "bf16"
		case "nf4":
			weights, dt = memplan.Compute(tc, memplan.Options{Method: "lora", WeightsNF4: true}).BaseWeights, "nf4"
		}
		// Frozen, no tape: its weights, one layer at a time, a logits chunk.
		teacher := weights + memplan.LayerActivations(tc, o, false) + memplan.LogitsBudget
		total += teacher
		fmt.Fprintf(out, "%s  + teacher     %10s  %s weights, one layer of activations, a logits chunk\n", prefix, memplan.GiB(teacher), dt)
		fmt.Fprintf(out, "%s  total         %10s\n", prefix, memplan.GiB(total))
	}
	if job.Device != "cpu" {
		fmt.Fprintf(out, "%snote: device %s: memory is not checked (the %s backend does not report free device memory yet)\n", prefix, job.Device, job.Device)
		return 0, nil
	}
	avail, err = memplan.MemAvailable()
	if err != nil {
		fmt.Fprintf(out, "%snote: memory is not checked: %v\n", prefix, err)
		return 0, nil
	}
	fmt.Fprintf(out, "%savailable     %10s  (MemAvailable)\n", prefix, memplan.GiB(avail))
	e.Total = total
	if err := e.Fit(avail, o, "this machine's MemAvailable"); err != nil {
		if switches.On(noMemCheckEnv) {
			fmt.Fprintf(out, "%swarning: %v (%s=1: going on)\n", prefix, err, noMemCheckEnv)
			return avail, nil
		}
		return avail, fmt.Errorf("%s: %w (or set %s=1 to try anyway)", job.File, err, noMemCheckEnv)
	}
	return avail, nil
}

// limitHeap tells Go's collector the memory there is (unless GOMEMLIMIT
// does): the estimate counts live buffers, and without a limit the collector
// lets the heap grow to about twice the live set (GOGC=100) before it runs.
func limitHeap(avail int64) {
	if avail > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(avail)
	}
}
