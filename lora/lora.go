// Package lora adds low-rank adapters (LoRA) to named linear layers of a
// llama.Model, as PEFT does: y = x·Wᵀ + scaling · B·A·dropout(x), with A
// [r, in] kaiming-uniform, B [out, r] zero, scaling = alpha/r (or
// alpha/sqrt(r) with rsLoRA). Adapters can be merged into the base weights.
//
// With Config.UseDoRA the adapters are DoRA (weight-decomposed LoRA, Liu et
// al. 2024) as PEFT's use_dora implements it: a trainable magnitude m [out]
// per output row next to A and B, and the layer computes
//
//	y = (m / ‖W + s·B·A‖_row) ⊙ (x·Wᵀ + s·B·A·x)
//
// where ‖·‖_row is the L2 norm of each output row of W + s·B·A ([out, in]).
// As in PEFT (and the paper's §4.3) the norm is detached: it is recomputed
// from the current A and B every forward pass but gets no gradient, so an
// adapter trained here behaves as one trained with PEFT. m starts at the row
// norms of W (B = 0), so a fresh DoRA model computes exactly the base model.
// With dropout p > 0 the layer is PEFT's training form,
//
//	y = x·Wᵀ + (m/‖·‖ − 1) ⊙ (d·Wᵀ) + (m/‖·‖) ⊙ (s·B·A·d),  d = dropout(x).
package lora

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/tensor"
)

// Modules that can carry an adapter (PEFT target_modules names).
var Modules = []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}

// Config is the adapter configuration.
type Config struct {
	R             int      `json:"r"`
	Alpha         float64  `json:"alpha"`
	Dropout       float64  `json:"dropout"`
	TargetModules []string `json:"target_modules"`     // from Modules; "all-linear" = every projection except lm_head
	RSLoRA        bool     `json:"use_rslora"`         // scaling alpha/sqrt(r) instead of alpha/r
	UseDoRA       bool     `json:"use_dora,omitempty"` // DoRA: a trainable magnitude per output row (see the package comment)
	// Layers, when non-empty, restricts adapters to these decoder layers.
	Layers []int `json:"layers,omitempty"`
}

// UnmarshalJSON reads the snake_case keys, and the Go field names that
// checkpoints written before the keys had tags used (TargetModules, RSLoRA,
// ...), so those runs still resume.
func (c *Config) UnmarshalJSON(b []byte) error {
	type plain Config
	var old struct {
		TargetModules []string
		RSLoRA        bool
	}
	if err := json.Unmarshal(b, (*plain)(c)); err != nil {
		return err
	}
	if err := json.Unmarshal(b, &old); err != nil {
		return err
	}
	if c.TargetModules == nil {
		c.TargetModules = old.TargetModules
	}
	c.RSLoRA = c.RSLoRA || old.RSLoRA
	return nil
}

// Settings are c's LoRA settings, whose rules and scaling are written once
// in checkpoint.
func (c Config) Settings() checkpoint.LoRASettings {
	return checkpoint.LoRASettings{R: c.R, Alpha: c.Alpha, Dropout: c.Dropout, TargetModules: c.TargetModules, RSLoRA: c.RSLoRA}
}

// Scaling is alpha/r, or alpha/sqrt(r) for rsLoRA (PEFT's).
func (c Config) Scaling() float64 { return c.Settings().Scaling() }

// Validate reports every problem with c.
func (c Config) Validate() error {
	var errs []string
	for _, p := range c.Settings().Check() {
		errs = append(errs, p.Key+": "+p.Msg)
	}
	for _, m := range c.TargetModules {
		if m != "all-linear" && !slices.Contains(Modules, m) {
			errs = append(errs, fmt.Sprintf("unknown target module %q (one of %s, or all-linear)", m, strings.Join(Modules, ", ")))
		}
	}
	if c.UseDoRA && slices.Contains(c.TargetModules, "lm_head") {
		errs = append(errs, "use_dora does not support lm_head (its fused loss takes a plain low-rank update); drop lm_head from target_modules or turn use_dora off")
	}
	if len(errs) > 0 {
		return fmt.Errorf("lora: %s", strings.Join(errs, "; "))
	}
	return nil
}

func (c Config) targets() []string {
	var out []string
	for _, m := range c.TargetModules {
		if m == "all-linear" {
			out = append(out, Modules[:7]...)
		} else {
			out = append(out, m)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Linear is one adapter.
type Linear struct {
	Module  string         // HF module name, e.g. model.layers.0.self_attn.q_proj
	A, B    *tensor.Tensor // A [r, in], B [out, r]; trainable
	Scaling float32
	Dropout float64
	// DoRA only (nil otherwise): M is the magnitude [out], trainable; W the
	// frozen base weight [out, in]; w2 its squared row norms (W is frozen,
	// so they are computed once, at Attach).
	M   *tensor.Tensor
	W   *tensor.Tensor
	w2  []float64
	set *Set
}

// Forward is the adapter path, what the layer adds to x·Wᵀ: LoRA's
// scaling · (dropout(x)·Aᵀ)·Bᵀ, or DoRA's output minus x·Wᵀ.
func (l *Linear) Forward(tp *tensor.Tape, x *tensor.Tensor) *tensor.Tensor {
	if l.M != nil {
		return l.dora(tp, nil, x)
	}
	return tp.Scale(tp.Linear(l.Hidden(tp, x), l.B), l.Scaling)
}

// AddTo returns y + Forward(x), y being the base output x·Wᵀ
// (llama.FusedAdapter): for LoRA one GEMM onto a copy of y.
func (l *Linear) AddTo(tp *tensor.Tape, y, x *tensor.Tensor) *tensor.Tensor {
	if l.M != nil {
		return l.dora(tp, y, x)
	}
	return tp.AddLinear(y, l.Hidden(tp, x), l.B, l.Scaling)
}

// dora is the DoRA layer's output given the base output y = x·Wᵀ (nil: only
// the part added to it, for Forward). Without dropout it is
// DoRAScale(y + s·B·A·x); with dropout (or for Forward, where d = x),
// y + (DoRAScale(d·Wᵀ + s·B·A·d) − d·Wᵀ), summed in that order so that at
// initialization (B = 0, m = norm) the added part is exactly zero.
func (l *Linear) dora(tp *tensor.Tape, y, x *tensor.Tensor) *tensor.Tensor {
	norm := l.RowNorms()
	d := tp.Dropout(x, l.Dropout, l.set.dropoutSeed(l.Module))
	if d == x && y != nil {
		return tp.DoRAScale(tp.AddLinear(y, tp.Linear(x, l.A), l.B, l.Scaling), l.M, norm)
	}
	bd := tp.Linear(d, l.W)
	extra := tp.Add(tp.DoRAScale(tp.AddLinear(bd, tp.Linear(d, l.A), l.B, l.Scaling), l.M, norm), tp.Scale(bd, -1))
	if y == nil {
		return extra
	}
	return tp.Add(y, extra)
}

// RowNorms is ‖W + s·B·A‖ per output row, from the current A and B, off the
// tape (DoRA detaches it). W is never widened or formed whole:
//
//	‖W_j + s·(BA)_j‖² = ‖W_j‖² + 2s·Σ_k B_jk·(W·Aᵀ)_jk + s²·Σ_k B_jk·(B·A·Aᵀ)_jk
//
// with ‖W_j‖² cached at Attach and W·Aᵀ one GEMM over W as stored ([out, r]
// out). That costs one pass over W per step and layer, as PEFT's forward
// does (which forms W + s·B·A). The float64 sum is clamped at 0.
func (l *Linear) RowNorms() []float32 {
	be := l.A.Backend()
	r, in := l.A.Shape[0], l.A.Shape[1]
	out := l.B.Shape[0]
	p := be.Alloc(kernels.F32, out*r)
	aa := be.Alloc(kernels.F32, r*r)
	q := be.Alloc(kernels.F32, out*r)
	be.MatMul(l.W.Buf, l.A.Buf, p, kernels.MatMulArgs{TransB: true, M: out, N: r, K: in, Alpha: 1, Compute: kernels.F32})
	be.MatMul(l.A.Buf, l.A.Buf, aa, kernels.MatMulArgs{TransB: true, M: r, N: r, K: in, Alpha: 1, Compute: kernels.F32})
	be.MatMul(l.B.Buf, aa, q, kernels.MatMulArgs{M: out, N: r, K: r, Alpha: 1, Compute: kernels.F32})
	pv, qv, bv := be.ToF32(p), be.ToF32(q), l.B.F32()
	for _, b := range []kernels.Buffer{p, aa, q} {
		be.Free(b)
	}
	s := float64(l.Scaling)
	norm := make([]float32, out)
	for j := range norm {
		sq := l.w2[j]
		for k := 0; k < r; k++ {
			b := float64(bv[j*r+k])
			if b != 0 {
				sq += b * (2*s*float64(pv[j*r+k]) + s*s*float64(qv[j*r+k]))
			}
		}
		norm[j] = float32(math.Sqrt(max(sq, 0)))
	}
	return norm
}

// rowSquares is Σ_i W[j, i]² per row j of a frozen base weight, in float64.
// It is the one place DoRA reads W's values on the host (a weight of another
// storage type, NF4 say, would be dequantized here; until then it is
// refused); elsewhere W only enters backend GEMMs, as in the base layer.
// The weight is widened to f32 whole once, at Attach, then dropped.
func rowSquares(w *tensor.Tensor) ([]float64, error) {
	switch w.DType() {
	case kernels.F32, kernels.BF16:
	default:
		return nil, fmt.Errorf("DoRA needs F32 or BF16 base weights, but %s is stored as %v; use precision.weights f32 or bf16 with lora.use_dora, or turn use_dora off", w.Name, w.DType())
	}
	out, in := w.Shape[0], w.Shape[1]
	v := w.F32()
	s := make([]float64, out)
	for j := range s {
		var acc float64
		for _, x := range v[j*in : (j+1)*in] {
			acc += float64(x) * float64(x)
		}
		s[j] = acc
	}
	return s, nil
}

// Hidden is the rank-r activation dropout(x)·Aᵀ.
func (l *Linear) Hidden(tp *tensor.Tape, x *tensor.Tensor) *tensor.Tensor {
	return tp.Linear(tp.Dropout(x, l.Dropout, l.set.dropoutSeed(l.Module)), l.A)
}

// LowRank exposes the factors (the model's fused lm_head loss uses them).
func (l *Linear) LowRank() (a, b *tensor.Tensor, scaling float32) { return l.A, l.B, l.Scaling }

// Set is all adapters attached to one model.
type Set struct {
	Config  Config
	Linears []*Linear // in model order
	step    uint64
	seed    uint64
}

// Attach creates adapters for cfg's target modules, registers them on m, and
// freezes every base weight. seed fixes A's initialization and dropout.
func Attach(m *llama.Model, cfg Config, seed uint64) (*Set, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	be := m.Backend()
	s := &Set{Config: cfg, seed: seed}
	r := rand.New(rand.NewPCG(seed, 0x10a))
	for _, n := range m.Names() {
		m.Param(n).SetRequiresGrad(false)
	}
	names := m.Names()
	if m.Config.TieWordEmbeddings && cfg.Adapts("lm_head") {
		names = append(slices.Clone(names), "lm_head.weight") // lm_head shares embed_tokens
	}
	for _, name := range names {
		module := strings.TrimSuffix(name, ".weight")
		if !cfg.Adapts(module) {
			continue
		}
		w := m.Param(name)
		if name == "lm_head.weight" {
			w = m.LMHead
		}
		out, in := w.Shape[0], w.Shape[1]
		// kaiming_uniform_(a=√5) as nn.Linear/PEFT: bound = 1/sqrt(fan_in).
		bound := 1 / math.Sqrt(float64(in))
		av := make([]float32, cfg.R*in)
		for i := range av {
			av[i] = float32((r.Float64()*2 - 1) * bound)
		}
		l := &Linear{
			Module:  module,
			A:       tensor.FromF32(be, kernels.F32, av, cfg.R, in).SetRequiresGrad(true),
			B:       tensor.New(be, kernels.F32, out, cfg.R).SetRequiresGrad(true),
			Scaling: float32(cfg.Scaling()),
			Dropout: cfg.Dropout,
			set:     s,
		}
		l.A.Name, l.B.Name = PEFTKey(module, "A"), PEFTKey(module, "B")
		if cfg.UseDoRA {
			// m = ‖W + s·B·A‖_row with B = 0: the row norms of W (PEFT's update_layer).
			l.W = w
			var err error
			if l.w2, err = rowSquares(w); err != nil {
				return nil, fmt.Errorf("lora: %s: %w", module, err)
			}
			mv := make([]float32, out)
			for j := range mv {
				mv[j] = float32(math.Sqrt(l.w2[j]))
			}
			l.M = tensor.FromF32(be, kernels.F32, mv, out).SetRequiresGrad(true)
			l.M.Name = MagnitudeKey(module)
		}
		s.Linears = append(s.Linears, l)
		m.Adapters[module] = l
	}
	if len(s.Linears) == 0 {
		return nil, fmt.Errorf("lora: target modules %v match no layer of the model", cfg.TargetModules)
	}
	return s, nil
}

// Adapts reports whether Attach puts an adapter on module, an HF module name
// such as model.layers.0.self_attn.q_proj or lm_head: its last part is one of
// the target modules and, inside a decoder layer, the layer is in Layers.
func (c Config) Adapts(module string) bool {
	short := module[strings.LastIndex(module, ".")+1:]
	return slices.Contains(c.targets(), short) && inLayers(module, c.Layers)
}

func inLayers(module string, layers []int) bool {
	if len(layers) == 0 || !strings.HasPrefix(module, "model.layers.") {
		return true
	}
	var n int
	fmt.Sscanf(strings.TrimPrefix(module, "model.layers."), "%d", &n)
	return slices.Contains(layers, n)
}

// PEFTKey is the key PEFT writes in adapter_model.safetensors, e.g.
// base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight.
func PEFTKey(module, ab string) string {
	return "base_model.model." + module + ".lora_" + ab + ".weight"
}

// MagnitudeKey is the key PEFT writes for a DoRA magnitude vector [out], e.g.
// base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector
// (no ".weight": PEFT strips it to keep its older format).
func MagnitudeKey(module string) string {
	return "base_model.model." + module + ".lora_magnitude_vector"
}

// Params lists the trainable tensors (A, B, and with DoRA the magnitude, per
// module, in model order).
func (s *Set) Params() []*tensor.Tensor {
	var out []*tensor.Tensor
	for _, l := range s.Linears {
		out = append(out, l.A, l.B)
		if l.M != nil {
			out = append(out, l.M)
		}
	}
	return out
}

// ModuleNames lists the short names of the adapted modules (q_proj, ...,
// lm_head), sorted: PEFT's target_modules with "all-linear" expanded.
func (s *Set) ModuleNames() []string {
	var out []string
	for _, l := range s.Linears {
		out = append(out, l.Module[strings.LastIndex(l.Module, ".")+1:])
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// SetStep sets the dropout stream for the next forward pass (the trainer
// calls it once per micro-batch, so resumed and recomputed passes draw the
// same masks).
func (s *Set) SetStep(step uint64) { s.step = step }

func (s *Set) dropoutSeed(module string) uint64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%d/%d/%s", s.seed, s.step, module)
	return h.Sum64()
}

// Merge folds every adapter into its base weight, W += scaling·B·A (DoRA:
// W ← m/‖W + s·B·A‖_row ⊙ (W + s·B·A), see ScaleRows), and detaches the
// adapters from m. Base weights keep their dtype, but for NF4 (QLoRA),
// whose merged weights become bf16.
func (s *Set) Merge(m *llama.Model) {
	be := m.Backend()
	for _, l := range s.Linears {
		if l.Module == "lm_head" && m.Config.TieWordEmbeddings {
			m.Untie() // merging must not change the input embeddings
		}
		w := m.Param(l.Module + ".weight")
		out, in := w.Shape[0], w.Shape[1]
		switch {
		case l.M != nil:
			merged := be.Alloc(kernels.F32, out*in)
			be.Copy(merged, w.Buf)
			AddLowRank(be, merged, l.A.Buf, l.B.Buf, nil, out, in, s.Config.R, l.Scaling)
			v := be.ToF32(merged)
			be.Free(merged)
			ScaleRows(v, l.M.F32(), out, in)
			nb := be.FromF32(kernels.F32, v)
			be.Copy(w.Buf, nb)
			be.Free(nb)
		case w.DType() == kernels.F32:
			AddLowRank(be, w.Buf, l.A.Buf, l.B.Buf, nil, out, in, s.Config.R, l.Scaling)
		default:
			merged := be.Alloc(kernels.F32, out*in)
			be.Copy(merged, w.Buf)
			AddLowRank(be, merged, l.A.Buf, l.B.Buf, nil, out, in, s.Config.R, l.Scaling)
			// A fresh buffer, never the old one: a bf16 base may be used
			// in place from a read-only memory map, and a 4-bit base
			// cannot hold the update (the merged weight, dequantized base
			// + B·A, becomes bf16).
			old := w.Buf
			w.Buf = be.Alloc(kernels.BF16, out*in)
			be.Free(old)
			be.Copy(w.Buf, merged)
			be.Free(merged)
		}
		delete(m.Adapters, l.Module)
	}
}

// AddLowRank merges one adapter into its weight: w += scaling·B·A, with w
// [out, in] in F32, A [r, in] and B [out, r]. delta, when not nil, is F32
// scratch space of exactly out·in elements (the product B·A is formed there
// first, then added); when nil it is allocated and freed. Set.Merge and the
// streaming export (one weight at a time) both merge through it, so they give
// the same bits.
func AddLowRank(be kernels.Backend, w, a, b, delta kernels.Buffer, out, in, r int, scaling float32) {
	if w.Len() != out*in || a.Len() != r*in || b.Len() != out*r {
		panic(fmt.Sprintf("lora.AddLowRank: w %d, A %d, B %d elements do not fit [%d, %d] = [%d, %d]·[%d, %d]",
			w.Len(), a.Len(), b.Len(), out, in, out, r, r, in))
	}
	owned := delta == nil
	if owned {
		delta = be.Alloc(kernels.F32, out*in)
	} else if delta.Len() != out*in {
		panic(fmt.Sprintf("lora.AddLowRank: scratch of %d elements, [%d, %d] needs exactly %d", delta.Len(), out, in, out*in))
	}
	be.MatMul(b, a, delta, kernels.MatMulArgs{M: out, N: in, K: r, Alpha: scaling})
	be.AddScaled(w, delta, 1)
	if owned {
		be.Free(delta)
	}
}

// ScaleRows finishes a DoRA merge: w [out, in] holds W + scaling·B·A (after
// AddLowRank) and each row j becomes m[j]/‖w_j‖ · w_j, the paper's
// W' = m · (W + ΔW)/‖W + ΔW‖_c, as PEFT's merge does. The norm is taken
// from the merged values themselves, in float64. Set.Merge and the
// streaming export both call it, so they give the same bits.
func ScaleRows(w, m []float32, out, in int) {
	if len(w) != out*in || len(m) != out {
		panic(fmt.Sprintf("lora.ScaleRows: w %d and m %d elements do not fit [%d, %d] and [%d]", len(w), len(m), out, in, out))
	}
	for j := 0; j < out; j++ {
		row := w[j*in : (j+1)*in]
		var sq float64
		for _, x := range row {
			sq += float64(x) * float64(x)
		}
		if sq == 0 {
			continue // a zero row stays zero (no direction to scale)
		}
		g := float32(float64(m[j]) / math.Sqrt(sq))
		for i := range row {
			row[i] *= g
		}
	}
}
