package export

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	gguf "github.com/gpustack/gguf-parser-go"

	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/model/llama"
)

// ggufData returns the bytes of every tensor, located by gguf-parser-go's offsets.
func ggufData(t *testing.T, path string, gf *gguf.GGUFFile) map[string][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, ti := range gf.TensorInfos {
		start := uint64(gf.TensorDataStartOffset) + ti.Offset
		n := ti.Bytes()
		if start+n > uint64(len(b)) {
			t.Fatalf("%s: data [%d, %d) past the end of the file (%d)", ti.Name, start, start+n, len(b))
		}
		out[ti.Name] = b[start : start+n]
	}
	return out
}

func f32s(b []byte) []float32 {
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

// halfBits decodes IEEE half precision by hand (independent of the writer's conversion).
func halfBits(h uint16) float32 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1f
	frac := float64(h & 0x3ff)
	if exp == 0 {
		return float32(sign * frac / 1024 * math.Pow(2, -14))
	}
	return float32(sign * (1 + frac/1024) * math.Pow(2, float64(exp-15)))
}

func f16s(b []byte) []float32 {
	v := make([]float32, len(b)/2)
	for i := range v {
		v[i] = halfBits(binary.LittleEndian.Uint16(b[2*i:]))
	}
	return v
}

// q8s dequantizes Q8_0 (34-byte blocks: f16 d, 32 int8) and returns the values
// and each block's scale.
func q8s(b []byte) (v, d []float32) {
	for len(b) >= 34 {
		s := halfBits(binary.LittleEndian.Uint16(b))
		d = append(d, s)
		for j := 0; j < 32; j++ {
			v = append(v, s*float32(int8(b[2+j])))
		}
		b = b[34:]
	}
	return
}

// unpermute undoes convert_hf_to_gguf.py's LlamaModel.permute, written
// directly from its numpy: w.reshape(h, hd/2, 2, cols).swapaxes(1, 2) is the
// inverse of reshape(h, 2, hd/2, cols).swapaxes(1, 2).
func unpermute(w []float32, heads, cols int) []float32 {
	rows := len(w) / cols
	hd := rows / heads
	out := make([]float32, len(w))
	for h := 0; h < heads; h++ {
		for i := 0; i < hd/2; i++ {
			for j := 0; j < 2; j++ {
				// ggml row (h, i, j) holds HF row (h, j, i)
				copy(out[(h*hd+j*hd/2+i)*cols:][:cols], w[(h*hd+2*i+j)*cols:][:cols])
			}
		}
	}
	return out
}

var hfNames = map[string]string{
	"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
	"attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
	"ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}

func hfName(g string) string {
	switch g {
	case "token_embd.weight":
		return "model.embed_tokens.weight"
	case "output_norm.weight":
		return "model.norm.weight"
	case "output.weight":
		return "lm_head.weight"
	}
	parts := strings.Split(g, ".") // blk N name weight
	return "model.layers." + parts[1] + "." + hfNames[parts[2]] + ".weight"
}

type ggufCase struct {
	typ      string
	ftype    uint32
	matType  gguf.GGMLType
	relTol   float64 // F32/F16 element tolerance relative to |x|
	checkVal bool
}

func exportGGUF(t *testing.T, f *fixture, typ string) (string, *gguf.GGUFFile) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "model-"+typ+".gguf")
	if err := GGUF(Source{BaseDir: f.base, AdapterDir: f.adapter}, out, typ); err != nil {
		t.Fatal(err)
	}
	gf, err := gguf.ParseGGUFFile(out)
	if err != nil {
		t.Fatalf("gguf-parser-go: %v", err)
	}
	return out, gf
}

func TestGGUFLlama2(t *testing.T) {
	f := loraFixture(t, "llama2")
	merged, _, err := Open(Source{BaseDir: f.base, AdapterDir: f.adapter})
	if err != nil {
		t.Fatal(err)
	}
	c := merged.Config
	for _, gc := range []ggufCase{
		{"F32", 0, gguf.GGMLTypeF32, 0, true},
		{"F16", 1, gguf.GGMLTypeF16, 1e-3, true},
		{"BF16", 32, gguf.GGMLTypeBF16, 0, false},
		{"Q8_0", 7, gguf.GGMLTypeQ8_0, 0, true},
	} {
		t.Run(gc.typ, func(t *testing.T) {
			path, gf := exportGGUF(t, f, gc.typ)
			md := gf.Header.MetadataKV
			get := func(k string) gguf.GGUFMetadataKV {
				kv, ok := md.Get(k)
				if !ok {
					t.Fatalf("no metadata key %s", k)
				}
				return kv
			}
			if gf.Header.Version != gguf.GGUFVersionV3 {
				t.Errorf("version %v", gf.Header.Version)
			}
			a := gf.Architecture()
			if a.Architecture != "llama" || a.EmbeddingLength != 64 || a.BlockCount != 2 || a.AttentionHeadCount != 4 ||
				a.AttentionHeadCountKV != 2 || a.MaximumContextLength != 2048 || a.VocabularyLength != 32000 ||
				!reflect.DeepEqual(a.FeedForwardLength, []uint64{128, 128}) {
				t.Errorf("architecture %+v", a)
			}
			if get("llama.rope.dimension_count").ValueUint32() != 16 || get("llama.rope.freq_base").ValueFloat32() != float32(c.RopeTheta) ||
				get("llama.attention.layer_norm_rms_epsilon").ValueFloat32() != 1e-5 || get("general.file_type").ValueUint32() != gc.ftype ||
				get("general.alignment").ValueUint32() != 32 || get("llama.vocab_size").ValueUint32() != 32000 {
				t.Error("hyper-parameters differ")
			}
			tk := gf.Tokenizer()
			if tk.Model != "llama" || tk.TokensLength != 32000 || tk.BOSTokenID != 1 || tk.EOSTokenID != 2 {
				t.Errorf("tokenizer %+v", tk)
			}
			toks := get("tokenizer.ggml.tokens").ValueArray().ValuesString()
			types := get("tokenizer.ggml.token_type").ValueArray().ValuesInt32()
			scores := get("tokenizer.ggml.scores").ValueArray().ValuesFloat32()
			if len(toks) != 32000 || len(types) != 32000 || len(scores) != 32000 {
				t.Fatalf("%d tokens, %d types, %d scores", len(toks), len(types), len(scores))
			}
			if toks[1] != "<s>" || toks[2] != "</s>" || toks[3] != "<0x00>" || types[3] != 6 || toks[450] != "▁The" || types[450] != 1 || types[1] != 3 {
				t.Errorf("tokens %q %q %q %q types %v %v", toks[1], toks[2], toks[3], toks[450], types[1], types[3])
			}
			if get("tokenizer.ggml.pre").ValueString() != "default" || !get("tokenizer.ggml.add_bos_token").ValueBool() {
				t.Error("tokenizer.ggml.pre / add_bos_token")
			}

			// Tensors: names, GGUF dims (reversed), types.
			var names []string
			for _, ti := range gf.TensorInfos {
				names = append(names, ti.Name)
			}
			wantNames := []string{"token_embd.weight"}
			if c.RopeScaling != nil && c.RopeScaling.Kind() == "llama3" {
				wantNames = append(wantNames, "rope_freqs.weight")
			}
			for i := 0; i < 2; i++ {
				for _, n := range []string{"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"} {
					wantNames = append(wantNames, "blk."+string(rune('0'+i))+"."+n+".weight")
				}
			}
			wantNames = append(wantNames, "output_norm.weight") // tied: no output.weight
			if !reflect.DeepEqual(names, wantNames) {
				t.Fatalf("tensors %v\nwant %v", names, wantNames)
			}
			data := ggufData(t, path, gf)
			for _, ti := range gf.TensorInfos {
				if ti.Name == "rope_freqs.weight" {
					if ti.Type != gguf.GGMLTypeF32 || !reflect.DeepEqual(ti.Dimensions, []uint64{8}) {
						t.Errorf("rope_freqs %v %v", ti.Type, ti.Dimensions)
					}
					checkRopeFreqs(t, c, f32s(data[ti.Name]))
					continue
				}
				hf := hfName(ti.Name)
				p := merged.Param(hf)
				shape := p.Shape
				wantDims := make([]uint64, len(shape))
				for i := range shape {
					wantDims[i] = uint64(shape[len(shape)-1-i])
				}
				if !reflect.DeepEqual(ti.Dimensions, wantDims) {
					t.Errorf("%s dims %v, want %v (HF %s %v)", ti.Name, ti.Dimensions, wantDims, hf, shape)
				}
				wantType := gc.matType
				if len(shape) == 1 {
					wantType = gguf.GGMLTypeF32
				}
				if ti.Type != wantType {
					t.Errorf("%s type %v, want %v", ti.Name, ti.Type, wantType)
				}
				if !gc.checkVal {
					continue
				}
				var got []float32
				var scales []float32
				switch ti.Type {
				case gguf.GGMLTypeF32:
					got = f32s(data[ti.Name])
				case gguf.GGMLTypeF16:
					got = f16s(data[ti.Name])
				case gguf.GGMLTypeQ8_0:
					got, scales = q8s(data[ti.Name])
				}
				cols := shape[len(shape)-1]
				switch {
				case strings.HasSuffix(ti.Name, "attn_q.weight"):
					got = unpermute(got, c.NumAttentionHeads, cols)
					if scales != nil {
						scales = nil // blocks move with rows; bound below uses the row's own max
					}
				case strings.HasSuffix(ti.Name, "attn_k.weight"):
					got = unpermute(got, c.NumKeyValueHeads, cols)
					scales = nil
				}
				want := p.F32()
				for i := range want {
					x := float64(want[i])
					var tol float64
					if ti.Type == gguf.GGMLTypeQ8_0 {
						// half a step of this block (d = max|x|/127), plus f16 rounding of d.
						row, blk := i/cols, (i%cols)/32
						var amax float64
						for _, y := range want[row*cols+blk*32 : row*cols+blk*32+32] {
							amax = math.Max(amax, math.Abs(float64(y)))
						}
						tol = amax/127*(0.5+127.0/2048) + 1e-9
						if scales != nil {
							if d := float64(scales[i/32]); math.Abs(d-amax/127) > amax/127/1024+1e-12 {
								t.Fatalf("%s block %d: scale %g, want %g", ti.Name, i/32, d, amax/127)
							}
						}
					} else if ti.Type == gguf.GGMLTypeF16 {
						tol = gc.relTol*math.Abs(x) + 1e-7
					}
					if d := math.Abs(float64(got[i]) - x); d > tol {
						t.Fatalf("%s[%d] = %g, merged HF weight %s = %g (diff %g > %g)", ti.Name, i, got[i], hf, x, d, tol)
					}
				}
			}
		})
	}
}

// checkRopeFreqs recomputes llama.cpp's rope_freqs factors for rope_type llama3.
func checkRopeFreqs(t *testing.T, c llama.Config, got []float32) {
	t.Helper()
	rs := c.RopeScaling
	old := float64(rs.OriginalMaxPositionEmbeddings)
	dim := c.HeadDimension()
	for i := range got {
		freq := 1 / math.Pow(c.RopeTheta, float64(2*i)/float64(dim))
		wl := 2 * math.Pi / freq
		want := 1.0
		if wl > old/rs.LowFreqFactor {
			want = rs.Factor
		} else if wl >= old/rs.HighFreqFactor {
			s := (old/wl - rs.LowFreqFactor) / (rs.HighFreqFactor - rs.LowFreqFactor)
			want = 1 / ((1-s)/rs.Factor + s)
		}
		if math.Abs(float64(got[i])-want) > 1e-4*want {
			t.Errorf("rope_freqs[%d] = %g, want %g", i, got[i], want)
		}
	}
}

func TestGGUFLlama3(t *testing.T) {
	f := loraFixture(t, "llama3")
	path, gf := exportGGUF(t, f, "Q8_0")
	md := gf.Header.MetadataKV
	get := func(k string) gguf.GGUFMetadataKV {
		kv, ok := md.Get(k)
		if !ok {
			t.Fatalf("no metadata key %s", k)
		}
		return kv
	}
	tk := gf.Tokenizer()
	if tk.Model != "gpt2" || tk.TokensLength != 128256 || tk.MergesLength < 100000 || tk.BOSTokenID != 128000 || tk.EOSTokenID != 128001 {
		t.Errorf("tokenizer %+v", tk)
	}
	if get("tokenizer.ggml.pre").ValueString() != "llama-bpe" {
		t.Error("tokenizer.ggml.pre is not llama-bpe")
	}
	toks := get("tokenizer.ggml.tokens").ValueArray().ValuesString()
	types := get("tokenizer.ggml.token_type").ValueArray().ValuesInt32()
	merges := get("tokenizer.ggml.merges").ValueArray().ValuesString()
	if toks[128000] != "<|begin_of_text|>" || types[128000] != 3 || toks[128009] != "<|eot_id|>" || types[128009] != 3 {
		t.Errorf("special tokens %q %d %q %d", toks[128000], types[128000], toks[128009], types[128009])
	}
	if toks[1] != `"` || types[1] != 1 || toks[220] != "Ġ" || merges[0] != "Ġ Ġ" {
		t.Errorf("tokens %q %q, first merge %q", toks[1], toks[220], merges[0])
	}
	if tmpl := get("tokenizer.chat_template").ValueString(); !strings.Contains(tmpl, "<|start_header_id|>") {
		t.Errorf("chat template %q", tmpl)
	}
	if !get("tokenizer.ggml.add_bos_token").ValueBool() {
		t.Error("add_bos_token not set")
	}
	a := gf.Architecture()
	if a.VocabularyLength != 128256 || a.BlockCount != 2 {
		t.Errorf("architecture %+v", a)
	}
	// Q8_0 of the embedding within bounds; K permuted.
	merged, _, err := Open(Source{BaseDir: f.base, AdapterDir: f.adapter})
	if err != nil {
		t.Fatal(err)
	}
	data := ggufData(t, path, gf)
	// Llama 3.1 rope scaling travels as llama.cpp's rope_freqs factors.
	if ti, ok := gf.TensorInfos.Get("rope_freqs.weight"); !ok || ti.Type != gguf.GGMLTypeF32 {
		t.Fatalf("rope_freqs.weight: %v %v", ok, ti.Type)
	}
	checkRopeFreqs(t, merged.Config, f32s(data["rope_freqs.weight"]))
	for _, name := range []string{"token_embd.weight", "blk.1.attn_k.weight"} {
		ti, _ := gf.TensorInfos.Get(name)
		if ti.Type != gguf.GGMLTypeQ8_0 {
			t.Fatalf("%s type %v", name, ti.Type)
		}
		got, _ := q8s(data[name])
		p := merged.Param(hfName(name))
		cols := p.Shape[1]
		if strings.Contains(name, "attn_k") {
			got = unpermute(got, merged.Config.NumKeyValueHeads, cols)
		}
		want := p.F32()
		for i := 0; i < len(want); i += 32 {
			var amax float64
			for _, y := range want[i : i+32] {
				amax = math.Max(amax, math.Abs(float64(y)))
			}
			tol := amax/127*(0.5+127.0/2048) + 1e-9
			for j := i; j < i+32; j++ {
				if d := math.Abs(float64(got[j] - want[j])); d > tol {
					t.Fatalf("%s[%d]: %g vs %g", name, j, got[j], want[j])
				}
			}
		}
	}
}

func TestPermuteQKMatchesConvertScript(t *testing.T) {
	// 2 heads of head dim 4, one column: HF rows [h0: r0 r1 i0 i1, h1: r0 r1 i0 i1]
	// become interleaved [h0: r0 i0 r1 i1, ...] as LlamaModel.permute does.
	w := []float32{0, 1, 2, 3, 10, 11, 12, 13}
	got := PermuteQK(w, 2, 1)
	want := []float32{0, 2, 1, 3, 10, 12, 11, 13}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("PermuteQK = %v, want %v", got, want)
	}
	if back := UnpermuteQK(got, 2, 1); !reflect.DeepEqual(back, w) {
		t.Errorf("UnpermuteQK = %v", back)
	}
	if back := unpermute(got, 2, 1); !reflect.DeepEqual(back, w) {
		t.Errorf("test unpermute = %v", back)
	}
}

func TestGGUFErrors(t *testing.T) {
	f := loraFixture(t, "llama2")
	src := Source{BaseDir: f.base, AdapterDir: f.adapter}
	wantErr(t, GGUF(src, filepath.Join(t.TempDir(), "x.gguf"), "Q4_K"), "Q4_K")
	wantErr(t, GGUF(src, t.TempDir(), "F16"), "is a directory")
	noTok := t.TempDir()
	for _, n := range []string{"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"} {
		b, err := os.ReadFile(filepath.Join(f.base, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(noTok, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	wantErr(t, GGUF(Source{BaseDir: noTok, AdapterDir: f.adapter}, filepath.Join(t.TempDir(), "x.gguf"), "F16"), "tokenizer")
}

// An untied model (output.weight), head_dim in config.json, linear rope
// scaling, and hidden 48 so that Q8_0 falls back to F16 for rows of 48.
func TestGGUFUntiedLinearRopeQ8Fallback(t *testing.T) {
	f := loraFixture(t, "llama2")
	dir := t.TempDir()
	c := randmodel.TinyConfig(32000)
	c.HiddenSize, c.IntermediateSize, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim = 48, 96, 3, 1, 16
	c.TieWordEmbeddings = false
	c.RopeScaling = &llama.RopeScaling{RopeType: "linear", Factor: 2}
	m, err := llama.NewRandom(c, cpu.New(), kernels.F32, 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Save(dir, llama.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"tokenizer.model", "tokenizer_config.json"} {
		b, err := os.ReadFile(filepath.Join(f.base, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	src, err := ResolveSource(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "m.gguf")
	if err := GGUF(src, out, "Q8_0"); err != nil {
		t.Fatal(err)
	}
	gf, err := gguf.ParseGGUFFile(out)
	if err != nil {
		t.Fatal(err)
	}
	md := gf.Header.MetadataKV
	for k, want := range map[string]any{"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": float32(2),
		"llama.attention.key_length": uint32(16), "llama.attention.value_length": uint32(16), "llama.embedding_length": uint32(48)} {
		kv, ok := md.Get(k)
		if !ok || kv.Value != want {
			t.Errorf("%s = %v (%v), want %v", k, kv.Value, ok, want)
		}
	}
	if _, ok := gf.TensorInfos.Get("rope_freqs.weight"); ok {
		t.Error("rope_freqs.weight written for linear scaling")
	}
	want := map[string]gguf.GGMLType{
		"token_embd.weight": gguf.GGMLTypeF16, "output.weight": gguf.GGMLTypeF16, // rows of 48
		"blk.0.attn_q.weight": gguf.GGMLTypeF16, "blk.0.ffn_down.weight": gguf.GGMLTypeQ8_0, // rows of 96
		"blk.0.attn_output.weight": gguf.GGMLTypeF16, "blk.0.attn_norm.weight": gguf.GGMLTypeF32,
	}
	for name, typ := range want {
		ti, ok := gf.TensorInfos.Get(name)
		if !ok || ti.Type != typ {
			t.Errorf("%s: %v %v, want type %v", name, ok, ti.Type, typ)
		}
	}
	data := ggufData(t, out, gf)
	got := f16s(data["output.weight"])
	lm := m.Param("lm_head.weight").F32()
	for i := range lm {
		if d := math.Abs(float64(got[i] - lm[i])); d > 1e-3*math.Abs(float64(lm[i]))+1e-7 {
			t.Fatalf("output.weight[%d] = %g, lm_head %g", i, got[i], lm[i])
		}
	}
	ti, _ := gf.TensorInfos.Get("output.weight")
	if !reflect.DeepEqual(ti.Dimensions, []uint64{48, 32000}) {
		t.Errorf("output.weight dims %v", ti.Dimensions)
	}
}
