package benchmark

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
)

// The shapes file both sides of the kernel benchmark read parses, and the
// dry set runs every kernel on the CPU backend (a few milliseconds).
func TestKernelsDryShapes(t *testing.T) {
	path := "../../tools/gpu/shapes.json"
	for _, set := range []string{"gpu", "dry"} {
		if _, err := LoadKernelShapes(path, set); err != nil {
			t.Fatal(err)
		}
	}
	s, _ := LoadKernelShapes(path, "dry")
	s.Reps = 1
	rs := Kernels(cpu.New(), s, kernels.BF16)
	want := []string{"rmsnorm", "rope", "swiglu", "attention", "linear_ce", "linear_kd"}
	if len(rs) != len(want) {
		t.Fatalf("%d results, want %v", len(rs), want)
	}
	for i, r := range rs {
		if r.Name != want[i] || r.MedianMS < 0 || r.Reps != 1 {
			t.Errorf("result %d: %+v, want %s", i, r, want[i])
		}
	}
	bad := filepath.Join(t.TempDir(), "s.json")
	os.WriteFile(bad, []byte(`{"x": {"batch": 1, "seq": 8, "hidden": 8, "intermediate": 8, "heads": 3, "kv_heads": 2, "head_dim": 4, "vocab": 8}}`), 0o644)
	if _, err := LoadKernelShapes(bad, "x"); err == nil {
		t.Error("heads not a multiple of kv_heads: want an error")
	}
	if _, err := LoadKernelShapes(path, "nope"); err == nil {
		t.Error("unknown set: want an error")
	}
}
