package data

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
)

// byteTok is a fake tokenizer: one token per byte (id = byte + 3), BOS 1, EOS 2.
type byteTok struct{}

func (byteTok) Encode(s string) []int {
	out := make([]int, len(s))
	for i := 0; i < len(s); i++ {
		out[i] = int(s[i]) + 3
	}
	return out
}
func (t byteTok) EncodeWithSpecial(s string) []int { return t.Encode(s) }
func (byteTok) Decode(ids []int) string {
	var b strings.Builder
	for _, id := range ids {
		if id >= 3 {
			b.WriteByte(byte(id - 3))
		}
	}
	return b.String()
}
func (byteTok) VocabSize() int { return 259 }
func (byteTok) BOS() int       { return 1 }
func (byteTok) EOS() int       { return 2 }

// fakeChat renders "role: content\n" per message; assistant turns train.
func fakeChat(template string, msgs []Message) ([]Segment, error) {
	var out []Segment
	for _, m := range msgs {
		if m.Role == "assistant" {
			out = append(out, Segment{Text: "A: "}, Segment{Text: m.Content + "\n", Train: true})
		} else {
			out = append(out, Segment{Text: m.Role[:1] + ": " + m.Content + "\n"})
		}
	}
	return out, nil
}

func writeJSONL(t testing.TB, path string, rows []map[string]any) {
	t.Helper()
	var b strings.Builder
	for _, r := range rows {
		j, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(j)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

var textSchema = arrow.NewSchema([]arrow.Field{{Name: "text", Type: arrow.BinaryTypes.String}}, nil)

// textRecords builds record batches of `per` rows from texts.
func textRecords(texts []string, per int) []arrow.RecordBatch {
	var recs []arrow.RecordBatch
	for s := 0; s < len(texts); s += per {
		b := array.NewRecordBuilder(memory.DefaultAllocator, textSchema)
		for _, x := range texts[s:min(s+per, len(texts))] {
			b.Field(0).(*array.StringBuilder).Append(x)
		}
		recs = append(recs, b.NewRecordBatch())
		b.Release()
	}
	return recs
}

func writeArrowStream(t testing.TB, path string, schema *arrow.Schema, recs []arrow.RecordBatch) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := ipc.NewWriter(f, ipc.WithSchema(schema))
	for _, r := range recs {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func writeArrowFile(t testing.TB, path string, schema *arrow.Schema, recs []arrow.RecordBatch) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := ipc.NewFileWriter(f, ipc.WithSchema(schema))
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func writeParquet(t testing.TB, path string, schema *arrow.Schema, recs []arrow.RecordBatch) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := pqarrow.NewFileWriter(schema, f, parquet.NewWriterProperties(), pqarrow.DefaultWriterProps())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs { // one row group per record batch
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// writeHF writes a datasets.save_to_disk style directory with n shards.
func writeHF(t testing.TB, dir string, texts []string, shards, per int) {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	var files []map[string]string
	size := (len(texts) + shards - 1) / shards
	for s := 0; s < shards; s++ {
		name := fmt.Sprintf("data-%05d-of-%05d.arrow", s, shards)
		part := texts[min(s*size, len(texts)):min((s+1)*size, len(texts))]
		writeArrowStream(t, filepath.Join(dir, name), textSchema, textRecords(part, per))
		files = append(files, map[string]string{"filename": name})
	}
	st, _ := json.Marshal(map[string]any{"_data_files": files, "_split": "train"})
	os.WriteFile(filepath.Join(dir, "state.json"), st, 0o644)
	os.WriteFile(filepath.Join(dir, "dataset_info.json"), []byte(`{"features":{"text":{"dtype":"string","_type":"Value"}}}`), 0o644)
}

func texts(n int, prefix string) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d %s", prefix, i, strings.Repeat("x", (i*37)%53))
	}
	return out
}

// drain returns every batch of a pipeline.
func drain(t testing.TB, p *Pipeline) []*Batch {
	t.Helper()
	var out []*Batch
	for {
		b, err := p.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
}

func mustNew(t testing.TB, o Options, c *Cursor) *Pipeline {
	t.Helper()
	p, err := New(o, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// checkBatch asserts the attention and label invariants of a batch.
func checkBatch(t testing.TB, b *Batch) {
	t.Helper()
	if len(b.InputIDs) != b.Rows*b.SeqLen || len(b.Labels) != len(b.InputIDs) || len(b.PositionIDs) != len(b.InputIDs) || len(b.DocStart) != len(b.InputIDs) {
		t.Fatalf("batch shapes: rows %d seq %d ids %d labels %d pos %d doc %d", b.Rows, b.SeqLen, len(b.InputIDs), len(b.Labels), len(b.PositionIDs), len(b.DocStart))
	}
	for r := 0; r < b.Rows; r++ {
		o := r * b.SeqLen
		for i := 0; i < b.SeqLen; i++ {
			ds := int(b.DocStart[o+i])
			if ds < 0 || ds > i {
				t.Fatalf("row %d pos %d: doc_start %d out of [0,%d]", r, i, ds, i)
			}
			if i > 0 && ds != i && ds != int(b.DocStart[o+i-1]) {
				t.Fatalf("row %d pos %d: doc_start %d does not continue %d", r, i, ds, b.DocStart[o+i-1])
			}
			if int(b.PositionIDs[o+i]) != i-ds {
				t.Fatalf("row %d pos %d: position id %d, want %d", r, i, b.PositionIDs[o+i], i-ds)
			}
			if ds == i && b.Labels[o+i] != IgnoreIndex {
				t.Fatalf("row %d pos %d: first label of a document is %d, want -100", r, i, b.Labels[o+i])
			}
			// Attention: i sees j iff DocStart[i] <= j <= i; every such j must be of i's document.
			for j := ds; j <= i; j++ {
				if b.DocStart[o+j] != int32(ds) {
					t.Fatalf("cross-document attention at row %d: %d sees %d (doc_start %d vs %d)", r, i, j, ds, b.DocStart[o+j])
				}
			}
			// No label crosses a boundary: a trained label at i is predicted from i-1, same document.
			if b.Labels[o+i] != IgnoreIndex && ds >= i {
				t.Fatalf("row %d pos %d: label crosses a document boundary", r, i)
			}
		}
	}
}
