package data

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestPackRowJSON(t *testing.T) {
	for _, r := range []packRow{
		{IDs: []int32{1, 2, 3, 4}, Labels: []int32{-100, 2, -100, -100}, Docs: []int32{2, 2}},
		{IDs: []int32{1, 2, 3}, Labels: []int32{-100, 7, 3}, Docs: []int32{3}}, // labels that are not ids
		{IDs: []int32{}, Labels: []int32{}, Docs: []int32{}},
	} {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var back packRow
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back.IDs, r.IDs) || !reflect.DeepEqual(back.Labels, r.Labels) || !reflect.DeepEqual(back.Docs, r.Docs) {
			t.Fatalf("%s: %+v != %+v", b, back, r)
		}
	}
	var bad packRow
	if err := json.Unmarshal([]byte(`{"ids":[1],"masked":[[0,5]],"docs":[1]}`), &bad); err == nil {
		t.Fatal("run outside the row accepted")
	}
}

func TestPackerBestFit(t *testing.T) {
	p := &packer{seqLen: 10, pool: 2, packing: true}
	doc := func(n int) Doc {
		d := Doc{IDs: make([]int32, n), Labels: make([]int32, n)}
		for i := range d.IDs {
			d.IDs[i], d.Labels[i] = int32(n), int32(n)
		}
		return d
	}
	for _, n := range []int{6, 7, 3, 4, 10} {
		p.add(doc(n))
	}
	// 6 opens row A, 7 opens row B, 3 fills B (best fit: B has 3 free) → ready, 4 fills A → ready, 10 → ready.
	if len(p.ready) != 3 || len(p.open) != 0 {
		t.Fatalf("ready %d open %d", len(p.ready), len(p.open))
	}
	want := [][]int32{{7, 3}, {6, 4}, {10}}
	for i, r := range p.ready {
		if !reflect.DeepEqual(r.Docs, want[i]) {
			t.Fatalf("row %d docs %v, want %v", i, r.Docs, want[i])
		}
	}
	b, real := p.take(3, false)
	if real != 30 || b.Labels[0] != IgnoreIndex || b.Labels[7] != IgnoreIndex || b.Labels[8] != 3 {
		t.Fatalf("real %d labels %v", real, b.Labels[:10])
	}
	checkBatch(t, b)
}
