package tokenizer

import (
	"os"
	"strings"
	"testing"
)

// benchText is war-and-peace.txt (3.2 MB) from the shared test assets when present, else the
// 20k fixture repeated to about the same size.
func benchText(b *testing.B) string {
	b.Helper()
	if data, err := os.ReadFile("/work/shared/testdata/war-and-peace.txt"); err == nil {
		return string(data)
	}
	data, err := os.ReadFile("testdata/war-and-peace-first20k.txt")
	if err != nil {
		b.Skip("no benchmark text")
	}
	return strings.Repeat(string(data), 160)
}

func benchEncode(b *testing.B, kind string) {
	tok := testTokenizer(b, kind)
	text := benchText(b)
	b.SetBytes(int64(len(text)))
	b.ResetTimer()
	for b.Loop() {
		tok.Encode(text)
	}
}

func benchBatch(b *testing.B, kind string) {
	tok := testTokenizer(b, kind)
	lines := strings.SplitAfter(benchText(b), "\n")
	n := 0
	for _, l := range lines {
		n += len(l)
	}
	b.SetBytes(int64(n))
	b.ResetTimer()
	for b.Loop() {
		tok.BatchEncode(lines)
	}
}

func BenchmarkEncodeLlama3(b *testing.B)      { benchEncode(b, "llama3") }
func BenchmarkEncodeLlama2(b *testing.B)      { benchEncode(b, "llama2") }
func BenchmarkBatchEncodeLlama3(b *testing.B) { benchBatch(b, "llama3") }
func BenchmarkBatchEncodeLlama2(b *testing.B) { benchBatch(b, "llama2") }
