package llama

import (
	"fmt"
	"github.com/llamatune/llamatune/internal/switches"
	"io"
	"math"
	"math/rand/v2"

	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/tensor"
)

// Adapter adds a trainable path next to a frozen linear layer:
// y = x·Wᵀ + Forward(x). The lora package implements it.
type Adapter interface {
	Forward(tp *tensor.Tape, x *tensor.Tensor) *tensor.Tensor
}

// FusedAdapter is an adapter that adds its output to the base layer's
// output itself (LoRA: one GEMM with C = y), instead of Forward + Add.
type FusedAdapter interface {
	Adapter
	AddTo(tp *tensor.Tape, y, x *tensor.Tensor) *tensor.Tensor
}

// LowRankAdapter is an adapter of the form s·B·A·x (LoRA), which the fused
// lm_head loss can fold into its GEMM. Hidden returns x·Aᵀ (after dropout).
type LowRankAdapter interface {
	Adapter
	Hidden(tp *tensor.Tape, x *tensor.Tensor) *tensor.Tensor
	LowRank() (a, b *tensor.Tensor, scaling float32)
}

// Layer holds one decoder layer's parameters.
type Layer struct {
	InputLayernorm, PostAttentionLayernorm *tensor.Tensor
	QProj, KProj, VProj, OProj             *tensor.Tensor
	GateProj, UpProj, DownProj             *tensor.Tensor
}

// Model is a LlamaForCausalLM.
type Model struct {
	Config      Config
	EmbedTokens *tensor.Tensor
	Layers      []Layer
	Norm        *tensor.Tensor
	LMHead      *tensor.Tensor // == EmbedTokens when tie_word_embeddings

	// Adapters by module name ("model.layers.0.self_attn.q_proj", "lm_head").
	Adapters map[string]Adapter
	// Recompute re-runs each decoder layer in backward instead of keeping
	// its activations.
	Recompute bool
	// CEChunk is how many tokens' logits the loss makes at once (0: the
	// backend picks, bounding the chunk's logits to 64 MiB).
	CEChunk int
	// Compute is the GEMM precision of the model's ops: F32 (the zero
	// value, the reference) or BF16 (bf16 operands, f32 accumulation).
	// Hidden sets it on the tape it is given, so the loss that follows on
	// that tape (cross-entropy, KD) computes in it too.
	Compute kernels.DType
	// UnfusedLoss makes Loss compute the full [tokens × vocab] logits and
	// then cross-entropy, instead of the fused chunked lm_head + loss: the
	// unfused twin, to cross-check it. New sets it from LLAMATUNE_NO_FUSED.
	UnfusedLoss bool

	be      kernels.Backend
	mapping io.Closer // the weight files BF16 tensors are used from in place (Load)
	invFreq []float32
	names   []string
	params  map[string]*tensor.Tensor
}

// ParamShapes lists every HF parameter name with its shape, in HF order.
func ParamShapes(c Config) ([]string, map[string][]int) {
	H, I, V := c.HiddenSize, c.IntermediateSize, c.VocabSize
	hd := c.HeadDimension()
	q, kv := c.NumAttentionHeads*hd, c.NumKeyValueHeads*hd
	var names []string
	shapes := map[string][]int{}
	add := func(n string, s ...int) { names = append(names, n); shapes[n] = s }
	add("model.embed_tokens.weight", V, H)
	for i := 0; i < c.NumHiddenLayers; i++ {
		p := fmt.Sprintf("model.layers.%d.", i)
		add(p+"self_attn.q_proj.weight", q, H)
		add(p+"self_attn.k_proj.weight", kv, H)
		add(p+"self_attn.v_proj.weight", kv, H)
		add(p+"self_attn.o_proj.weight", H, q)
		add(p+"mlp.gate_proj.weight", I, H)
		add(p+"mlp.up_proj.weight", I, H)
		add(p+"mlp.down_proj.weight", H, I)
		add(p+"input_layernorm.weight", H)
		add(p+"post_attention_layernorm.weight", H)
	}
	add("model.norm.weight", H)
	if !c.TieWordEmbeddings {
		add("lm_head.weight", V, H)
	}
	return names, shapes
}

// New builds a model from named tensors (all of ParamShapes must be present
// with matching shapes). Tensors are frozen until the caller marks them.
func New(c Config, be kernels.Backend, params map[string]*tensor.Tensor) (*Model, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	names, shapes := ParamShapes(c)
	for _, n := range names {
		t, ok := params[n]
		if !ok {
			return nil, fmt.Errorf("missing parameter %s (shape %v)", n, shapes[n])
		}
		if !sameShape(t.Shape, shapes[n]) {
			return nil, fmt.Errorf("parameter %s has shape %v, config.json implies %v", n, t.Shape, shapes[n])
		}
		t.Name = n
	}
	m := &Model{Config: c, be: be, invFreq: c.InvFreq(), names: names, params: params,
		Adapters: map[string]Adapter{}, UnfusedLoss: switches.On(switches.NoFused)}
	m.EmbedTokens = params["model.embed_tokens.weight"]
	m.Norm = params["model.norm.weight"]
	m.LMHead = params["lm_head.weight"]
	if c.TieWordEmbeddings {
		m.LMHead = m.EmbedTokens
	}
	for i := 0; i < c.NumHiddenLayers; i++ {
		p := func(s string) *tensor.Tensor { return params[fmt.Sprintf("model.layers.%d.%s.weight", i, s)] }
		m.Layers = append(m.Layers, Layer{
			InputLayernorm: p("input_layernorm"), PostAttentionLayernorm: p("post_attention_layernorm"),
			QProj: p("self_attn.q_proj"), KProj: p("self_attn.k_proj"), VProj: p("self_attn.v_proj"), OProj: p("self_attn.o_proj"),
			GateProj: p("mlp.gate_proj"), UpProj: p("mlp.up_proj"), DownProj: p("mlp.down_proj"),
		})
	}
	return m, nil
}

// NewRandom makes a randomly initialized model as transformers does
// (normal(0, initializer_range) weights, unit norms), deterministic in seed.
func NewRandom(c Config, be kernels.Backend, dt kernels.DType, seed uint64) (*Model, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	r := rand.New(rand.NewPCG(seed, 0x11a4a))
	std := c.InitializerRange
	if std <= 0 {
		std = 0.02
	}
	names, shapes := ParamShapes(c)
	params := map[string]*tensor.Tensor{}
	for _, n := range names {
		s := shapes[n]
		v := make([]float32, numel(s))
		if len(s) == 1 {
			for i := range v {
				v[i] = 1
			}
		} else {
			for i := range v {
				v[i] = float32(r.NormFloat64() * std)
			}
		}
		params[n] = tensor.FromF32(be, dt, v, s...)
	}
	return New(c, be, params)
}

// Untie gives lm_head its own copy of the embedding matrix
// (tie_word_embeddings becomes false), so it can change independently.
func (m *Model) Untie() {
	if !m.Config.TieWordEmbeddings {
		return
	}
	w := tensor.New(m.be, m.EmbedTokens.DType(), m.EmbedTokens.Shape...)
	m.be.Copy(w.Buf, m.EmbedTokens.Buf)
	w.Name = "lm_head.weight"
	m.LMHead = w
	m.params["lm_head.weight"] = w
	m.names = append(m.names, "lm_head.weight")
	m.Config.TieWordEmbeddings = false
}

// Names lists the parameter names in HF order.
func (m *Model) Names() []string { return m.names }

// Param returns a parameter by HF name.
func (m *Model) Param(name string) *tensor.Tensor { return m.params[name] }

// Backend returns the model's backend.
func (m *Model) Backend() kernels.Backend { return m.be }

// Input is one batch of packed rows.
type Input struct {
	Rows, SeqLen int
	InputIDs     []int32 // [Rows·SeqLen]
	PositionIDs  []int32 // nil: 0..SeqLen-1 in every row
	DocStart     []int32 // nil: one document per row (see kernels.AttnArgs)
}

func (in *Input) check(vocab int) error {
	n := in.Rows * in.SeqLen
	if len(in.InputIDs) != n || (in.PositionIDs != nil && len(in.PositionIDs) != n) || (in.DocStart != nil && len(in.DocStart) != n) {
		return fmt.Errorf("llama: batch of %d×%d has %d ids, %d positions, %d doc starts",
			in.Rows, in.SeqLen, len(in.InputIDs), len(in.PositionIDs), len(in.DocStart))
	}
	for i, id := range in.InputIDs {
		if id < 0 || int(id) >= vocab {
			return fmt.Errorf("llama: token id %d at row %d position %d is outside the vocabulary (size %d)", id, i/in.SeqLen, i%in.SeqLen, vocab)
		}
	}
	return nil
}

func (in *Input) positions() []int32 {
	if in.PositionIDs != nil {
		return in.PositionIDs
	}
	p := make([]int32, in.Rows*in.SeqLen)
	for i := range p {
		p[i] = int32(i % in.SeqLen)
	}
	return p
}

// linear applies a frozen or trainable projection plus its adapter, if any.
// The base output x·Wᵀ is freed once the adapter's sum is made (no VJP
// reads it).
func (m *Model) linear(tp *tensor.Tape, name string, x, w *tensor.Tensor) *tensor.Tensor {
	y := tp.Linear(x, w)
	var z *tensor.Tensor
	switch a := m.Adapters[name].(type) {
	case nil:
		return y
	case FusedAdapter:
		z = a.AddTo(tp, y, x)
	default:
		f := a.Forward(tp, x)
		z = tp.Add(y, f)
		tp.Drop(f)
	}
	if z != y {
		tp.Drop(y)
	}
	return z
}

// Hidden runs the decoder and the final norm: [Rows·SeqLen, hidden].
func (m *Model) Hidden(tp *tensor.Tape, in *Input) (*tensor.Tensor, error) {
	if err := in.check(m.Config.VocabSize); err != nil {
		return nil, err
	}
	c := m.Config
	tp.Compute = m.Compute
	pos := in.positions()
	x := tp.Embedding(m.EmbedTokens, in.InputIDs)
	hd := c.HeadDimension()
	args := kernels.AttnArgs{Batch: in.Rows, Tq: in.SeqLen, Tk: in.SeqLen, Heads: c.NumAttentionHeads,
		KVHeads: c.NumKeyValueHeads, HeadDim: hd, Scale: float32(1 / math.Sqrt(float64(hd))), DocStart: in.DocStart}
	for i := range m.Layers {
		if tp.Canceled() { // a stop asked for (tp.Cancel) is honoured between layers
			return nil, tensor.ErrCanceled
		}
		block := func(tp *tensor.Tape, x *tensor.Tensor) *tensor.Tensor {
			return m.layer(tp, i, x, pos, args, nil)
		}
		if m.Recompute || tp.NoGrad {
			prev := x
			x = tp.Recompute(x, block) // inference: each layer's activations are freed after it
			if m.Compute == kernels.BF16 && !tp.NoGrad {
				tp.KeepBF16(prev) // the layer's input is now only its checkpoint: kept in bf16
			}
		} else {
			x = block(tp, x)
		}
	}
	if tp.Canceled() {
		return nil, tensor.ErrCanceled
	}
	return tp.RMSNorm(x, m.Norm, float32(c.RMSNormEps)), nil
}

// layer is one pre-norm decoder layer:
//
//	h = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1)))   n1 = rmsnorm(x)
//	y = h + down_proj(silu(gate_proj(n2)) · up_proj(n2))                   n2 = rmsnorm(h)
//
// With a KV cache (generation), this step's keys and values are appended to
// the cache and the queries attend to all cached positions.
func (m *Model) layer(tp *tensor.Tape, i int, x *tensor.Tensor, pos []int32, args kernels.AttnArgs, cache *KVCache) *tensor.Tensor {
	L, c := &m.Layers[i], m.Config
	eps := float32(c.RMSNormEps)
	p := fmt.Sprintf("model.layers.%d.", i)
	keep := m.activations(tp)
	h := keep(tp.RMSNorm(x, L.InputLayernorm, eps))
	q := keep(m.rope(tp, m.linear(tp, p+"self_attn.q_proj", h, L.QProj), pos, args.Heads, args.HeadDim))
	k := keep(m.rope(tp, m.linear(tp, p+"self_attn.k_proj", h, L.KProj), pos, args.KVHeads, args.HeadDim))
	v := keep(m.linear(tp, p+"self_attn.v_proj", h, L.VProj))
	if cache != nil {
		kvw := args.KVHeads * args.HeadDim
		cache.K[i] = append(cache.K[i], k.F32()...)
		cache.V[i] = append(cache.V[i], v.F32()...)
		k = tensor.FromF32(m.be, kernels.F32, cache.K[i], args.Tk, kvw)
		v = tensor.FromF32(m.be, kernels.F32, cache.V[i], args.Tk, kvw)
	}
	a := keep(tp.Attention(q, k, v, args))
	x = m.residual(tp, x, m.linear(tp, p+"self_attn.o_proj", a, L.OProj))
	h = keep(tp.RMSNorm(x, L.PostAttentionLayernorm, eps))
	g := keep(m.linear(tp, p+"mlp.gate_proj", h, L.GateProj))
	u := keep(m.linear(tp, p+"mlp.up_proj", h, L.UpProj))
	return m.residual(tp, x, m.linear(tp, p+"mlp.down_proj", keep(tp.SwiGLU(g, u)), L.DownProj))
}

// activations returns how layer stores the activations it saves for
// backward (norm outputs, q, k, v, attention output, gate, up, SwiGLU
// output): in bf16 under bf16 compute on a backend that reads bf16
// activations (kernels.BF16Activations), as torch autocast does; else as
// made (f32). The residual stream stays f32. The GEMMs round their
// operands to bf16 anyway, so only SwiGLU's inputs and attention
// backward's copy of its output see the extra rounding.
func (m *Model) activations(tp *tensor.Tape) func(*tensor.Tensor) *tensor.Tensor {
	if tp.Compute != kernels.BF16 || !kernels.ReadsBF16Activations(m.be) {
		return func(t *tensor.Tensor) *tensor.Tensor { return t }
	}
	return func(t *tensor.Tensor) *tensor.Tensor { tp.KeepBF16(t); return t }
}

// rope rotates a projection's output, freeing the unrotated values (the
// rotation's VJP reads none).
func (m *Model) rope(tp *tensor.Tape, x *tensor.Tensor, pos []int32, heads, headDim int) *tensor.Tensor {
	y := tp.RoPE(x, pos, heads, headDim, m.invFreq)
	tp.Drop(x)
	return y
}

// residual is x + y, freeing y (a projection's output that only feeds the sum).
func (m *Model) residual(tp *tensor.Tape, x, y *tensor.Tensor) *tensor.Tensor {
	out := tp.Add(x, y)
	tp.Drop(y)
	return out
}

// Logits returns [Rows·SeqLen, vocab] logits (for evaluation and tests; the
// training loss never makes them all at once).
func (m *Model) Logits(tp *tensor.Tape, in *Input) (*tensor.Tensor, error) {
	h, err := m.Hidden(tp, in)
	if err != nil {
		return nil, err
	}
	return m.linear(tp, "lm_head", h, m.LMHead), nil
}

// ShiftLabels turns labels aligned with input ids into next-token targets:
// target[t] = labels[t+1] when t+1 is in the same row and document, else
// IgnoreIndex. This is the shift HF's LlamaForCausalLM applies.
func ShiftLabels(labels []int32, rows, seqLen int, docStart []int32) []int32 {
	out := make([]int32, len(labels))
	for r := 0; r < rows; r++ {
		for t := 0; t < seqLen; t++ {
			i := r*seqLen + t
			out[i] = kernels.IgnoreIndex
			if t+1 < seqLen && (docStart == nil || docStart[i+1] == docStart[i]) {
				out[i] = labels[i+1]
			}
		}
	}
	return out
}

// Loss returns the next-token cross-entropy summed over trained tokens and
// divided by normalizer (≤ 0: by this batch's trained-token count), plus the
// trained-token count. labels are aligned with InputIDs (-100 = no loss).
func (m *Model) Loss(tp *tensor.Tape, in *Input, labels []int32, normalizer float64) (*tensor.Tensor, int, error) {
	if len(labels) != len(in.InputIDs) {
		return nil, 0, fmt.Errorf("llama: %d labels for %d input ids", len(labels), len(in.InputIDs))
	}
	for i, l := range labels {
		if l != kernels.IgnoreIndex && (l < 0 || int(l) >= m.Config.VocabSize) {
			return nil, 0, fmt.Errorf("llama: label %d at row %d position %d is outside the vocabulary (size %d)", l, i/in.SeqLen, i%in.SeqLen, m.Config.VocabSize)
		}
	}
	h, err := m.Hidden(tp, in)
	if err != nil {
		return nil, 0, err
	}
	targets := ShiftLabels(labels, in.Rows, in.SeqLen, in.DocStart)
	if m.UnfusedLoss {
		// Unfused twin: full [tokens × vocab] logits, then cross-entropy.
		loss, n := tp.CrossEntropy(m.linear(tp, "lm_head", h, m.LMHead), targets, normalizer)
		return loss, n, nil
	}
	hr, wr, err := m.LMHeadLowRank(tp, h)
	if err != nil {
		return nil, 0, err
	}
	loss, n := tp.LinearCrossEntropyLowRank(h, m.LMHead, hr, wr, targets, normalizer, m.CEChunk)
	return loss, n, nil
}

// LMHeadLowRank returns the low-rank part of the logits, hr·wrᵀ with
// hr = s·dropout(h)·Aᵀ and wr = B, when lm_head carries a LoRA adapter
// (nil, nil otherwise). Fused losses add it as a second GEMM:
// logits = h·Wᵀ + hr·wrᵀ, without full logits or a merged W.
func (m *Model) LMHeadLowRank(tp *tensor.Tape, h *tensor.Tensor) (hr, wr *tensor.Tensor, err error) {
	a, ok := m.Adapters["lm_head"]
	if !ok {
		return nil, nil, nil
	}
	lr, ok := a.(LowRankAdapter)
	if !ok {
		return nil, nil, fmt.Errorf("llama: the lm_head adapter %T does not expose low-rank factors", a)
	}
	_, b, s := lr.LowRank()
	return tp.Scale(lr.Hidden(tp, h), s), b, nil
}

func sameShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func numel(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}
