package distill

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/data/chat"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/model/llama"
)

// ModelGenerator answers with an in-process model: the conversation is rendered with a chat
// template (with the generation prompt), tokenized with special tokens parsed, continued with
// KV-cache sampling until end of turn / end of text, and decoded.
type ModelGenerator struct {
	model    *llama.Model
	tok      tokenizer.Tokenizer
	template string
	opts     []chat.Option
	stops    []int
	name     string
}

// NewModelGenerator makes a Generator of a loaded model and its tokenizer. template is a chat
// template (llama3, llama2, chatml or Jinja source, e.g. from chat.LoadTemplate); opts are
// passed to chat.Render. name identifies the teacher in the output manifest.
func NewModelGenerator(m *llama.Model, tok tokenizer.Tokenizer, template, name string, opts ...chat.Option) (*ModelGenerator, error) {
	if m == nil || tok == nil {
		return nil, fmt.Errorf("generate: in-process teacher needs a model and a tokenizer")
	}
	if tok.VocabSize() > m.Config.VocabSize {
		return nil, fmt.Errorf("generate: teacher %s: tokenizer has %d ids but the model's vocab_size is %d; tokenizer and model do not match", name, tok.VocabSize(), m.Config.VocabSize)
	}
	var stops []int
	for _, id := range append([]int{tok.EOS(), tok.EOT()}, m.Config.EOSIDs()...) {
		if id >= 0 && !slices.Contains(stops, id) {
			stops = append(stops, id)
		}
	}
	if len(stops) == 0 {
		return nil, fmt.Errorf("generate: teacher %s has no end-of-sequence token (tokenizer EOS/EOT or config eos_token_id); generation would never stop", name)
	}
	return &ModelGenerator{model: m, tok: tok, template: template, opts: opts, stops: stops, name: name}, nil
}

// Name returns the teacher's name.
func (g *ModelGenerator) Name() string { return g.name }

// Generate renders, samples and decodes one reply. Sampling is that of llama.Model.Generate
// (same RNG stream for the same seed); ctx is checked between tokens.
func (g *ModelGenerator) Generate(ctx context.Context, msgs []data.Message, s Sampling) (Reply, error) {
	cm := make([]chat.Message, len(msgs))
	for i, m := range msgs {
		cm[i] = chat.Message{Role: m.Role, Content: m.Content}
	}
	segs, err := chat.Render(g.template, cm, true, g.opts...)
	if err != nil {
		return Reply{}, fmt.Errorf("rendering the prompt: %w", err)
	}
	ids := g.tok.EncodeWithSpecial(chat.Join(segs))
	if len(ids) == 0 {
		return Reply{}, fmt.Errorf("the prompt tokenized to nothing")
	}
	maxNew := s.MaxNewTokens
	if ctxLen := g.model.Config.MaxPositionEmbeddings; ctxLen > 0 {
		if len(ids) >= ctxLen {
			return Reply{}, fmt.Errorf("%w: %d prompt tokens, context %d", ErrPromptTooLong, len(ids), ctxLen)
		}
		maxNew = min(maxNew, ctxLen-len(ids))
	}
	prompt := make([]int32, len(ids))
	for i, id := range ids {
		prompt[i] = int32(id)
	}
	r := rand.New(rand.NewPCG(s.Seed, 0x5eed))
	cache := g.model.NewKVCache()
	logits, err := g.model.Step(cache, prompt)
	if err != nil {
		return Reply{}, err
	}
	var out []int
	stopped := false
	for len(out) < maxNew {
		if err := ctx.Err(); err != nil {
			return Reply{}, err
		}
		next := llama.Sample(logits, s.Temperature, s.TopP, r)
		if slices.Contains(g.stops, next) {
			stopped = true
			break
		}
		out = append(out, next)
		if len(out) == maxNew {
			break
		}
		if logits, err = g.model.Step(cache, []int32{int32(next)}); err != nil {
			return Reply{}, err
		}
	}
	tokens := len(out)
	if stopped {
		tokens++
	}
	return Reply{Text: g.tok.Decode(out), Tokens: tokens, Truncated: !stopped}, nil
}
