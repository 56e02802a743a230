package distill

import (
	"context"
	"fmt"
	"math"
	"sync"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/tensor"
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

	mu   sync.Mutex
	m    *llama.Model
	info Info
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
	return NewInProcessModel(m, Info{Name: modelDir, VocabSize: m.Config.VocabSize, VocabHash: hash}), nil
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

// Close drops the model reference.
func (t *InProcess) Close() error { return nil }

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
	be := t.m.Backend()
	in := &llama.Input{Rows: b.Rows, SeqLen: b.SeqLen, InputIDs: b.InputIDs, PositionIDs: b.PositionIDs, DocStart: b.DocStart}
	h, err := t.hidden(ctx, in)
	if err != nil {
		return nil, err
	}
	N, H := b.Rows*b.SeqLen, t.m.Config.HiddenSize
	budget := t.LogitBudget
	if budget <= 0 {
		budget = DefaultLogitBudget
	}
	chunk := max(1, budget/V)
	out := &TopK{K: k, IDs: make([]int32, N*k), LogProbs: make([]float32, N*k)}
	for c0 := 0; c0 < N; c0 += chunk {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		c1 := min(c0+chunk, N)
		ctp := llama.NewInferenceTape(be)
		x := tensor.FromF32(be, kernels.F32, h[c0*H:c1*H], c1-c0, H)
		logits := ctp.Linear(x, t.m.LMHead).F32()
		ctp.Release()
		be.Free(x.Buf)
		topKLogSoftmax(logits, c1-c0, V, k, out.IDs[c0*k:c1*k], out.LogProbs[c0*k:c1*k])
	}
	return out, nil
}

// hidden is the model's final hidden states [tokens, hidden] on the host.
// It runs the decoder layer by layer, each on its own non-recording tape that
// is released as soon as the layer's output is copied out, so only one
// layer's activations live at a time (a NoGrad tape over the whole model
// would keep every layer's until the end). A model carrying adapters goes
// through Model.Hidden instead.
func (t *InProcess) hidden(ctx context.Context, in *llama.Input) ([]float32, error) {
	m, be, c := t.m, t.m.Backend(), t.m.Config
	for i, id := range in.InputIDs {
		if id < 0 || int(id) >= c.VocabSize {
			return nil, fmt.Errorf("teacher %s: token id %d at row %d position %d is outside its vocabulary (size %d)", t.info.Name, id, i/in.SeqLen, i%in.SeqLen, c.VocabSize)
		}
	}
	n := in.Rows * in.SeqLen
	if (in.PositionIDs != nil && len(in.PositionIDs) != n) || (in.DocStart != nil && len(in.DocStart) != n) || len(in.InputIDs) != n {
		return nil, fmt.Errorf("teacher %s: batch of %d×%d has %d ids, %d positions, %d doc starts", t.info.Name, in.Rows, in.SeqLen, len(in.InputIDs), len(in.PositionIDs), len(in.DocStart))
	}
	if len(m.Adapters) > 0 {
		tp := llama.NewInferenceTape(be)
		defer tp.Release()
		h, err := m.Hidden(tp, in)
		if err != nil {
			return nil, fmt.Errorf("teacher %s: %w", t.info.Name, err)
		}
		return h.F32(), nil
	}
	pos := in.PositionIDs
	if pos == nil {
		pos = make([]int32, n)
		for i := range pos {
			pos[i] = int32(i % in.SeqLen)
		}
	}
	H, hd := c.HiddenSize, c.HeadDimension()
	eps := float32(c.RMSNormEps)
	invFreq := c.InvFreq()
	args := kernels.AttnArgs{Batch: in.Rows, Tq: in.SeqLen, Tk: in.SeqLen, Heads: c.NumAttentionHeads,
		KVHeads: c.NumKeyValueHeads, HeadDim: hd, Scale: float32(1 / math.Sqrt(float64(hd))), DocStart: in.DocStart}
	// keep copies y out of a layer tape into a buffer of our own.
	keep := func(y *tensor.Tensor) *tensor.Tensor {
		buf := be.Alloc(kernels.F32, y.Numel())
		be.Copy(buf, y.Buf)
		return tensor.Wrap(be, buf, y.Shape...)
	}
	tp := llama.NewInferenceTape(be)
	x := keep(tp.Embedding(m.EmbedTokens, in.InputIDs))
	tp.Release()
	defer func() { be.Free(x.Buf) }()
	for i := range m.Layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		L := &m.Layers[i]
		tp := llama.NewInferenceTape(be)
		h := tp.RMSNorm(x, L.InputLayernorm, eps)
		q := tp.RoPE(tp.Linear(h, L.QProj), pos, args.Heads, hd, invFreq)
		k := tp.RoPE(tp.Linear(h, L.KProj), pos, args.KVHeads, hd, invFreq)
		v := tp.Linear(h, L.VProj)
		r := tp.Add(x, tp.Linear(tp.Attention(q, k, v, args), L.OProj))
		h = tp.RMSNorm(r, L.PostAttentionLayernorm, eps)
		y := tp.Add(r, tp.Linear(tp.SwiGLU(tp.Linear(h, L.GateProj), tp.Linear(h, L.UpProj)), L.DownProj))
		nx := keep(y)
		tp.Release()
		be.Free(x.Buf)
		x = nx
	}
	tp = llama.NewInferenceTape(be)
	defer tp.Release()
	out := tp.RMSNorm(x, m.Norm, eps).F32()
	if len(out) != n*H {
		panic(fmt.Sprintf("distill: hidden states of %d values for %d tokens × %d", len(out), n, H))
	}
	return out, nil
}
