package checkpoint

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Run owns the run layout: checkpoints appear whole (a failed fill leaves
// nothing), are listed by step number, pruned oldest first, and the
// temporaries of a crashed save are cleaned.
func TestRunLayout(t *testing.T) {
	r := Run{Dir: t.TempDir()}
	if _, err := r.Latest(); err == nil {
		t.Fatal("an empty run has no latest checkpoint")
	}
	write := func(step int) string {
		dir, err := r.WriteCheckpoint(step, 2, func(tmp string) error {
			return os.WriteFile(filepath.Join(tmp, StateFile), []byte("{}"), 0o644)
		})
		if err != nil {
			t.Fatal(err)
		}
		return dir
	}
	write(999999)
	last := write(1000000)
	if got, _ := r.Latest(); got != last {
		t.Fatalf("latest %s, want %s (by step number)", got, last)
	}
	write(5)
	list, _ := r.Checkpoints()
	if len(list) != 2 || filepath.Base(list[0]) != "step-999999" {
		t.Fatalf("after pruning to 2: %v", list)
	}
	if _, err := r.WriteCheckpoint(7, 0, func(string) error { return errors.New("disk full") }); err == nil {
		t.Fatal("a failed fill must fail the save")
	}
	ents, _ := os.ReadDir(r.Root())
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp") || e.Name() == StepName(7) {
			t.Fatalf("a failed save left %s", e.Name())
		}
	}
	if err := os.Mkdir(filepath.Join(r.Root(), tmpPrefix+"000008-123"), 0o755); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	if err := r.CleanTemp(&log); err != nil || !strings.Contains(log.String(), "removed 1 unfinished") {
		t.Fatalf("clean: %v, %q", err, log.String())
	}
	if prev := r.Before(last, func(string) bool { return true }); filepath.Base(prev) != "step-999999" {
		t.Fatalf("before %s: %s", last, prev)
	}
}
