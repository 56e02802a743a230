package train

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/data"
)

type oneByteTok struct{}

func (oneByteTok) Encode(s string) []int {
	out := make([]int, len(s))
	for i := range s {
		out[i] = int(s[i]) + 3
	}
	return out
}
func (t oneByteTok) EncodeWithSpecial(s string) []int { return t.Encode(s) }
func (oneByteTok) Decode([]int) string                { return "" }
func (oneByteTok) VocabSize() int                     { return 259 }
func (oneByteTok) BOS() int                           { return 1 }
func (oneByteTok) EOS() int                           { return 2 }

// Run's log says how many documents truncation: drop dropped (reportData on the data
// pipeline); nothing when none were.
func TestReportData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.jsonl")
	os.WriteFile(path, []byte(`{"text": "short"}`+"\n"+`{"text": "`+strings.Repeat("long ", 20)+`"}`+"\n"), 0o644)
	for _, tc := range []struct {
		tr   data.Truncation
		want string
	}{
		{data.TruncateDrop, "data: 1 documents dropped as longer than seq_len 32 (truncation: drop; split or truncate keeps them)\n"},
		{data.TruncateSplit, ""},
	} {
		p, err := data.New(data.Options{Datasets: []data.DatasetSpec{{Path: path}}, Tokenizer: oneByteTok{}, SeqLen: 32, Truncation: tc.tr}, nil)
		if err != nil {
			t.Fatal(err)
		}
		for {
			if _, err := p.Next(); err == io.EOF {
				break
			} else if err != nil {
				t.Fatal(err)
			}
		}
		var log bytes.Buffer
		reportData(&log, p)
		p.Close()
		if log.String() != tc.want {
			t.Errorf("%s: log %q, want %q", tc.tr, log.String(), tc.want)
		}
	}
}
