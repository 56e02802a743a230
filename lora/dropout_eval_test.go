package lora_test

import (
	"testing"

	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
)

// Evaluation and generation run on an Inference tape; like PEFT in eval mode it skips
// lora_dropout. Here logits on an inference tape with dropout 0.5 must equal those with 0.
func TestNoDropoutAtInference(t *testing.T) {
	for _, dora := range []bool{false, true} {
		var out [2][]float32
		for k, p := range []float64{0, 0.5} {
			be := cpu.New()
			m, err := llama.NewRandom(randmodel.TinyConfig(53), be, kernels.F32, 1)
			if err != nil {
				t.Fatal(err)
			}
			cfg := doraConfig(p)
			cfg.UseDoRA = dora
			s, err := lora.Attach(m, cfg, 3)
			if err != nil {
				t.Fatal(err)
			}
			trainDoRA2(be, s)
			in := &llama.Input{Rows: 1, SeqLen: 5, InputIDs: []int32{1, 2, 3, 4, 5}}
			l, err := m.Logits(llama.NewInferenceTape(be), in)
			if err != nil {
				t.Fatal(err)
			}
			out[k] = l.F32()
		}
		for i := range out[0] {
			if out[0][i] != out[1][i] {
				t.Fatalf("dora=%v: logit %d with dropout 0.5 at inference %v, without %v: dropout is applied outside training", dora, i, out[1][i], out[0][i])
			}
		}
	}
}

func trainDoRA2(be kernels.Backend, s *lora.Set) {
	for _, l := range s.Linears {
		v := make([]float32, l.B.Numel())
		for i := range v {
			v[i] = 0.05 * float32(i%7-3)
		}
		be.Copy(l.B.Buf, be.FromF32(kernels.F32, v))
	}
}
