package tokenizer

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func FuzzParseSentencePieceModel(f *testing.F) {
	model, err := Asset("llama2-tokenizer.model")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(model[:4096])
	f.Add(model[:len(model)/2])
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x05, 0x0a, 0x01, 'a', 0x15, 0, 0, 0x80, 0xbf})
	f.Add([]byte{0x0a, 0x80})
	f.Add([]byte{0x12, 0x02, 0x18, 0x02, 0x0a, 0x03, 0x0a, 0x01, 'b'})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseSentencePieceModel(data)
		if err != nil {
			return
		}
		if len(m.Pieces) == 0 {
			t.Fatal("parsed a model without pieces")
		}
		tok, err := newLlama2(data, "fuzz", nil)
		if err != nil {
			return
		}
		for _, s := range []string{"", "a b", "Hello\nworld <s>", "\xff\xfe"} {
			tok.Decode(tok.Encode(s))
			tok.Decode(tok.EncodeWithSpecial(s))
		}
	})
}

func FuzzEncodeDecode(f *testing.F) {
	for _, s := range []string{"", " ", "Hello, world!", "  two  spaces\n\n\tx", "'s 'LL 123456", "开源模型 😀 é",
		"<|eot_id|><s></s>", "a\r\n\r\nb", "\u00a0\u200b\u2028", "\xff invalid \xc3"} {
		f.Add(s)
	}
	l3, l2 := testTokenizer(f, "llama3"), testTokenizer(f, "llama2")
	f.Fuzz(func(t *testing.T, s string) {
		if d := l3.Decode(l3.Encode(s)); d != s {
			t.Errorf("llama3: decode(encode(%q)) = %q", s, d)
		}
		if d := l3.Decode(l3.EncodeWithSpecial(s)); d != s {
			t.Errorf("llama3: decode(encodeWithSpecial(%q)) = %q", s, d)
		}
		// SentencePiece writes spaces as "▁", so a literal "▁" cannot come back.
		if utf8.ValidString(s) && !strings.Contains(s, "▁") {
			if d := l2.Decode(l2.Encode(s)); d != s {
				t.Errorf("llama2: decode(encode(%q)) = %q", s, d)
			}
			if d := l2.Decode(l2.EncodeWithSpecial(s)); d != s {
				t.Errorf("llama2: decode(encodeWithSpecial(%q)) = %q", s, d)
			}
		}
		for _, id := range l3.Encode(s) {
			if id < 0 || id >= 128000 {
				t.Fatalf("llama3: plain Encode gave id %d", id)
			}
		}
	})
}
