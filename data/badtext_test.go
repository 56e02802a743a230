package data

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Rows that encoding/json or the tokenizer would quietly change are bad rows: invalid UTF-8
// (which would train as U+FFFD), a lone surrogate escape (the same) and "text": null (which
// would be an empty document). bad_rows: fail stops at the first naming file:line; skip counts
// them all and reports each with its file and line.
func TestChangedRowsAreBad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.jsonl")
	lines := []string{
		`{"text": "good one"}`,
		"{\"text\": \"caf\xe9 latin-1\"}",
		`{"text": null}`,
		`{"text": "lone \ud800 surrogate"}`,
		`{"text": "a real \ufffd and ` + "\uFFFD" + ` are fine"}`,
		"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"\xff\"}]}",
		`{"prompt": null, "text": "good two", "other": "` + "\xfe" + ` in a column nobody reads"}`,
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	opts := func(skip bool, got *[]string) Options {
		o := Options{Datasets: []DatasetSpec{{Path: path, Type: TypeText}}, Tokenizer: byteTok{}, Chat: fakeChat, SeqLen: 64}
		if skip {
			o.BadRows, o.OnBadRow = BadRowsSkip, func(e error) { *got = append(*got, e.Error()) }
		}
		return o
	}
	_, err := drainErr(opts(false, nil))
	if err == nil || !strings.Contains(err.Error(), "x.jsonl:2: ") || !strings.Contains(err.Error(), `key "text" is not valid UTF-8 (byte 0xe9`) ||
		!strings.Contains(err.Error(), "data.bad_rows: skip") {
		t.Fatalf("bad_rows fail: %v", err)
	}

	var got []string
	o := opts(true, &got)
	p := mustNew(t, o, nil)
	var docs []string
	for {
		b, err := p.Next()
		if err != nil {
			if err.Error() != "EOF" {
				t.Fatal(err)
			}
			break
		}
		docs = append(docs, docsOf(t, []*Batch{b})...)
	}
	p.Close()
	want := []string{
		"x.jsonl:2: key \"text\" is not valid UTF-8",
		"x.jsonl:3: key \"text\" is null",
		"x.jsonl:4: key \"text\" holds an unpaired UTF-16 surrogate",
		"x.jsonl:6: missing key \"text\"", // a messages row in a text dataset: bad for its own reason
	}
	if len(got) != len(want) {
		t.Fatalf("skipped %d rows, want %d: %q", len(got), len(want), got)
	}
	for i, w := range want {
		if !strings.Contains(got[i], w) {
			t.Errorf("skipped row %d: %q lacks %q", i, got[i], w)
		}
	}
	if st := p.Stats(); st.BadRows != 4 || st.Examples != 3 {
		t.Errorf("stats: %+v", st)
	}
	if r := p.Report(); !strings.Contains(r, "4 bad rows skipped (bad_rows: skip)") {
		t.Errorf("report: %q", r)
	}
	if len(docs) != 3 || !strings.Contains(strings.Join(docs, "|"), "a real \ufffd and \ufffd are fine") {
		t.Errorf("documents: %q", docs)
	}

	// Messages: invalid UTF-8 in a message's content is a bad row too.
	o = opts(false, nil)
	o.Datasets[0].Type = TypeMessages
	o.Datasets[0].Path = filepath.Join(dir, "m.jsonl")
	os.WriteFile(o.Datasets[0].Path, []byte(lines[5]+"\n"), 0o644)
	if _, err := drainErr(o); err == nil || !strings.Contains(err.Error(), `m.jsonl:1: messages[1]: "content" is not valid UTF-8`) {
		t.Errorf("messages: %v", err)
	}

	// Arrow: the same for a string column, named by file and row.
	a := filepath.Join(dir, "t.arrow")
	writeArrowStream(t, a, textSchema, textRecords([]string{"fine", "caf\xe9", "also fine"}, 3))
	o = opts(false, nil)
	o.Datasets[0].Path = a
	if _, err := drainErr(o); err == nil || !strings.Contains(err.Error(), `t.arrow (row 1): column "text" is not valid UTF-8`) {
		t.Errorf("arrow: %v", err)
	}
}

// truncation: drop counts what it drops, and the pipeline reports it.
func TestDropReported(t *testing.T) {
	dir := t.TempDir()
	var rows []map[string]any
	for i := 0; i < 10; i++ {
		n := 10 // 12 tokens with BOS and EOS: fits seq_len 16
		if i%3 == 0 {
			n = 15 + i // 17+ tokens: too long
		}
		rows = append(rows, map[string]any{"text": strings.Repeat("x", n)})
	}
	writeJSONL(t, filepath.Join(dir, "d.jsonl"), rows)
	p := mustNew(t, Options{Datasets: []DatasetSpec{{Path: filepath.Join(dir, "d.jsonl")}}, Tokenizer: byteTok{}, SeqLen: 16,
		Packing: true, Truncation: TruncateDrop}, nil)
	drain(t, p)
	st := p.Stats()
	if st.DroppedLong != 4 || st.Docs != 6 || st.Truncated != 0 || st.Examples != 10 {
		t.Errorf("stats: %+v", st)
	}
	if r := p.Report(); r != "data: 4 documents dropped as longer than seq_len 16 (truncation: drop; split or truncate keeps them)" {
		t.Errorf("report: %q", r)
	}
}
