package main

import (
	"cmp"
	"errors"
	"fmt"

	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/data/chat"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	_ "github.com/llamatune/llamatune/kernels/cuda" // registers device: cuda (a clear error at use where no GPU is)
)

// jobBackend opens the job's device.
func jobBackend(job *configs.Job) (kernels.Backend, error) {
	be, err := kernels.New(job.Device)
	if err != nil {
		return nil, fmt.Errorf("%w (device: cpu runs on the CPU)", err)
	}
	return be, nil
}

// frozenDType is how a model's frozen weights are stored under the job's
// precision.weights: a teacher's, or a LoRA student's base (full
// fine-tuning trains every weight in f32): bf16, or nf4 (QLoRA: the linear
// layers 4-bit, the rest bf16). Adapters always stay f32.
func frozenDType(job *configs.Job) kernels.DType {
	switch job.Precision.Weights {
	case "bf16":
		return kernels.BF16
	case "nf4":
		return kernels.NF4
	}
	return kernels.F32
}

// computeDType resolves precision.compute: auto is bf16 on CUDA and on a CPU
// with AVX512_BF16, else f32.
func computeDType(job *configs.Job) kernels.DType {
	switch job.Precision.Compute {
	case "bf16":
		return kernels.BF16
	case "auto":
		if job.Device == "cuda" || cpu.FastBF16() {
			return kernels.BF16
		}
	}
	return kernels.F32
}

// modelChatTemplate is the model's own chat template (chat.LoadTemplate)
// when data.template is model, auto or unset; "" for a named template, or
// when auto finds none (the data pipeline then uses the tokenizer family's
// built-in one). A template that cannot be read is an error, not a silent
// fallback.
func modelChatTemplate(modelDir, template string) (string, error) {
	if template != "model" && template != "auto" && template != "" {
		return "", nil
	}
	t, _, err := chat.LoadTemplate(modelDir)
	if errors.Is(err, chat.ErrNoTemplate) && template != "model" {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("data.template %s: %w", cmp.Or(template, "auto"), err)
	}
	return t, nil
}

// loadJobWithOut loads the job of a command that writes into --out (which
// it requires).
func loadJobWithOut(command, jobPath string, sets []string, out string) (*configs.Job, error) {
	if out == "" {
		return nil, fmt.Errorf("%s: --out DIR is required", command)
	}
	return configs.Load(jobPath, sets)
}
