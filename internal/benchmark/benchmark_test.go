package benchmark

import (
	"testing"
)

func BenchmarkMatMul1024(b *testing.B) {
	for i := 0; i < b.N; i++ {
		r := GEMM(1024, 1024, 1024, 1)
		b.ReportMetric(r.GFLOPS, "GFLOP/s")
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
