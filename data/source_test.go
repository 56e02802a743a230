package data

import (
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

func TestFormatsAgree(t *testing.T) {
	dir := t.TempDir()
	tx := texts(57, "f")
	rows := make([]map[string]any, len(tx))
	for i, x := range tx {
		rows[i] = map[string]any{"text": x, "other": i}
	}
	writeJSONL(t, filepath.Join(dir, "a.jsonl"), rows)
	raw, _ := os.ReadFile(filepath.Join(dir, "a.jsonl"))
	gzf, _ := os.Create(filepath.Join(dir, "a.jsonl.gz"))
	zw := gzip.NewWriter(gzf)
	zw.Write(raw)
	zw.Close()
	gzf.Close()
	writeArrowFile(t, filepath.Join(dir, "f.arrow"), textSchema, textRecords(tx, 7))
	writeArrowStream(t, filepath.Join(dir, "s.arrow"), textSchema, textRecords(tx, 5))
	writeParquet(t, filepath.Join(dir, "p.parquet"), textSchema, textRecords(tx, 10))
	writeHF(t, filepath.Join(dir, "hf"), tx, 3, 4)
	writeHF(t, filepath.Join(dir, "dd", "train"), tx, 2, 6)
	writeHF(t, filepath.Join(dir, "dd", "test"), tx[:3], 1, 6)
	os.WriteFile(filepath.Join(dir, "dd", "dataset_dict.json"), []byte(`{"splits": ["train", "test"]}`), 0o644)
	os.MkdirAll(filepath.Join(dir, "shards"), 0o755)
	writeParquet(t, filepath.Join(dir, "shards", "train-00000.parquet"), textSchema, textRecords(tx[:20], 10))
	writeParquet(t, filepath.Join(dir, "shards", "train-00001.parquet"), textSchema, textRecords(tx[20:], 10))

	for _, path := range []string{"a.jsonl", "a.jsonl.gz", "f.arrow", "s.arrow", "p.parquet", "hf", "dd", "shards"} {
		t.Run(path, func(t *testing.T) {
			o := Options{Datasets: []DatasetSpec{{Path: filepath.Join(dir, path)}}, Tokenizer: byteTok{}, SeqLen: 64, BatchRows: 2, Packing: true, PackPool: 1}
			full := drain(t, mustNew(t, o, nil))
			got := docsOf(t, full)
			if !reflect.DeepEqual(got, tx) {
				t.Fatalf("got %d docs, first %q; want %d, first %q", len(got), got[0], len(tx), tx[0])
			}
			// Resume after every batch.
			for k := range full {
				c := full[k].Cursor
				batchesEqual(t, fmt.Sprintf("resume after %d", k), full[k+1:], drain(t, mustNew(t, o, &c)))
			}
		})
	}
	// The test split of the DatasetDict.
	o := Options{Datasets: []DatasetSpec{{Path: filepath.Join(dir, "dd"), Split: "test"}}, Tokenizer: byteTok{}, SeqLen: 64}
	if got := docsOf(t, drain(t, mustNew(t, o, nil))); !reflect.DeepEqual(got, tx[:3]) {
		t.Fatalf("test split: %q", got)
	}
	o.Datasets[0].Split = "validation"
	if _, err := New(o, nil); err == nil || !strings.Contains(err.Error(), "train, test") {
		t.Fatalf("unknown split: %v", err)
	}
}

var tokSchema = arrow.NewSchema([]arrow.Field{
	{Name: "input_ids", Type: arrow.ListOf(arrow.PrimitiveTypes.Int64)},
	{Name: "labels", Type: arrow.ListOf(arrow.PrimitiveTypes.Int64)},
}, nil)

func tokRecord(rows [][2][]int64) arrow.RecordBatch {
	b := array.NewRecordBuilder(memory.DefaultAllocator, tokSchema)
	defer b.Release()
	for _, r := range rows {
		for c := 0; c < 2; c++ {
			lb := b.Field(c).(*array.ListBuilder)
			lb.Append(true)
			vb := lb.ValueBuilder().(*array.Int64Builder)
			vb.AppendValues(r[c], nil)
		}
	}
	return b.NewRecordBatch()
}

func TestTokenizedAndMessagesArrow(t *testing.T) {
	dir := t.TempDir()
	writeParquet(t, filepath.Join(dir, "t.parquet"), tokSchema, []arrow.RecordBatch{tokRecord([][2][]int64{
		{{1, 5, 6, 7}, {-100, -100, 6, 7}},
		{{1, 8, 9}, {1, 8, 9}},
	})})
	o := Options{Datasets: []DatasetSpec{{Path: filepath.Join(dir, "t.parquet")}}, VocabSize: 10, SeqLen: 8, Packing: true}
	p := mustNew(t, o, nil)
	if p.Types()[0] != TypeTokenized {
		t.Fatalf("detected %v", p.Types())
	}
	bs := drain(t, p)
	if len(bs) != 1 {
		t.Fatalf("%d batches", len(bs))
	}
	checkBatch(t, bs[0])
	want := []int32{-100, -100, 6, 7, -100, 8, 9, -100}
	if !reflect.DeepEqual(bs[0].Labels, want) {
		t.Fatalf("labels %v want %v", bs[0].Labels, want)
	}
	// Out-of-vocabulary id names the row.
	o.VocabSize = 9
	_, err := drainErr(o)
	if err == nil || !strings.Contains(err.Error(), "t.parquet (row 1)") || !strings.Contains(err.Error(), "input_ids[2] = 9") {
		t.Fatalf("oov: %v", err)
	}

	// Messages as list<struct<role, content>>.
	msgType := arrow.ListOf(arrow.StructOf(arrow.Field{Name: "role", Type: arrow.BinaryTypes.String}, arrow.Field{Name: "content", Type: arrow.BinaryTypes.String, Nullable: true}))
	sch := arrow.NewSchema([]arrow.Field{{Name: "conv", Type: msgType}}, nil)
	b := array.NewRecordBuilder(memory.DefaultAllocator, sch)
	lb := b.Field(0).(*array.ListBuilder)
	sb := lb.ValueBuilder().(*array.StructBuilder)
	for _, conv := range [][][2]string{{{"user", "hi"}, {"assistant", "yo"}}, {{"human", "q"}, {"gpt", "a"}}} {
		lb.Append(true)
		for _, m := range conv {
			sb.Append(true)
			sb.FieldBuilder(0).(*array.StringBuilder).Append(m[0])
			sb.FieldBuilder(1).(*array.StringBuilder).Append(m[1])
		}
	}
	writeArrowStream(t, filepath.Join(dir, "m.arrow"), sch, []arrow.RecordBatch{b.NewRecordBatch()})
	o = Options{Datasets: []DatasetSpec{{Path: filepath.Join(dir, "m.arrow"), Columns: Columns{Messages: "conv"}}}, Tokenizer: byteTok{}, Chat: fakeChat, SeqLen: 64, Packing: true}
	got := docsOf(t, drain(t, mustNew(t, o, nil)))
	if !reflect.DeepEqual(got, []string{"u: hi\nA: yo\n", "u: q\nA: a\n"}) {
		t.Fatalf("messages: %q", got)
	}
}

func drainErr(o Options) ([]*Batch, error) {
	p, err := New(o, nil)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	var out []*Batch
	for {
		b, err := p.Next()
		if err != nil {
			if err.Error() == "EOF" {
				return out, nil
			}
			return out, err
		}
		out = append(out, b)
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o644)
		return p
	}
	textOpts := func(path string, mod ...func(*Options)) Options {
		o := Options{Datasets: []DatasetSpec{{Path: path}}, Tokenizer: byteTok{}, Chat: fakeChat, SeqLen: 64}
		for _, m := range mod {
			m(&o)
		}
		return o
	}
	expect := func(name string, o Options, want ...string) {
		t.Helper()
		_, err := drainErr(o)
		if err == nil {
			t.Fatalf("%s: no error", name)
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Fatalf("%s: error %q does not mention %q", name, err, w)
			}
		}
	}

	bad := write("bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"ok2\"}\n{\"text\": oops}\n{\"text\": \"ok3\"}\n")
	expect("malformed line", textOpts(bad), "bad.jsonl:3", "malformed JSON", "bad_rows: skip")
	var skipped []error
	bs, err := drainErr(textOpts(bad, func(o *Options) { o.BadRows = BadRowsSkip; o.OnBadRow = func(e error) { skipped = append(skipped, e) } }))
	if err != nil || len(skipped) != 1 || len(docsOf(t, bs)) != 3 {
		t.Fatalf("skip: err %v skipped %v", err, skipped)
	}

	expect("wrong type", textOpts(write("num.jsonl", "{\"text\": 5}\n")), "num.jsonl:1", `"text" must be a string, got a number`)
	expect("missing key", textOpts(write("miss.jsonl", "{\"text\": \"a\"}\n{\"body\": \"b\"}\n")), "miss.jsonl:2", `missing key "text"`)
	expect("empty", textOpts(write("empty.jsonl", "")), "empty")
	expect("json array", textOpts(write("arr.json", "[\n{\"text\": \"a\"}\n]\n")), "arr.json", "JSON array")
	expect("blank only", textOpts(write("blank.jsonl", "\n\n")), "empty")
	expect("no usable column", textOpts(write("cols.jsonl", "{\"body\": \"b\"}\n")), "cols.jsonl:1", "body", "datasets[].type")
	expect("unknown role", textOpts(write("role.jsonl", `{"messages": [{"role": "narrator", "content": "x"}]}`+"\n")), "role.jsonl:1", `unknown role "narrator"`)
	expect("renders nothing", textOpts(write("nothing.jsonl", `{"messages": [{"role": "user", "content": "x"}]}`+"\n"), func(o *Options) {
		o.Chat = func(string, []Message) ([]Segment, error) { return nil, nil }
	}), "nothing.jsonl:1", "renders nothing")
	expect("content list", textOpts(write("parts.jsonl", `{"messages": [{"role": "user", "content": [{"type": "text"}]}]}`+"\n")), "parts.jsonl:1", "must be a string")
	expect("ids and labels differ", textOpts(write("tok.jsonl", `{"input_ids": [1,2,3], "labels": [1,2]}`+"\n")), "tok.jsonl:1", "aligned")
	expect("missing file", textOpts(filepath.Join(dir, "nope.jsonl")), "nope.jsonl", "no such file")
	expect("glob matches nothing", textOpts(filepath.Join(dir, "zz-*.parquet")), "matches no files")

	// Missing and mistyped columns in Arrow name the column and the file.
	writeArrowStream(t, filepath.Join(dir, "t.arrow"), textSchema, textRecords([]string{"a"}, 1))
	o := textOpts(filepath.Join(dir, "t.arrow"))
	o.Datasets[0].Type = TypePromptCompletion
	expect("arrow missing column", o, "t.arrow", `column "prompt"`, "columns present: [text]")
	o = textOpts(filepath.Join(dir, "t.arrow"))
	o.Datasets[0].Type = TypeTokenized
	o.Datasets[0].Columns.InputIDs = "text"
	expect("arrow mistyped column", o, "t.arrow", `column "text" has type utf8, want list<int>`)

	// Truncated files: clear errors, no panic.
	big := texts(400, "trunc")
	writeArrowStream(t, filepath.Join(dir, "ts.arrow"), textSchema, textRecords(big, 50))
	writeArrowFile(t, filepath.Join(dir, "tf.arrow"), textSchema, textRecords(big, 50))
	writeParquet(t, filepath.Join(dir, "tp.parquet"), textSchema, textRecords(big, 50))
	for _, n := range []string{"ts.arrow", "tf.arrow", "tp.parquet"} {
		p := filepath.Join(dir, n)
		b, _ := os.ReadFile(p)
		for _, cut := range []int{len(b) / 2, len(b) - 3, 7} {
			os.WriteFile(p, b[:cut], 0o644)
			expect(fmt.Sprintf("truncated %s at %d", n, cut), textOpts(p), n)
		}
	}
}

func TestRowErrorIsTyped(t *testing.T) {
	err := rowErr(Loc{File: "x.jsonl", Row: 3, Line: true}, "boom")
	if !IsRowError(fmt.Errorf("wrap: %w", err)) || IsRowError(errors.New("x")) {
		t.Fatal("IsRowError")
	}
}

func FuzzJSONLRow(f *testing.F) {
	seeds := []string{
		`{"text": "hello"}`,
		`{"prompt": "a", "completion": "b"}`,
		`{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": null}]}`,
		`{"conversations": [{"from": "human", "value": "hi"}]}`,
		`{"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "position_ids": [0, 1, 0], "doc_start": [0, 0, 2]}`,
		`{"input_ids": [99999999999]}`,
		`{"text": oops}`, `[]`, `null`, `{"messages": "x"}`, `{"messages": [{"role": 1}]}`, ``, `{`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	fm := newFormatter(&Options{Tokenizer: byteTok{}, Chat: fakeChat, SeqLen: 8, Truncation: TruncateSplit, TrainOn: TrainOnAssistant, Template: "x"})
	f.Fuzz(func(t *testing.T, line []byte) {
		for _, typ := range []Type{TypeText, TypePromptCompletion, TypeMessages, TypeTokenized} {
			ex := Example{Loc: Loc{File: "fuzz.jsonl", Row: 1, Line: true}}
			err := parseJSONLRow(line, typ, Columns{}.withDefaults(), &ex)
			if err != nil {
				if !IsRowError(err) {
					t.Fatalf("non-row error %v", err)
				}
				if !strings.Contains(err.Error(), "fuzz.jsonl:1") {
					t.Fatalf("error does not name the line: %v", err)
				}
				continue
			}
			res := fm.format(&ex)
			for _, d := range res.docs {
				if len(d.IDs) != len(d.Labels) || len(d.IDs) > 8 || len(d.IDs) == 0 {
					t.Fatalf("bad doc %v / %v", d.IDs, d.Labels)
				}
			}
			var js any
			_ = json.Unmarshal(line, &js)
		}
	})
}

func TestParquetProjection(t *testing.T) {
	dir := t.TempDir()
	msgType := arrow.ListOf(arrow.StructOf(arrow.Field{Name: "role", Type: arrow.BinaryTypes.String}, arrow.Field{Name: "content", Type: arrow.BinaryTypes.String}))
	sch := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64},
		{Name: "blob", Type: arrow.BinaryTypes.Binary},
		{Name: "messages", Type: msgType},
		{Name: "tags", Type: arrow.ListOf(arrow.BinaryTypes.String)},
	}, nil)
	var recs []arrow.RecordBatch
	for g := 0; g < 3; g++ {
		b := array.NewRecordBuilder(memory.DefaultAllocator, sch)
		for i := 0; i < 4; i++ {
			b.Field(0).(*array.Int64Builder).Append(int64(g*4 + i))
			b.Field(1).(*array.BinaryBuilder).Append(make([]byte, 1000))
			lb := b.Field(2).(*array.ListBuilder)
			sb := lb.ValueBuilder().(*array.StructBuilder)
			lb.Append(true)
			for _, m := range [][2]string{{"user", fmt.Sprintf("q%d", g*4+i)}, {"assistant", "a"}} {
				sb.Append(true)
				sb.FieldBuilder(0).(*array.StringBuilder).Append(m[0])
				sb.FieldBuilder(1).(*array.StringBuilder).Append(m[1])
			}
			tb := b.Field(3).(*array.ListBuilder)
			tb.Append(true)
			tb.ValueBuilder().(*array.StringBuilder).Append("x")
		}
		recs = append(recs, b.NewRecordBatch())
	}
	writeParquet(t, filepath.Join(dir, "m.parquet"), sch, recs)
	o := Options{Datasets: []DatasetSpec{{Path: filepath.Join(dir, "m.parquet")}}, Tokenizer: byteTok{}, Chat: fakeChat, SeqLen: 32, BatchRows: 2}
	full := drain(t, mustNew(t, o, nil))
	got := docsOf(t, full)
	if len(got) != 12 || got[5] != "u: q5\nA: a\n" {
		t.Fatalf("got %q", got)
	}
	for k := range full {
		c := full[k].Cursor
		batchesEqual(t, fmt.Sprintf("resume after %d", k), full[k+1:], drain(t, mustNew(t, o, &c)))
	}
}

// FuzzJSONLFile runs whole files through the line reader, resuming at every row.
func FuzzJSONLFile(f *testing.F) {
	f.Add([]byte("{\"text\": \"a\"}\n\n{\"text\": \"b\"}\r\n{\"text\": 1}\n{\"text\": \"c\"}"))
	f.Add([]byte("{\"prompt\": \"p\", \"completion\": \"c\"}\n{\"prompt\": \"p\"}\n"))
	f.Add([]byte("\n\n\n"))
	f.Add([]byte("{\"input_ids\": [1, 2], \"labels\": [-100, 2]}\n{\"input_ids\": [\"x\"]}\n"))
	dir := f.TempDir()
	path := filepath.Join(dir, "f.jsonl")
	f.Fuzz(func(t *testing.T, content []byte) {
		os.WriteFile(path, content, 0o644)
		for _, typ := range []Type{TypeText, TypePromptCompletion, TypeMessages, TypeTokenized} {
			r, err := openJSONL(path, typ, Columns{}.withDefaults(), Pos{})
			if err != nil {
				t.Fatal(err)
			}
			var positions []Pos
			var rows []Example
			for {
				positions = append(positions, r.pos())
				ex, err := r.next()
				if err != nil && !IsRowError(err) {
					if err.Error() != "EOF" && !strings.Contains(err.Error(), "f.jsonl:") {
						t.Fatalf("unexpected error %v", err)
					}
					break
				}
				rows = append(rows, ex)
			}
			r.close()
			// Resuming from any recorded position yields the same next row.
			for i, p := range positions[:len(rows)] {
				r2, err := openJSONL(path, typ, Columns{}.withDefaults(), p)
				if err != nil {
					t.Fatal(err)
				}
				ex, _ := r2.next()
				r2.close()
				if ex.Loc != rows[i].Loc || !reflect.DeepEqual(ex.InputIDs, rows[i].InputIDs) || ex.Text != rows[i].Text {
					t.Fatalf("resume at %+v: %+v != %+v", p, ex.Loc, rows[i].Loc)
				}
			}
		}
	})
}
