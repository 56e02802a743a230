package distill

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/model/llama"
)

// DefaultPromptFraction is OnPolicy.PromptFraction's default: a plain-text
// document (no masked prompt) keeps its first half as the prompt.
const DefaultPromptFraction = 0.5

// OnPolicy makes the on-policy batches of generalized knowledge distillation
// (GKD: Agarwal et al., "On-Policy Distillation of Language Models", 2024;
// TRL's GKDTrainer): with probability Lambda a micro-batch's completions are
// replaced by ones the student samples itself, so that the teacher scores —
// and the loss corrects — the sequences the student actually produces.
//
// The prompt of a document is what its labels mask before the first trained
// token (a chat prompt, a prompt/completion row's prompt). A document with
// no such prompt (plain text: only its first token is masked, as packing
// does for every document) keeps its first PromptFraction of tokens as the
// prompt. The student continues each prompt with its KV-cache generation in
// inference mode (no tape, no dropout) and the new document takes the old
// one's place in its row: the completion may use the old document's tokens
// after the prompt and, for a row's last document, the row's padding, at
// most MaxNewTokens of them; what a completion that stops early leaves is
// padding. Only completion tokens carry labels; documents stay where they
// were, so none attends to another.
//
// Every choice — on-policy or not, and every sampled token — comes from an
// RNG seeded from (Seed, step, micro-batch index): a resumed run makes the
// same batches bit for bit. It is safe for one training loop (Rollout and
// Sampled may be called from different goroutines).
type OnPolicy struct {
	Student *llama.Model
	// Lambda is the share of micro-batches made on-policy (TRL's lmbda), in [0, 1].
	Lambda float64
	Seed   uint64
	// MaxNewTokens caps a completion (the room its document has in the row caps it too).
	MaxNewTokens int
	Temperature  float64 // 0: greedy
	TopP         float64 // nucleus sampling; 0 or ≥ 1 disables it
	// StopIDs end a completion; the stop token is part of it (trained on,
	// as the student must learn when to stop). Default: the student's
	// eos_token_id.
	StopIDs []int
	// PromptFraction is the share of a plain-text document kept as its
	// prompt (default DefaultPromptFraction).
	PromptFraction float64

	mu   sync.Mutex
	made map[*data.Batch]bool // this step's on-policy batches
}

// Rollout is a train.Options.Rollout: b itself (replaced false) or, with
// probability Lambda, a new batch of b's prompts with the student's own
// completions. step and micro seed its RNG.
func (o *OnPolicy) Rollout(ctx context.Context, step, micro int, b *data.Batch) (*data.Batch, bool, error) {
	o.mu.Lock()
	if micro == 0 || o.made == nil {
		o.made = map[*data.Batch]bool{} // the previous step's batches are done with
	}
	o.mu.Unlock()
	if o.Lambda <= 0 {
		return b, false, nil
	}
	r := rand.New(rand.NewPCG(o.Seed^0x9e3779b97f4a7c15, uint64(step)<<20|uint64(micro)))
	if o.Lambda < 1 && r.Float64() >= o.Lambda {
		return b, false, nil
	}
	out, err := o.complete(ctx, b, r)
	if err != nil {
		return nil, false, fmt.Errorf("on-policy batch (step %d, micro-batch %d): %w", step, micro, err)
	}
	o.mu.Lock()
	o.made[out] = true
	o.mu.Unlock()
	return out, true, nil
}

// Sampled reports whether b is an on-policy batch Rollout made in the
// current step (KDLoss trains those on the divergence alone).
func (o *OnPolicy) Sampled(b *data.Batch) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.made[b]
}

// complete copies b and replaces every document's completion by the
// student's, drawing from r in document order.
func (o *OnPolicy) complete(ctx context.Context, b *data.Batch, r *rand.Rand) (*data.Batch, error) {
	n := b.Rows * b.SeqLen
	if len(b.InputIDs) != n || len(b.Labels) != n || len(b.PositionIDs) != n || (b.DocStart != nil && len(b.DocStart) != n) {
		return nil, fmt.Errorf("batch of %d×%d has %d ids, %d labels, %d positions and %d doc starts",
			b.Rows, b.SeqLen, len(b.InputIDs), len(b.Labels), len(b.PositionIDs), len(b.DocStart))
	}
	out := &data.Batch{Rows: b.Rows, SeqLen: b.SeqLen, InputIDs: slices.Clone(b.InputIDs), Labels: slices.Clone(b.Labels),
		PositionIDs: slices.Clone(b.PositionIDs), DocStart: slices.Clone(b.DocStart), Cursor: b.Cursor}
	if out.DocStart == nil { // one document per row
		out.DocStart = make([]int32, n)
	}
	docs := documents(out)
	for i, d := range docs {
		room := b.SeqLen // the row's end, or the next document's start
		if i+1 < len(docs) && docs[i+1].row == d.row {
			room = docs[i+1].start
		}
		if err := o.completeDoc(ctx, out, d, room, r); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// promptLen is how many tokens of document d of b are its prompt, or 0 when
// it has nothing to complete (no trained token).
func (o *OnPolicy) promptLen(b *data.Batch, d document) int {
	off := d.row * b.SeqLen
	p := 0
	for p < d.end-d.start && b.Labels[off+d.start+p] == data.IgnoreIndex {
		p++
	}
	switch {
	case p == d.end-d.start:
		return 0 // all masked: nothing is trained here, leave it
	case p > 1:
		return p // a masked prompt (chat, prompt/completion)
	}
	frac := o.PromptFraction
	if frac <= 0 || frac >= 1 {
		frac = DefaultPromptFraction
	}
	return min(max(1, int(frac*float64(d.end-d.start))), d.end-d.start-1)
}

// completeDoc samples the student's completion of document d's prompt into
// positions [d.start+prompt, room) of its row and pads what it leaves.
func (o *OnPolicy) completeDoc(ctx context.Context, b *data.Batch, d document, room int, r *rand.Rand) error {
	p := o.promptLen(b, d)
	if p == 0 {
		return nil
	}
	off := d.row * b.SeqLen
	s := off + d.start
	maxNew := room - d.start - p
	if o.MaxNewTokens > 0 {
		maxNew = min(maxNew, o.MaxNewTokens)
	}
	stops := o.StopIDs
	if stops == nil {
		stops = o.Student.Config.EOSIDs()
	}
	completion, err := o.sample(ctx, b.InputIDs[s:s+p], maxNew, stops, r)
	if err != nil {
		return err
	}
	for j := range p { // the prompt predicts, it is not trained on
		b.Labels[s+j] = data.IgnoreIndex
	}
	for j, id := range completion {
		i := s + p + j
		b.InputIDs[i], b.Labels[i], b.PositionIDs[i], b.DocStart[i] = id, id, int32(p+j), int32(d.start)
	}
	pad := int32(0)
	if len(stops) > 0 {
		pad = int32(stops[0])
	}
	for i := s + p + len(completion); i < off+room; i++ {
		b.InputIDs[i], b.Labels[i], b.PositionIDs[i], b.DocStart[i] = pad, data.IgnoreIndex, 0, int32(i-off)
	}
	return nil
}

// sample continues prompt with up to maxNew tokens of the student, stopping
// after a stop id (kept). ctx is checked between tokens.
func (o *OnPolicy) sample(ctx context.Context, prompt []int32, maxNew int, stops []int, r *rand.Rand) ([]int32, error) {
	m := o.Student
	cache := m.NewKVCache()
	logits, err := m.Step(cache, prompt)
	if err != nil {
		return nil, err
	}
	out := make([]int32, 0, maxNew)
	for len(out) < maxNew {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		next := llama.Sample(logits, o.Temperature, o.TopP, r)
		out = append(out, int32(next))
		if slices.Contains(stops, next) || len(out) == maxNew {
			break
		}
		if logits, err = m.Step(cache, []int32{int32(next)}); err != nil {
			return nil, err
		}
	}
	return out, nil
}
