package llama_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/export"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/model/llama"
)

// TestLoadGGUFMutations: a small valid GGUF model (Q8_0 and F16) with a few
// random bytes changed or cut short, 400 times each, loads or fails with an error
// naming the file, never a panic; one that loads has the shapes its config
// implies. (The byte-level parser itself is fuzzed by
// checkpoint.FuzzParseGGUF; this covers the config, names and row orders on
// top of it.)
func TestLoadGGUFMutations(t *testing.T) {
	dir := t.TempDir()
	c := llama.Config{ModelType: "llama", VocabSize: 8, HiddenSize: 32, IntermediateSize: 32, NumHiddenLayers: 1,
		NumAttentionHeads: 2, NumKeyValueHeads: 1, MaxPositionEmbeddings: 64, RMSNormEps: 1e-5, RopeTheta: 10000,
		HiddenAct: "silu", TieWordEmbeddings: true}
	m, err := llama.NewRandom(c, cpu.New(), kernels.F32, 1)
	if err != nil {
		t.Fatal(err)
	}
	be := cpu.New()
	r := rand.New(rand.NewPCG(1, 2))
	for _, typ := range []checkpoint.GGMLType{checkpoint.GGMLTypeQ8_0, checkpoint.GGMLTypeF16} {
		path := filepath.Join(dir, "seed.gguf")
		if err := checkpoint.WriteGGUF(path, export.GGUFMetadata(c, nil, "seed", typ), export.GGUFTensors(m, typ)); err != nil {
			t.Fatal(err)
		}
		seed, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := llama.Load(path, be, kernels.BF16); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "mutant.gguf")
		for i := 0; i < 400; i++ {
			b := append([]byte(nil), seed...)
			for k := 0; k < 1+r.IntN(4); k++ {
				b[r.IntN(len(b))] = byte(r.IntN(256))
			}
			if i%10 == 0 {
				b = b[:r.IntN(len(b))]
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := llama.Load(p, be, kernels.BF16)
			if err != nil {
				if !strings.Contains(err.Error(), "mutant.gguf") {
					t.Fatalf("error does not name the file: %v", err)
				}
				continue
			}
			_, shapes := llama.ParamShapes(got.Config)
			for n, s := range shapes {
				if len(got.Param(n).Shape) != len(s) {
					t.Fatalf("%s: shape %v, want %v", n, got.Param(n).Shape, s)
				}
			}
			got.Close()
		}
	}
}
