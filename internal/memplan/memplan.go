// Package memplan estimates, before anything is loaded, the memory a training
// job needs: base weights, adapters, gradients, AdamW state, activations and
// the transient buffers of one step. It counts what this implementation
// allocates (tensor ops on the tape, the fused cross-entropy, the CPU GEMM),
// not a textbook model, so `llamatune validate` and `train` can refuse a job
// that cannot fit and say what to change.
package memplan

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/kernels/nf4"
	"github.com/llamatune/llamatune/model/llama"
)

// Options describe a job in plain terms (cmd maps configs.Job onto them).
type Options struct {
	Method string // "lora" or "full"
	// WeightsBF16: frozen base weights stored as bf16 (precision.weights: bf16; lora only).
	WeightsBF16 bool
	// WeightsNF4: the decoder's linear weights NF4-quantized, the rest bf16
	// (precision.weights: nf4, QLoRA; lora only).
	WeightsNF4 bool
	// FileBF16: the checkpoint holds bf16 tensors, so bf16 weights can be
	// mapped from the file instead of copied.
	FileBF16 bool
	// LoRA (method lora).
	R             int
	Dropout       float64
	TargetModules []string // short names (q_proj, ..., lm_head) or all-linear
	Layers        []int    // adapted decoder layers (empty: all)
	UseDoRA       bool     // DoRA: a magnitude [out] per adapted module, and its scaled outputs
	// Full fine-tuning (method full).
	FreezeLayers     []int
	FreezeEmbeddings bool

	SeqLen, MicroBatch int
	Recompute          bool // activation checkpointing
	// ComputeBF16: bf16 compute, whose activation checkpoints (each layer's
	// input but the final norm's) are kept in bf16 (tensor.Tape.KeepBF16).
	ComputeBF16 bool
	// BF16Activations: the backend reads bf16 activations
	// (kernels.BF16Activations: the CPU), so under bf16 compute the
	// activations a layer saves for backward are kept in bf16 too.
	BF16Activations bool
}

// activationBytes is the bytes per value of the activations a layer saves
// for backward (LayerActivations).
func (o Options) activationBytes() int64 {
	if o.ComputeBF16 && o.BF16Activations {
		return bf
	}
	return f32
}

// Bytes of one f32 and one bf16 value.
const (
	f32 = 4
	bf  = 2
)

// LogitsBudget is the largest logits chunk the fused cross-entropy makes
// (kernels/cpu: 64 MiB of f32).
const LogitsBudget = 64 << 20

// Estimate is what a job needs, in bytes unless named otherwise.
type Estimate struct {
	Params      int64  // parameters of the base model (a tied lm_head once)
	BaseWeights int64  // base weights as stored
	BaseDType   string // "nf4", "bf16" or "f32"
	BaseMapped  bool   // bf16 weights from a bf16 file: mappable instead of a heap copy

	TrainableParams int64
	Adapters        int64 // LoRA A and B (f32); 0 for full fine-tuning
	Grads           int64 // one f32 per trainable parameter
	Optimizer       int64 // AdamW: two f32 moments per trainable parameter

	ActivationsFull int64 // tape activations without checkpointing
	ActivationsCkpt int64 // with activation checkpointing
	Activations     int64 // the one the job uses
	Recompute       bool

	// Transient buffers of one step.
	CELogits   int64 // one chunk of logits (≤ LogitsBudget)
	CEWeight   int64 // the fused loss's f32 lm_head gradient (full fine-tuning of lm_head)
	Backward   int64 // gradients of one layer's intermediates in flight
	Transients int64 // their sum

	Total int64
}

// Tokens per micro-batch.
func (o Options) tokens() int64 { return int64(o.SeqLen) * int64(max(o.MicroBatch, 1)) }

func (o Options) targets() []string {
	var out []string
	for _, m := range o.TargetModules {
		if m == "all-linear" {
			out = append(out, "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
		} else {
			out = append(out, m)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (o Options) adapted(layer int) bool {
	return len(o.Layers) == 0 || slices.Contains(o.Layers, layer)
}

// module is one linear layer: y [T, out] = x [T, in]·Wᵀ.
type module struct {
	name    string
	in, out int64
}

// layerModules are a decoder layer's projections in forward order.
func layerModules(c llama.Config) []module {
	H, I := int64(c.HiddenSize), int64(c.IntermediateSize)
	hd := int64(c.HeadDimension())
	Q, KV := int64(c.NumAttentionHeads)*hd, int64(c.NumKeyValueHeads)*hd
	return []module{{"q_proj", H, Q}, {"k_proj", H, KV}, {"v_proj", H, KV}, {"o_proj", Q, H},
		{"gate_proj", H, I}, {"up_proj", H, I}, {"down_proj", I, H}}
}

// Check reports what cannot work whatever the memory: a LoRA rank above a
// targeted layer's smaller side, a sequence longer than the model's context.
// Errors name the job key; model names the model directory.
func Check(c llama.Config, o Options, model string) []error {
	var errs []error
	if o.Method == "lora" && o.R > 0 {
		mods := append(layerModules(c), module{"lm_head", int64(c.HiddenSize), int64(c.VocabSize)})
		targets := o.targets()
		var worst *module
		for i := range mods {
			m := &mods[i]
			if slices.Contains(targets, m.name) && (worst == nil || min(m.in, m.out) < min(worst.in, worst.out)) {
				worst = m
			}
		}
		if worst != nil && int64(o.R) > min(worst.in, worst.out) {
			errs = append(errs, fmt.Errorf("lora.r: %d is larger than %s of %s (in %d, out %d): a rank above min(in, out) = %d adds nothing; use lora.r <= %d (8, 16 or 64 are usual)",
				o.R, worst.name, model, worst.in, worst.out, min(worst.in, worst.out), min(worst.in, worst.out)))
		}
	}
	if mp := c.MaxPositionEmbeddings; mp > 0 && o.SeqLen > mp && checkpoint.IsGGUF(model) {
		errs = append(errs, fmt.Errorf("data.seq_len: %d is over the context length %d of %s (llama.context_length); use data.seq_len <= %d",
			o.SeqLen, mp, model, mp))
	} else if mp > 0 && o.SeqLen > mp {
		errs = append(errs, fmt.Errorf("data.seq_len: %d is over max_position_embeddings %d of %s/config.json; use data.seq_len <= %d, or give the model a longer context with rope scaling (rope_scaling in config.json, e.g. {rope_type: llama3, factor: 8, ...}, and a larger max_position_embeddings)",
			o.SeqLen, mp, model, mp))
	}
	return errs
}

// ParamCount is the number of parameters of a model with config c (a tied
// lm_head counted once).
func ParamCount(c llama.Config) int64 {
	names, shapes := llama.ParamShapes(c)
	var n int64
	for _, name := range names {
		v := int64(1)
		for _, d := range shapes[name] {
			v *= int64(d)
		}
		n += v
	}
	return n
}

// Compute returns the estimate for a model of config c trained as o says.
func Compute(c llama.Config, o Options) Estimate {
	var e Estimate
	names, shapes := llama.ParamShapes(c)
	numel := func(n string) int64 {
		v := int64(1)
		for _, d := range shapes[n] {
			v *= int64(d)
		}
		return v
	}
	for _, n := range names {
		e.Params += numel(n)
	}
	H, I, V := int64(c.HiddenSize), int64(c.IntermediateSize), int64(c.VocabSize)
	L := int64(c.NumHiddenLayers)
	T := o.tokens()
	r := int64(o.R)
	lora := o.Method != "full"

	// Weights.
	e.BaseDType, e.BaseWeights = "f32", f32*e.Params
	if lora && o.WeightsBF16 {
		e.BaseDType, e.BaseWeights, e.BaseMapped = "bf16", bf*e.Params, o.FileBF16
	}
	if lora && o.WeightsNF4 {
		// 4 bits per value plus one byte per 64 and an f32 per 16384
		// (nf4.StorageBytes); embeddings, norms and lm_head stay bf16.
		e.BaseDType, e.BaseWeights, e.BaseMapped = "nf4", 0, o.FileBF16
		for _, n := range names {
			if llama.QuantizedParam(n) {
				e.BaseWeights += nf4.StorageBytes(numel(n))
			} else {
				e.BaseWeights += bf * numel(n)
			}
		}
	}

	// Trainable parameters.
	targets := o.targets()
	lmHeadAdapter := lora && slices.Contains(targets, "lm_head")
	if lora {
		for l := 0; l < c.NumHiddenLayers; l++ {
			if !o.adapted(l) {
				continue
			}
			for _, m := range layerModules(c) {
				if slices.Contains(targets, m.name) {
					e.TrainableParams += r * (m.in + m.out)
					if o.UseDoRA {
						e.TrainableParams += m.out
					}
				}
			}
		}
		if lmHeadAdapter {
			e.TrainableParams += r * (H + V)
		}
		e.Adapters = f32 * e.TrainableParams
	} else {
		frozen := func(n string) bool {
			for _, l := range o.FreezeLayers {
				if strings.HasPrefix(n, fmt.Sprintf("model.layers.%d.", l)) {
					return true
				}
			}
			return o.FreezeEmbeddings && n == "model.embed_tokens.weight"
		}
		for _, n := range names {
			if !frozen(n) {
				e.TrainableParams += numel(n)
			}
		}
	}
	e.Grads = f32 * e.TrainableParams
	e.Optimizer = 2 * f32 * e.TrainableParams

	// Activations: every f32 buffer the tape keeps until the step ends.
	perLayer := make([]int64, c.NumHiddenLayers)
	for l := range perLayer {
		perLayer[l] = LayerActivations(c, o, lora && o.adapted(l))
	}
	outside := f32 * (T*H + // embedding output
		T*H + T + // final norm and its 1/rms
		T*H) // the fused loss's gradient of the hidden states
	if lmHeadAdapter {
		outside += f32 * (adapterInputCost(T, H, o.Dropout) + 2*T*r + T*r + V*r) // x·Aᵀ, scaled, its grad, B's grad
	}
	var sumLayers, maxLayer int64
	for _, a := range perLayer {
		sumLayers += a
		maxLayer = max(maxLayer, a)
	}
	e.ActivationsFull = sumLayers + outside
	// Checkpointing keeps each layer's output, and rebuilds one layer at a time.
	e.ActivationsCkpt = f32*L*T*H + maxLayer + outside
	if o.ComputeBF16 {
		// In bf16: the embedding output and every layer output but the last.
		e.ActivationsCkpt -= (f32 - bf) * L * T * H
	}
	e.Recompute = o.Recompute
	e.Activations = e.ActivationsFull
	if o.Recompute {
		e.Activations = e.ActivationsCkpt
	}

	// Transients.
	e.CELogits = f32 * min(T, int64(ceChunk(int(V)))) * V
	lmHeadTrainable := !lora && !(c.TieWordEmbeddings && o.FreezeEmbeddings)
	if lmHeadTrainable {
		e.CEWeight = f32 * V * H
	}
	e.Backward = f32 * (3*T*I + 3*T*H)
	e.Transients = e.CELogits + e.CEWeight + e.Backward

	e.Total = e.BaseWeights + e.Adapters + e.Grads + e.Optimizer + e.Activations + e.Transients
	return e
}

// ceChunk is the positions per logits chunk the CPU backend picks (kernels/cpu autoChunk).
func ceChunk(V int) int { return max(16, min(1024, (LogitsBudget/f32)/max(V, 1))) }

// adapterInputCost is the dropout of an adapter's input: a mask and the
// dropped copy, each [T, in] (nothing when dropout is 0).
func adapterInputCost(T, in int64, dropout float64) int64 {
	if dropout <= 0 {
		return 0
	}
	return 2 * T * in
}

// LayerActivations is the bytes one decoder layer leaves on the tape
// (model/llama layer()): what its backward reads, the projections' outputs
// that nothing reads again being freed as soon as they are used:
//
//	norm outputs 2·T·H; q, k after RoPE T·Q + T·KV; v T·KV;
//	attention output T·Q; gate, up, SwiGLU output 3·T·I
//
// in bf16 under bf16 compute on a backend that reads bf16 activations, else
// f32; and in f32: 1/rms 2·T, the attention log-sum-exp T·heads, the two
// residual sums 2·T·H. Each adapted projection (in → out, rank r) adds its
// dropout mask and dropped copy 2·T·in (dropout > 0) and x·Aᵀ T·r; a DoRA
// one also its unscaled output T·out, or with dropout 4·T·out (d·Wᵀ, the
// sum, its scaled copy, the negation).
func LayerActivations(c llama.Config, o Options, adapted bool) int64 {
	T := o.tokens()
	H, I := int64(c.HiddenSize), int64(c.IntermediateSize)
	hd := int64(c.HeadDimension())
	Q, KV := int64(c.NumAttentionHeads)*hd, int64(c.NumKeyValueHeads)*hd
	heads := int64(c.NumAttentionHeads)
	saved := 2*T*H + // two norm outputs
		T*Q + T*KV + T*KV + // q, k (rotated), v
		T*Q + // attention output
		3*T*I // gate, up, SwiGLU
	n := 2*T + T*heads + 2*T*H // 1/rms ×2, log-sum-exp, residual sums
	if adapted {
		targets := o.targets()
		for _, m := range layerModules(c) {
			if slices.Contains(targets, m.name) {
				n += adapterInputCost(T, m.in, o.Dropout) + T*int64(o.R)
				if o.UseDoRA {
					n += T * m.out
					if o.Dropout > 0 {
						n += 3 * T * m.out
					}
				}
			}
		}
	}
	return o.activationBytes()*saved + f32*n
}

// QLoRAGCPercent is the Go collector's GOGC for jobs with NF4 base weights
// (TightenGC). QLoRA is chosen to save memory, and there the collector's
// slack is the largest part left to save: GOGC=100 lets the heap (adapters,
// optimizer state, activations, step buffers; NF4 weights live outside it)
// grow to about twice its live size before a collection. At 25 the slack is
// a quarter of it, for a few more collections per step (measured on the 1B
// shape: bench/RESULTS.md).
const QLoRAGCPercent = 25

// TightenGC sets GOGC to QLoRAGCPercent for a job with NF4 base weights,
// unless the GOGC environment variable chooses.
func TightenGC(weightsNF4 bool) {
	if weightsNF4 && os.Getenv("GOGC") == "" {
		debug.SetGCPercent(QLoRAGCPercent)
	}
}

// GiB formats bytes as GiB with two decimals.
func GiB(b int64) string { return fmt.Sprintf("%.2f GiB", float64(b)/(1<<30)) }

// Lines is the estimate as the lines validate and train print.
func (e Estimate) Lines() []string {
	where := "heap"
	if e.BaseMapped {
		where = "mapped from the bf16 file"
	}
	if e.BaseDType == "nf4" {
		where = "linear layers quantized in anonymous memory; embeddings, norms, lm_head bf16 " + map[bool]string{true: "mapped", false: "on the heap"}[e.BaseMapped]
	}
	ckptOn, ckptOff := " ", "*"
	if e.Recompute {
		ckptOn, ckptOff = "*", " "
	}
	return []string{
		fmt.Sprintf("  base weights  %10s  %d parameters, %s (%s)", GiB(e.BaseWeights), e.Params, e.BaseDType, where),
		fmt.Sprintf("  adapters      %10s  LoRA A and B, f32", GiB(e.Adapters)),
		fmt.Sprintf("  gradients     %10s  %d trainable parameters, f32", GiB(e.Grads), e.TrainableParams),
		fmt.Sprintf("  AdamW state   %10s  2 f32 moments per trainable parameter", GiB(e.Optimizer)),
		fmt.Sprintf(" %sactivations   %10s  without activation_checkpointing", ckptOff, GiB(e.ActivationsFull)),
		fmt.Sprintf(" %sactivations   %10s  with activation_checkpointing", ckptOn, GiB(e.ActivationsCkpt)),
		fmt.Sprintf("  step buffers  %10s  logits chunk %s, lm_head grad %s, backward grads %s",
			GiB(e.Transients), GiB(e.CELogits), GiB(e.CEWeight), GiB(e.Backward)),
		fmt.Sprintf("  total         %10s", GiB(e.Total)),
	}
}

// Fit returns nil when the estimate fits in avail bytes, else an error that
// says what to change (o is the job the estimate is for; where names the
// memory, e.g. "this machine's MemAvailable").
func (e Estimate) Fit(avail int64, o Options, what string) error {
	if e.Total <= avail {
		return nil
	}
	var fixes []string
	if o.Method == "full" {
		fixes = append(fixes, fmt.Sprintf("method: lora with precision.weights: bf16 (adapters instead of every weight: no %s of gradients and AdamW state, half the base weights)", GiB(e.Grads+e.Optimizer)))
	} else if !o.WeightsBF16 && !o.WeightsNF4 {
		fixes = append(fixes, fmt.Sprintf("precision.weights: bf16 (halves the base weights, %s), or nf4 (QLoRA: the linear layers in about 4.1 bits)", GiB(e.BaseWeights)))
	} else if o.WeightsBF16 {
		fixes = append(fixes, fmt.Sprintf("precision.weights: nf4 (QLoRA: the linear layers in about 4.1 bits instead of 16; base weights now %s)", GiB(e.BaseWeights)))
	}
	if !o.Recompute && e.ActivationsCkpt < e.ActivationsFull {
		fixes = append(fixes, fmt.Sprintf("precision.activation_checkpointing: true (activations %s instead of %s)", GiB(e.ActivationsCkpt), GiB(e.ActivationsFull)))
	}
	fixes = append(fixes, "a smaller data.seq_len or batch.micro_batch_size (activations grow with their product; use batch.grad_accum to keep the batch)")
	return fmt.Errorf("the job needs about %s but %s has %s: change %s",
		GiB(e.Total), what, GiB(avail), strings.Join(fixes, "; or "))
}

// MemAvailable is MemAvailable of /proc/meminfo in bytes.
func MemAvailable() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/meminfo: MemAvailable %q: %v", rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("/proc/meminfo has no MemAvailable")
}

// FileBF16 reports whether the model directory's embedding is stored as
// bf16 (a safetensors header read; nothing is loaded): its bf16 weights can
// then be used in place from the memory map.
func FileBF16(dir string) bool {
	if checkpoint.IsGGUF(dir) {
		g, err := checkpoint.OpenGGUF(dir)
		if err != nil {
			return false
		}
		defer g.Close()
		t, ok := g.Tensor("token_embd.weight")
		return ok && t.Type == checkpoint.GGMLTypeBF16
	}
	r, err := checkpoint.Open(dir)
	if err != nil {
		return false
	}
	defer r.Close()
	info, ok := r.Info("model.embed_tokens.weight")
	return ok && info.DType == "BF16"
}
