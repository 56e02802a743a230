package chat

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/llamatune/llamatune/data/tokenizer"
)

// ErrNoTemplate is wrapped by LoadTemplate's error for a model that has no chat template
// (as opposed to one whose files cannot be read or parsed).
var ErrNoTemplate = errors.New("no chat template")

// LoadTemplate reads a model directory's (or GGUF file's) chat template: chat_template.jinja when present
// (newer transformers write it), else the chat_template of tokenizer_config.json (a string,
// or a list of {name, template} of which "default" is taken). The returned options set
// bos_token and eos_token from tokenizer_config.json; pass them to Render. It is the one
// place llamatune resolves a model's own template (train, data commands, teacher-logits,
// generate).
func LoadTemplate(modelDir string) (string, []Option, error) {
	var opts []Option
	cfgPath := filepath.Join(modelDir, "tokenizer_config.json")
	var cfg struct {
		BOS          json.RawMessage `json:"bos_token"`
		EOS          json.RawMessage `json:"eos_token"`
		ChatTemplate json.RawMessage `json:"chat_template"`
	}
	data, err := tokenizer.ReadConfigJSON(modelDir)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &cfg); err != nil {
			return "", nil, fmt.Errorf("chat: %s: %v", cfgPath, err)
		}
		if s, ok := tokenText(cfg.BOS); ok {
			opts = append(opts, WithBOS(s))
		}
		if s, ok := tokenText(cfg.EOS); ok {
			opts = append(opts, WithEOS(s))
		}
	case !errors.Is(err, os.ErrNotExist):
		return "", nil, err
	}
	if b, err := os.ReadFile(filepath.Join(modelDir, "chat_template.jinja")); err == nil {
		return string(b), opts, nil
	}
	if len(cfg.ChatTemplate) > 0 && string(cfg.ChatTemplate) != "null" {
		var s string
		if json.Unmarshal(cfg.ChatTemplate, &s) == nil {
			return s, opts, nil
		}
		var list []struct{ Name, Template string }
		if err := json.Unmarshal(cfg.ChatTemplate, &list); err != nil {
			return "", nil, fmt.Errorf("chat: %s: chat_template is neither a string nor a list of {name, template}", cfgPath)
		}
		for _, t := range list {
			if t.Name == "default" {
				return t.Template, opts, nil
			}
		}
		if len(list) > 0 {
			return list[0].Template, opts, nil
		}
	}
	return "", nil, fmt.Errorf("chat: %s: %w (no chat_template.jinja, no chat_template in tokenizer_config.json); name a built-in template instead (llama3, llama2, chatml)", modelDir, ErrNoTemplate)
}

// tokenText accepts "text" or {"content": "text"}.
func tokenText(raw json.RawMessage) (string, bool) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, true
	}
	var o struct {
		Content *string `json:"content"`
	}
	if json.Unmarshal(raw, &o) == nil && o.Content != nil {
		return *o.Content, true
	}
	return "", false
}
