package distill

import (
	"fmt"
	"io"
	"strings"

	"github.com/llamatune/llamatune/data"
)

// Prompt is one input row of Generate: the conversation the teacher continues.
type Prompt struct {
	Messages []data.Message
	Loc      data.Loc // where the row came from, for messages
}

// PromptSource yields prompts in a fixed order. Next returns io.EOF after the last one; an
// error for which data.IsRowError is true is about that row only (Generate skips or fails on
// it according to GenerateOptions.BadRows) and the source goes on with the next row.
type PromptSource interface {
	Next() (Prompt, error)
	Close() error
}

// messages is the conversation to send: trailing assistant turns removed (the teacher writes
// that turn), and it must end with a user (or tool) turn with some content.
func (p Prompt) messages() ([]data.Message, error) {
	msgs := p.Messages
	for len(msgs) > 0 && strings.EqualFold(msgs[len(msgs)-1].Role, "assistant") {
		msgs = msgs[:len(msgs)-1]
	}
	if len(msgs) == 0 {
		return nil, &data.RowError{Loc: p.Loc, Msg: "no prompt: the conversation is empty or holds only assistant turns"}
	}
	last := msgs[len(msgs)-1]
	switch strings.ToLower(last.Role) {
	case "user", "tool", "ipython":
	default:
		return nil, &data.RowError{Loc: p.Loc, Msg: fmt.Sprintf("the conversation ends with a %q turn; a prompt ends with a user turn", last.Role)}
	}
	if strings.TrimSpace(last.Content) == "" {
		return nil, &data.RowError{Loc: p.Loc, Msg: "the last user turn is empty"}
	}
	return msgs, nil
}

// slicePrompts serves prompts from memory.
type slicePrompts struct {
	convs [][]data.Message
	i     int
}

// SlicePrompts is a PromptSource over conversations held in memory.
func SlicePrompts(convs [][]data.Message) PromptSource { return &slicePrompts{convs: convs} }

func (s *slicePrompts) Next() (Prompt, error) {
	if s.i >= len(s.convs) {
		return Prompt{}, io.EOF
	}
	s.i++
	return Prompt{Messages: s.convs[s.i-1], Loc: data.Loc{File: "prompts", Row: int64(s.i - 1)}}, nil
}

func (s *slicePrompts) Close() error { return nil }

// datasetPrompts reads prompts from a dataset.
type datasetPrompts struct {
	rows   *data.Rows
	system string
}

// DatasetPrompts reads the prompts of a dataset, row by row in file order: a messages column
// (a final assistant turn is dropped: the teacher writes it), a prompt column (with or without
// a completion column, which is ignored) or a text column, each sent as one user turn. system,
// when not empty, is added as the system turn of conversations that have none.
func DatasetPrompts(spec data.DatasetSpec, system string) (PromptSource, error) {
	rows, err := data.OpenRows(spec)
	if err != nil {
		return nil, err
	}
	if rows.Type() == data.TypeTokenized {
		rows.Close()
		name := spec.Name
		if name == "" {
			name = spec.Path
		}
		return nil, fmt.Errorf("dataset %s holds token ids (input_ids); generation needs text prompts: a prompt column or a messages column (set datasets[].type and columns)", name)
	}
	return &datasetPrompts{rows: rows, system: system}, nil
}

func (d *datasetPrompts) Next() (Prompt, error) {
	ex, err := d.rows.Next()
	if err != nil {
		return Prompt{}, err
	}
	p := Prompt{Loc: ex.Loc}
	switch ex.Type {
	case data.TypeMessages:
		p.Messages = ex.Messages
	case data.TypePromptCompletion:
		p.Messages = []data.Message{{Role: "user", Content: ex.Prompt}}
	case data.TypeText:
		p.Messages = []data.Message{{Role: "user", Content: ex.Text}}
	default:
		return p, &data.RowError{Loc: ex.Loc, Msg: fmt.Sprintf("rows of type %s cannot be prompts", ex.Type)}
	}
	if d.system != "" && (len(p.Messages) == 0 || !strings.EqualFold(p.Messages[0].Role, "system")) {
		p.Messages = append([]data.Message{{Role: "system", Content: d.system}}, p.Messages...)
	}
	return p, nil
}

func (d *datasetPrompts) Close() error { return d.rows.Close() }
