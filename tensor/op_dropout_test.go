package tensor

import (
	"math"
	"runtime"
	"slices"
	"testing"
)

// Dropout's mask: each element dropped with probability p (within 5σ over
// 300k elements), kept ones scaled by exactly 1/(1−p), the same for a seed
// whatever the number of threads, different for another seed.
func TestDropoutMask(t *testing.T) {
	const n = 300_001 // not a multiple of the chunk or of the pair draw
	for _, p := range []float64{0.05, 0.3} {
		m := dropoutMask(n, p, 7)
		keep := float32(1 / (1 - p))
		dropped := 0
		for i, v := range m {
			switch v {
			case 0:
				dropped++
			case keep:
			default:
				t.Fatalf("p %g: mask[%d] = %v, want 0 or %v", p, i, v, keep)
			}
		}
		rate, sigma := float64(dropped)/n, math.Sqrt(p*(1-p)/n)
		if math.Abs(rate-p) > 5*sigma {
			t.Errorf("p %g: dropped %.4f of the elements (σ %.4f)", p, rate, sigma)
		}
		prev := runtime.GOMAXPROCS(1)
		one := dropoutMask(n, p, 7)
		runtime.GOMAXPROCS(prev)
		if !slices.Equal(one, m) {
			t.Errorf("p %g: the mask depends on the number of threads", p)
		}
		if slices.Equal(dropoutMask(n, p, 8), m) {
			t.Errorf("p %g: seeds 7 and 8 give the same mask", p)
		}
	}
}
