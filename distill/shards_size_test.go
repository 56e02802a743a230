package distill_test

import (
	"context"
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/distill"
)

// synthTeacher makes random top-k lists of a 128,256-token vocabulary.
type synthTeacher struct {
	V    int
	zipf bool
	r    *rand.Rand
	info distill.Info
}

func (s *synthTeacher) Info() distill.Info { return s.info }
func (s *synthTeacher) Close() error       { return nil }
func (s *synthTeacher) TopK(ctx context.Context, b *data.Batch, k int) (*distill.TopK, error) {
	n := b.Rows * b.SeqLen
	out := &distill.TopK{K: k, IDs: make([]int32, n*k), LogProbs: make([]float32, n*k)}
	z := rand.NewZipf(s.r, 1.1, 10, uint64(s.V-1))
	for i := 0; i < n; i++ {
		seen := map[int32]bool{}
		for j := 0; j < k; {
			var id int32
			if s.zipf {
				id = int32(z.Uint64())
			} else {
				id = int32(s.r.IntN(s.V))
			}
			if !seen[id] {
				seen[id] = true
				out.IDs[i*k+j] = id
				j++
			}
		}
		// a peaked distribution: log-probs falling with rank, its spread varying
		lps := make([]float64, k)
		temp := 0.5 + 3*s.r.Float64()
		for j := range lps {
			lps[j] = -temp*math.Log(float64(j+1))*2 - 0.2*s.r.Float64() - s.r.Float64()
		}
		sort.Sort(sort.Reverse(sort.Float64Slice(lps)))
		for j := range lps {
			out.LogProbs[i*k+j] = float32(lps[j])
		}
	}
	return out, nil
}

// TestShardsBytesPerToken measures the size of shards at k=32 (the target
// is ≤ 150 B/token): for the tiny in-process teacher, and for synthetic
// 128,256-vocabulary teachers whose top-k ids are uniform (the worst case) or
// Zipf-distributed (closer to a real model's, where frequent tokens recur).
func TestShardsBytesPerToken(t *testing.T) {
	const k = 32
	o := shardData(t, tinyModel(t, "llama2", 0), 150, 256, 2)
	run := func(name string, te distill.Teacher) float64 {
		man, err := distill.WriteShards(context.Background(), distill.WriteShardsOptions{Dir: t.TempDir(), Teacher: te, K: k, Open: opener(o)})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d rows, %d tokens, %d bytes: %.1f B/token at k=%d", name, man.Rows, man.Tokens, man.Bytes, man.BytesPerToken(), k)
		return man.BytesPerToken()
	}
	if testing.Short() {
		t.Log("-short: tiny in-process teacher skipped")
	} else {
		run("tiny llama2 model (32000 vocab, near-uniform)", inProcessTeacher(t))
	}
	uni := run("synthetic, uniform ids over 128256", &synthTeacher{V: 128256, r: rand.New(rand.NewPCG(1, 2)), info: distill.Info{Name: "synth", VocabHash: "x"}})
	run("synthetic, Zipf ids over 128256", &synthTeacher{V: 128256, zipf: true, r: rand.New(rand.NewPCG(1, 2)), info: distill.Info{Name: "synth", VocabHash: "x"}})
	if uni > 150 {
		t.Errorf("%.1f B/token at k=32 for the worst case, target ≤ 150", uni)
	}
}
