package memplan_test

import (
	"strings"
	"testing"

	"github.com/llamatune/llamatune/internal/memplan"
	"github.com/llamatune/llamatune/internal/randmodel"
)

var allLinear = []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

const gib = 1 << 30

// Llama 3.2 1B, LoRA r16 on every projection (dropout 0.05), bf16 base
// weights from a bf16 file, seq 512 × 1 on the CPU: every component from its
// formula.
func TestEstimateLlama32_1B(t *testing.T) {
	c, _ := randmodel.ShapeConfig("llama3.2-1b")
	o := memplan.Options{Method: "lora", WeightsBF16: true, FileBF16: true, R: 16, Dropout: 0.05,
		TargetModules: allLinear, SeqLen: 512, MicroBatch: 1}
	e := memplan.Compute(c, o)

	const (
		T, H, I, Q, KV, heads, V, L, r = 512, 2048, 8192, 2048, 512, 32, 128256, 16, 16
	)
	check := func(name string, got, want int64) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %d, want %d", name, got, want)
		}
	}
	check("params", e.Params, 1_235_814_400)
	check("base weights (bf16)", e.BaseWeights, 2*1_235_814_400)
	if e.BaseDType != "bf16" || !e.BaseMapped {
		t.Errorf("base %s mapped %v, want bf16 mapped", e.BaseDType, e.BaseMapped)
	}
	// PEFT prints "trainable params: 11,272,192" for this adapter.
	perLayer := int64(r * ((H + Q) + (H + KV) + (H + KV) + (Q + H) + (H + I) + (H + I) + (I + H)))
	check("trainable", e.TrainableParams, 11_272_192)
	check("trainable formula", e.TrainableParams, L*perLayer)
	check("adapters", e.Adapters, 4*11_272_192)
	check("grads", e.Grads, 4*11_272_192)
	check("adamw", e.Optimizer, 8*11_272_192)

	// One layer's tape, what backward reads: norm outputs, rotated q and k,
	// v, attention output, gate, up, SwiGLU output ...
	saved := int64(2*T*H + T*(Q+2*KV) + T*Q + 3*T*I)
	// ... 1/rms, log-sum-exp and the residual sums ...
	base := int64(2*T + T*heads + 2*T*H)
	// ... and per adapter: dropout mask + copy of its input, x·Aᵀ.
	ad := func(in, out int64) int64 { return 2*T*in + T*r }
	adapters := ad(H, Q) + ad(H, KV) + ad(H, KV) + ad(Q, H) + ad(H, I) + ad(H, I) + ad(I, H)
	layer := 4 * (saved + base + adapters)
	check("layer", memplan.LayerActivations(c, o, true), layer)
	// bf16 compute on the CPU keeps the saved activations in bf16.
	bfo := o
	bfo.ComputeBF16, bfo.BF16Activations = true, true
	check("layer, bf16 activations", memplan.LayerActivations(c, bfo, true), layer-2*saved)
	bfo.BF16Activations = false // a backend that reads only f32 activations
	check("layer, bf16 compute, f32 activations", memplan.LayerActivations(c, bfo, true), layer)
	outside := int64(4 * (3*T*H + T)) // embedding, final norm (+1/rms), dH of the fused loss
	check("activations without checkpointing", e.ActivationsFull, L*layer+outside)
	check("activations with checkpointing", e.ActivationsCkpt, 4*L*T*H+layer+outside)
	check("activations used", e.Activations, e.ActivationsFull)

	check("logits chunk", e.CELogits, 4*130*V) // 130 positions of 128,256 logits: ≤ 64 MiB
	if e.CELogits > memplan.LogitsBudget {
		t.Errorf("logits chunk %d over the 64 MiB budget", e.CELogits)
	}
	check("lm_head grad (frozen)", e.CEWeight, 0)
	check("backward grads", e.Backward, 4*(3*T*I+3*T*H))
	check("total", e.Total, e.BaseWeights+e.Adapters+e.Grads+e.Optimizer+e.Activations+e.CELogits+e.Backward)
	if e.Total < 5*gib || e.Total > 10*gib {
		t.Errorf("total %s: not a sane figure for a 1B LoRA at seq 512", memplan.GiB(e.Total))
	}
	if err := e.Fit(24*gib, o, "24 GiB"); err != nil {
		t.Errorf("1B LoRA at seq 512 refused in 24 GiB: %v", err)
	}
	o.Recompute = true
	if got := memplan.Compute(c, o); got.Activations != got.ActivationsCkpt || got.Total >= e.Total {
		t.Errorf("checkpointing: activations %d (ckpt %d), total %d vs %d", got.Activations, got.ActivationsCkpt, got.Total, e.Total)
	}
	if n := len(e.Lines()); n != 8 {
		t.Errorf("%d lines", n)
	}
}

// A full fine-tune of Llama 3.1 8B cannot fit in 24 GiB (f32 weights,
// gradients and AdamW state alone are 120 GiB); the refusal says what to change.
// LoRA on bf16 weights with checkpointing at seq 512 does fit.
func TestRefuseFull8B(t *testing.T) {
	c, _ := randmodel.ShapeConfig("llama3.1-8b")
	full := memplan.Options{Method: "full", SeqLen: 2048, MicroBatch: 1, Recompute: true}
	e := memplan.Compute(c, full)
	if e.TrainableParams != 8_030_261_248 || e.Grads+e.Optimizer+e.BaseWeights != 16*8_030_261_248 {
		t.Fatalf("full 8B: %d trainable, %d bytes of weights+grads+adam", e.TrainableParams, e.Grads+e.Optimizer+e.BaseWeights)
	}
	if e.CEWeight != 4*128256*4096 {
		t.Errorf("untied lm_head trained: the fused loss's lm_head gradient is %d bytes", e.CEWeight)
	}
	err := e.Fit(24*gib, full, "this machine's MemAvailable")
	if err == nil {
		t.Fatal("full fine-tune of 8B accepted in 24 GiB")
	}
	for _, want := range []string{"needs about 1", "this machine's MemAvailable has 24.00 GiB", "method: lora with precision.weights: bf16", "data.seq_len or batch.micro_batch_size"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal lacks %q: %v", want, err)
		}
	}
	lora := memplan.Options{Method: "lora", WeightsBF16: true, R: 16, TargetModules: allLinear, SeqLen: 512, MicroBatch: 1, Recompute: true}
	if err := memplan.Compute(c, lora).Fit(24*gib, lora, "24 GiB"); err != nil {
		t.Errorf("8B LoRA bf16 refused: %v", err)
	}
	// bf16 compute keeps the checkpoints (embedding output and every layer
	// output but the last) in bf16: 2 bytes less each.
	bf := lora
	bf.ComputeBF16 = true
	L, T, H := int64(c.NumHiddenLayers), int64(512), int64(c.HiddenSize)
	if d := memplan.Compute(c, lora).ActivationsCkpt - memplan.Compute(c, bf).ActivationsCkpt; d != 2*L*T*H {
		t.Errorf("bf16 checkpoints save %d bytes, want %d", d, 2*L*T*H)
	}
	// Without checkpointing the advice includes it.
	noCkpt := lora
	noCkpt.Recompute, noCkpt.SeqLen, noCkpt.MicroBatch = false, 8192, 4
	err = memplan.Compute(c, noCkpt).Fit(24*gib, noCkpt, "24 GiB")
	if err == nil || !strings.Contains(err.Error(), "precision.activation_checkpointing: true") {
		t.Errorf("want checkpointing advice: %v", err)
	}
}

func TestCheckRankAndContext(t *testing.T) {
	c := randmodel.TinyConfig(256) // hidden 64, 4 heads, 2 kv heads of 16: k_proj is 64 → 32
	o := memplan.Options{Method: "lora", R: 100000, TargetModules: allLinear, SeqLen: 64, MicroBatch: 1}
	errs := memplan.Check(c, o, "tiny")
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "lora.r: 100000 is larger than k_proj of tiny (in 64, out 32)") ||
		!strings.Contains(errs[0].Error(), "use lora.r <= 32") {
		t.Fatalf("want the rank refused: %v", errs)
	}
	o.R, o.TargetModules = 48, []string{"q_proj", "gate_proj"} // both 64 wide on the small side
	if errs := memplan.Check(c, o, "tiny"); len(errs) != 0 {
		t.Errorf("r 48 on q_proj, gate_proj refused: %v", errs)
	}
	o.R, o.SeqLen = 8, 4096
	errs = memplan.Check(c, o, "tiny")
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "data.seq_len: 4096 is over max_position_embeddings 2048 of tiny/config.json") ||
		!strings.Contains(errs[0].Error(), "rope scaling") {
		t.Fatalf("want the context refused: %v", errs)
	}
}

// DoRA adds a magnitude [out] per adapted module to the trainable
// parameters: for Llama 3.2 1B r16 on every projection, PEFT's
// 11,272,192 + 16 layers × (Q + KV + KV + H + I + I + H).
func TestEstimateDoRA(t *testing.T) {
	c, _ := randmodel.ShapeConfig("llama3.2-1b")
	o := memplan.Options{Method: "lora", R: 16, Dropout: 0.05, TargetModules: allLinear, SeqLen: 512, MicroBatch: 1}
	lora := memplan.Compute(c, o)
	o.UseDoRA = true
	dora := memplan.Compute(c, o)
	const H, I, Q, KV, L = 2048, 8192, 2048, 512, 16
	if got, want := dora.TrainableParams-lora.TrainableParams, int64(L*(Q+KV+KV+H+I+I+H)); got != want {
		t.Errorf("DoRA adds %d trainable parameters, want %d", got, want)
	}
	if dora.Activations <= lora.Activations {
		t.Errorf("DoRA activations %d not above LoRA's %d", dora.Activations, lora.Activations)
	}
}

// precision.weights: nf4 counts the decoder's linear weights at NF4's
// storage (half a byte each, a byte per 64, an f32 per 16384) and the rest
// (embeddings, norms, tied lm_head) in bf16; the bf16 advice becomes nf4.
func TestEstimateNF4(t *testing.T) {
	c, _ := randmodel.ShapeConfig("llama3.2-1b")
	o := memplan.Options{Method: "lora", WeightsNF4: true, FileBF16: true, R: 16, TargetModules: allLinear, SeqLen: 512, MicroBatch: 1}
	e := memplan.Compute(c, o)
	const H, I, Q, KV, L, V = 2048, 8192, 2048, 512, 16, 128256
	nf4 := func(n int64) int64 { return n/2 + n/64 + 4*((n/64+255)/256) + 4 }
	want := L*(nf4(H*Q)+nf4(H*KV)*2+nf4(Q*H)+nf4(H*I)*2+nf4(I*H)) + 2*(V*H+2*L*H+H)
	if e.BaseWeights != want || e.BaseDType != "nf4" {
		t.Errorf("base weights %d %s, want %d nf4", e.BaseWeights, e.BaseDType, want)
	}
	if !strings.Contains(e.Lines()[0], "nf4 (linear layers quantized") {
		t.Errorf("estimate line: %q", e.Lines()[0])
	}
	bf := o
	bf.WeightsNF4, bf.WeightsBF16 = false, true
	err := memplan.Compute(c, bf).Fit(1*gib, bf, "1 GiB")
	if err == nil || !strings.Contains(err.Error(), "precision.weights: nf4") {
		t.Errorf("want nf4 advice for bf16 weights: %v", err)
	}
}
