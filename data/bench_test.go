package data

import (
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkPackTokenized streams a pre-tokenized HF directory (~64 MB) through shuffle and packing.
func BenchmarkPackTokenized(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "hf")
	if err := genBig(dir, 64<<20); err != nil {
		b.Fatal(err)
	}
	o := Options{Datasets: []DatasetSpec{{Path: dir}}, VocabSize: 128256, SeqLen: 8192, BatchRows: 4, Packing: true, ShuffleBuffer: 10000, Seed: 1}
	b.ResetTimer()
	var tokens int64
	start := time.Now()
	for i := 0; i < b.N; i++ {
		p, err := New(o, nil)
		if err != nil {
			b.Fatal(err)
		}
		for {
			if _, err := p.Next(); err != nil {
				break
			}
		}
		tokens += p.Stats().Tokens
		p.Close()
	}
	b.ReportMetric(float64(tokens)/time.Since(start).Seconds(), "tokens/s")
}

// BenchmarkFormatText measures tokenization + labels with the byte tokenizer (pipeline overhead).
func BenchmarkFormatText(b *testing.B) {
	f := newFormatter(&Options{Tokenizer: byteTok{}, SeqLen: 4096, Truncation: TruncateKeepStart})
	ex := Example{Type: TypeText, Text: string(make([]byte, 2000))}
	b.SetBytes(2000)
	for i := 0; i < b.N; i++ {
		f.format(&ex)
	}
}
