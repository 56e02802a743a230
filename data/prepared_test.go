package data

import (
	"path/filepath"
	"reflect"
	"sort"
	"testing"
)

func TestPreparedRoundTrip(t *testing.T) {
	dir := t.TempDir()
	writeHF(t, filepath.Join(dir, "hf"), texts(120, "p"), 2, 9)
	o := Options{Datasets: []DatasetSpec{{Path: filepath.Join(dir, "hf")}}, Tokenizer: byteTok{}, SeqLen: 80, BatchRows: 4,
		Packing: true, PackPool: 1, PadID: 0}
	src := drain(t, mustNew(t, o, nil))
	out := filepath.Join(dir, "prepared")
	w, err := NewPreparedWriter(out, 80, true, 0, "byte")
	if err != nil {
		t.Fatal(err)
	}
	w.rowsPerBatch, w.rowsPerShard = 5, 23 // several record batches and shards
	for _, b := range src {
		if err := w.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := NewPreparedWriter(out, 80, true, 0, ""); err == nil {
		t.Fatal("overwriting a prepared dir should fail")
	}
	rows, _, _, shards := w.PreparedSummary()
	if shards < 2 {
		t.Fatalf("%d shards", shards)
	}
	// Read back without a tokenizer: same rows, same batches.
	back := Options{Datasets: []DatasetSpec{{Path: out}}, VocabSize: 259, SeqLen: 80, BatchRows: 4, Packing: true, PackPool: 1, PadID: 0}
	p := mustNew(t, back, nil)
	if p.Types()[0] != TypeTokenized {
		t.Fatalf("type %v", p.Types())
	}
	got := drain(t, p)
	if p.Stats().Rows != rows {
		t.Fatalf("rows %d vs %d", p.Stats().Rows, rows)
	}
	for i := range src {
		if !reflect.DeepEqual(src[i].InputIDs, got[i].InputIDs) || !reflect.DeepEqual(src[i].Labels, got[i].Labels) ||
			!reflect.DeepEqual(src[i].DocStart, got[i].DocStart) || !reflect.DeepEqual(src[i].PositionIDs, got[i].PositionIDs) {
			t.Fatalf("batch %d differs after the round trip", i)
		}
	}
	// With best-fit packing the documents are the same set.
	back.PackPool, back.ShuffleBuffer = 8, 50
	a, b := docsOf(t, src), docsOf(t, drain(t, mustNew(t, back, nil)))
	sort.Strings(a)
	sort.Strings(b)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("documents differ after re-packing")
	}
}
