package data

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// docsOf cuts the non-pad content of batches back into documents (as strings).
func docsOf(t *testing.T, bs []*Batch) []string {
	var out []string
	for _, b := range bs {
		checkBatch(t, b)
		for r := 0; r < b.Rows; r++ {
			o := r * b.SeqLen
			var cur []int
			flush := func() {
				if len(cur) > 0 && !(len(cur) == 1 && cur[0] == 0) { // a pad is its own one-token document
					out = append(out, byteTok{}.Decode(cur))
				}
				cur = nil
			}
			for i := 0; i < b.SeqLen; i++ {
				if int(b.DocStart[o+i]) == i {
					flush()
				}
				cur = append(cur, int(b.InputIDs[o+i]))
			}
			flush()
		}
	}
	return out
}

func TestPackingInvariantsAndContent(t *testing.T) {
	dir := t.TempDir()
	tx := texts(300, "doc")
	rows := make([]map[string]any, len(tx))
	for i, x := range tx {
		rows[i] = map[string]any{"text": x}
	}
	writeJSONL(t, filepath.Join(dir, "a.jsonl"), rows)
	for _, packing := range []bool{true, false} {
		o := Options{
			Datasets:  []DatasetSpec{{Path: filepath.Join(dir, "a.jsonl")}},
			Tokenizer: byteTok{}, SeqLen: 64, BatchRows: 3, Packing: packing, PadID: 0,
			Truncation: TruncateSplit,
		}
		p := mustNew(t, o, nil)
		bs := drain(t, p)
		got := docsOf(t, bs)
		// Every document comes back whole (BOS/EOS decode to nothing), possibly split in chunks.
		joined := strings.Join(got, "|")
		for _, x := range tx {
			if len(x)+2 <= 64 && !strings.Contains(joined, x) {
				t.Fatalf("packing=%v: document %q missing", packing, x)
			}
		}
		st := p.Stats()
		if st.Examples != 300 {
			t.Fatalf("examples %d", st.Examples)
		}
		eff := st.Efficiency()
		t.Logf("packing=%v batches=%d rows=%d tokens=%d pad=%d trained=%d efficiency=%.3f truncated=%d", packing, st.Batches, st.Rows, st.Tokens, st.PadTokens, st.TrainedTokens, eff, st.Truncated)
		if packing && eff < 0.9 {
			t.Fatalf("packing efficiency %.3f < 0.9", eff)
		}
		if !packing && st.Rows != st.Docs {
			t.Fatalf("unpacked: %d rows for %d docs", st.Rows, st.Docs)
		}
	}
}

func TestTruncationPolicies(t *testing.T) {
	dir := t.TempDir()
	writeJSONL(t, filepath.Join(dir, "a.jsonl"), []map[string]any{
		{"text": strings.Repeat("a", 100)}, {"text": "short"},
	})
	run := func(tr Truncation) ([]*Batch, Stats) {
		p := mustNew(t, Options{Datasets: []DatasetSpec{{Path: filepath.Join(dir, "a.jsonl")}},
			Tokenizer: byteTok{}, SeqLen: 32, Packing: true, Truncation: tr}, nil)
		bs := drain(t, p)
		for _, b := range bs {
			checkBatch(t, b)
		}
		return bs, p.Stats()
	}
	_, st := run(TruncateKeepStart)
	if st.Truncated != 1 || st.Tokens != 32+7 {
		t.Fatalf("truncate: %+v", st)
	}
	_, st = run(TruncateSplit)
	if st.Truncated != 1 || st.Tokens != 102+7 || st.Docs != 5 {
		t.Fatalf("split: %+v", st)
	}
	_, st = run(TruncateDrop)
	if st.DroppedLong != 1 || st.Tokens != 7 {
		t.Fatalf("drop: %+v", st)
	}
}

func TestLabelMasks(t *testing.T) {
	dir := t.TempDir()
	writeJSONL(t, filepath.Join(dir, "pc.jsonl"), []map[string]any{{"prompt": "Q?", "completion": "ans"}})
	writeJSONL(t, filepath.Join(dir, "m.jsonl"), []map[string]any{{"messages": []map[string]string{
		{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}}}})
	one := func(path string, mod func(*Options)) *Batch {
		o := Options{Datasets: []DatasetSpec{{Path: path}}, Tokenizer: byteTok{}, Chat: fakeChat, SeqLen: 32, Packing: true}
		if mod != nil {
			mod(&o)
		}
		bs := drain(t, mustNew(t, o, nil))
		if len(bs) != 1 {
			t.Fatalf("%d batches", len(bs))
		}
		checkBatch(t, bs[0])
		return bs[0]
	}
	trained := func(b *Batch) string {
		var ids []int
		for i, l := range b.Labels {
			if l != IgnoreIndex {
				if l != b.InputIDs[i] {
					t.Fatalf("label %d at %d differs from input id %d (labels must not be shifted)", l, i, b.InputIDs[i])
				}
				ids = append(ids, int(l))
			}
		}
		return byteTok{}.Decode(ids) + fmt.Sprintf("/%d", len(ids))
	}
	if got := trained(one(filepath.Join(dir, "pc.jsonl"), nil)); got != "ans/4" { // + EOS
		t.Fatalf("prompt_completion trained %q", got)
	}
	if got := trained(one(filepath.Join(dir, "pc.jsonl"), func(o *Options) { o.TrainOnPrompt = true })); got != "Q?ans/6" {
		t.Fatalf("train on prompt: %q", got)
	}
	if got := trained(one(filepath.Join(dir, "m.jsonl"), nil)); got != "yo\n/3" {
		t.Fatalf("messages trained %q", got)
	}
	if got := trained(one(filepath.Join(dir, "m.jsonl"), func(o *Options) { o.TrainOn = TrainOnAll })); got != ": S\nu: hi\nA: yo\n/16" {
		t.Fatalf("messages train_on all: %q", got)
	}
}

func batchesEqual(t *testing.T, what string, a, b []*Batch) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%s: %d batches vs %d", what, len(a), len(b))
	}
	for i := range a {
		if !reflect.DeepEqual(a[i].InputIDs, b[i].InputIDs) || !reflect.DeepEqual(a[i].Labels, b[i].Labels) ||
			!reflect.DeepEqual(a[i].PositionIDs, b[i].PositionIDs) || !reflect.DeepEqual(a[i].DocStart, b[i].DocStart) {
			t.Fatalf("%s: batch %d differs", what, i)
		}
		ca, _ := json.Marshal(a[i].Cursor)
		cb, _ := json.Marshal(b[i].Cursor)
		if string(ca) != string(cb) {
			t.Fatalf("%s: cursor after batch %d differs:\n%s\n%s", what, i, ca, cb)
		}
	}
}

// mixtureFixture writes three datasets in three formats.
func mixtureFixture(t *testing.T) []DatasetSpec {
	dir := t.TempDir()
	// 1: HF save_to_disk, 3 shards, record batches of 7 rows.
	writeHF(t, filepath.Join(dir, "hf"), texts(90, "hf"), 3, 7)
	// 2: JSONL shards (glob), prompt/completion.
	for s := 0; s < 2; s++ {
		var rows []map[string]any
		for i := 0; i < 25; i++ {
			rows = append(rows, map[string]any{"q": fmt.Sprintf("q%d-%d", s, i), "a": strings.Repeat("z", i%9+1)})
		}
		writeJSONL(t, filepath.Join(dir, fmt.Sprintf("pc-%d.jsonl", s)), rows)
	}
	// 3: Parquet, 4 row groups.
	writeParquet(t, filepath.Join(dir, "c.parquet"), textSchema, textRecords(texts(40, "pq"), 10))
	return []DatasetSpec{
		{Path: filepath.Join(dir, "hf"), Weight: 2},
		{Path: filepath.Join(dir, "pc-*.jsonl"), Type: TypePromptCompletion, Columns: Columns{Prompt: "q", Completion: "a"}, Weight: 1},
		{Path: filepath.Join(dir, "c.parquet"), Weight: 1, Epochs: 3},
	}
}

func TestResumeExact(t *testing.T) {
	specs := mixtureFixture(t)
	cases := []struct {
		name string
		mod  func(*Options)
	}{
		{"shuffle-pack", func(o *Options) {}},
		{"noshuffle-unpacked", func(o *Options) { o.ShuffleBuffer = 0; o.Packing = false; o.BatchRows = 3 }},
		{"first-exhausted-split", func(o *Options) { o.Stop = StopFirstExhausted; o.Truncation = TruncateSplit; o.SeqLen = 24 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{Datasets: specs, Tokenizer: byteTok{}, SeqLen: 48, BatchRows: 2, Packing: true,
				ShuffleBuffer: 16, Seed: 7, Epochs: 2, Workers: 3}
			tc.mod(&o)
			full := drain(t, mustNew(t, o, nil))
			if len(full) < 10 {
				t.Fatalf("only %d batches", len(full))
			}
			// Determinism.
			batchesEqual(t, "rerun", full, drain(t, mustNew(t, o, nil)))
			for _, k := range []int{0, 1, len(full) / 3, len(full) / 2, len(full) - 2, len(full) - 1} {
				js, err := json.Marshal(full[k].Cursor)
				if err != nil {
					t.Fatal(err)
				}
				c, err := ParseCursor(js)
				if err != nil {
					t.Fatal(err)
				}
				rest := drain(t, mustNew(t, o, &c))
				batchesEqual(t, fmt.Sprintf("resume after batch %d", k), full[k+1:], rest)
			}
		})
	}
}

func TestShuffleAndEpochs(t *testing.T) {
	dir := t.TempDir()
	writeHF(t, filepath.Join(dir, "hf"), texts(50, "s"), 2, 8)
	o := Options{Datasets: []DatasetSpec{{Path: filepath.Join(dir, "hf")}}, Tokenizer: byteTok{}, SeqLen: 128,
		ShuffleBuffer: 20, Seed: 1, Epochs: 2}
	docs := docsOf(t, drain(t, mustNew(t, o, nil)))
	if len(docs) != 100 {
		t.Fatalf("%d docs, want 100", len(docs))
	}
	first, second := append([]string(nil), docs[:50]...), append([]string(nil), docs[50:]...)
	if reflect.DeepEqual(first, second) {
		t.Fatal("both epochs in the same order")
	}
	sort.Strings(first)
	sort.Strings(second)
	if !reflect.DeepEqual(first, second) {
		t.Fatal("epochs hold different examples")
	}
	want := texts(50, "s")
	sort.Strings(want)
	if !reflect.DeepEqual(first, want) {
		t.Fatal("epoch content differs from the dataset")
	}
	o.Seed = 2
	docs2 := docsOf(t, drain(t, mustNew(t, o, nil)))
	if reflect.DeepEqual(docs, docs2) {
		t.Fatal("seed has no effect")
	}
}

func TestEvalSplitDisjoint(t *testing.T) {
	dir := t.TempDir()
	writeHF(t, filepath.Join(dir, "hf"), texts(200, "e"), 2, 16)
	base := Options{Datasets: []DatasetSpec{{Path: filepath.Join(dir, "hf")}}, Tokenizer: byteTok{}, SeqLen: 128, EvalFraction: 0.2}
	tr, ev := base, base
	tr.Split, ev.Split = SplitTrain, SplitEval
	a := docsOf(t, drain(t, mustNew(t, tr, nil)))
	b := docsOf(t, drain(t, mustNew(t, ev, nil)))
	if len(a)+len(b) != 200 || len(b) < 20 || len(b) > 60 {
		t.Fatalf("train %d eval %d", len(a), len(b))
	}
	seen := map[string]bool{}
	for _, x := range a {
		seen[x] = true
	}
	for _, x := range b {
		if seen[x] {
			t.Fatalf("%q in both splits", x)
		}
	}
}

func TestMixWeights(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"a", "b"} {
		var rows []map[string]any
		for i := 0; i < 400; i++ {
			rows = append(rows, map[string]any{"text": n})
		}
		writeJSONL(t, filepath.Join(dir, n+".jsonl"), rows)
	}
	o := Options{Datasets: []DatasetSpec{{Path: filepath.Join(dir, "a.jsonl"), Weight: 3}, {Path: filepath.Join(dir, "b.jsonl"), Weight: 1}},
		Tokenizer: byteTok{}, SeqLen: 3, Stop: StopFirstExhausted}
	docs := docsOf(t, drain(t, mustNew(t, o, nil)))
	na := 0
	for _, d := range docs {
		if d == "a" {
			na++
		}
	}
	ratio := float64(na) / float64(len(docs))
	if ratio < 0.7 || ratio > 0.8 || na != 400 {
		t.Fatalf("a share %.3f (%d of %d), want ~0.75 and all 400 a's", ratio, na, len(docs))
	}
}

func TestResumeChecks(t *testing.T) {
	dir := t.TempDir()
	writeHF(t, filepath.Join(dir, "hf"), texts(60, "r"), 2, 8)
	o := Options{Datasets: []DatasetSpec{{Path: filepath.Join(dir, "hf")}}, Tokenizer: byteTok{}, SeqLen: 64, BatchRows: 2, Packing: true, ShuffleBuffer: 10}
	full := drain(t, mustNew(t, o, nil))
	c := full[3].Cursor
	// Another seed: refused with a clear message.
	o2 := o
	o2.Seed = 99
	if _, err := New(o2, &c); err == nil || !strings.Contains(err.Error(), "another data configuration") {
		t.Fatalf("seed change: %v", err)
	}
	// Another batch size: allowed; the same rows follow.
	o3 := o
	o3.BatchRows = 1
	rest := drain(t, mustNew(t, o3, &c))
	var a, b []int32
	for _, x := range full[4:] {
		a = append(a, x.InputIDs...)
	}
	for _, x := range rest {
		b = append(b, x.InputIDs...)
	}
	if !reflect.DeepEqual(a, b) {
		t.Fatal("rows differ after resuming with another batch size")
	}
	// A damaged cursor.
	if _, err := ParseCursor([]byte(`{"version": 1, "mix": 3}`)); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("damaged: %v", err)
	}
}
