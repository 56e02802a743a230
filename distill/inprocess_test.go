package distill_test

import (
	"context"
	"math"
	"sort"
	"testing"

	"github.com/llamatune/llamatune/distill"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/model/llama"
)

func TestInProcessTopKMatchesBruteForce(t *testing.T) {
	dir := tinyModel(t, "llama2", 0)
	te, err := distill.NewInProcess(dir, cpu.New(), kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	defer te.Close()
	te.LogitBudget = 5 * 32000 // 5 positions per lm_head chunk: exercises the chunking
	V := te.Info().VocabSize
	b := packBatch([][]int{{5, 7, 4}, {9}, {1, 3, 12}}, 16, 2, V, 7)
	const k = 8
	got, err := te.TopK(context.Background(), b, k)
	if err != nil {
		t.Fatal(err)
	}
	if got.K != k || len(got.IDs) != b.Rows*b.SeqLen*k {
		t.Fatalf("K %d, %d ids", got.K, len(got.IDs))
	}
	// Brute force: each document on its own, full logits, sorted log-softmax.
	m := te.Model()
	for r := 0; r < b.Rows; r++ {
		for s := 0; s < b.SeqLen; {
			e := s + 1
			for e < b.SeqLen && b.DocStart[r*b.SeqLen+e] == int32(s) {
				e++
			}
			ids := b.InputIDs[r*b.SeqLen+s : r*b.SeqLen+e]
			lg, err := m.Logits(llama.NewInferenceTape(m.Backend()), &llama.Input{Rows: 1, SeqLen: len(ids), InputIDs: ids})
			if err != nil {
				t.Fatal(err)
			}
			full := lg.F32()
			for p := 0; p < len(ids); p++ {
				row := full[p*V : (p+1)*V]
				mx := math.Inf(-1)
				for _, v := range row {
					mx = math.Max(mx, float64(v))
				}
				var sum float64
				for _, v := range row {
					sum += math.Exp(float64(v) - mx)
				}
				lse := mx + math.Log(sum)
				order := make([]int, V)
				for i := range order {
					order[i] = i
				}
				sort.SliceStable(order, func(a, c int) bool { return row[order[a]] > row[order[c]] })
				i := r*b.SeqLen + s + p
				for j := 0; j < k; j++ {
					want := float64(row[order[j]]) - lse
					gl := float64(got.LogProbs[i*k+j])
					if math.Abs(gl-want) > 1e-4 {
						t.Fatalf("row %d pos %d rank %d: logprob %v, brute force %v", r, s+p, j, gl, want)
					}
					if got.IDs[i*k+j] != int32(order[j]) && math.Abs(float64(row[got.IDs[i*k+j]]-row[order[j]])) > 1e-5 {
						t.Fatalf("row %d pos %d rank %d: id %d, brute force %d", r, s+p, j, got.IDs[i*k+j], order[j])
					}
				}
			}
			s = e
		}
	}
	if _, err := te.TopK(context.Background(), b, 0); err == nil {
		t.Fatal("k=0 accepted")
	}
}
