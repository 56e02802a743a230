package lora_test

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/tensor"
)

func setup(t *testing.T, cfg lora.Config, dt kernels.DType) (*llama.Model, *lora.Set, *llama.Input, []int32) {
	t.Helper()
	be := cpu.New()
	c := randmodel.TinyConfig(53)
	c.InitializerRange = 0.2
	m, err := llama.NewRandom(c, be, dt, 1)
	if err != nil {
		t.Fatal(err)
	}
	s, err := lora.Attach(m, cfg, 7)
	if err != nil {
		t.Fatal(err)
	}
	// Non-zero B so the adapters matter.
	r := rand.New(rand.NewPCG(1, 1))
	for _, l := range s.Linears {
		v := make([]float32, l.B.Numel())
		for i := range v {
			v[i] = float32(r.NormFloat64() * 0.1)
		}
		be.Copy(l.B.Buf, be.FromF32(kernels.F32, v))
	}
	in := &llama.Input{Rows: 2, SeqLen: 9, InputIDs: make([]int32, 18)}
	for i := range in.InputIDs {
		in.InputIDs[i] = int32(r.IntN(53))
	}
	return m, s, in, in.InputIDs
}

func allTargets() lora.Config {
	return lora.Config{R: 4, Alpha: 8, TargetModules: []string{"all-linear", "lm_head"}}
}

func TestAttachFreezesBaseAndNamesLikePEFT(t *testing.T) {
	m, s, in, labels := setup(t, allTargets(), kernels.BF16)
	if len(s.Linears) != 2*7+1 {
		t.Fatalf("%d adapters, want 15", len(s.Linears))
	}
	if got := s.Linears[0].A.Name; got != "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" {
		t.Fatalf("first A key %q", got)
	}
	l := s.Linears[0]
	if l.A.Shape[0] != 4 || l.A.Shape[1] != 64 || l.B.Shape[0] != 64 || l.B.Shape[1] != 4 {
		t.Fatalf("q_proj A %v B %v, want [4 64] and [64 4]", l.A.Shape, l.B.Shape)
	}
	tp := tensor.NewTape(m.Backend())
	loss, _, err := m.Loss(tp, in, labels, 0)
	if err != nil {
		t.Fatal(err)
	}
	tp.Backward(loss)
	for _, n := range m.Names() {
		if m.Param(n).Grad != nil {
			t.Errorf("frozen base weight %s got a gradient", n)
		}
	}
	for _, p := range s.Params() {
		if p.Grad == nil {
			t.Errorf("%s: no gradient", p.Name)
		}
	}
}

func TestRSLoRAScaling(t *testing.T) {
	c := lora.Config{R: 16, Alpha: 32}
	if c.Scaling() != 2 {
		t.Fatal(c.Scaling())
	}
	c.RSLoRA = true
	if c.Scaling() != 8 {
		t.Fatal(c.Scaling())
	}
	if err := (lora.Config{R: 0, Alpha: 1, TargetModules: []string{"qq_proj"}}).Validate(); err == nil {
		t.Fatal("invalid config accepted")
	}
}

func lossOf(t *testing.T, m *llama.Model, in *llama.Input, labels []int32) float64 {
	tp := llama.NewInferenceTape(m.Backend())
	loss, _, err := m.Loss(tp, in, labels, 0)
	if err != nil {
		t.Fatal(err)
	}
	return float64(loss.Item())
}

// Adapter gradients (every target, lm_head included) against central
// differences of the loss along random directions.
func TestAdapterGradientsNumeric(t *testing.T) {
	m, s, in, labels := setup(t, allTargets(), kernels.F32)
	be := m.Backend()
	tp := tensor.NewTape(be)
	loss, _, err := m.Loss(tp, in, labels, 0)
	if err != nil {
		t.Fatal(err)
	}
	tp.Backward(loss)
	r := rand.New(rand.NewPCG(2, 2))
	for _, p := range s.Params() {
		dir := make([]float32, p.Numel())
		for i := range dir {
			dir[i] = float32(r.NormFloat64())
		}
		checkDirectional(t, m, in, labels, p, dir)
	}
}

// Merged weights give the same logits as base + adapters.
func TestMergeMatchesAdapters(t *testing.T) {
	m, s, in, _ := setup(t, allTargets(), kernels.F32)
	logits := func() []float32 {
		l, err := m.Logits(llama.NewInferenceTape(m.Backend()), in)
		if err != nil {
			t.Fatal(err)
		}
		return l.F32()
	}
	before := logits()
	s.Merge(m)
	if len(m.Adapters) != 0 {
		t.Fatal("adapters still attached after merge")
	}
	after := logits()
	for i := range before {
		if math.Abs(float64(before[i]-after[i])) > 1e-4*(1+math.Abs(float64(before[i]))) {
			t.Fatalf("logit %d: adapters %v merged %v", i, before[i], after[i])
		}
	}
}

// The fused loss with an lm_head adapter equals the loss from full logits.
func TestLMHeadAdapterLossMatchesLogits(t *testing.T) {
	m, _, in, labels := setup(t, lora.Config{R: 2, Alpha: 4, TargetModules: []string{"lm_head"}}, kernels.F32)
	got := lossOf(t, m, in, labels)
	l, err := m.Logits(llama.NewInferenceTape(m.Backend()), in)
	if err != nil {
		t.Fatal(err)
	}
	z := l.F32()
	V := 53
	var sum float64
	n := 0
	for r := 0; r < in.Rows; r++ {
		for p := 0; p+1 < in.SeqLen; p++ {
			row := z[(r*in.SeqLen+p)*V:][:V]
			mx := row[0]
			for _, x := range row {
				mx = max(mx, x)
			}
			var e float64
			for _, x := range row {
				e += math.Exp(float64(x - mx))
			}
			sum += float64(mx) + math.Log(e) - float64(row[labels[r*in.SeqLen+p+1]])
			n++
		}
	}
	if want := sum / float64(n); math.Abs(got-want) > 1e-4 {
		t.Fatalf("fused loss %v, from logits %v", got, want)
	}
}

// Dropout masks depend on the step only, so recomputation sees the same ones.
func TestDropoutWithRecompute(t *testing.T) {
	cfg := allTargets()
	cfg.Dropout = 0.3
	grads := func(recompute bool) [][]float32 {
		m, s, in, labels := setup(t, cfg, kernels.F32)
		m.Recompute = recompute
		s.SetStep(5)
		tp := tensor.NewTape(m.Backend())
		loss, _, err := m.Loss(tp, in, labels, 0)
		if err != nil {
			t.Fatal(err)
		}
		tp.Backward(loss)
		var out [][]float32
		for _, p := range s.Params() {
			out = append(out, p.GradF32())
		}
		return out
	}
	a, b := grads(false), grads(true)
	for i := range a {
		for j := range a[i] {
			if math.Abs(float64(a[i][j]-b[i][j])) > 1e-5 {
				t.Fatalf("param %d elem %d: %v vs %v", i, j, a[i][j], b[i][j])
			}
		}
	}
}

// With tied embeddings, an lm_head adapter trains the output side only, and
// merging unties lm_head instead of changing the input embeddings.
func TestLMHeadAdapterOnTiedModel(t *testing.T) {
	be := cpu.New()
	c := randmodel.TinyConfig(53)
	c.TieWordEmbeddings = true
	m, err := llama.NewRandom(c, be, kernels.F32, 1)
	if err != nil {
		t.Fatal(err)
	}
	embed := m.EmbedTokens.F32()
	s, err := lora.Attach(m, lora.Config{R: 2, Alpha: 2, TargetModules: []string{"lm_head"}}, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Linears) != 1 || s.Linears[0].Module != "lm_head" {
		t.Fatalf("adapters: %v", s.Linears)
	}
	l := s.Linears[0]
	v := make([]float32, l.B.Numel())
	for i := range v {
		v[i] = 0.3
	}
	be.Copy(l.B.Buf, be.FromF32(kernels.F32, v))
	in := &llama.Input{Rows: 1, SeqLen: 5, InputIDs: []int32{1, 2, 3, 4, 5}}
	before, _ := m.Logits(llama.NewInferenceTape(be), in)
	want := before.F32()
	s.Merge(m)
	if m.Config.TieWordEmbeddings || m.Param("lm_head.weight") == nil {
		t.Fatal("merge of a tied lm_head adapter did not untie")
	}
	for i, x := range m.EmbedTokens.F32() {
		if x != embed[i] {
			t.Fatal("merge changed the input embeddings")
		}
	}
	after, _ := m.Logits(llama.NewInferenceTape(be), in)
	for i, x := range after.F32() {
		if math.Abs(float64(x-want[i])) > 1e-4 {
			t.Fatalf("logit %d: %v vs %v", i, x, want[i])
		}
	}
}

// The unfused loss (full logits, then cross-entropy; LLAMATUNE_NO_FUSED=1)
// gives the fused loss's value and gradients, lm_head adapter included.
func TestUnfusedMatchesFused(t *testing.T) {
	run := func(unfused bool) (float32, [][]float32) {
		m, s, in, labels := setup(t, allTargets(), kernels.F32)
		if m.UnfusedLoss {
			t.Fatal("UnfusedLoss is set without LLAMATUNE_NO_FUSED")
		}
		m.UnfusedLoss = unfused
		tp := tensor.NewTape(m.Backend())
		loss, _, err := m.Loss(tp, in, labels, 0)
		if err != nil {
			t.Fatal(err)
		}
		v := loss.Item()
		tp.Backward(loss)
		var g [][]float32
		for _, p := range s.Params() {
			g = append(g, p.GradF32())
		}
		return v, g
	}
	fl, fg := run(false)
	ul, ug := run(true)
	if math.Abs(float64(fl-ul)) > 1e-5 {
		t.Fatalf("loss fused %v, unfused %v", fl, ul)
	}
	for i := range fg {
		for j := range fg[i] {
			if math.Abs(float64(fg[i][j]-ug[i][j])) > 1e-5*(1+math.Abs(float64(fg[i][j]))) {
				t.Fatalf("param %d elem %d: fused %v unfused %v", i, j, fg[i][j], ug[i][j])
			}
		}
	}
	t.Setenv("LLAMATUNE_NO_FUSED", "1") // the switch sets it on every model made
	if m, _, _, _ := setup(t, allTargets(), kernels.F32); !m.UnfusedLoss {
		t.Fatal("LLAMATUNE_NO_FUSED=1 did not set UnfusedLoss")
	}
}

// AddLowRank is W += scaling·B·A; a caller's scratch buffer gives the same bits.
func TestAddLowRank(t *testing.T) {
	be := cpu.New()
	r := rand.New(rand.NewPCG(3, 3))
	rnd := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(r.NormFloat64())
		}
		return v
	}
	const out, in, rank = 37, 29, 3
	w, a, b := rnd(out*in), rnd(rank*in), rnd(out*rank)
	const scaling = 0.75
	got := append([]float32(nil), w...)
	lora.AddLowRank(be, cpu.WrapF32(got), cpu.WrapF32(a), cpu.WrapF32(b), nil, out, in, rank, scaling)
	scratch := append([]float32(nil), w...)
	lora.AddLowRank(be, cpu.WrapF32(scratch), cpu.WrapF32(a), cpu.WrapF32(b), cpu.WrapF32(make([]float32, out*in)), out, in, rank, scaling)
	for i := range w {
		o, j := i/in, i%in
		var d float64
		for k := 0; k < rank; k++ {
			d += float64(b[o*rank+k]) * float64(a[k*in+j])
		}
		want := float64(w[i]) + scaling*d
		if math.Abs(float64(got[i])-want) > 1e-5*(1+math.Abs(want)) {
			t.Fatalf("element %d: %v, want %v", i, got[i], want)
		}
		if math.Float32bits(got[i]) != math.Float32bits(scratch[i]) {
			t.Fatalf("element %d: %v with its own scratch, %v with the caller's", i, got[i], scratch[i])
		}
	}
}

func TestAdapts(t *testing.T) {
	c := lora.Config{R: 2, Alpha: 4, TargetModules: []string{"all-linear", "lm_head"}, Layers: []int{1}}
	for module, want := range map[string]bool{
		"model.layers.1.self_attn.q_proj": true, "model.layers.1.mlp.down_proj": true,
		"model.layers.0.self_attn.q_proj": false, "model.layers.1.input_layernorm": false,
		"lm_head": true, "model.embed_tokens": false,
	} {
		if got := c.Adapts(module); got != want {
			t.Errorf("Adapts(%s) = %v, want %v", module, got, want)
		}
	}
	if (lora.Config{TargetModules: []string{"all-linear"}}).Adapts("lm_head") {
		t.Error("all-linear adapts lm_head")
	}
}

// Config is written with snake_case keys (state.json's "lora" section) and
// still reads the Go field names earlier checkpoints used.
func TestConfigJSONKeys(t *testing.T) {
	c := lora.Config{R: 8, Alpha: 16, Dropout: 0.05, TargetModules: []string{"q_proj", "v_proj"}, RSLoRA: true}
	raw, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"r":8,"alpha":16,"dropout":0.05,"target_modules":["q_proj","v_proj"],"use_rslora":true}`; string(raw) != want {
		t.Fatalf("got %s, want %s", raw, want)
	}
	for _, in := range []string{string(raw), `{"R":8,"Alpha":16,"Dropout":0.05,"TargetModules":["q_proj","v_proj"],"RSLoRA":true,"Layers":null}`} {
		var back lora.Config
		if err := json.Unmarshal([]byte(in), &back); err != nil || !reflect.DeepEqual(back, c) {
			t.Fatalf("%s read as %+v (%v), want %+v", in, back, err, c)
		}
	}
}

// checkDirectional compares the gradient of the loss along dir (p's
// recorded gradient · dir) with the central difference of the loss when p
// moves by ±1e-3·dir.
func checkDirectional(t *testing.T, m *llama.Model, in *llama.Input, labels []int32, p *tensor.Tensor, dir []float32) {
	t.Helper()
	be := m.Backend()
	g, orig := p.GradF32(), p.F32()
	var ana float64
	for i := range dir {
		ana += float64(dir[i] * g[i])
	}
	set := func(e float32) {
		v := make([]float32, len(orig))
		for i := range v {
			v[i] = orig[i] + e*dir[i]
		}
		be.Copy(p.Buf, be.FromF32(kernels.F32, v))
	}
	const eps = 1e-3
	set(eps)
	lp := lossOf(t, m, in, labels)
	set(-eps)
	lm := lossOf(t, m, in, labels)
	set(0)
	if num := (lp - lm) / (2 * eps); math.Abs(num-ana) > 2e-3+2e-2*math.Abs(ana) {
		t.Errorf("%s: analytic %.6g numeric %.6g", p.Name, ana, num)
	}
}
