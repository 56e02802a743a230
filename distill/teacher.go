// Package distill trains a student from a teacher: knowledge-distillation
// losses (forward/reverse KL, generalized JSD, temperature, CE mix; dense or
// top-k sparse), teacher sources (in-process model, offline top-k shards, an
// OpenAI-compatible server such as vLLM), synthetic-data generation, and the
// vocabulary check. A teacher with another tokenizer teaches through the
// Universal Logit Distillation loss (ULDLoss) over positions paired by
// character span (Align).
package distill

import (
	"context"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/model/llama"
)

// TopK is a teacher's sparse next-token distribution for every position of a
// packed batch: for position i (row-major over Rows×SeqLen), IDs[i*K:(i+1)*K]
// are the K most likely next tokens after the prefix ending at i (within i's
// document) and LogProbs the teacher's log-probabilities of them (temperature
// 1, over the full vocabulary, so they sum to ≤ 1), best first. Positions with
// no target (the last token of a document, padding) may hold anything; the
// loss masks them.
type TopK struct {
	K        int
	IDs      []int32
	LogProbs []float32
}

// Info identifies a teacher.
type Info struct {
	Name      string `json:"name"`       // model name or path
	VocabSize int    `json:"vocab_size"` // ids the teacher can emit
	VocabHash string `json:"vocab_hash"` // tokenizer identity (see VocabHash)
}

// Teacher gives next-token distributions for packed batches.
type Teacher interface {
	Info() Info
	// TopK returns the teacher's top-k next-token log-probs at every position
	// of b, each document scored on its own (no context across documents).
	TopK(ctx context.Context, b *data.Batch, k int) (*TopK, error)
	Close() error
}

// DenseTeacher is a teacher that can also give its full distribution: an
// in-process model run on the same packed batch (the loss then makes teacher
// logits chunk by chunk, as it does for the student).
type DenseTeacher interface {
	Teacher
	Model() *llama.Model
}
