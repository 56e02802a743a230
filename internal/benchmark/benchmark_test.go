package benchmark

import (
	"strings"
	"testing"

	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
)

func BenchmarkMatMul1024(b *testing.B) {
	for _, dt := range []kernels.DType{kernels.F32, kernels.BF16} {
		b.Run(dt.String(), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				r := GEMM(1024, 1024, 1024, 1, dt)
				b.ReportMetric(r.GFLOPS, "GFLOP/s")
			}
		})
	}
}

func BenchmarkTrainStepSmall(b *testing.B) {
	for i := 0; i < b.N; i++ {
		r, err := Step(StepOptions{Layers: 4, Hidden: 256, Vocab: 8192, Rows: 2, SeqLen: 256, Steps: 1})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(r.TokensPerSec, "tokens/s")
	}
}

func TestStepLearns(t *testing.T) {
	// Overfitting one fixed batch must lower the loss: the step is wired right.
	first, err := Step(StepOptions{Layers: 1, Hidden: 64, Vocab: 50, Rows: 1, SeqLen: 16, Steps: 1})
	if err != nil {
		t.Fatal(err)
	}
	later, err := Step(StepOptions{Layers: 1, Hidden: 64, Vocab: 50, Rows: 1, SeqLen: 16, Steps: 30})
	if err != nil {
		t.Fatal(err)
	}
	if !(later.LastLoss < first.LastLoss-0.5) {
		t.Fatalf("loss after 31 steps %.4f, after 2 steps %.4f: not learning", later.LastLoss, first.LastLoss)
	}
}

// The FLOP count of a Llama 3.2 1B LoRA step, term by term.
func TestCountFLOPs1B(t *testing.T) {
	c, _ := randmodel.ShapeConfig("llama3.2-1b")
	const (
		H, I, Q, KV, V, L, T = 2048, 8192, 2048, 512, 128256, 16, 512
	)
	f := CountFLOPs(c, StepOptions{Method: "lora", Rows: 1, SeqLen: T, Recompute: true})
	layers := int64(L * (2*H*Q + 2*H*KV + 3*H*I))
	if f.N != layers+V*H || f.N != 1_235_746_816 {
		t.Fatalf("N = %d", f.N)
	}
	attn := 2.0 * L * T * T * Q
	lora := 2.0 * T * 16 * L * ((H + Q) + 2*(H+KV) + (Q + H) + 2*(H+I) + (I + H))
	want := StepFLOPs{N: f.N, Forward: 2 * float64(f.N) * T, BackwardData: 2 * float64(f.N) * T,
		Recompute: 2 * float64(layers) * T, Attention: 4.5 * attn, LoRA: 4 * lora}
	want.Total = want.Forward + want.BackwardData + want.Recompute + want.Attention + want.LoRA
	if f != want {
		t.Errorf("got %+v\nwant %+v", f, want)
	}
	full := CountFLOPs(c, StepOptions{Method: "full", Rows: 1, SeqLen: T})
	if full.BackwardWeights != 2*float64(f.N)*T || full.Recompute != 0 || full.LoRA != 0 || full.Attention != 3.5*attn {
		t.Errorf("full: %+v", full)
	}
}

// A LoRA step on a model directory goes through llama.Load and lora.Attach
// and trains the adapters only.
func TestStepModelDirLoRA(t *testing.T) {
	dir := randmodel.MustTinyModel(t, randmodel.TinyOptions{})
	r, err := Step(StepOptions{ModelDir: dir, Rows: 1, SeqLen: 16, Steps: 1, Recompute: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.Method != "lora" || r.TrainableParams != 2*16*(64+64+64+32+64+32+64+64+64+128+64+128+128+64) {
		t.Errorf("method %s, %d trainable", r.Method, r.TrainableParams)
	}
	if r.GFLOPS <= 0 || r.PeakRSS <= 0 || r.Estimate.Total <= 0 || !strings.Contains(r.String(), "FLOP/step") {
		t.Errorf("result %+v", r)
	}
	// Side by side: both precisions timed in one run, on the same loss.
	both, err := Step(StepOptions{ModelDir: dir, Rows: 1, SeqLen: 16, Steps: 1, SideBySide: true})
	if err != nil {
		t.Fatal(err)
	}
	if both.MeanF32 <= 0 || both.MeanBF16 <= 0 || !strings.Contains(both.String(), "bf16/f32 tokens/s") {
		t.Errorf("side by side result %+v", both)
	}
	// QLoRA: an NF4 base alone, and next to the bf16 one.
	q, err := Step(StepOptions{ModelDir: dir, Rows: 1, SeqLen: 16, Steps: 1, Weights: "nf4"})
	if err != nil {
		t.Fatal(err)
	}
	if q.Estimate.BaseDType != "nf4" || !strings.Contains(q.String(), "base weights nf4") {
		t.Errorf("nf4 result %+v", q)
	}
	w, err := Step(StepOptions{ModelDir: dir, Rows: 1, SeqLen: 16, Steps: 1, Weights: "both"})
	if err != nil {
		t.Fatal(err)
	}
	if w.MeanWBF16 <= 0 || w.MeanWNF4 <= 0 || !strings.Contains(w.String(), "nf4/bf16 tokens/s") {
		t.Errorf("weights side by side result %+v", w)
	}
	if _, err := Step(StepOptions{ModelDir: dir, Rows: 1, SeqLen: 16, Weights: "both", SideBySide: true}); err == nil {
		t.Error("--weights both with --compute both accepted")
	}
}

// A cache directory holding another model is not reused.
func TestShapeCacheMismatch(t *testing.T) {
	dir := randmodel.MustTinyModel(t, randmodel.TinyOptions{})
	_, err := Step(StepOptions{Shape: "llama3.2-1b", CacheDir: dir, Rows: 1, SeqLen: 16})
	if err == nil || !strings.Contains(err.Error(), "holds another model than llama3.2-1b") {
		t.Fatalf("got %v", err)
	}
	// The config.json init-tiny --shape writes is recognised (ids spaced as written).
	c, _ := randmodel.ShapeConfig("llama3.2-1b")
	cache := t.TempDir()
	if err := randmodel.WriteShapeConfig(cache, c); err != nil {
		t.Fatal(err)
	}
	if got, err := shapeDir(StepOptions{Shape: "llama3.2-1b", CacheDir: cache}, func(string, ...any) {}); err != nil || got != cache {
		t.Errorf("cache %s not reused: %q, %v", cache, got, err)
	}
}
