package data

import "github.com/llamatune/llamatune/data/chat"

// defaultChat renders conversations with data/chat when Options.Chat is nil. Template is a
// built-in name (llama3, llama2, chatml) or a Jinja chat template string (for "model", the
// caller reads chat_template from the model's tokenizer_config.json).
var defaultChat ChatRenderer = func(template string, msgs []Message) ([]Segment, error) {
	cm := make([]chat.Message, len(msgs))
	for i, m := range msgs {
		cm[i] = chat.Message{Role: m.Role, Content: m.Content}
	}
	segs, err := chat.Render(template, cm, false)
	if err != nil {
		return nil, err
	}
	out := make([]Segment, len(segs))
	for i, s := range segs {
		out[i] = Segment{Text: s.Text, Train: s.Train}
	}
	return out, nil
}
