package llama

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"unsafe"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/tensor"
)

// tinyConfig is the precision tests' model: 2 layers of hidden 64, GQA 4/2,
// vocabulary 97, weights of std initRange.
func tinyConfig(initRange float64) Config {
	return Config{Architectures: []string{"LlamaForCausalLM"}, ModelType: "llama", VocabSize: 97,
		HiddenSize: 64, IntermediateSize: 128, NumHiddenLayers: 2, NumAttentionHeads: 4, NumKeyValueHeads: 2,
		MaxPositionEmbeddings: 2048, RMSNormEps: 1e-5, RopeTheta: 500000, HiddenAct: "silu",
		InitializerRange: initRange, TorchDtype: "float32"}
}

// sharpModelDir writes a random tiny model whose weights are large enough
// (std 0.25) that attention is sharp, saved in bf16 as real checkpoints are.
func sharpModelDir(t *testing.T) string {
	t.Helper()
	m, err := NewRandom(tinyConfig(0.25), cpu.New(), kernels.F32, 5)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := m.Save(dir, SaveOptions{DType: "BF16", MaxShardBytes: 40000}); err != nil {
		t.Fatal(err)
	}
	return dir
}

func logitsOf(t *testing.T, m *Model) []float32 {
	t.Helper()
	r := rand.New(rand.NewPCG(9, 9))
	in := &Input{Rows: 2, SeqLen: 24}
	for range in.Rows * in.SeqLen {
		in.InputIDs = append(in.InputIDs, int32(r.IntN(m.Config.VocabSize)))
	}
	tp := NewInferenceTape(m.Backend())
	defer tp.Release()
	l, err := m.Logits(tp, in)
	if err != nil {
		t.Fatal(err)
	}
	return l.F32()
}

// A BF16 load uses the bf16 tensors of the memory-mapped files in place (no
// heap copy) and computes exactly what the f32 load of the same file does.
func TestLoadBF16ZeroCopy(t *testing.T) {
	dir := sharpModelDir(t)
	ref, err := Load(dir, cpu.New(), kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Load(dir, cpu.New(), kernels.BF16)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	r, ok := m.mapping.(*checkpoint.Reader)
	if !ok {
		t.Fatalf("BF16 load of a bf16 checkpoint keeps no mapping (%T)", m.mapping)
	}
	for _, n := range m.Names() {
		raw, err := r.Raw(n)
		if err != nil {
			t.Fatal(err)
		}
		if got := cpu.BF16(m.Param(n).Buf); unsafe.Pointer(&got[0]) != unsafe.Pointer(&raw[0]) {
			t.Fatalf("%s: bf16 weights were copied, not used from the mapped file", n)
		}
	}
	want, got := logitsOf(t, ref), logitsOf(t, m)
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("logit %d: mapped bf16 weights give %v, the f32 load of the same file %v", i, got[i], want[i])
		}
	}
}

// bf16LogitTolerance bounds |logit(bf16 compute) − logit(f32 compute)|
// relative to the largest |logit|, with sharp attention: every GEMM operand
// rounded to 8 significant bits, SwiGLU reading its bf16-stored gate and up,
// errors compounding over two layers.
const bf16LogitTolerance = 0.03

// BF16 compute tracks the f32 reference with sharp attention (a planted bug
// in the bf16 GEMM path, such as swapped pair halves, moves logits by O(1)).
func TestBF16ComputeLogits(t *testing.T) {
	dir := sharpModelDir(t)
	m, err := Load(dir, cpu.New(), kernels.BF16)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	want := logitsOf(t, m)
	m.Compute = kernels.BF16
	got := logitsOf(t, m)
	scale, worst, sharp := 0.0, 0.0, 0.0
	for i := range want {
		scale = max(scale, math.Abs(float64(want[i])))
		worst = max(worst, math.Abs(float64(got[i]-want[i])))
	}
	// Attention is sharp: some query puts most of its mass on one key.
	sharp = maxAttention(t, m)
	t.Logf("max |logit| %.2f, worst bf16 difference %.4f (%.2g relative), sharpest attention weight %.2f", scale, worst, worst/scale, sharp)
	if sharp < 0.9 {
		t.Fatalf("attention is not sharp (max weight %.2f): the test would not see position errors", sharp)
	}
	if worst > bf16LogitTolerance*scale {
		t.Fatalf("bf16 compute logits differ from f32 by %.4f, over %.2g of max |logit| %.2f", worst, bf16LogitTolerance, scale)
	}
	if worst == 0 {
		t.Fatal("bf16 compute gives exactly the f32 logits: it is not in effect")
	}
}

// maxAttention is the largest attention probability of layer 0, head 0 for
// the logitsOf input (queries past position 4).
func maxAttention(t *testing.T, m *Model) float64 {
	r := rand.New(rand.NewPCG(9, 9))
	in := &Input{Rows: 1, SeqLen: 24}
	for range in.SeqLen {
		in.InputIDs = append(in.InputIDs, int32(r.IntN(m.Config.VocabSize)))
	}
	tp := NewInferenceTape(m.Backend())
	defer tp.Release()
	c := m.Config
	hd := c.HeadDimension()
	x := tp.Embedding(m.EmbedTokens, in.InputIDs)
	h := tp.RMSNorm(x, m.Layers[0].InputLayernorm, float32(c.RMSNormEps))
	pos := in.positions()
	q := tp.RoPE(tp.Linear(h, m.Layers[0].QProj), pos, c.NumAttentionHeads, hd, m.invFreq).F32()
	k := tp.RoPE(tp.Linear(h, m.Layers[0].KProj), pos, c.NumKeyValueHeads, hd, m.invFreq).F32()
	best := 0.0
	qw, kw := c.NumAttentionHeads*hd, c.NumKeyValueHeads*hd
	for i := 4; i < in.SeqLen; i++ {
		s := make([]float64, i+1)
		mx := math.Inf(-1)
		for j := 0; j <= i; j++ {
			for d := 0; d < hd; d++ {
				s[j] += float64(q[i*qw+d]) * float64(k[j*kw+d])
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
	return best
}

// An NF4 load quantizes exactly the decoder's linear weights (QuantizedParam)
// and keeps embeddings, norms and lm_head as bf16; it computes what an f32
// model holding the dequantized weights computes (f32 compute: the NF4
// operands are dequantized to the same f32 values inside the GEMM).
func TestLoadNF4(t *testing.T) {
	dir := sharpModelDir(t)
	be := cpu.New()
	m, err := Load(dir, be, kernels.NF4)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ref, err := Load(dir, be, kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	quantized := 0
	for _, n := range m.Names() {
		want := kernels.BF16
		if QuantizedParam(n) {
			want = kernels.NF4
			quantized++
			ref.Param(n).Buf = be.FromF32(kernels.F32, be.ToF32(m.Param(n).Buf))
		}
		if got := m.Param(n).DType(); got != want {
			t.Errorf("%s stored as %v, want %v", n, got, want)
		}
	}
	if quantized != 7*m.Config.NumHiddenLayers {
		t.Errorf("%d quantized weights, want 7 per layer", quantized)
	}
	want, got := logitsOf(t, ref), logitsOf(t, m)
	scale, worst := 0.0, 0.0
	for i := range want {
		scale = max(scale, math.Abs(float64(want[i])))
		worst = max(worst, math.Abs(float64(got[i]-want[i])))
	}
	if worst > 1e-5*scale {
		t.Fatalf("NF4 logits differ from the dequantized f32 model's by %.3g (max |logit| %.2f)", worst, scale)
	}
}

// heldPerTokenLayer runs Hidden on a recording tape without recomputation
// and returns the bytes the tape then holds, per token and layer.
func heldPerTokenLayer(t *testing.T, m *Model, compute kernels.DType) float64 {
	t.Helper()
	m.Compute = compute
	in := &Input{Rows: 2, SeqLen: 24, InputIDs: make([]int32, 48)}
	for i := range in.InputIDs {
		in.InputIDs[i] = int32(i % m.Config.VocabSize)
	}
	tp := tensor.NewTape(m.Backend())
	defer tp.Release()
	if _, err := m.Hidden(tp, in); err != nil {
		t.Fatal(err)
	}
	return float64(tp.HeldBytes()) / float64(48*m.Config.NumHiddenLayers)
}

// A layer holds only what its backward reads, and under bf16 compute holds
// those activations in bf16. Per token, with H hidden, I intermediate and
// the q, k, v widths: norm outputs (2H), q, k, v, attention output (H),
// the residual after attention (H), gate, up, SwiGLU output (3I), the
// layer's output (H): 832 values here. Keeping the projections' outputs
// that no VJP reads (q, k before RoPE, o_proj, down_proj: 224 more) fails
// the f32 bound; not narrowing to bf16 fails the ratio.
func TestLayerActivations(t *testing.T) {
	m, err := Load(sharpModelDir(t), cpu.New(), kernels.BF16)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	f32 := heldPerTokenLayer(t, m, kernels.F32)
	bf16 := heldPerTokenLayer(t, m, kernels.BF16)
	t.Logf("held per token and layer: f32 compute %.0f B, bf16 compute %.0f B (%.3f×)", f32, bf16, bf16/f32)
	// 832 f32 values, plus the embedding and final norm outputs spread over 2 layers.
	if want := float64(4 * (832 + 64)); f32 > want {
		t.Errorf("f32 compute holds %.0f B per token and layer, want ≤ %.0f: dead outputs are kept", f32, want)
	}
	// 704 of the 832 in bf16: (704·2 + 128·4)/(832·4) = 0.577.
	if bf16/f32 > 0.62 {
		t.Errorf("bf16 compute holds %.3f× the f32 activations, want ≤ 0.62: activations are not stored in bf16", bf16/f32)
	}
}

// A NaN weight is refused by an NF4 load, naming the tensor and the element:
// quantized, it would turn every weight of the tensor into NaN (the mean
// block scale of the double quantization).
func TestLoadNF4RefusesNaN(t *testing.T) {
	be := cpu.New()
	m, err := NewRandom(tinyConfig(0.02), be, kernels.F32, 5)
	if err != nil {
		t.Fatal(err)
	}
	const name = "model.layers.1.self_attn.q_proj.weight"
	cpu.F32(m.Param(name).Buf)[77] = float32(math.NaN())
	dir := t.TempDir()
	if err := m.Save(dir, SaveOptions{DType: "BF16"}); err != nil {
		t.Fatal(err)
	}
	_, err = Load(dir, be, kernels.NF4)
	if err == nil || !strings.Contains(err.Error(), name+": element 77 is NaN") || !strings.Contains(err.Error(), "precision.weights: bf16") {
		t.Fatalf("want the NaN weight refused by name and element: %v", err)
	}
}
