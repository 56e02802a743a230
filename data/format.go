package data

import (
	"fmt"
	"strings"

	"github.com/llamatune/llamatune/data/chat"
	"github.com/llamatune/llamatune/data/tokenizer"
)

// Doc is one tokenized document: ids and labels aligned (not shifted), -100 where no loss.
type Doc struct {
	IDs    []int32
	Labels []int32
	Loc    Loc
}

// exStats are the per-example counts the consumer adds to Stats.
type exStats struct {
	truncated, droppedLong, droppedNoLoss int
}

// formatted is the result of turning one example into documents.
type formatted struct {
	docs []Doc
	st   exStats
	err  error // a *RowError (policy decides) or a fatal error
}

// formatter turns examples into documents. It is safe for concurrent use.
type formatter struct {
	o     *Options
	vocab int
	bos   int32
	eos   int32
}

func newFormatter(o *Options) *formatter {
	f := &formatter{o: o, bos: -1, eos: -1}
	if o.Tokenizer != nil {
		f.vocab = o.Tokenizer.VocabSize()
		f.bos = int32(o.Tokenizer.BOS())
		f.eos = int32(o.Tokenizer.EOS())
	}
	return f
}

var roleAliases = map[string]string{
	"system": "system", "user": "user", "assistant": "assistant", "tool": "tool", "ipython": "ipython",
	"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant", "function": "tool",
}

func toInt32(ids []int) []int32 {
	out := make([]int32, len(ids))
	for i, v := range ids {
		out[i] = int32(v)
	}
	return out
}

func masked(n int) []int32 {
	out := make([]int32, n)
	for i := range out {
		out[i] = IgnoreIndex
	}
	return out
}

func (f *formatter) format(ex *Example) formatted {
	docs, err := f.tokenize(ex)
	if err != nil {
		return formatted{err: err}
	}
	var out formatted
	n := f.o.SeqLen
	for _, d := range docs {
		if len(d.IDs) > n {
			switch f.o.Truncation {
			case TruncateDrop:
				out.st.droppedLong++
				continue
			case TruncateKeepStart:
				out.st.truncated++
				d.IDs, d.Labels = d.IDs[:n], d.Labels[:n]
			case TruncateSplit:
				out.st.truncated++
				for s := 0; s < len(d.IDs); s += n {
					e := min(s+n, len(d.IDs))
					c := Doc{IDs: d.IDs[s:e], Labels: d.Labels[s:e], Loc: d.Loc}
					if hasLoss(c.Labels) {
						out.docs = append(out.docs, c)
					} else {
						out.st.droppedNoLoss++
					}
				}
				continue
			}
		}
		if !hasLoss(d.Labels) {
			out.st.droppedNoLoss++
			continue
		}
		out.docs = append(out.docs, d)
	}
	return out
}

// hasLoss reports whether any label after the first (which the packer masks) takes loss.
func hasLoss(labels []int32) bool {
	for i := 1; i < len(labels); i++ {
		if labels[i] != IgnoreIndex {
			return true
		}
	}
	return false
}

func (f *formatter) needTokenizer(ex *Example) error {
	if f.o.Tokenizer == nil {
		return fmt.Errorf("%s: dataset needs a tokenizer for type %s; set model: in the job", ex.Loc, ex.Type)
	}
	return nil
}

func (f *formatter) tokenize(ex *Example) ([]Doc, error) {
	switch ex.Type {
	case TypeTokenized:
		return f.tokenized(ex)
	case TypeText, TypePromptCompletion, TypeMessages:
	default:
		return nil, fmt.Errorf("%s: unknown example type %q", ex.Loc, ex.Type)
	}
	if err := f.needTokenizer(ex); err != nil {
		return nil, err
	}
	switch ex.Type {
	case TypeText:
		return f.text(ex), nil
	case TypePromptCompletion:
		return f.promptCompletion(ex), nil
	}
	return f.messages(ex)
}

// text is BOS, the text's tokens and EOS, all trained.
func (f *formatter) text(ex *Example) []Doc {
	o := f.o
	body := o.Tokenizer.Encode(ex.Text)
	ids := make([]int32, 0, len(body)+2)
	if !o.NoBOS {
		ids = append(ids, f.bos)
	}
	for _, v := range body {
		ids = append(ids, int32(v))
	}
	if !o.NoEOS {
		ids = append(ids, f.eos)
	}
	return []Doc{{IDs: ids, Labels: append([]int32(nil), ids...), Loc: ex.Loc}}
}

// promptCompletion is BOS, prompt, completion and EOS; the prompt's labels
// are masked unless train_on_prompt.
func (f *formatter) promptCompletion(ex *Example) []Doc {
	o := f.o
	p := o.Tokenizer.Encode(ex.Prompt)
	c := o.Tokenizer.Encode(ex.Completion)
	ids := make([]int32, 0, len(p)+len(c)+2)
	if !o.NoBOS {
		ids = append(ids, f.bos)
	}
	for _, v := range p {
		ids = append(ids, int32(v))
	}
	np := len(ids)
	for _, v := range c {
		ids = append(ids, int32(v))
	}
	if !o.NoEOS {
		ids = append(ids, f.eos)
	}
	labels := append([]int32(nil), ids...)
	if !o.TrainOnPrompt {
		for i := 0; i < np; i++ {
			labels[i] = IgnoreIndex
		}
	}
	return []Doc{{IDs: ids, Labels: labels, Loc: ex.Loc}}
}

// messages renders a conversation with the chat template and tokenizes it,
// labels masked outside the trained segments.
func (f *formatter) messages(ex *Example) ([]Doc, error) {
	o := f.o
	if len(ex.Messages) == 0 {
		return nil, rowErr(ex.Loc, "conversation has no messages")
	}
	msgs := make([]Message, len(ex.Messages))
	for i, m := range ex.Messages {
		r, ok := roleAliases[strings.ToLower(strings.TrimSpace(m.Role))]
		if !ok {
			return nil, rowErr(ex.Loc, "message %d has unknown role %q; use system, user, assistant or tool", i, m.Role)
		}
		msgs[i] = Message{Role: r, Content: m.Content}
	}
	render := o.Chat
	if render == nil {
		render = defaultChat
	}
	if render == nil {
		return nil, fmt.Errorf("no chat renderer available for messages datasets")
	}
	segs, err := render(o.Template, msgs)
	if err != nil {
		if IsRowError(err) {
			return nil, err
		}
		return nil, rowErr(ex.Loc, "chat template %s: %v", o.Template, err)
	}
	var ids, labels []int32
	if full, ok := o.Tokenizer.(tokenizer.Tokenizer); ok {
		// The whole render in one piece, as the model sees it at inference
		// (no BPE seams, no stray SentencePiece prefixes at segment edges);
		// special-token text typed inside a message stays plain text.
		cs := make([]chat.Segment, len(segs))
		for i, s := range segs {
			cs[i] = chat.Segment{Text: s.Text, Train: s.Train || o.TrainOn == TrainOnAll}
		}
		contents := make([]string, len(msgs))
		for i, m := range msgs {
			contents[i] = m.Content
		}
		plain, ok := chat.ContentRanges(full, chat.Join(cs), contents)
		if !ok {
			return nil, rowErr(ex.Loc, "a message contains special-token text and chat template %s changes that message, so it cannot be kept as plain text", o.Template)
		}
		all, train := chat.Tokenize(full, cs, plain)
		for i, id := range all {
			ids = append(ids, int32(id))
			if train[i] {
				labels = append(labels, int32(id))
			} else {
				labels = append(labels, -100)
			}
		}
	} else {
		for _, s := range segs {
			if s.Text == "" {
				continue
			}
			t := toInt32(o.Tokenizer.EncodeWithSpecial(s.Text))
			ids = append(ids, t...)
			if s.Train || o.TrainOn == TrainOnAll {
				labels = append(labels, t...)
			} else {
				labels = append(labels, masked(len(t))...)
			}
		}
	}
	if len(ids) == 0 {
		return nil, rowErr(ex.Loc, "chat template %s renders nothing for this conversation (%d messages)", o.Template, len(msgs))
	}
	return []Doc{{IDs: ids, Labels: labels, Loc: ex.Loc}}, nil
}

func (f *formatter) vocabSize() int {
	if f.vocab > 0 {
		return f.vocab
	}
	return f.o.VocabSize
}

func (f *formatter) tokenized(ex *Example) ([]Doc, error) {
	ids, labels := ex.InputIDs, ex.Labels
	if labels == nil {
		labels = append([]int32(nil), ids...)
	}
	if len(labels) != len(ids) {
		return nil, rowErr(ex.Loc, "labels has %d entries but input_ids has %d; they must be aligned (not shifted)", len(labels), len(ids))
	}
	v := f.vocabSize()
	for i, id := range ids {
		if id < 0 || (v > 0 && int(id) >= v) {
			return nil, rowErr(ex.Loc, "input_ids[%d] = %d is outside the vocabulary [0, %d); was it tokenized with another model?", i, id, v)
		}
		if l := labels[i]; l != IgnoreIndex && (l < 0 || (v > 0 && int(l) >= v)) {
			return nil, rowErr(ex.Loc, "labels[%d] = %d is neither -100 nor a token id below %d", i, l, v)
		}
	}
	n := len(ids)
	if ex.NumTokens >= 0 && (ex.PositionIDs != nil || ex.DocStart != nil) {
		if int(ex.NumTokens) > n {
			return nil, rowErr(ex.Loc, "num_tokens %d exceeds the row length %d", ex.NumTokens, n)
		}
		n = int(ex.NumTokens)
	}
	if ex.PositionIDs == nil && ex.DocStart == nil {
		return []Doc{{IDs: ids, Labels: labels, Loc: ex.Loc}}, nil
	}
	// A packed row (e.g. written by `llamatune data prepare`): split it back into documents.
	if ex.DocStart != nil && len(ex.DocStart) != len(ids) || ex.PositionIDs != nil && len(ex.PositionIDs) != len(ids) {
		return nil, rowErr(ex.Loc, "position_ids/doc_start must have as many entries as input_ids (%d)", len(ids))
	}
	isStart := func(i int) (bool, error) {
		if ex.DocStart != nil {
			s := ex.DocStart[i]
			if s < 0 || int(s) > i || (i > 0 && s != int32(i) && s != ex.DocStart[i-1]) {
				return false, rowErr(ex.Loc, "doc_start[%d] = %d is not a valid document start", i, s)
			}
			return int(s) == i, nil
		}
		return ex.PositionIDs[i] == 0, nil
	}
	if ex.NumTokens < 0 {
		// Unknown length: trailing one-token documents with no loss are padding.
		for n > 0 {
			st, err := isStart(n - 1)
			if err != nil {
				return nil, err
			}
			if !st || labels[n-1] != IgnoreIndex {
				break
			}
			n--
		}
	}
	var docs []Doc
	s := 0
	for i := 1; i <= n; i++ {
		st := i == n
		if !st {
			var err error
			if st, err = isStart(i); err != nil {
				return nil, err
			}
		}
		if st {
			docs = append(docs, Doc{IDs: ids[s:i], Labels: labels[s:i], Loc: ex.Loc})
			s = i
		}
	}
	return docs, nil
}
