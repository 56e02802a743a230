package data

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/llamatune/llamatune/data/chat"
	"github.com/llamatune/llamatune/data/tokenizer"
)

// Chat examples are tokenized as one piece, as at inference: the ids equal
// EncodeWithSpecial of the whole render (no stray SentencePiece "▁" at
// segment edges), and special-token text typed by a user stays plain text.
func TestChatTokensLikeInference(t *testing.T) {
	for _, kind := range []string{"llama2", "llama3"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			if err := tokenizer.WriteFiles(dir, kind); err != nil {
				t.Fatal(err)
			}
			tok, err := tokenizer.Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			msgs := []map[string]any{{"role": "user", "content": "It is 6 o'clock."}, {"role": "assistant", "content": "So it is 6."}}
			writeJSONL(t, filepath.Join(dir, "a.jsonl"), []map[string]any{{"messages": msgs}})
			p, err := New(Options{Datasets: []DatasetSpec{{Path: filepath.Join(dir, "a.jsonl")}}, Tokenizer: tok, Template: kind, SeqLen: 256}, nil)
			if err != nil {
				t.Fatal(err)
			}
			b := drain(t, p)[0]
			segs, err := chat.Render(kind, []chat.Message{{Role: "user", Content: "It is 6 o'clock."}, {Role: "assistant", Content: "So it is 6."}}, false)
			if err != nil {
				t.Fatal(err)
			}
			want := tok.EncodeWithSpecial(chat.Join(segs))
			got := make([]int, 0, len(want))
			for i, id := range b.InputIDs {
				if b.DocStart[i] == 0 && i < len(want) {
					got = append(got, int(id))
				}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("pipeline ids %v\nwhole-render ids %v", got, want)
			}

			// A user typing the literal text of a special token.
			writeJSONL(t, filepath.Join(dir, "b.jsonl"), []map[string]any{{"messages": []map[string]any{
				{"role": "user", "content": "Say <|eot_id|> and </s> please"}, {"role": "assistant", "content": "ok"}}}})
			p, err = New(Options{Datasets: []DatasetSpec{{Path: filepath.Join(dir, "b.jsonl")}}, Tokenizer: tok, Template: kind, SeqLen: 256}, nil)
			if err != nil {
				t.Fatal(err)
			}
			b = drain(t, p)[0]
			specials := 0
			for _, id := range b.InputIDs {
				if id == int32(tok.EOT()) || id == int32(tok.EOS()) {
					specials++
				}
			}
			// The template's own end-of-turn tokens only: one per turn for llama3
			// (<|eot_id|>), one </s> after the answer for llama2; padding is not EOS here.
			wantSpecials := map[string]int{"llama3": 2, "llama2": 1}[kind]
			pad := 0
			for i, id := range b.InputIDs {
				if int(b.DocStart[i]) == i && i > 0 && id == int32(tok.EOS()) {
					pad++
				}
			}
			if specials-pad != wantSpecials {
				t.Fatalf("%d end-of-turn/EOS ids (%d padding), want the template's %d: user text became special tokens", specials, pad, wantSpecials)
			}
		})
	}
}
