// Package chat renders conversations with chat templates and marks which parts are trained.
//
// Render returns the rendered conversation as segments; Train is true on the assistant turns
// (their content plus the end-of-turn token), which the data pipeline turns into the loss
// mask. Built-in templates: "llama3" (identical to the Llama 3 Instruct template of
// tokenizer_config.json), "llama2" (HF LlamaTokenizer's default chat template) and
// "chatml". Any other template string is a Jinja chat template (tokenizer_config.json
// chat_template) rendered with gonja in the Hugging Face environment (trim_blocks,
// lstrip_blocks, raise_exception, tojson like json.dumps(ensure_ascii=False)).
//
// Trained spans of Jinja templates:
//
//   - A template with {% generation %} ... {% endgeneration %} blocks (HF's assistant-mask
//     markers) is rendered once with sentinels in place of the block tags; the text between
//     them is trained.
//
//   - Otherwise spans are found by rendering prefixes of the conversation (the method TRL
//     and axolotl fall back to): for the assistant message i,
//
//     start = len(render(msgs[:i], add_generation_prompt=true))
//     end   = len(render(msgs[:i+1], add_generation_prompt=false))
//
//     and both renders must be prefixes of the full render. For a template that ignores
//     add_generation_prompt and always appends the assistant header (the original Llama 3
//     template), that header (the render of no messages) is cut from the end of the second
//     render. A template whose output is not built turn by turn makes Render fail with an
//     error that says so; TrainOnAll still works with such templates.
//
// Tokenize turns segments into ids and a per-token train mask without BPE seams.
package chat

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"
)

// Message is one turn of a conversation.
type Message struct {
	Role    string `json:"role"`    // system, user, assistant, or tool / ipython (Llama 3.1)
	Content string `json:"content"` // the text of the turn
	// ToolCalls is the JSON array of tool calls of an assistant turn (OpenAI / HF format),
	// passed to Jinja templates as message.tool_calls. Empty when the turn has none.
	ToolCalls json.RawMessage `json:"tool_calls,omitempty"`
}

// Segment is a piece of the rendered conversation; Train marks text that gets loss.
type Segment struct {
	Text  string
	Train bool
}

// Join concatenates the segments into the rendered string.
func Join(segs []Segment) string {
	var b strings.Builder
	for _, s := range segs {
		b.WriteString(s.Text)
	}
	return b.String()
}

// Spans returns the byte ranges [start, end) of the trained segments in Join(segs).
func Spans(segs []Segment) [][2]int {
	var out [][2]int
	pos := 0
	for _, s := range segs {
		if s.Train && len(s.Text) > 0 {
			if n := len(out); n > 0 && out[n-1][1] == pos {
				out[n-1][1] = pos + len(s.Text)
			} else {
				out = append(out, [2]int{pos, pos + len(s.Text)})
			}
		}
		pos += len(s.Text)
	}
	return out
}

type options struct {
	bos, eos   *string
	tools      []byte
	vars       map[string]any
	trainAll   bool
	skipVerify bool
}

// Option changes how Render works.
type Option func(*options)

// WithBOS sets bos_token (default "<|begin_of_text|>" for llama3 and Jinja, "<s>" for llama2,
// "" for chatml).
func WithBOS(s string) Option { return func(o *options) { o.bos = &s } }

// WithEOS sets eos_token (default "<|eot_id|>" for llama3 and Jinja, "</s>" for llama2,
// "<|im_end|>" for chatml). Only Jinja and llama2 templates use it.
func WithEOS(s string) Option { return func(o *options) { o.eos = &s } }

// WithTools passes a JSON array of tool definitions to Jinja templates as `tools`.
func WithTools(toolsJSON []byte) Option { return func(o *options) { o.tools = toolsJSON } }

// TrainOnAll marks every segment as trained (loss on the whole conversation).
func TrainOnAll() Option { return func(o *options) { o.trainAll = true } }

// Render renders msgs with template: "llama3", "llama2", "chatml", or a Jinja template string.
// With addGenerationPrompt the assistant header is appended (not trained).
func Render(template string, msgs []Message, addGenerationPrompt bool, opts ...Option) ([]Segment, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	if len(msgs) == 0 {
		return nil, errors.New("chat: no messages to render")
	}
	var segs []Segment
	var err error
	switch template {
	case "llama3":
		segs, err = renderLlama3(msgs, addGenerationPrompt, &o)
	case "llama2":
		segs, err = renderLlama2(msgs, addGenerationPrompt, &o)
	case "chatml":
		segs, err = renderChatML(msgs, addGenerationPrompt, &o)
	default:
		if !strings.Contains(template, "{{") && !strings.Contains(template, "{%") {
			return nil, fmt.Errorf("chat: unknown template %q: want llama3, llama2, chatml or a Jinja chat template", template)
		}
		segs, err = renderJinja(template, msgs, addGenerationPrompt, &o)
	}
	if err != nil {
		return nil, err
	}
	if len(Join(segs)) == 0 {
		return nil, errors.New("chat: the template rendered nothing for this conversation; check that it is a chat template (it should loop over `messages`)")
	}
	if o.trainAll {
		for i := range segs {
			segs[i].Train = true
		}
	}
	return mergeSegments(segs), nil
}

func mergeSegments(segs []Segment) []Segment {
	out := segs[:0]
	for _, s := range segs {
		if s.Text == "" {
			continue
		}
		if n := len(out); n > 0 && out[n-1].Train == s.Train {
			out[n-1].Text += s.Text
			continue
		}
		out = append(out, s)
	}
	return out
}

func checkRoles(msgs []Message, allowed ...string) error {
	for i, m := range msgs {
		ok := false
		for _, a := range allowed {
			if m.Role == a {
				ok = true
			}
		}
		if !ok {
			return fmt.Errorf("chat: message %d has unknown role %q (want one of %s)", i, m.Role, strings.Join(allowed, ", "))
		}
	}
	return nil
}

// pyStrip strips whitespace like Python's str.strip() (and so Jinja's trim filter).
func pyStrip(s string) string {
	return strings.TrimFunc(s, func(r rune) bool {
		return unicode.IsSpace(r) || (r >= 0x1c && r <= 0x1f)
	})
}

func orDefault(p *string, def string) string {
	if p != nil {
		return *p
	}
	return def
}

// renderLlama3 equals the Llama 3 Instruct template:
// bos + for each message "<|start_header_id|>ROLE<|end_header_id|>\n\n" + trim(content) + "<|eot_id|>".
func renderLlama3(msgs []Message, agp bool, o *options) ([]Segment, error) {
	if err := checkRoles(msgs, "system", "user", "assistant", "ipython", "tool"); err != nil {
		return nil, err
	}
	segs := []Segment{{Text: orDefault(o.bos, "<|begin_of_text|>")}}
	for _, m := range msgs {
		role := m.Role
		if role == "tool" {
			role = "ipython"
		}
		segs = append(segs, Segment{Text: "<|start_header_id|>" + role + "<|end_header_id|>\n\n"})
		segs = append(segs, Segment{Text: pyStrip(m.Content) + "<|eot_id|>", Train: m.Role == "assistant"})
	}
	if agp {
		segs = append(segs, Segment{Text: "<|start_header_id|>assistant<|end_header_id|>\n\n"})
	}
	return segs, nil
}

// renderLlama2 equals HF LlamaTokenizer's default chat template:
// <s>[INST] <<SYS>>\nSYSTEM\n<</SYS>>\n\nUSER [/INST] ASSISTANT </s><s>[INST] USER [/INST] ...
func renderLlama2(msgs []Message, agp bool, o *options) ([]Segment, error) {
	if err := checkRoles(msgs, "system", "user", "assistant"); err != nil {
		return nil, err
	}
	bos, eos := orDefault(o.bos, "<s>"), orDefault(o.eos, "</s>")
	system, hasSystem := "", false
	if msgs[0].Role == "system" {
		system, hasSystem = msgs[0].Content, true
		msgs = msgs[1:]
	}
	var segs []Segment
	for i, m := range msgs {
		if (m.Role == "user") != (i%2 == 0) {
			return nil, fmt.Errorf("chat: llama2 template: conversation roles must alternate user/assistant/user/assistant/... (message %d is %q)", i, m.Role)
		}
		content := m.Content
		if i == 0 && hasSystem {
			content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content
		}
		if m.Role == "user" {
			segs = append(segs, Segment{Text: bos + "[INST] " + pyStrip(content) + " [/INST]"})
		} else {
			segs = append(segs, Segment{Text: " " + pyStrip(content) + " " + eos, Train: true})
		}
	}
	return segs, nil
}

// renderChatML renders "<|im_start|>ROLE\nCONTENT<|im_end|>\n" per message.
func renderChatML(msgs []Message, agp bool, o *options) ([]Segment, error) {
	if err := checkRoles(msgs, "system", "user", "assistant", "tool"); err != nil {
		return nil, err
	}
	segs := []Segment{{Text: orDefault(o.bos, "")}}
	for _, m := range msgs {
		segs = append(segs, Segment{Text: "<|im_start|>" + m.Role + "\n"})
		segs = append(segs, Segment{Text: m.Content + "<|im_end|>", Train: m.Role == "assistant"})
		segs = append(segs, Segment{Text: "\n"})
	}
	if agp {
		segs = append(segs, Segment{Text: "<|im_start|>assistant\n"})
	}
	return segs, nil
}
