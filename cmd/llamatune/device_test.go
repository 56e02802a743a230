package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// One resolution of the model's chat template for every command: a
// chat_template.jinja wins over tokenizer_config.json, auto without a
// template falls back (""), model without one and an unreadable config are
// errors rather than a silent fallback.
func TestModelChatTemplate(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("tokenizer_config.json", `{"bos_token": "<s>"}`)
	if got, err := modelChatTemplate(dir, "auto"); got != "" || err != nil {
		t.Fatalf("auto, no template: %q, %v", got, err)
	}
	if _, err := modelChatTemplate(dir, "model"); err == nil || !strings.Contains(err.Error(), "no chat template") {
		t.Fatalf("model, no template: %v", err)
	}
	write("tokenizer_config.json", `{"chat_template": "{{ 'config' }}"}`)
	if got, _ := modelChatTemplate(dir, ""); got != "{{ 'config' }}" {
		t.Fatalf("tokenizer_config.json template: %q", got)
	}
	write("chat_template.jinja", "{{ 'jinja' }}")
	if got, _ := modelChatTemplate(dir, "model"); got != "{{ 'jinja' }}" {
		t.Fatalf("chat_template.jinja should win: %q", got)
	}
	if got, err := modelChatTemplate(dir, "llama3"); got != "" || err != nil {
		t.Fatalf("a named template: %q, %v", got, err)
	}
	os.Remove(filepath.Join(dir, "chat_template.jinja"))
	write("tokenizer_config.json", `{"chat_template": `)
	if _, err := modelChatTemplate(dir, "auto"); err == nil || !strings.Contains(err.Error(), "tokenizer_config.json") {
		t.Fatalf("a broken tokenizer_config.json: %v", err)
	}
}
