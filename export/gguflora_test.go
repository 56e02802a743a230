package export

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	gguf "github.com/gpustack/gguf-parser-go"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
)

// readTensor is one tensor of a GGUF file as the tests read it back.
type readTensor struct {
	Dims []uint64 // ne: innermost (contiguous) dimension first
	Type uint32   // ggml_type
	F32  []float32
}

// readFile is a GGUF file as the tests read it back.
type readFile struct {
	KV      map[string]any // scalar metadata: string, float32, uint32, ...
	Names   []string       // tensor names in file order
	Tensors map[string]readTensor
}

// readGGUF is the one read-back the GGUF LoRA tests use: our own reader
// (checkpoint.OpenGGUF). TestGGUFLoRAReaders checks that it and
// gguf-parser-go (readGGUFWithParser, which decodes the data itself) read
// every adapter the same.
var readGGUF = readGGUFWithOurs

// readGGUFWithOurs reads path with checkpoint's GGUF reader.
func readGGUFWithOurs(t *testing.T, path string) readFile {
	t.Helper()
	g, err := checkpoint.OpenGGUF(path)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	rf := readFile{KV: map[string]any{}, Tensors: map[string]readTensor{}}
	for _, kv := range g.KVs() {
		switch kv.Value.(type) {
		case []string, []uint32, []int32, []float32, []uint64, []int64, []uint8, []int8, []uint16, []int16, []float64, []bool, []any:
		default:
			rf.KV[kv.Key] = kv.Value
		}
	}
	var views []checkpoint.GGUFView
	for _, ti := range g.Tensors() {
		views = append(views, checkpoint.GGUFView{Name: ti.Name, Tensor: ti.Name})
	}
	rd, err := g.Reader(views)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	for _, ti := range g.Tensors() {
		dims := make([]uint64, len(ti.Shape))
		for i, d := range ti.Shape {
			dims[len(dims)-1-i] = uint64(d) // ne: innermost first
		}
		v, err := rd.F32(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		rf.Names = append(rf.Names, ti.Name)
		rf.Tensors[ti.Name] = readTensor{Dims: dims, Type: uint32(ti.Type), F32: v}
	}
	return rf
}

func readGGUFWithParser(t *testing.T, path string) readFile {
	t.Helper()
	gf, err := gguf.ParseGGUFFile(path)
	if err != nil {
		t.Fatalf("gguf-parser-go: %s: %v", path, err)
	}
	data := ggufData(t, path, gf)
	rf := readFile{KV: map[string]any{}, Tensors: map[string]readTensor{}}
	for _, kv := range gf.Header.MetadataKV {
		if kv.ValueType != gguf.GGUFMetadataValueTypeArray {
			rf.KV[kv.Key] = kv.Value
		}
	}
	for _, ti := range gf.TensorInfos {
		rt := readTensor{Dims: slices.Clone(ti.Dimensions), Type: uint32(ti.Type)}
		b := data[ti.Name]
		switch ti.Type {
		case gguf.GGMLTypeF32:
			rt.F32 = f32s(b)
		case gguf.GGMLTypeF16:
			rt.F32 = f16s(b)
		case gguf.GGMLTypeBF16:
			rt.F32 = make([]float32, len(b)/2)
			for i := range rt.F32 {
				rt.F32[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16)
			}
		default:
			t.Fatalf("%s: tensor %s has type %v; the test decodes F32, F16 and BF16", path, ti.Name, ti.Type)
		}
		rf.Names = append(rf.Names, ti.Name)
		rf.Tensors[ti.Name] = rt
	}
	return rf
}

// checkAdapterLoads runs llama.cpp's llama_adapter_lora_init checks on the
// adapter file ad against the base model's GGUF base: general.type,
// general.architecture and adapter.type, every tensor a .lora_a/.lora_b pair
// of a tensor the base has, with a.ne[0] == W.ne[0], b.ne[1] == W.ne[1] and
// a.ne[1] == b.ne[0]. It returns the base tensor names adapted.
func checkAdapterLoads(t *testing.T, ad, base readFile) []string {
	t.Helper()
	if ad.KV["general.type"] != "adapter" || ad.KV["general.architecture"] != base.KV["general.architecture"] || ad.KV["adapter.type"] != "lora" {
		t.Fatalf("general.type %v, general.architecture %v (base %v), adapter.type %v",
			ad.KV["general.type"], ad.KV["general.architecture"], base.KV["general.architecture"], ad.KV["adapter.type"])
	}
	if _, ok := ad.KV["adapter.lora.alpha"].(float32); !ok {
		t.Fatalf("adapter.lora.alpha is %T, want float32", ad.KV["adapter.lora.alpha"])
	}
	var adapted []string
	for _, n := range ad.Names {
		w, ok := strings.CutSuffix(n, ".lora_a")
		if !ok {
			if _, ok := strings.CutSuffix(n, ".lora_b"); !ok {
				t.Fatalf("tensor %s has an unexpected suffix", n)
			}
			continue
		}
		a, b := ad.Tensors[n], ad.Tensors[w+".lora_b"]
		if b.Dims == nil {
			t.Fatalf("%s has no lora_b", w)
		}
		bw, ok := base.Tensors[w]
		if !ok {
			t.Fatalf("%s is not a tensor of the base model", w)
		}
		if len(a.Dims) != 2 || len(b.Dims) != 2 || a.Dims[0] != bw.Dims[0] || b.Dims[1] != bw.Dims[1] || a.Dims[1] != b.Dims[0] {
			t.Fatalf("%s: lora_a ne %v, lora_b ne %v, base ne %v", w, a.Dims, b.Dims, bw.Dims)
		}
		adapted = append(adapted, w)
	}
	if 2*len(adapted) != len(ad.Names) {
		t.Fatalf("%d tensors for %d pairs: %v", len(ad.Names), len(adapted), ad.Names)
	}
	return adapted
}

// Format: metadata keys and types, tensor names and ne as llama.cpp loads
// them against our GGUF of the base, values (PEFT A as is, B with the rows of
// q/k permuted) in each dtype.
func TestGGUFLoRAFormat(t *testing.T) {
	f := loraFixture(t, "llama2")
	src := Source{BaseDir: f.base, AdapterDir: f.adapter}
	basePath := filepath.Join(t.TempDir(), "base.gguf")
	if err := GGUF(Source{BaseDir: f.base, WeightsDir: f.base}, basePath, "F32"); err != nil {
		t.Fatal(err)
	}
	base := readGGUF(t, basePath)
	peft := map[string][]float32{}
	for _, l := range f.set.Linears {
		peft[l.A.Name], peft[l.B.Name] = l.A.F32(), l.B.F32()
	}
	for _, c := range []struct {
		dtype string
		typ   gguf.GGMLType
		ftype uint32
		tol   float64 // relative to max |x|
	}{{"F32", gguf.GGMLTypeF32, 0, 0}, {"F16", gguf.GGMLTypeF16, 1, 1e-3}, {"BF16", gguf.GGMLTypeBF16, 32, 8e-3}} {
		t.Run(c.dtype, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "adapter.gguf")
			if err := GGUFLoRA(src, path, c.dtype); err != nil {
				t.Fatal(err)
			}
			// Key types as gguf-parser-go sees them.
			gf, err := gguf.ParseGGUFFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for key, want := range map[string]gguf.GGUFMetadataValueType{
				"general.architecture": gguf.GGUFMetadataValueTypeString, "general.type": gguf.GGUFMetadataValueTypeString,
				"adapter.type": gguf.GGUFMetadataValueTypeString, "adapter.lora.alpha": gguf.GGUFMetadataValueTypeFloat32,
				"general.file_type": gguf.GGUFMetadataValueTypeUint32, "general.name": gguf.GGUFMetadataValueTypeString,
			} {
				kv, ok := gf.Header.MetadataKV.Get(key)
				if !ok || kv.ValueType != want {
					t.Errorf("%s: %v (present %v), want type %v", key, kv.ValueType, ok, want)
				}
			}
			if gf.Header.Version != gguf.GGUFVersionV3 || gf.Architecture().Architecture != "llama" || gf.Architecture().Type != "adapter" {
				t.Errorf("version %v, architecture %+v", gf.Header.Version, gf.Architecture())
			}

			ad := readGGUF(t, path)
			if ad.KV["adapter.lora.alpha"] != float32(8) || ad.KV["general.file_type"] != c.ftype {
				t.Errorf("alpha %v, file_type %v", ad.KV["adapter.lora.alpha"], ad.KV["general.file_type"])
			}
			adapted := checkAdapterLoads(t, ad, base)
			// ne lists the innermost dimension first: lora_a [in, r], lora_b [r, out].
			for name, want := range map[string][]uint64{
				"blk.0.attn_q.weight.lora_a": {64, 4}, "blk.0.attn_q.weight.lora_b": {4, 64},
				"blk.1.attn_k.weight.lora_b": {4, 32}, "blk.1.ffn_down.weight.lora_a": {128, 4},
				"blk.1.ffn_down.weight.lora_b": {4, 64},
			} {
				if got := ad.Tensors[name].Dims; !slices.Equal(got, want) {
					t.Errorf("%s: ne %v, want %v", name, got, want)
				}
			}
			var want []string
			for i := 0; i < f.cfg.NumHiddenLayers; i++ {
				for _, m := range []string{"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"} {
					want = append(want, fmt.Sprintf("blk.%d.%s.weight", i, m))
				}
			}
			slices.Sort(want)
			slices.Sort(adapted)
			if !slices.Equal(adapted, want) {
				t.Fatalf("adapted %v\nwant %v", adapted, want)
			}
			for _, w := range adapted {
				hf := strings.TrimSuffix(hfName(w), ".weight")
				a, b := ad.Tensors[w+".lora_a"], ad.Tensors[w+".lora_b"]
				if gguf.GGMLType(a.Type) != c.typ || gguf.GGMLType(b.Type) != c.typ {
					t.Fatalf("%s: types %v %v, want %v", w, a.Type, b.Type, c.typ)
				}
				if a.Dims[1] != 4 {
					t.Fatalf("%s: rank %d, want 4", w, a.Dims[1])
				}
				bv := b.F32
				switch {
				case strings.HasSuffix(w, "attn_q.weight"):
					bv = unpermute(bv, f.cfg.NumAttentionHeads, 4)
				case strings.HasSuffix(w, "attn_k.weight"):
					bv = unpermute(bv, f.cfg.NumKeyValueHeads, 4)
				}
				for _, x := range []struct {
					got  []float32
					want []float32
					what string
				}{{a.F32, peft[lora.PEFTKey(hf, "A")], "lora_a"}, {bv, peft[lora.PEFTKey(hf, "B")], "lora_b"}} {
					diff, scale := maxDiff(t, x.got, x.want)
					if diff > c.tol*scale {
						t.Errorf("%s.%s differs from the PEFT tensor by %g (max |x| %g)", w, x.what, diff, scale)
					}
				}
			}
		})
	}
}

// sharpLoRA is a base model whose attention is sharp (a permutation error in
// q/k changes which key a query attends to), untied so lm_head can carry an
// adapter, and a PEFT adapter on every linear layer and lm_head with
// non-zero B; want is the logits of base + adapter, computed unmerged.
type sharpLoRA struct {
	base, adapter string
	cfg           llama.Config
	ids           []int32
	want          []float32
}

func makeSharpLoRA(t *testing.T, rsLoRA bool) sharpLoRA {
	t.Helper()
	dir := t.TempDir()
	s := sharpLoRA{base: filepath.Join(dir, "base"), adapter: filepath.Join(dir, "adapter")}
	if err := tokenizer.WriteFiles(s.base, "llama2"); err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(s.base)
	if err != nil {
		t.Fatal(err)
	}
	c := llama.Config{Architectures: []string{"LlamaForCausalLM"}, ModelType: "llama", VocabSize: tok.VocabSize(),
		HiddenSize: 64, IntermediateSize: 128, NumHiddenLayers: 2, NumAttentionHeads: 4, NumKeyValueHeads: 2,
		MaxPositionEmbeddings: 2048, RMSNormEps: 1e-5, RopeTheta: 10000, HiddenAct: "silu",
		InitializerRange: 0.02, TorchDtype: "float32"}
	be := cpu.New()
	m, err := llama.NewRandom(c, be, kernels.F32, 21)
	if err != nil {
		t.Fatal(err)
	}
	// Large q and k: sharp attention, so RoPE positions (and with them the
	// q/k row order) decide the logits.
	for i := 0; i < c.NumHiddenLayers; i++ {
		for _, p := range []string{"q_proj", "k_proj"} {
			w := m.Param(fmt.Sprintf("model.layers.%d.self_attn.%s.weight", i, p))
			v := w.F32()
			for j := range v {
				v[j] *= 40
			}
			be.Copy(w.Buf, be.FromF32(kernels.F32, v))
		}
	}
	if err := m.Save(s.base, llama.SaveOptions{DType: "F32"}); err != nil {
		t.Fatal(err)
	}
	if m, err = llama.Load(s.base, be, kernels.F32); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 3))
	for range 24 {
		s.ids = append(s.ids, int32(r.IntN(c.VocabSize)))
	}
	sharp := maxAttention(t, m, s.ids)
	t.Logf("sharpest attention weight in layer 0: %.3f", sharp)
	if sharp < 0.9 {
		t.Fatalf("attention is not sharp (max weight %.3f): the test would not see a q/k row order error", sharp)
	}
	lc := lora.Config{R: 4, Alpha: 8, TargetModules: []string{"all-linear", "lm_head"}, RSLoRA: rsLoRA}
	set, err := lora.Attach(m, lc, 7)
	if err != nil {
		t.Fatal(err)
	}
	var ts []checkpoint.WriteTensor
	for _, l := range set.Linears {
		v := make([]float32, l.B.Numel())
		for i := range v {
			v[i] = float32(r.NormFloat64() * 0.1)
		}
		be.Copy(l.B.Buf, be.FromF32(kernels.F32, v))
		ts = append(ts,
			checkpoint.WriteTensor{Name: l.A.Name, DType: "F32", Shape: l.A.Shape, Data: checkpoint.EncodeF32(l.A.F32())},
			checkpoint.WriteTensor{Name: l.B.Name, DType: "F32", Shape: l.B.Shape, Data: checkpoint.EncodeF32(l.B.F32())})
	}
	if err := checkpoint.WritePEFT(s.adapter, checkpoint.NewAdapterConfig(s.base, lc.R, lc.Alpha, 0, set.ModuleNames(), rsLoRA), ts); err != nil {
		t.Fatal(err)
	}
	s.cfg = m.Config
	s.want = logits(t, m, s.ids)
	return s
}

// maxAttention is the largest softmax weight any query of layer 0 puts on
// one key (over all heads) for ids.
func maxAttention(t *testing.T, m *llama.Model, ids []int32) float64 {
	t.Helper()
	tp := llama.NewInferenceTape(m.Backend())
	defer tp.Release()
	c := m.Config
	hd := c.HeadDimension()
	pos := make([]int32, len(ids))
	for i := range pos {
		pos[i] = int32(i)
	}
	h := tp.RMSNorm(tp.Embedding(m.EmbedTokens, ids), m.Layers[0].InputLayernorm, float32(c.RMSNormEps))
	q := tp.RoPE(tp.Linear(h, m.Layers[0].QProj), pos, c.NumAttentionHeads, hd, c.InvFreq()).F32()
	k := tp.RoPE(tp.Linear(h, m.Layers[0].KProj), pos, c.NumKeyValueHeads, hd, c.InvFreq()).F32()
	qw, kw, group := c.NumAttentionHeads*hd, c.NumKeyValueHeads*hd, c.NumAttentionHeads/c.NumKeyValueHeads
	best := 0.0
	for head := 0; head < c.NumAttentionHeads; head++ {
		kh := head / group
		for i := 4; i < len(ids); i++ {
			s := make([]float64, i+1)
			mx := math.Inf(-1)
			for j := range s {
				for d := 0; d < hd; d++ {
					s[j] += float64(q[i*qw+head*hd+d]) * float64(k[j*kw+kh*hd+d])
				}
				s[j] /= math.Sqrt(float64(hd))
				mx = max(mx, s[j])
			}
			var z float64
			for j := range s {
				z += math.Exp(s[j] - mx)
			}
			best = max(best, 1/z)
		}
	}
	return best
}

// applyGGUFAdapter adds the adapter ad to the base weights in m as llama.cpp
// computes it: W += (alpha / r)·B·A with alpha = adapter.lora.alpha and r =
// lora_b's ne[0], in float64, after undoing the q/k row permutation of lora_b
// (the test's own unpermute). keepQ leaves lora_b of attn_q in ggml's row
// order (a planted bug, to show the comparison sees it).
func applyGGUFAdapter(t *testing.T, m *llama.Model, ad readFile, keepQ bool) {
	t.Helper()
	alpha := float64(ad.KV["adapter.lora.alpha"].(float32))
	c := m.Config
	be := m.Backend()
	for _, n := range ad.Names {
		wName, ok := strings.CutSuffix(n, ".lora_a")
		if !ok {
			continue
		}
		a, b := ad.Tensors[n], ad.Tensors[wName+".lora_b"]
		in, r, out := int(a.Dims[0]), int(a.Dims[1]), int(b.Dims[1])
		bv := b.F32
		switch {
		case strings.HasSuffix(wName, "attn_q.weight") && !keepQ:
			bv = unpermute(bv, c.NumAttentionHeads, r)
		case strings.HasSuffix(wName, "attn_k.weight"):
			bv = unpermute(bv, c.NumKeyValueHeads, r)
		}
		p := m.Param(hfName(wName))
		if p == nil || p.Shape[0] != out || p.Shape[1] != in {
			t.Fatalf("%s does not fit %s", n, hfName(wName))
		}
		scale := alpha / float64(b.Dims[0])
		w := p.F32()
		for o := 0; o < out; o++ {
			for i := 0; i < in; i++ {
				var d float64
				for k := 0; k < r; k++ {
					d += float64(bv[o*r+k]) * float64(a.F32[k*in+i])
				}
				w[o*in+i] = float32(float64(w[o*in+i]) + scale*d)
			}
		}
		be.Copy(p.Buf, be.FromF32(kernels.F32, w))
	}
}

// Base + GGUF adapter, applied as llama.cpp does, gives the logits of the
// merged HF export (and of the unmerged LoRA model) within 1e-4 on the f32
// path, with sharp attention; leaving attn_q's lora_b in ggml's row order
// does not.
func TestGGUFLoRAMatchesMerged(t *testing.T) {
	for _, rs := range []bool{false, true} {
		t.Run(fmt.Sprintf("rslora=%v", rs), func(t *testing.T) {
			s := makeSharpLoRA(t, rs)
			src := Source{BaseDir: s.base, AdapterDir: s.adapter}
			hfDir := filepath.Join(t.TempDir(), "hf")
			if err := HF(src, hfDir, "F32", 0); err != nil {
				t.Fatal(err)
			}
			be := cpu.New()
			merged, err := llama.Load(hfDir, be, kernels.F32)
			if err != nil {
				t.Fatal(err)
			}
			want := logits(t, merged, s.ids)
			if diff, _ := maxDiff(t, want, s.want); diff > 1e-4 {
				t.Fatalf("merged HF export differs from the unmerged model by %g", diff)
			}
			path := filepath.Join(t.TempDir(), "adapter.gguf")
			if err := GGUFLoRA(src, path, "F32"); err != nil {
				t.Fatal(err)
			}
			ad := readGGUF(t, path)
			wantAlpha := float32(8)
			if rs {
				wantAlpha = float32(8 * 2) // alpha·√r keeps llama.cpp's alpha/r at rsLoRA's alpha/√r
			}
			if ad.KV["adapter.lora.alpha"] != wantAlpha {
				t.Errorf("adapter.lora.alpha %v, want %v", ad.KV["adapter.lora.alpha"], wantAlpha)
			}
			if _, ok := ad.Tensors["output.weight.lora_b"]; !ok {
				t.Error("no output.weight.lora_b for the lm_head adapter")
			}
			run := func(keepQ bool) (diff, scale float64) {
				m, err := llama.Load(s.base, be, kernels.F32)
				if err != nil {
					t.Fatal(err)
				}
				applyGGUFAdapter(t, m, ad, keepQ)
				return maxDiff(t, logits(t, m, s.ids), want)
			}
			diff, scale := run(false)
			t.Logf("base + GGUF adapter vs merged: max |diff| %.3g (max |logit| %.3g)", diff, scale)
			if diff > 1e-4 {
				t.Errorf("base + GGUF adapter differs from the merged export by %g (max |logit| %g)", diff, scale)
			}
			bad, _ := run(true)
			t.Logf("with attn_q's lora_b left in ggml row order: max |diff| %.3g", bad)
			if bad < 1e-2 {
				t.Errorf("a q row-order error changes the logits by only %g: the comparison would not catch it", bad)
			}
		})
	}
}

func TestGGUFLoRAErrors(t *testing.T) {
	f := loraFixture(t, "llama2")
	src := Source{BaseDir: f.base, AdapterDir: f.adapter}
	out := filepath.Join(t.TempDir(), "a.gguf")
	wantErr(t, GGUFLoRA(Source{BaseDir: f.base, WeightsDir: f.base}, out, "F32"), "full fine-tuned", "--format gguf")
	wantErr(t, GGUFLoRA(src, out, "Q8_0"), "Q8_0", "F32", "F16", "BF16")
	wantErr(t, GGUFLoRA(src, out, "F64"), "F64")
	wantErr(t, GGUFLoRA(src, t.TempDir(), "F32"), "is a directory", "adapter.gguf")
	wantErr(t, GGUFLoRA(Source{BaseDir: f.base, AdapterDir: filepath.Join(t.TempDir(), "gone")}, out, "F32"), "gone", "does not exist")
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("a failed export left %s", out)
	}

	// lm_head on a tied base: llama.cpp's base GGUF has no output.weight.
	m, err := llama.Load(f.base, cpu.New(), kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	set, err := lora.Attach(m, lora.Config{R: 2, Alpha: 4, TargetModules: []string{"q_proj", "lm_head"}}, 3)
	if err != nil {
		t.Fatal(err)
	}
	var ts []checkpoint.WriteTensor
	for _, l := range set.Linears {
		ts = append(ts,
			checkpoint.WriteTensor{Name: l.A.Name, DType: "F32", Shape: l.A.Shape, Data: checkpoint.EncodeF32(l.A.F32())},
			checkpoint.WriteTensor{Name: l.B.Name, DType: "F32", Shape: l.B.Shape, Data: checkpoint.EncodeF32(l.B.F32())})
	}
	adapter := filepath.Join(t.TempDir(), "adapter")
	if err := checkpoint.WritePEFT(adapter, checkpoint.NewAdapterConfig(f.base, 2, 4, 0, set.ModuleNames(), false), ts); err != nil {
		t.Fatal(err)
	}
	wantErr(t, GGUFLoRA(Source{BaseDir: f.base, AdapterDir: adapter}, out, "F32"), "lm_head", "ties", "output.weight", "--format gguf")
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("a failed export left %s", out)
	}
}

func TestAdapterName(t *testing.T) {
	for dir, want := range map[string]string{
		"/runs/chat-lora/checkpoints/step-000042":      "chat-lora",
		"/adapters/my-adapter":                         "my-adapter",
		"/runs/chat-lora/checkpoints/step-000042/../x": "x",
	} {
		if got := adapterName(dir); got != want {
			t.Errorf("adapterName(%q) = %q, want %q", dir, got, want)
		}
	}
}

// Our GGUF reader and gguf-parser-go read a written adapter (and the base it
// goes with) the same: metadata, tensor order, ne, types and values.
func TestGGUFLoRAReaders(t *testing.T) {
	f := loraFixture(t, "llama2")
	src := Source{BaseDir: f.base, AdapterDir: f.adapter}
	for _, dtype := range []string{"F32", "F16", "BF16"} {
		path := filepath.Join(t.TempDir(), "adapter.gguf")
		if err := GGUFLoRA(src, path, dtype); err != nil {
			t.Fatal(err)
		}
		ours, theirs := readGGUFWithOurs(t, path), readGGUFWithParser(t, path)
		if !slices.Equal(ours.Names, theirs.Names) {
			t.Fatalf("%s: tensor names %v vs %v", dtype, ours.Names, theirs.Names)
		}
		for k, v := range theirs.KV {
			if fmt.Sprint(ours.KV[k]) != fmt.Sprint(v) {
				t.Fatalf("%s: %s = %v (%T) ours, %v (%T) gguf-parser-go", dtype, k, ours.KV[k], ours.KV[k], v, v)
			}
		}
		for _, n := range theirs.Names {
			a, b := ours.Tensors[n], theirs.Tensors[n]
			if !slices.Equal(a.Dims, b.Dims) || a.Type != b.Type || !slices.Equal(a.F32, b.F32) {
				t.Fatalf("%s: tensor %s: ne %v type %d vs ne %v type %d (values equal: %v)", dtype, n, a.Dims, a.Type, b.Dims, b.Type, slices.Equal(a.F32, b.F32))
			}
		}
	}
}
