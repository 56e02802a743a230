package checkpoint

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// Tensors may be encoded lazily as the files are written (a model is never
// encoded in memory at once); sizes still come from the shapes.
func TestWriteShardedLazyEncode(t *testing.T) {
	dir := t.TempDir()
	calls := 0
	mk := func(name string, v []float32) WriteTensor {
		return WriteTensor{Name: name, DType: "F32", Shape: []int{len(v)},
			Encode: func() ([]byte, error) { calls++; return EncodeF32(v), nil }}
	}
	ts := []WriteTensor{mk("a", []float32{1, 2, 3}), mk("b", []float32{4, 5}), mk("c", []float32{6})}
	if err := WriteSharded(dir, ts, 12, nil); err != nil {
		t.Fatal(err)
	}
	if calls != 3 {
		t.Fatalf("encoded %d times, want once per tensor", calls)
	}
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if len(r.Files()) < 2 {
		t.Fatalf("want several shards, got %v", r.Files())
	}
	for name, want := range map[string][]float32{"a": {1, 2, 3}, "b": {4, 5}, "c": {6}} {
		got, err := r.F32(name)
		if err != nil || len(got) != len(want) || got[0] != want[0] {
			t.Fatalf("%s: %v %v", name, got, err)
		}
	}
	bad := []WriteTensor{{Name: "x", DType: "F32", Shape: []int{2}, Encode: func() ([]byte, error) { return nil, errors.New("disk on fire") }}}
	if err := WriteFile(filepath.Join(dir, "x.safetensors"), bad, nil); err == nil || !strings.Contains(err.Error(), `"x"`) || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("encode error: %v", err)
	}
	short := []WriteTensor{{Name: "y", DType: "F32", Shape: []int{2}, Encode: func() ([]byte, error) { return make([]byte, 4), nil }}}
	if err := WriteFile(filepath.Join(dir, "y.safetensors"), short, nil); err == nil || !strings.Contains(err.Error(), "needs 8") {
		t.Fatalf("short encode: %v", err)
	}
}
