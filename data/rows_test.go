package data

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOpenRowsPromptOnlyAndMessages(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	readAll := func(spec DatasetSpec) ([]Example, []error, Type) {
		r, err := OpenRows(spec)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		var exs []Example
		var errs []error
		for {
			ex, err := r.Next()
			if err == io.EOF {
				return exs, errs, r.Type()
			}
			if err != nil {
				if !IsRowError(err) {
					t.Fatal(err)
				}
				errs = append(errs, err)
				continue
			}
			exs = append(exs, ex)
		}
	}
	q := write("q.jsonl", `{"question": "a?"}`+"\n"+`{"question": 3}`+"\n\n"+`{"question": "b?"}`+"\n")
	for _, typ := range []Type{TypeAuto, TypePromptCompletion} {
		exs, errs, got := readAll(DatasetSpec{Path: q, Type: typ, Columns: Columns{Prompt: "question"}})
		if got != TypePromptCompletion || len(exs) != 2 || exs[0].Prompt != "a?" || exs[1].Prompt != "b?" || exs[1].Type != TypePromptCompletion {
			t.Fatalf("type %s: got %s %+v", typ, got, exs)
		}
		if len(errs) != 1 || !strings.Contains(errs[0].Error(), "q.jsonl:2") {
			t.Fatalf("want one row error at q.jsonl:2, got %v", errs)
		}
	}
	m := write("m.jsonl", `{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "prompt": "ignored"}`+"\n")
	exs, _, got := readAll(DatasetSpec{Path: m})
	if got != TypeMessages || len(exs) != 1 || len(exs[0].Messages) != 2 || exs[0].Messages[1].Content != "yo" {
		t.Fatalf("messages: %s %+v", got, exs)
	}
	pc := write("pc.jsonl", `{"prompt": "p", "completion": "c"}`+"\n")
	exs, _, got = readAll(DatasetSpec{Path: pc})
	if got != TypePromptCompletion || exs[0].Prompt != "p" || exs[0].Completion != "c" {
		t.Fatalf("prompt_completion: %s %+v", got, exs)
	}
	if _, err := OpenRows(DatasetSpec{Path: filepath.Join(dir, "missing.jsonl")}); err == nil || !strings.Contains(err.Error(), "missing.jsonl") {
		t.Fatalf("missing file: %v", err)
	}
}
