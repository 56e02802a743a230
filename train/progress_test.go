package train

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// After a resume the ETA is this process's rate times the steps left, not
// the elapsed time spread over every step of the run.
func TestProgressETAAfterResume(t *testing.T) {
	var b bytes.Buffer
	p := newProgress(&b, false, 10)
	p.resumed(5)
	p.start = time.Now().Add(-10 * time.Second) // one step in 10 s
	p.step(StepMetrics{Step: 6})
	if !strings.Contains(b.String(), "eta 40s") {
		t.Fatalf("want eta 40s (4 steps left at 10 s each): %q", b.String())
	}
}
