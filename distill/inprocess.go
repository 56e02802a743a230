package distill

import (
	"context"
	"fmt"
	"sync"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/tensor"
	"github.com/llamatune/llamatune/train"
)

// DefaultLogitBudget is how many logits (floats) an in-process teacher makes
// at once: the lm_head runs over chunks of ⌊budget/vocab⌋ positions, so a
// 128,256-token vocabulary takes 130 positions (64 MiB) per chunk.
const DefaultLogitBudget = 16 << 20

// InProcess is a teacher model loaded into this process, frozen: it runs
// without recording a tape, on the same packed batch as the student.
// It is safe for concurrent use (calls are serialized).
type InProcess struct {
	// LogitBudget caps the logits made at once (default DefaultLogitBudget).
	LogitBudget int

	mu    sync.Mutex
	m     *llama.Model
	info  Info
	owned bool // loaded by NewInProcess: Close releases it
}

var _ DenseTeacher = (*InProcess)(nil)

// NewInProcess loads the teacher in modelDir (an HF model directory with its
// tokenizer) onto be, storing weights as dt.
func NewInProcess(modelDir string, be kernels.Backend, dt kernels.DType) (*InProcess, error) {
	hash, err := VocabHash(modelDir)
	if err != nil {
		return nil, fmt.Errorf("teacher %s: %w", modelDir, err)
	}
	m, err := llama.Load(modelDir, be, dt)
	if err != nil {
		return nil, fmt.Errorf("teacher %s: %w", modelDir, err)
	}
	t := NewInProcessModel(m, Info{Name: modelDir, VocabSize: m.Config.VocabSize, VocabHash: hash})
	t.owned = true
	return t, nil
}

// NewInProcessModel wraps an already loaded model (frozen: it must carry no
// adapters that should train) as a teacher identified by info.
func NewInProcessModel(m *llama.Model, info Info) *InProcess {
	if info.VocabSize == 0 {
		info.VocabSize = m.Config.VocabSize
	}
	return &InProcess{m: m, info: info, LogitBudget: DefaultLogitBudget}
}

// Info identifies the teacher.
func (t *InProcess) Info() Info { return t.info }

// Model is the teacher model (for dense KD losses).
func (t *InProcess) Model() *llama.Model { return t.m }

// Close releases a model NewInProcess loaded (its memory map, its NF4
// weights); a model given to NewInProcessModel stays the caller's.
func (t *InProcess) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.owned {
		return nil
	}
	t.owned = false
	return t.m.Close()
}

// TopK runs the teacher on b (position ids and document starts respected, so
// no document sees another) and returns the top-k log-softmax values of every
// position. The lm_head runs chunk by chunk: full [tokens × vocab] logits never
// exist at once.
func (t *InProcess) TopK(ctx context.Context, b *data.Batch, k int) (*TopK, error) {
	V := t.m.Config.VocabSize
	if k <= 0 || k > V {
		return nil, fmt.Errorf("teacher %s: top-k %d must be in [1, %d]", t.info.Name, k, V)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	h, err := t.hidden(ctx, train.Input(b))
	if err != nil {
		return nil, err
	}
	N := b.Rows * b.SeqLen
	out := &TopK{K: k, IDs: make([]int32, N*k), LogProbs: make([]float32, N*k)}
	err = t.headChunks(ctx, h, N, func(c0, c1 int, logits []float32) {
		topKLogSoftmax(logits, c1-c0, V, k, out.IDs[c0*k:c1*k], out.LogProbs[c0*k:c1*k])
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// SortedProbs runs the teacher on b and returns, at each of positions (flat
// indices into b), its k largest next-token probabilities at temperature T,
// in descending order: [len(positions)·k], zero-padded past the vocabulary.
// This is the teacher side of the cross-tokenizer ULD loss (uldRow); the
// lm_head runs over the positions chunk by chunk.
func (t *InProcess) SortedProbs(ctx context.Context, b *data.Batch, positions []int32, k int, temperature float64) ([]float32, error) {
	V, H := t.m.Config.VocabSize, t.m.Config.HiddenSize
	if k <= 0 || temperature <= 0 {
		return nil, fmt.Errorf("teacher %s: sorted probabilities need k ≥ 1 and temperature > 0 (got %d, %g)", t.info.Name, k, temperature)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	h, err := t.hidden(ctx, train.Input(b))
	if err != nil {
		return nil, err
	}
	n := len(positions)
	hp := make([]float32, n*H) // the hidden states of the positions asked for
	for i, p := range positions {
		if p < 0 || int(p) >= b.Rows*b.SeqLen {
			return nil, fmt.Errorf("teacher %s: position %d outside the batch (%d×%d)", t.info.Name, p, b.Rows, b.SeqLen)
		}
		copy(hp[i*H:(i+1)*H], h[int(p)*H:(int(p)+1)*H])
	}
	kv := min(k, V)
	out := make([]float32, n*k)
	err = t.headChunks(ctx, hp, n, func(c0, c1 int, logits []float32) {
		parallelRows(c1-c0, func(lo, hi int) {
			e := make([]float32, V)
			ids := make([]int32, kv)
			heap := make([]topEntry, 0, kv)
			for r := lo; r < hi; r++ {
				o := (c0 + r) * k
				sortedProbs(logits[r*V:(r+1)*V], float32(1/temperature), e, ids, out[o:o+kv], &heap)
			}
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// headChunks runs the lm_head over h [rows, hidden] in chunks of at most
// LogitBudget logits and hands each chunk's logits [c1−c0, vocab] to fn.
func (t *InProcess) headChunks(ctx context.Context, h []float32, rows int, fn func(c0, c1 int, logits []float32)) error {
	be, V, H := t.m.Backend(), t.m.Config.VocabSize, t.m.Config.HiddenSize
	budget := t.LogitBudget
	if budget <= 0 {
		budget = DefaultLogitBudget
	}
	chunk := max(1, budget/V)
	for c0 := 0; c0 < rows; c0 += chunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		c1 := min(c0+chunk, rows)
		ctp := llama.NewInferenceTape(be)
		x := tensor.FromF32(be, kernels.F32, h[c0*H:c1*H], c1-c0, H)
		logits := ctp.Linear(x, t.m.LMHead).F32()
		ctp.Release()
		be.Free(x.Buf)
		fn(c0, c1, logits)
	}
	return nil
}

// hidden is the model's final hidden states [tokens, hidden] on the host.
// Model.Hidden on a non-recording tape runs layer by layer and frees each
// layer's activations as soon as its output exists.
func (t *InProcess) hidden(ctx context.Context, in *llama.Input) ([]float32, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	tp := llama.NewInferenceTape(t.m.Backend())
	defer tp.Release()
	h, err := t.m.Hidden(tp, in)
	if err != nil {
		return nil, fmt.Errorf("teacher %s: %w", t.info.Name, err)
	}
	return h.F32(), nil
}
