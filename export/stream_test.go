package export

import (
	"bytes"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
)

// streamCase is one source exported both ways.
type streamCase struct {
	name string
	src  Source
	hf   []string // HF dtypes to compare
	gguf []string // GGUF types to compare
}

var (
	allHF   = []string{"F32", "BF16", "F16"}
	allGGUF = []string{"F32", "F16", "BF16", "Q8_0"}
)

// The streaming export (HF, GGUF) writes exactly the bytes of the old
// in-memory path (whole model loaded, adapter merged with lora.Set.Merge,
// llama.Model.Save / GGUFTensors), and Open loads exactly its weights:
// LoRA with rsLoRA, a tied lm_head adapter (untied on merge), modules
// adapted by pattern but absent from the file, BF16 adapter tensors; full
// fine-tuning as a trainable.safetensors overlay (tied lm_head trained) and
// as HF weights stored in BF16 and F16 with NaNs, -0 and subnormals.
func TestStreamingExportMatchesInMemory(t *testing.T) {
	f2 := loraFixture(t, "llama2")
	f3 := loraFixture(t, "llama3")
	cases := []streamCase{
		{"lora", Source{BaseDir: f2.base, AdapterDir: f2.adapter}, allHF, allGGUF},
		{"lora-llama3", Source{BaseDir: f3.base, AdapterDir: f3.adapter}, []string{"BF16"}, []string{"F16"}},
		{"lora-lm-head-rslora", Source{BaseDir: f2.base, AdapterDir: lmHeadAdapter(t, f2.base)}, allHF, allGGUF},
		{"full-overlay", Source{BaseDir: f2.base, WeightsDir: fullOverlay(t, f2.base)}, allHF, allGGUF},
	}
	for _, dt := range []string{"BF16", "F16"} {
		dir := storedAs(t, f2.base, dt)
		src, err := ResolveSource(dir, "")
		if err != nil {
			t.Fatal(err)
		}
		cases = append(cases, streamCase{"hf-weights-" + dt, src, allHF, allGGUF})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			old, oldDirs, err := openInMemory(c.src)
			if err != nil {
				t.Fatal(err)
			}
			m, dirs, err := Open(c.src)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(dirs, oldDirs) || !reflect.DeepEqual(m.Config, old.Config) || !slices.Equal(m.Names(), old.Names()) {
				t.Fatalf("Open: dirs %+v config %+v names %v\nwas dirs %+v config %+v names %v", dirs, m.Config, m.Names(), oldDirs, old.Config, old.Names())
			}
			for _, n := range m.Names() {
				if !sameBits(m.Param(n).F32(), old.Param(n).F32()) {
					t.Errorf("Open: %s differs from the in-memory merge", n)
				}
			}
			root := t.TempDir()
			for _, dt := range c.hf {
				a, b := filepath.Join(root, "old-"+dt), filepath.Join(root, "new-"+dt)
				shard := int64(0)
				if dt != "BF16" {
					shard = 1 << 20 // several shards and an index
				}
				if err := hfInMemory(c.src, a, dt, shard); err != nil {
					t.Fatal(err)
				}
				if err := HF(c.src, b, dt, shard); err != nil {
					t.Fatal(err)
				}
				sameTree(t, a, b)
			}
			for _, gt := range c.gguf {
				a, b := filepath.Join(root, "old-"+gt+".gguf"), filepath.Join(root, "new-"+gt+".gguf")
				if err := ggufInMemory(c.src, a, gt); err != nil {
					t.Fatal(err)
				}
				if err := GGUF(c.src, b, gt); err != nil {
					t.Fatal(err)
				}
				sameFile(t, a, b)
			}
		})
	}
}

func sameBits(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

func sameFile(t *testing.T, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x, y) {
		i := 0
		for i < min(len(x), len(y)) && x[i] == y[i] {
			i++
		}
		t.Errorf("%s differs from the in-memory export %s (%d vs %d bytes, first difference at byte %d)", filepath.Base(b), a, len(y), len(x), i)
	}
}

// sameTree checks that two directories hold the same files with the same bytes.
func sameTree(t *testing.T, a, b string) {
	t.Helper()
	list := func(d string) []string {
		ents, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return names
	}
	na, nb := list(a), list(b)
	if !slices.Equal(na, nb) {
		t.Fatalf("files %v, in-memory export wrote %v", nb, na)
	}
	for _, n := range na {
		sameFile(t, filepath.Join(a, n), filepath.Join(b, n))
	}
}

// lmHeadAdapter writes an rsLoRA adapter (A and B stored BF16) on q_proj of
// layer 0, v_proj of layer 1 and the tied lm_head: merging unties lm_head,
// and q_proj of layer 1 and v_proj of layer 0 are adapted by pattern with no
// tensors in the file.
func lmHeadAdapter(t *testing.T, base string) string {
	t.Helper()
	m, err := llama.Load(base, cpu.New(), kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	if !m.Config.TieWordEmbeddings {
		t.Fatal("the fixture should have tied embeddings")
	}
	targets := []string{"q_proj", "v_proj", "lm_head"}
	set, err := lora.Attach(m, lora.Config{R: 2, Alpha: 5, TargetModules: targets, RSLoRA: true}, 21)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(8, 8))
	keep := map[string]bool{"model.layers.0.self_attn.q_proj": true, "model.layers.1.self_attn.v_proj": true, "lm_head": true}
	var ts []checkpoint.WriteTensor
	for _, l := range set.Linears {
		if !keep[l.Module] {
			continue
		}
		b := make([]float32, l.B.Numel())
		for i := range b {
			b[i] = float32(r.NormFloat64() * 0.1)
		}
		ts = append(ts,
			checkpoint.WriteTensor{Name: l.A.Name, DType: "BF16", Shape: l.A.Shape, Data: checkpoint.EncodeF32AsBF16(l.A.F32())},
			checkpoint.WriteTensor{Name: l.B.Name, DType: "BF16", Shape: l.B.Shape, Data: checkpoint.EncodeF32AsBF16(b)})
	}
	dir := filepath.Join(t.TempDir(), "adapter")
	if err := checkpoint.WritePEFT(dir, checkpoint.NewAdapterConfig(base, 2, 5, 0, targets, true), ts); err != nil {
		t.Fatal(err)
	}
	return dir
}

// fullOverlay writes a full fine-tuning checkpoint's trainable.safetensors:
// a trained lm_head (the base ties it), one MLP weight and the final norm.
func fullOverlay(t *testing.T, base string) string {
	t.Helper()
	cfg, err := llama.LoadConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	_, shapes := llama.ParamShapes(cfg)
	r := rand.New(rand.NewPCG(2, 7))
	tensor := func(name string, shape []int) checkpoint.WriteTensor {
		v := make([]float32, numel(shape))
		for i := range v {
			v[i] = float32(r.NormFloat64() * 0.02)
		}
		return checkpoint.WriteTensor{Name: name, DType: "F32", Shape: shape, Data: checkpoint.EncodeF32(v)}
	}
	dir := filepath.Join(t.TempDir(), "step-000003")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	err = checkpoint.WriteFile(filepath.Join(dir, checkpoint.TrainableFile), []checkpoint.WriteTensor{
		tensor("lm_head.weight", shapes["model.embed_tokens.weight"]),
		tensor("model.layers.1.mlp.up_proj.weight", shapes["model.layers.1.mlp.up_proj.weight"]),
		tensor("model.norm.weight", shapes["model.norm.weight"]),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// storedAs copies the model in base with its weights stored as dtype (BF16
// or F16), two tensors seeded with values whose round trip through float32
// is delicate: signalling and quiet NaNs, ±0, ±Inf, subnormals.
func storedAs(t *testing.T, base, dtype string) string {
	return convertWeights(t, base, dtype, true)
}

// convertWeights copies the model in base with its weights stored as dtype,
// with the special values of storedAs when special is set.
func convertWeights(t *testing.T, base, dtype string, special bool) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), strings.ToLower(dtype))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"config.json", "generation_config.json", "tokenizer.model", "tokenizer_config.json"} {
		b, err := os.ReadFile(filepath.Join(base, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r, err := checkpoint.Open(base)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	values := map[string][]uint16{ // snan, qnan, -nan, -0, +inf, -inf, smallest subnormal, largest subnormal
		"BF16": {0x7f81, 0x7fc0, 0xffc1, 0x8000, 0x7f80, 0xff80, 0x0001, 0x007f},
		"F16":  {0x7c01, 0x7e00, 0xfe01, 0x8000, 0x7c00, 0xfc00, 0x0001, 0x03ff},
	}[dtype]
	var ts []checkpoint.WriteTensor
	for _, k := range r.Keys() {
		v, err := r.F32(k)
		if err != nil {
			t.Fatal(err)
		}
		var data []byte
		if dtype == "BF16" {
			data = checkpoint.EncodeF32AsBF16(v)
		} else {
			data = checkpoint.EncodeF32AsF16(v)
		}
		if special && (k == "model.layers.0.mlp.up_proj.weight" || k == "model.layers.1.self_attn.k_proj.weight") {
			for i, h := range values {
				data[2*i], data[2*i+1] = byte(h), byte(h>>8)
			}
		}
		info, _ := r.Info(k)
		ts = append(ts, checkpoint.WriteTensor{Name: k, DType: dtype, Shape: info.Shape, Data: data})
	}
	if err := checkpoint.WriteSharded(dir, ts, 0, nil); err != nil {
		t.Fatal(err)
	}
	return dir
}

// A 16-bit tensor that is already in the output dtype is written as stored
// (no float32 round trip): that is the same bytes for every non-NaN value.
func TestPassThroughIsTheRoundTrip(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		b := uint16(h)
		if hasNaN16([]byte{byte(b), byte(b >> 8)}, checkpoint.BF16) {
			if f := checkpoint.BF16ToF32(b); !math.IsNaN(float64(f)) {
				t.Fatalf("bf16 %#04x flagged NaN, is %v", b, f)
			}
		} else if got := checkpoint.F32ToBF16(checkpoint.BF16ToF32(b)); got != b {
			t.Fatalf("bf16 %#04x round trips to %#04x", b, got)
		}
		if hasNaN16([]byte{byte(b), byte(b >> 8)}, checkpoint.F16) {
			if f := checkpoint.F16ToF32(b); !math.IsNaN(float64(f)) {
				t.Fatalf("f16 %#04x flagged NaN, is %v", b, f)
			}
		} else if got := checkpoint.F32ToF16(checkpoint.F16ToF32(b)); got != b {
			t.Fatalf("f16 %#04x round trips to %#04x", b, got)
		}
	}
}
