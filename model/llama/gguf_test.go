package llama_test

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/export"
	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/model/llama"
)

// untiedTiny writes a tiny untied model (lm_head of its own, llama3 rope
// scaling) with the Llama 2 tokenizer.
func untiedTiny(t *testing.T) string {
	dir := t.TempDir()
	if err := tokenizer.WriteFiles(dir, "llama2"); err != nil {
		t.Fatal(err)
	}
	c := randmodel.TinyConfig(32000)
	m, err := llama.NewRandom(c, cpu.New(), kernels.F32, 7)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Save(dir, llama.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// expected returns what a GGUF of type typ stores for HF values v (rows of
// cols): the values rounded to the type, or Q8_0-quantized and back.
func expected(t *testing.T, v []float32, typ checkpoint.GGMLType, cols int, shape []int) []float32 {
	if len(shape) < 2 {
		return v // 1-D tensors stay F32
	}
	b, err := checkpoint.EncodeGGUFData(v, typ, cols)
	if err != nil {
		t.Fatal(err)
	}
	g, err := checkpoint.ParseGGUF("x", mustGGUF(t, []checkpoint.GGUFTensor{{Name: "t", Shape: shape, Type: typ, Data: b}}))
	if err != nil {
		t.Fatal(err)
	}
	r, err := g.Reader([]checkpoint.GGUFView{{Name: "t", Tensor: "t"}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := r.F32("t")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mustGGUF(t *testing.T, ts []checkpoint.GGUFTensor) []byte {
	var sb strings.Builder
	if err := checkpoint.EncodeGGUF(&sb, nil, ts); err != nil {
		t.Fatal(err)
	}
	return []byte(sb.String())
}

// TestGGUFRoundTrip: HF → GGUF (F32, F16, BF16, Q8_0, through export.GGUF)
// → llama.Load gives back the HF weights (exactly where the type represents
// them, as Q8_0 dequantizes otherwise) and config, and the same logits for
// F32; the bf16 load matches the f32 load rounded.
func TestGGUFRoundTrip(t *testing.T) {
	tied := randmodel.MustTinyModel(t, randmodel.TinyOptions{})
	for _, dir := range []string{tied, untiedTiny(t)} {
		be := cpu.New()
		want, err := llama.Load(dir, be, kernels.F32)
		if err != nil {
			t.Fatal(err)
		}
		wantCfg, _ := llama.LoadConfig(dir)
		for _, typ := range []string{"F32", "F16", "BF16", "Q8_0"} {
			path := filepath.Join(t.TempDir(), "m-"+typ+".gguf")
			if err := export.GGUF(export.Source{BaseDir: dir}, path, typ); err != nil {
				t.Fatal(err)
			}
			cfg, err := llama.LoadConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			c1, c2 := cfg, wantCfg
			c1.TorchDtype, c2.TorchDtype = "", ""
			c1.EosTokenID, c2.EosTokenID = nil, nil // GGUF keeps one eos id
			if c2.BosTokenID == nil {
				c1.BosTokenID = nil // the GGUF has the tokenizer's
			}
			if !reflect.DeepEqual(c1, c2) {
				t.Errorf("%s: config\n%+v\nwant\n%+v", typ, c1, c2)
			}
			if !slices.Equal(cfg.InvFreq(), wantCfg.InvFreq()) {
				t.Errorf("%s: RoPE frequencies differ", typ)
			}
			got, err := llama.Load(path, be, kernels.F32)
			if err != nil {
				t.Fatal(err)
			}
			gt, _ := checkpoint.ParseGGMLType(typ)
			for _, n := range want.Names() {
				w := want.Param(n)
				ex := expected(t, w.F32(), gt, w.Shape[len(w.Shape)-1], w.Shape)
				if !slices.Equal(got.Param(n).F32(), ex) {
					t.Fatalf("%s: %s differs from the HF weights", typ, n)
				}
			}
			if typ == "F32" { // the tokenizer from tokenizer.ggml.*, on held-out text
				text, err := os.ReadFile("../../testdata/war-and-peace-60k.txt")
				if err != nil {
					t.Fatal(err)
				}
				tg, err := tokenizer.Load(path)
				if err != nil {
					t.Fatal(err)
				}
				th, _ := tokenizer.Load(dir)
				if !slices.Equal(tg.Encode(string(text)), th.Encode(string(text))) || tg.BOS() != th.BOS() || tg.EOS() != th.EOS() || tg.VocabSize() != th.VocabSize() {
					t.Errorf("the GGUF's tokenizer differs from %s's", dir)
				}
				in := &llama.Input{Rows: 1, SeqLen: 5, InputIDs: []int32{1, 50, 9, 300, 2}, PositionIDs: []int32{0, 1, 2, 3, 4}}
				a, err := want.Logits(llama.NewInferenceTape(be), in)
				if err != nil {
					t.Fatal(err)
				}
				b, err := got.Logits(llama.NewInferenceTape(be), in)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(a.F32(), b.F32()) {
					t.Error("F32 GGUF logits differ from the HF model's")
				}
			}
			// bf16 storage: the f32 values rounded (Q8_0 and permuted rows
			// through float32, BF16 zero-copy where the rows are as stored).
			gb, err := llama.Load(path, be, kernels.BF16)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range want.Names() {
				f := got.Param(n).F32()
				for i, x := range gb.Param(n).F32() {
					if x != checkpoint.BF16ToF32(checkpoint.F32ToBF16(f[i])) {
						t.Fatalf("%s bf16: %s[%d] = %g, want %g rounded", typ, n, i, x, f[i])
					}
				}
			}
			gb.Close()
			if typ == "Q8_0" {
				fp1, err := llama.Fingerprint(path)
				if err != nil {
					t.Fatal(err)
				}
				wf, err := llama.WeightsFingerprint(path)
				if err != nil || wf == "" || fp1 == "" {
					t.Fatal(err)
				}
			}
		}
	}
}

// TestGGUFLoadErrors: an unsupported tensor type and a non-Llama
// architecture are errors that name the file, the tensor or key and what to do.
func TestGGUFLoadErrors(t *testing.T) {
	dir := untiedTiny(t)
	path := filepath.Join(t.TempDir(), "m.gguf")
	if err := export.GGUF(export.Source{BaseDir: dir}, path, "Q8_0"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// blk.0.attn_q.weight [64, 64] Q8_0 is 4352 bytes; as Q4_0 it would be
	// 2304, which fits: the file still parses, and the load names the type.
	q4k := slices.Clone(b)
	i := strings.Index(string(q4k), "blk.0.attn_q.weight")
	typ := i + len("blk.0.attn_q.weight") + 4 + 16
	q4k[typ], q4k[typ+1], q4k[typ+2], q4k[typ+3] = 2, 0, 0, 0 // Q4_0
	bad := filepath.Join(t.TempDir(), "model.gguf")
	if err := os.WriteFile(bad, q4k, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = llama.Load(bad, cpu.New(), kernels.F32)
	for _, want := range []string{"model.gguf", "blk.0.attn_q.weight", "Q4_0", "llama-quantize", "Q8_0", "HF model"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %q", err, want)
		}
	}
	arch := []byte(string(b))
	j := strings.Index(string(arch), "llama\x0c") // general.architecture "llama" followed by the next key's length
	if j < 0 {
		j = strings.Index(string(arch), "llama")
	}
	copy(arch[j:], "qwen2")
	other := filepath.Join(t.TempDir(), "qwen.gguf")
	if err := os.WriteFile(other, arch, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = llama.LoadConfig(other)
	if err == nil || !strings.Contains(err.Error(), "qwen.gguf") || !strings.Contains(err.Error(), "general.architecture") {
		t.Errorf("architecture error: %v", err)
	}
}

// TestGGUFRopeScalingShapes: rope_scaling llama3 of the real Llama 3.1 and
// 3.2 shapes comes back from rope_freqs.weight.
func TestGGUFRopeScalingShapes(t *testing.T) {
	for _, name := range []string{"llama3.1-8b", "llama3.2-1b", "llama3.2-3b"} {
		c, err := randmodel.ShapeConfig(name)
		if err != nil {
			t.Fatal(err)
		}
		c.VocabSize = 4 // token_embd is all ConfigFromGGUF reads besides rope_freqs
		c.TieWordEmbeddings = true
		kvs := export.GGUFMetadata(c, nil, name, checkpoint.GGMLTypeF32)
		f := export.RopeFreqFactors(c)
		path := filepath.Join(t.TempDir(), name+".gguf")
		err = checkpoint.WriteGGUF(path, kvs, []checkpoint.GGUFTensor{
			{Name: "token_embd.weight", Shape: []int{4, c.HiddenSize}, Type: checkpoint.GGMLTypeF32, Data: make([]byte, 16*c.HiddenSize)},
			{Name: "rope_freqs.weight", Shape: []int{len(f)}, Type: checkpoint.GGMLTypeF32, Data: checkpoint.EncodeF32(f)}})
		if err != nil {
			t.Fatal(err)
		}
		got, err := llama.LoadConfig(path)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.RopeScaling, c.RopeScaling) {
			t.Errorf("%s: rope_scaling %+v, want %+v", name, *got.RopeScaling, *c.RopeScaling)
		}
		if got.HeadDimension() != c.HeadDimension() || got.NumKeyValueHeads != c.NumKeyValueHeads || got.MaxPositionEmbeddings != c.MaxPositionEmbeddings {
			t.Errorf("%s: config %+v", name, got)
		}
	}
}
