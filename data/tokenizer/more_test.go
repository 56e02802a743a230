package tokenizer

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestRandomCases compares with HF's Rust tokenizers and SentencePiece on 600 random strings.
func TestRandomCases(t *testing.T) {
	data, err := os.ReadFile("testdata/random-cases.json")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Cases []struct {
			Text          string `json:"text"`
			Llama3        []int  `json:"llama3_ids"`
			Llama3Special []int  `json:"llama3_ids_special_parsed"`
			Llama2        []int  `json:"llama2_ids"`
		}
	}
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Cases) != 600 {
		t.Fatalf("%d cases, want 600", len(f.Cases))
	}
	l3, l2 := testTokenizer(t, "llama3"), testTokenizer(t, "llama2")
	for _, c := range f.Cases {
		checkIDs(t, fmt.Sprintf("llama3 %q", c.Text), l3.Encode(c.Text), c.Llama3)
		checkIDs(t, fmt.Sprintf("llama3 special %q", c.Text), l3.EncodeWithSpecial(c.Text), c.Llama3Special)
		checkIDs(t, fmt.Sprintf("llama2 %q", c.Text), l2.Encode(c.Text), c.Llama2)
		if d := l3.Decode(c.Llama3Special); d != c.Text {
			t.Errorf("llama3 decode %q = %q", c.Text, d)
		}
		// A literal "▁" in the text decodes as a space: SentencePiece cannot tell them apart.
		if d := l2.Decode(c.Llama2); d != c.Text && !strings.Contains(c.Text, "▁") {
			t.Errorf("llama2 decode %q = %q", c.Text, d)
		}
	}
}

// TestTiktokenFormat writes the Llama 3 vocabulary as Meta's tiktoken tokenizer.model and
// checks that it encodes like tokenizer.json.
func TestTiktokenFormat(t *testing.T) {
	ref := testTokenizer(t, "llama3").(*byteLevel)
	var b strings.Builder
	for id, raw := range ref.tokens {
		fmt.Fprintf(&b, "%s %d\n", base64.StdEncoding.EncodeToString([]byte(raw)), id)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "tokenizer.model")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	tok, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Kind() != "llama3" || tok.VocabSize() != 128256 || tok.BOS() != 128000 || tok.EOS() != 128001 || tok.EOT() != 128009 {
		t.Errorf("kind %s vocab %d bos %d eos %d eot %d", tok.Kind(), tok.VocabSize(), tok.BOS(), tok.EOS(), tok.EOT())
	}
	if id, _ := tok.TokenID("<|python_tag|>"); id != 128010 {
		t.Errorf("<|python_tag|> = %d, want 128010 (Llama 3.1 naming)", id)
	}
	text, err := os.ReadFile("testdata/war-and-peace-first20k.txt")
	if err != nil {
		t.Fatal(err)
	}
	checkIDs(t, "war-and-peace (tiktoken)", tok.Encode(string(text)), readIDs(t, "testdata/war-and-peace-first20k.llama3.ids"))
	for _, c := range trickyCases(t) {
		checkIDs(t, c.Name+" (tiktoken)", tok.Encode(c.Text), c.Llama3)
		if c.Llama3Special != nil {
			checkIDs(t, c.Name+" (tiktoken, special)", tok.EncodeWithSpecial(c.Text), c.Llama3Special)
		}
	}
}

func TestSpecialIDs(t *testing.T) {
	l3 := testTokenizer(t, "llama3")
	if l3.Kind() != "llama3" || l3.VocabSize() != 128256 || l3.BOS() != 128000 || l3.EOS() != 128001 || l3.EOT() != 128009 || l3.Pad() != -1 {
		t.Errorf("llama3: kind %s vocab %d bos %d eos %d eot %d pad %d", l3.Kind(), l3.VocabSize(), l3.BOS(), l3.EOS(), l3.EOT(), l3.Pad())
	}
	for s, want := range map[string]int{"<|begin_of_text|>": 128000, "<|eot_id|>": 128009, "<|start_header_id|>": 128006, "Hello": 9906, " world": 1917} {
		if id, ok := l3.TokenID(s); !ok || id != want {
			t.Errorf("llama3 TokenID(%q) = %d, %v; want %d", s, id, ok, want)
		}
		if got := l3.IDToken(want); got != s {
			t.Errorf("llama3 IDToken(%d) = %q, want %q", want, got, s)
		}
	}
	l2 := testTokenizer(t, "llama2")
	if l2.Kind() != "llama2" || l2.VocabSize() != 32000 || l2.BOS() != 1 || l2.EOS() != 2 || l2.EOT() != 2 {
		t.Errorf("llama2: kind %s vocab %d bos %d eos %d eot %d", l2.Kind(), l2.VocabSize(), l2.BOS(), l2.EOS(), l2.EOT())
	}
	if id, ok := l2.TokenID("▁the"); !ok || id != 278 || l2.IDToken(278) != "▁the" {
		t.Errorf("llama2 TokenID(▁the) = %d, %v", id, ok)
	}
	// "<s>" is text for Encode and BOS for EncodeWithSpecial.
	if ids := l2.Encode("<s>"); slices.Contains(ids, 1) {
		t.Errorf("llama2 Encode(<s>) = %v contains BOS", ids)
	}
	ids := l2.EncodeWithSpecial("<s>[INST] Hi [/INST] Hello </s>")
	if ids[0] != 1 || ids[len(ids)-1] != 2 {
		t.Errorf("llama2 EncodeWithSpecial = %v", ids)
	}
	if d := l2.Decode(ids); d != "<s>[INST] Hi [/INST] Hello </s>" {
		t.Errorf("llama2 decode = %q", d)
	}
}

func TestBatchEncodeOrder(t *testing.T) {
	text, err := os.ReadFile("testdata/war-and-peace-first20k.txt")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(text), "\n")
	for _, kind := range []string{"llama3", "llama2"} {
		tok := testTokenizer(t, kind)
		got := tok.BatchEncode(lines)
		if len(got) != len(lines) {
			t.Fatalf("%s: %d results for %d texts", kind, len(got), len(lines))
		}
		for i, l := range lines {
			if !slices.Equal(got[i], tok.Encode(l)) {
				t.Fatalf("%s: BatchEncode[%d] differs from Encode", kind, i)
			}
		}
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "neither tokenizer.json nor tokenizer.model") {
		t.Errorf("empty dir: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "tokenizer.model"), []byte{0x0a, 0xff}, 0o644)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "not a SentencePiece model") {
		t.Errorf("bad model: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "tokenizer.json"), []byte(`{"model":{"type":"Unigram"}}`), 0o644)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "Unigram") {
		t.Errorf("unigram json: %v", err)
	}
	if err := WriteFiles(dir, "gpt2"); err == nil {
		t.Error("WriteFiles(gpt2) gave no error")
	}
}

func TestTokenEnds(t *testing.T) {
	texts := []string{"Hello<|eot_id|>world", " two  spaces\n\nx", "开源模型 😀", "<s>[INST] Hi [/INST] Hello </s>", "\nstart", ""}
	for _, kind := range []string{"llama3", "llama2"} {
		tok := testTokenizer(t, kind)
		for _, s := range texts {
			ids := tok.EncodeWithSpecial(s)
			ends := TokenEnds(tok, ids)
			if len(ids) > 0 && ends[len(ends)-1] != len(s) {
				t.Errorf("%s %q: last end %d, want %d", kind, s, ends[len(ends)-1], len(s))
			}
			prev := 0
			for i, e := range ends {
				if e < prev {
					t.Fatalf("%s %q: ends not monotone: %v", kind, s, ends)
				}
				if d := tok.Decode(ids[:i+1]); d != s[:e] {
					t.Errorf("%s %q: decode of %d tokens %q, want prefix %q", kind, s, i+1, d, s[:e])
				}
				prev = e
			}
		}
	}
}

func TestRejectOtherByteLevel(t *testing.T) {
	data, err := Asset("llama3-tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	gpt2 := strings.Replace(string(data), `"(?i:'s|'t|`, `"(?:'s|'t|`, 1)
	if _, err := parseLlama3JSON([]byte(gpt2), "x.json", nil); err == nil || !strings.Contains(err.Error(), "not Llama 3's") {
		t.Errorf("other regex: err = %v", err)
	}
	norm := strings.Replace(string(data), `"normalizer": null`, `"normalizer": {"type": "NFC"}`, 1)
	if norm == string(data) {
		t.Fatal("fixture has no null normalizer")
	}
	if _, err := parseLlama3JSON([]byte(norm), "x.json", nil); err == nil || !strings.Contains(err.Error(), "normalizer") {
		t.Errorf("normalizer: err = %v", err)
	}
}
