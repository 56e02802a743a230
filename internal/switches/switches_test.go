package switches

import "testing"

func TestOnAndIs(t *testing.T) {
	for v, want := range map[string]bool{"": false, "0": false, "false": false, "1": true, "yes": true} {
		t.Setenv(NoFused, v)
		if On(NoFused) != want {
			t.Errorf("%s=%q: On = %v, want %v", NoFused, v, !want, want)
		}
	}
	if !Is("NO_FUSED") || !Is(GemmNoBF16) || Is("LLAMATUNE_OPTIMIZER__LR") || Is("NO_SUCH") {
		t.Error("Is: wrong answer for a switch or a job key")
	}
}
