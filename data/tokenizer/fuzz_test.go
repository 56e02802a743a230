package tokenizer

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"testing"
	"unicode/utf8"
)

func FuzzParseSentencePieceModel(f *testing.F) {
	f.Add(tinyModel(false))
	f.Add(tinyModel(true))
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

// tinyModel builds a small SentencePiece BPE ModelProto by hand.
func tinyModel(byteFallback bool) []byte {
	varint := func(b []byte, v uint64) []byte { return binary.AppendUvarint(b, v) }
	field := func(b []byte, num, wire int) []byte { return varint(b, uint64(num<<3|wire)) }
	bytesField := func(b []byte, num int, data []byte) []byte {
		b = field(b, num, 2)
		b = varint(b, uint64(len(data)))
		return append(b, data...)
	}
	piece := func(text string, score float32, typ int) []byte {
		var p []byte
		p = bytesField(p, 1, []byte(text))
		p = field(p, 2, 5)
		p = binary.LittleEndian.AppendUint32(p, math.Float32bits(score))
		p = field(p, 3, 0)
		return varint(p, uint64(typ))
	}
	var m []byte
	m = bytesField(m, 1, piece("<unk>", 0, spUnknown))
	m = bytesField(m, 1, piece("<s>", 0, spControl))
	m = bytesField(m, 1, piece("</s>", 0, spControl))
	if byteFallback {
		for b := 0; b < 256; b++ {
			m = bytesField(m, 1, piece(fmt.Sprintf("<0x%02X>", b), 0, spByte))
		}
	}
	for i, p := range []string{"▁", "a", "b", "▁a", "ab", "▁ab", "▁▁"} {
		m = bytesField(m, 1, piece(p, -float32(i), spNormal))
	}
	var tr []byte
	tr = field(tr, 3, 0)
	tr = varint(tr, 2) // BPE
	if byteFallback {
		tr = field(tr, 35, 0)
		tr = varint(tr, 1)
	}
	m = bytesField(m, 2, tr)
	var norm []byte
	norm = bytesField(norm, 1, []byte("identity"))
	norm = field(norm, 4, 0)
	norm = varint(norm, 0) // keep extra whitespace
	return bytesField(m, 3, norm)
}

func TestTinyModel(t *testing.T) {
	for _, bf := range []bool{false, true} {
		tok, err := newLlama2(tinyModel(bf), "tiny", nil)
		if err != nil {
			t.Fatal(err)
		}
		ids := tok.Encode("ab a  c")
		var pieces []string
		for _, id := range ids {
			pieces = append(pieces, tok.IDToken(id))
		}
		want := "▁ab ▁a ▁▁ <unk>"
		if bf {
			want = "▁ab ▁a ▁▁ <0x63>"
		}
		if got := strings.Join(pieces, " "); got != want {
			t.Errorf("byteFallback=%v: pieces %q, want %q", bf, got, want)
		}
		if d := tok.Decode(ids); bf && d != "ab a  c" {
			t.Errorf("decode = %q", d)
		}
	}
}
