package chat

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/llamatune/llamatune/data/tokenizer"
)

type templateCases struct {
	Templates map[string]struct {
		Template string `json:"template"`
	} `json:"templates"`
	Cases []struct {
		Name     string            `json:"name"`
		AGP      bool              `json:"add_generation_prompt"`
		Tools    json.RawMessage   `json:"tools"`
		Messages []Message         `json:"messages"`
		Rendered map[string]string `json:"rendered"`
		IDs      map[string][]int  `json:"rendered_llama3_ids"`
	} `json:"cases"`
}

func loadCases(t *testing.T) templateCases {
	t.Helper()
	data, err := os.ReadFile("testdata/chat-template-cases.json")
	if err != nil {
		t.Fatal(err)
	}
	var c templateCases
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	if len(c.Cases) != 5 || len(c.Templates) != 3 {
		t.Fatalf("fixture has %d cases and %d templates, want 5 and 3", len(c.Cases), len(c.Templates))
	}
	return c
}

var (
	tokOnce sync.Once
	tok3    tokenizer.Tokenizer
	tokErr  error
)

func llama3Tokenizer(t *testing.T) tokenizer.Tokenizer {
	t.Helper()
	tokOnce.Do(func() {
		dir, err := os.MkdirTemp("", "chattest")
		if err != nil {
			tokErr = err
			return
		}
		defer os.RemoveAll(dir)
		if tokErr = tokenizer.WriteFiles(dir, "llama3"); tokErr == nil {
			tok3, tokErr = tokenizer.Load(dir)
		}
	})
	if tokErr != nil {
		t.Fatal(tokErr)
	}
	return tok3
}

// TestHFParity renders every fixture case with every template and compares with the
// Hugging Face rendering, byte for byte, and the token ids of the rendering.
func TestHFParity(t *testing.T) {
	c := loadCases(t)
	tok := llama3Tokenizer(t)
	file, err := os.ReadFile("testdata/llama3.1-chat_template.jinja")
	if err != nil {
		t.Fatal(err)
	}
	if string(file) != c.Templates["llama3_1"].Template {
		t.Fatal("llama3.1-chat_template.jinja differs from the llama3_1 template of the cases")
	}
	n := 0
	for _, cs := range c.Cases {
		for name, want := range cs.Rendered {
			var opts []Option
			if len(cs.Tools) > 0 {
				opts = append(opts, WithTools(cs.Tools))
			}
			segs, err := Render(c.Templates[name].Template, cs.Messages, cs.AGP, opts...)
			if err != nil {
				t.Errorf("%s/%s: %v", cs.Name, name, err)
				continue
			}
			got := Join(segs)
			if got != want {
				t.Errorf("%s/%s:\n got %q\nwant %q", cs.Name, name, got, want)
				continue
			}
			if ids := tok.EncodeWithSpecial(got); !slices.Equal(ids, cs.IDs[name]) {
				t.Errorf("%s/%s: ids differ:\n got %v\nwant %v", cs.Name, name, ids, cs.IDs[name])
			}
			// The trained text is exactly the assistant turns (content + <|eot_id|>).
			var trained []string
			for _, s := range segs {
				if s.Train {
					trained = append(trained, s.Text)
				}
			}
			var want2 []string
			for _, m := range cs.Messages {
				if m.Role == "assistant" {
					if len(m.ToolCalls) > 0 {
						want2 = append(want2, `{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>`)
					} else {
						want2 = append(want2, strings.TrimSpace(m.Content)+"<|eot_id|>")
					}
				}
			}
			if !slices.Equal(trained, want2) {
				t.Errorf("%s/%s: trained segments %q, want %q", cs.Name, name, trained, want2)
			}
			// The built-in llama3 template equals llama3_rev.
			if name == "llama3_rev" {
				segs2, err := Render("llama3", cs.Messages, cs.AGP)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(segs, segs2) {
					t.Errorf("%s: built-in llama3 gives %+v, want %+v", cs.Name, segs2, segs)
				}
			}
			n++
		}
	}
	if n != 13 {
		t.Errorf("checked %d renderings, want 13", n)
	}
}

func TestTokenizeMask(t *testing.T) {
	tok := llama3Tokenizer(t)
	segs, err := Render("llama3", conv, false)
	if err != nil {
		t.Fatal(err)
	}
	ids, train := Tokenize(tok, segs, nil)
	var got []int
	for i, id := range ids {
		if train[i] {
			got = append(got, id)
		}
	}
	want := append(tok.Encode("Hello!"), 128009)
	want = append(append(want, tok.Encode("4")...), 128009)
	if !slices.Equal(got, want) {
		t.Errorf("trained ids %v, want %v", got, want)
	}
	if ids[0] != 128000 || train[0] {
		t.Errorf("first token %d (trained %v), want untrained BOS", ids[0], train[0])
	}
	// llama2: the trained tokens decode to the assistant turns.
	dir := t.TempDir()
	if err := tokenizer.WriteFiles(dir, "llama2"); err != nil {
		t.Fatal(err)
	}
	tok2, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	segs, err = Render("llama2", conv, false)
	if err != nil {
		t.Fatal(err)
	}
	ids, train = Tokenize(tok2, segs, nil)
	var parts []string
	var cur []int
	for i, id := range ids {
		if train[i] {
			cur = append(cur, id)
		} else if cur != nil {
			parts = append(parts, tok2.Decode(cur))
			cur = nil
		}
	}
	if cur != nil {
		parts = append(parts, tok2.Decode(cur))
	}
	if strings.Join(parts, "|") != "Hello! </s>|4 </s>" {
		t.Errorf("llama2 trained parts %q", parts)
	}
}
