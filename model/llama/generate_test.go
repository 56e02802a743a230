package llama_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/model/llama"
)

// The KV-cache path must give the same next-token logits as a full forward
// over the whole sequence.
func TestKVCacheMatchesFullForward(t *testing.T) {
	be := cpu.New()
	cfg := randmodel.TinyConfig(61)
	m, err := llama.NewRandom(cfg, be, kernels.F32, 5)
	if err != nil {
		t.Fatal(err)
	}
	seq := []int32{1, 7, 3, 9, 22, 40, 5, 5, 60}
	cache := m.NewKVCache()
	got, err := m.Step(cache, seq[:4])
	if err != nil {
		t.Fatal(err)
	}
	for n := 4; n <= len(seq); n++ {
		in := &llama.Input{Rows: 1, SeqLen: n, InputIDs: seq[:n]}
		full, err := m.Logits(llama.NewInferenceTape(be), in)
		if err != nil {
			t.Fatal(err)
		}
		want := full.F32()[(n-1)*cfg.VocabSize:]
		for j := range want {
			if math.Abs(float64(got[j]-want[j])) > 1e-4 {
				t.Fatalf("len %d logit %d: cache %v full %v", n, j, got[j], want[j])
			}
		}
		if n < len(seq) {
			if got, err = m.Step(cache, seq[n:n+1]); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestGenerateDeterministic(t *testing.T) {
	be := cpu.New()
	m, err := llama.NewRandom(randmodel.TinyConfig(61), be, kernels.F32, 6)
	if err != nil {
		t.Fatal(err)
	}
	o := llama.GenerateOptions{MaxNewTokens: 8, Temperature: 0.8, TopP: 0.9, Seed: 42, StopIDs: []int{}}
	a, err := m.Generate([]int32{1, 2, 3}, o)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := m.Generate([]int32{1, 2, 3}, o)
	if len(a) != 8 || len(b) != 8 {
		t.Fatalf("lengths %d %d", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("same seed, different samples: %v vs %v", a, b)
		}
	}
	g, _ := m.Generate([]int32{1, 2, 3}, llama.GenerateOptions{MaxNewTokens: 3, StopIDs: []int{}})
	if len(g) != 3 {
		t.Fatalf("greedy: %v", g)
	}
}

func TestSampleTopP(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	logits := []float32{5, 4.9, 0, -3}
	for i := 0; i < 200; i++ {
		if s := llama.Sample(logits, 1, 0.5, r); s != 0 {
			t.Fatalf("top-p 0.5 sampled %d; only token 0 is inside the nucleus", s)
		}
	}
	seen := map[int]bool{}
	for i := 0; i < 500; i++ {
		seen[llama.Sample(logits, 1, 0.99, r)] = true
	}
	if !seen[0] || !seen[1] || seen[3] {
		t.Fatalf("top-p 0.99 sampled %v", seen)
	}
}

func TestLlama3RopeScaling(t *testing.T) {
	// Values from transformers' _compute_llama3_parameters for head_dim 128,
	// theta 500000, factor 8, low 1, high 4, original 8192 (Llama 3.1 8B).
	c := llama.Config{HiddenSize: 4096, NumAttentionHeads: 32, RopeTheta: 500000,
		RopeScaling: &llama.RopeScaling{RopeType: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 8192}}
	inv := c.InvFreq()
	if len(inv) != 64 {
		t.Fatal(len(inv))
	}
	// Highest frequencies untouched, lowest divided by 8, a smooth band between.
	base := func(i int) float64 { return 1 / math.Pow(500000, float64(2*i)/128) }
	if math.Abs(float64(inv[0])-base(0)) > 1e-9 || math.Abs(float64(inv[63])-base(63)/8)/(base(63)/8) > 1e-5 {
		t.Fatalf("ends: %v %v", inv[0], inv[63])
	}
	for i := 0; i < 64; i++ {
		wl := 2 * math.Pi / base(i)
		if wl > 2048 && wl < 8192 {
			if r := float64(inv[i]) / base(i); r <= 1.0/8 || r >= 1 {
				t.Fatalf("band %d ratio %v", i, r)
			}
		}
	}
}

// liveBackend is the CPU backend counting the bytes of the buffers Alloc
// made and Free has not yet freed, and their peak.
type liveBackend struct {
	*cpu.Backend
	live, peak int64
}

func (b *liveBackend) Alloc(dt kernels.DType, n int) kernels.Buffer {
	b.live += int64(n * dt.Size())
	b.peak = max(b.peak, b.live)
	return b.Backend.Alloc(dt, n)
}

func (b *liveBackend) Free(buf kernels.Buffer) {
	b.live -= int64(buf.Len() * buf.DType().Size())
	b.Backend.Free(buf)
}

// Step on a prompt holds one layer's intermediates at a time, not every
// layer's: the peak of a 6-layer model is about that of a 1-layer one (it was
// 6 times the per-layer part when the whole pass ran on one tape, which the
// on-policy distillation's prompts made costly).
func TestStepMemoryPerLayer(t *testing.T) {
	peak := func(layers int) int64 {
		be := &liveBackend{Backend: cpu.New()}
		cfg := randmodel.TinyConfig(61)
		cfg.NumHiddenLayers = layers
		m, err := llama.NewRandom(cfg, be, kernels.F32, 5)
		if err != nil {
			t.Fatal(err)
		}
		prompt := make([]int32, 200)
		for i := range prompt {
			prompt[i] = int32(i % 61)
		}
		be.live, be.peak = 0, 0
		if _, err := m.Step(m.NewKVCache(), prompt); err != nil {
			t.Fatal(err)
		}
		return be.peak
	}
	one, six := peak(1), peak(6)
	t.Logf("peak of Step's buffers on a 200-token prompt: 1 layer %d B, 6 layers %d B", one, six)
	if float64(six) > 1.5*float64(one) {
		t.Fatalf("6 layers peak at %d B, 1 layer at %d B: Step keeps every layer's activations", six, one)
	}
}
