package benchmark

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/llamatune/llamatune/internal/memplan"
	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/optim"
	"github.com/llamatune/llamatune/tensor"
)

// The adapter a LoRA step trains: rank 16, alpha 32 on every projection.
const (
	BenchLoRARank  = 16
	BenchLoRAAlpha = 32
)

var benchTargets = []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

// StepOptions shape the training-step benchmark. The model is, by priority:
// an HF directory (ModelDir), a published shape (Shape: written once into
// CacheDir, then reused), or a random in-memory model (Layers, Hidden, Vocab).
type StepOptions struct {
	ModelDir              string
	Shape                 string
	CacheDir              string // default $TMPDIR/llamatune-bench-SHAPE
	Layers, Hidden, Vocab int

	// Method "lora": LoRA r 16, alpha 32 on q,k,v,o,gate,up,down with the
	// base weights frozen in bf16, as a train job with precision.weights
	// bf16. "full": every weight trainable, f32. "" picks lora for a model
	// directory or shape, full for the random model.
	Method      string
	LoRADropout float64
	DoRA        bool          // method lora: DoRA adapters (lora.use_dora)
	Compute     kernels.DType // GEMM precision (llama.Model.Compute)
	// SideBySide times f32 and bf16 compute in the same run, alternating
	// step by step (Steps of each after one warm-up of each), so that a
	// noisy machine slows both alike; Compute is then ignored.
	SideBySide bool
	// Weights is the storage of the frozen base of a LoRA step: "bf16"
	// (default, as precision.weights: bf16), "nf4" (QLoRA, as
	// precision.weights: nf4), or "both": the model loaded twice, bf16 and
	// nf4, trained with the same adapter seed in alternating steps (as
	// SideBySide does for compute; the two cannot be combined).
	Weights string

	Rows, SeqLen int
	Steps        int // timed steps, after one warm-up
	Recompute    bool

	Log io.Writer // progress of writing and loading the model (nil: quiet)
}

// StepResult is one training-step measurement.
type StepResult struct {
	StepOptions
	Name            string // the shape, directory, or "random"
	Config          llama.Config
	Params          int64 // of the base model
	TrainableParams int64
	LoadTime        time.Duration
	LoadTimeNF4     time.Duration // with Weights "both": the second (nf4) load; LoadTime is the bf16 one
	MeanStep        time.Duration
	TokensPerSec    float64
	FLOPs           StepFLOPs
	GFLOPS          float64 // FLOPs.Total / MeanStep
	LastLoss        float32
	RSSAfterLoad    int64 // VmRSS once the model is loaded and trainable
	PeakRSSLoad     int64 // VmHWM then (loading maps the weight files: their pages count)
	PeakRSS         int64 // VmHWM at the end
	PeakAnonSteps   int64 // largest RssAnon seen during the steps (sampled every 20 ms)
	Estimate        memplan.Estimate
	// With SideBySide: the mean and fastest step of each precision.
	MeanF32, MeanBF16, MinF32, MinBF16 time.Duration
	// With Weights "both": the mean and fastest step of each base.
	MeanWBF16, MeanWNF4, MinWBF16, MinWNF4 time.Duration
}

// StepFLOPs is the floating-point work of one step, by part. With
// T = rows·seq tokens and N the matmul weights one token passes through,
// N = layers·(2·H·Q + 2·H·KV + 3·H·I) + V·H (q, k, v, o, gate, up, down and
// lm_head; the embedding is a lookup):
//
//	Forward          2·N·T
//	BackwardData     2·N·T              activation gradients (both methods)
//	BackwardWeights  2·N·T              weight gradients (full fine-tuning only)
//	Recompute        2·(N − V·H)·T      the layers run again in backward (activation checkpointing)
//	Attention        causal, half the seq² scores: forward 2·layers·rows·seq²·Q
//	                 (QKᵀ and P·V), backward 2.5× forward (the kernel recomputes
//	                 QKᵀ, then dV, dP, dQ, dK), once more forward when recomputing
//	LoRA             per adapter 2·T·r·(in+out) forward, twice that backward,
//	                 once more forward when recomputing
//
// AdamW and the elementwise ops are not counted.
type StepFLOPs struct {
	N                                                                  int64 // matmul weights per token
	Forward, BackwardData, BackwardWeights, Recompute, Attention, LoRA float64
	Total                                                              float64
}

// CountFLOPs is StepFLOPs for config c, trained as o says (o.Method set).
func CountFLOPs(c llama.Config, o StepOptions) StepFLOPs {
	H, I, V := int64(c.HiddenSize), int64(c.IntermediateSize), int64(c.VocabSize)
	hd := int64(c.HeadDimension())
	Q, KV := int64(c.NumAttentionHeads)*hd, int64(c.NumKeyValueHeads)*hd
	L := int64(c.NumHiddenLayers)
	T := float64(o.Rows) * float64(o.SeqLen)
	var f StepFLOPs
	layers := L * (2*H*Q + 2*H*KV + 3*H*I)
	f.N = layers + V*H
	f.Forward = 2 * float64(f.N) * T
	f.BackwardData = 2 * float64(f.N) * T
	if o.Method == "full" {
		f.BackwardWeights = 2 * float64(f.N) * T
	}
	attnFwd := 2 * float64(L) * float64(o.Rows) * float64(o.SeqLen) * float64(o.SeqLen) * float64(Q)
	f.Attention = attnFwd + 2.5*attnFwd
	if o.Method == "lora" {
		r := float64(BenchLoRARank)
		perLayer := float64((H + Q) + 2*(H+KV) + (Q + H) + 2*(H+I) + (I + H))
		loraFwd := 2 * T * r * perLayer * float64(L)
		f.LoRA = 3 * loraFwd
		if o.Recompute {
			f.LoRA += loraFwd
		}
	}
	if o.Recompute {
		f.Recompute = 2 * float64(layers) * T
		f.Attention += attnFwd
	}
	f.Total = f.Forward + f.BackwardData + f.BackwardWeights + f.Recompute + f.Attention + f.LoRA
	return f
}

func (f StepFLOPs) String() string {
	t := func(v float64) string { return fmt.Sprintf("%.3g T", v/1e12) }
	s := fmt.Sprintf("%s = forward 2·N·T %s + backward dx 2·N·T %s", t(f.Total), t(f.Forward), t(f.BackwardData))
	if f.BackwardWeights > 0 {
		s += fmt.Sprintf(" + backward dW 2·N·T %s", t(f.BackwardWeights))
	}
	if f.Recompute > 0 {
		s += fmt.Sprintf(" + recompute 2·(N−V·H)·T %s", t(f.Recompute))
	}
	s += fmt.Sprintf(" + causal attention 2·layers·rows·seq²·Q·(1 fwd + 2.5 bwd%s) %s", map[bool]string{true: " + 1 recompute", false: ""}[f.Recompute > 0], t(f.Attention))
	if f.LoRA > 0 {
		s += fmt.Sprintf(" + LoRA 2·T·r·Σ(in+out)·(3%s) %s", map[bool]string{true: "+1", false: ""}[f.Recompute > 0], t(f.LoRA))
	}
	return s + fmt.Sprintf("; N = %d matmul weights per token (layers + lm_head), T = tokens per step; AdamW not counted", f.N)
}

func (r StepResult) String() string {
	var b strings.Builder
	gib := func(v int64) string { return fmt.Sprintf("%.2f GiB", float64(v)/(1<<30)) }
	c := r.Config
	fmt.Fprintf(&b, "train step: %s — %d layers, hidden %d, %d heads (%d kv), intermediate %d, vocab %d, %d parameters\n",
		r.Name, c.NumHiddenLayers, c.HiddenSize, c.NumAttentionHeads, c.NumKeyValueHeads, c.IntermediateSize, c.VocabSize, r.Params)
	if r.Method == "lora" {
		base := map[string]string{"bf16": "bf16", "nf4": "nf4 (QLoRA: linear layers 4-bit, the rest bf16)",
			"both": "bf16 and nf4 (two models, alternating steps)"}[r.Weights]
		fmt.Fprintf(&b, "  method lora%s: r %d, alpha %d, dropout %g on %s; base weights %s frozen; %d trainable parameters (f32)\n",
			map[bool]string{true: " (DoRA)", false: ""}[r.DoRA], BenchLoRARank, BenchLoRAAlpha, r.LoRADropout, strings.Join(benchTargets, ","), base, r.TrainableParams)
	} else {
		fmt.Fprintf(&b, "  method full: every weight trainable, f32; %d trainable parameters\n", r.TrainableParams)
	}
	fmt.Fprintf(&b, "  compute %s, activation recompute %v, batch %d×%d = %d tokens/step, AdamW, %d timed steps after 1 warm-up, %d threads\n",
		map[bool]string{true: "f32 and bf16 (alternating)", false: strings.ToLower(r.Compute.String())}[r.SideBySide], r.Recompute, r.Rows, r.SeqLen, r.Rows*r.SeqLen, r.Steps, runtime.GOMAXPROCS(0))
	fmt.Fprintf(&b, "  step %v, %.1f tokens/s, loss %.4f (model loaded in %v)\n", r.MeanStep.Round(time.Millisecond), r.TokensPerSec, r.LastLoss, r.LoadTime.Round(time.Millisecond))
	if r.SideBySide {
		tok := float64(r.Rows * r.SeqLen)
		fmt.Fprintf(&b, "  side by side, alternating steps: f32 %v (%.1f tokens/s; fastest %v), bf16 %v (%.1f tokens/s; fastest %v): bf16/f32 tokens/s %.2f× (fastest steps %.2f×)\n",
			r.MeanF32.Round(time.Millisecond), tok/r.MeanF32.Seconds(), r.MinF32.Round(time.Millisecond),
			r.MeanBF16.Round(time.Millisecond), tok/r.MeanBF16.Seconds(), r.MinBF16.Round(time.Millisecond),
			r.MeanF32.Seconds()/r.MeanBF16.Seconds(), r.MinF32.Seconds()/r.MinBF16.Seconds())
	}
	if r.Weights == "both" {
		tok := float64(r.Rows * r.SeqLen)
		fmt.Fprintf(&b, "  side by side, alternating steps: bf16 base %v (%.1f tokens/s; fastest %v), nf4 base %v (%.1f tokens/s; fastest %v): nf4/bf16 tokens/s %.2f× (fastest steps %.2f×)\n",
			r.MeanWBF16.Round(time.Millisecond), tok/r.MeanWBF16.Seconds(), r.MinWBF16.Round(time.Millisecond),
			r.MeanWNF4.Round(time.Millisecond), tok/r.MeanWNF4.Seconds(), r.MinWNF4.Round(time.Millisecond),
			r.MeanWBF16.Seconds()/r.MeanWNF4.Seconds(), r.MinWBF16.Seconds()/r.MinWNF4.Seconds())
		fmt.Fprintf(&b, "  loads: bf16 %v (mapped), nf4 %v (quantized)\n", r.LoadTime.Round(time.Millisecond), r.LoadTimeNF4.Round(time.Millisecond))
	}
	fmt.Fprintf(&b, "  FLOP/step %s\n", r.FLOPs)
	fmt.Fprintf(&b, "  achieved %.1f GFLOP/s\n", r.GFLOPS)
	fmt.Fprintf(&b, "  memory: peak RSS %s (VmHWM; %s by the end of loading, which maps the weight files), RSS %s after load;\n", gib(r.PeakRSS), gib(r.PeakRSSLoad), gib(r.RSSAfterLoad))
	fmt.Fprintf(&b, "          anonymous RSS during the steps up to %s (sampled); estimate (llamatune validate) %s live", gib(r.PeakAnonSteps), gib(r.Estimate.Total))
	return b.String()
}

// Step times training steps — forward, backward and AdamW on the trainable
// parameters — on random tokens. A model directory or shape is loaded with
// llama.Load and adapted with lora.Attach exactly as `llamatune train` does,
// so its memory behaviour is the real one.
func Step(o StepOptions) (StepResult, error) {
	be := cpu.New()
	logf := func(format string, a ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format, a...)
		}
	}
	dt, err := o.normalize()
	if err != nil {
		return StepResult{}, err
	}
	memplan.TightenGC(o.Weights == "nf4") // as train does
	res := StepResult{StepOptions: o}
	m, dir, fileBF16, err := loadStepModel(o, be, dt, logf, &res)
	if err != nil {
		return res, err
	}
	m.Compute = o.Compute
	m.Recompute = o.Recompute
	c := m.Config
	res.Config = c
	res.Params = memplan.ParamCount(c)

	v0, err := newVariant(o, be, m, &res)
	if err != nil {
		return res, err
	}
	v0.nf4 = o.Weights == "nf4"
	variants := []*variant{v0}
	if o.Weights == "both" {
		logf("loading %s again (nf4 weights)\n", dir)
		tq := time.Now()
		mq, err := llama.Load(dir, be, kernels.NF4)
		res.LoadTimeNF4 = time.Since(tq)
		if err != nil {
			return res, err
		}
		mq.Compute, mq.Recompute = o.Compute, o.Recompute
		v1, err := newVariant(o, be, mq, &res)
		if err != nil {
			return res, err
		}
		v1.nf4 = true
		variants = append(variants, v1)
	}
	res.RSSAfterLoad, res.PeakRSSLoad = RSS(), PeakRSS()
	res.Estimate = memplan.Compute(c, memplan.Options{Method: o.Method, WeightsBF16: o.Weights == "bf16" || o.Weights == "both", WeightsNF4: o.Weights == "nf4", FileBF16: fileBF16,
		R: BenchLoRARank, Dropout: o.LoRADropout, UseDoRA: o.DoRA, TargetModules: benchTargets, SeqLen: o.SeqLen, MicroBatch: o.Rows,
		Recompute: o.Recompute})
	res.FLOPs = CountFLOPs(c, o)
	if err := runSteps(o, be, dt, variants, logf, &res); err != nil {
		return res, err
	}
	res.TokensPerSec = float64(o.Rows*o.SeqLen) / res.MeanStep.Seconds()
	res.GFLOPS = res.FLOPs.Total / res.MeanStep.Seconds() / 1e9
	res.PeakRSS = PeakRSS()
	return res, nil
}

// normalize fills the method's default (lora for a real model, full for
// the random one), checks the options and returns the frozen base weights'
// dtype.
func (o *StepOptions) normalize() (kernels.DType, error) {
	if o.Method == "" {
		o.Method = "full"
		if o.ModelDir != "" || o.Shape != "" {
			o.Method = "lora"
		}
	}
	if o.Method != "lora" && o.Method != "full" {
		return 0, fmt.Errorf("bench step: method %q: want lora or full", o.Method)
	}
	if o.Rows < 1 || o.SeqLen < 2 {
		return 0, fmt.Errorf("bench step: batch %d × seq %d: want at least 1 × 2", o.Rows, o.SeqLen)
	}
	if o.Method == "full" {
		if o.Weights != "" && o.Weights != "f32" {
			return 0, fmt.Errorf("bench step: weights %s: method full trains f32 weights; use --method lora", o.Weights)
		}
		return kernels.F32, nil
	}
	switch o.Weights {
	case "", "bf16":
		o.Weights = "bf16"
	case "nf4":
		return kernels.NF4, nil
	case "both":
		if o.SideBySide {
			return 0, fmt.Errorf("bench step: --weights both and --compute both cannot be combined; pick one compute")
		}
	default:
		return 0, fmt.Errorf("bench step: weights %q: want bf16, nf4 or both", o.Weights)
	}
	return kernels.BF16, nil // frozen base weights, as precision.weights: bf16
}

// loadStepModel loads --model or --shape (written first when missing) as
// train does, or makes the random model; it sets res's name and load time.
func loadStepModel(o StepOptions, be kernels.Backend, dt kernels.DType, logf func(string, ...any), res *StepResult) (m *llama.Model, dir string, fileBF16 bool, err error) {
	t0 := time.Now()
	dir = o.ModelDir
	if dir == "" && o.Shape != "" {
		if dir, err = shapeDir(o, logf); err != nil {
			return nil, "", false, err
		}
		t0 = time.Now()
	}
	defer func() { res.LoadTime = time.Since(t0) }()
	if dir != "" {
		res.Name = dir
		if o.Shape != "" {
			res.Name = o.Shape + " (" + dir + ")"
		}
		logf("loading %s (%s weights)\n", dir, strings.ToLower(dt.String()))
		if m, err = llama.Load(dir, be, dt); err != nil {
			return nil, "", false, err
		}
		return m, dir, memplan.FileBF16(dir), nil
	}
	if o.Weights == "nf4" || o.Weights == "both" {
		return nil, "", false, fmt.Errorf("bench step: --weights %s needs --model or --shape (NF4 is quantized from a checkpoint)", o.Weights)
	}
	res.Name = "random"
	c := randmodel.TinyConfig(o.Vocab)
	c.NumHiddenLayers, c.HiddenSize, c.IntermediateSize = o.Layers, o.Hidden, o.Hidden*8/3/16*16
	c.NumAttentionHeads, c.NumKeyValueHeads = max(o.Hidden/64, 1), max(o.Hidden/128, 1)
	m, err = llama.NewRandom(c, be, dt, 1)
	return m, "", false, err
}

// variant is one model trained in the steps (two with Weights "both").
type variant struct {
	m   *llama.Model
	set *lora.Set
	opt *optim.AdamW
	nf4 bool
}

// newVariant attaches the benchmark's LoRA (or marks every weight
// trainable) and makes its optimizer; res counts the trainable parameters.
func newVariant(o StepOptions, be kernels.Backend, m *llama.Model, res *StepResult) (*variant, error) {
	v := &variant{m: m}
	var trainable []*tensor.Tensor
	if o.Method == "lora" {
		var err error
		if v.set, err = lora.Attach(m, lora.Config{R: BenchLoRARank, Alpha: BenchLoRAAlpha, Dropout: o.LoRADropout, UseDoRA: o.DoRA, TargetModules: benchTargets}, 42); err != nil {
			return nil, err
		}
		trainable = v.set.Params()
	} else {
		for _, n := range m.Names() {
			trainable = append(trainable, m.Param(n).SetRequiresGrad(true))
		}
	}
	res.TrainableParams = 0
	for _, p := range trainable {
		res.TrainableParams += int64(p.Numel())
	}
	v.opt = optim.NewAdamW(be, trainable, optim.AdamWConfig{LR: 1e-4, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8})
	return v, nil
}

// runSteps times the steps on random tokens: step 0 (and 1, when two
// computes or two bases alternate) warms up; the rest set res's means.
func runSteps(o StepOptions, be kernels.Backend, dt kernels.DType, variants []*variant, logf func(string, ...any), res *StepResult) error {
	r := rand.New(rand.NewPCG(3, 4))
	in := &llama.Input{Rows: o.Rows, SeqLen: o.SeqLen, InputIDs: make([]int32, o.Rows*o.SeqLen)}
	for i := range in.InputIDs {
		in.InputIDs[i] = int32(r.IntN(res.Config.VocabSize))
	}
	var total time.Duration
	sum := map[kernels.DType]time.Duration{}
	fastest := map[kernels.DType]time.Duration{}
	n := o.Steps
	if o.SideBySide || len(variants) == 2 {
		n = 2*o.Steps + 1 // steps 0 and 1 warm up f32 and bf16 (or the two bases)
	}
	wsum, wfast := map[bool]time.Duration{}, map[bool]time.Duration{}
	stopSampling := anonPeak(20 * time.Millisecond)
	for s := 0; s <= n; s++ { // step 0 warms up
		v := variants[0]
		if len(variants) == 2 { // bf16, nf4, then nf4, bf16, ...
			v = variants[[]int{0, 1, 1, 0}[s%4]]
		}
		m, set, opt := v.m, v.set, v.opt
		if o.SideBySide {
			// f32, bf16, then bf16, f32, ...: neither always runs first.
			m.Compute = []kernels.DType{kernels.F32, kernels.BF16, kernels.BF16, kernels.F32}[s%4]
		}
		t0 := time.Now()
		if set != nil {
			set.SetStep(uint64(s))
		}
		tp := tensor.NewTape(be)
		loss, _, err := m.Loss(tp, in, in.InputIDs, 0)
		if err != nil {
			stopSampling()
			return err
		}
		res.LastLoss = loss.Item()
		tp.Backward(loss)
		tp.Release()
		opt.Step(1e-4)
		opt.ZeroGrad()
		d := time.Since(t0)
		warm := s == 0 || ((o.SideBySide || len(variants) == 2) && s == 1)
		if !warm {
			if f, ok := wfast[v.nf4]; !ok || d < f {
				wfast[v.nf4] = d
			}
			wsum[v.nf4] += d
			total += d
			sum[m.Compute] += d
			if f, ok := fastest[m.Compute]; !ok || d < f {
				fastest[m.Compute] = d
			}
		}
		logf("step %d/%d (%s compute, %s base): %v, loss %.4f%s\n", s, n, strings.ToLower(m.Compute.String()), map[bool]string{true: "nf4", false: strings.ToLower(dt.String())}[v.nf4],
			d.Round(time.Millisecond), res.LastLoss, map[bool]string{true: " (warm-up)", false: ""}[warm])
	}
	res.PeakAnonSteps = stopSampling()
	steps := time.Duration(max(o.Steps, 1))
	res.MeanStep = total / steps
	if len(variants) == 2 {
		res.MeanStep = total / (2 * steps)
		res.MeanWBF16, res.MeanWNF4 = wsum[false]/steps, wsum[true]/steps
		res.MinWBF16, res.MinWNF4 = wfast[false], wfast[true]
	}
	if o.SideBySide {
		res.MeanStep = total / (2 * steps)
		res.MeanF32, res.MeanBF16 = sum[kernels.F32]/steps, sum[kernels.BF16]/steps
		res.MinF32, res.MinBF16 = fastest[kernels.F32], fastest[kernels.BF16]
	}
	return nil
}

// shapeDir returns the cached model directory of o.Shape, writing it first
// when it is not there (into a temporary sibling, renamed when complete).
func shapeDir(o StepOptions, logf func(string, ...any)) (string, error) {
	want, err := randmodel.ShapeConfig(o.Shape)
	if err != nil {
		return "", fmt.Errorf("bench step: --shape: %w", err)
	}
	dir := o.CacheDir
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "llamatune-bench-"+o.Shape)
	}
	if _, err := os.Stat(dir); err == nil {
		have, err := llama.LoadConfig(dir)
		if err != nil {
			return "", fmt.Errorf("bench step: cached model %s: %w (delete the directory to write it again)", dir, err)
		}
		have.TorchDtype = want.TorchDtype
		a, _ := json.Marshal(have) // compacts bos/eos ids, however the file spaced them
		b, _ := json.Marshal(want)
		if !bytes.Equal(a, b) {
			return "", fmt.Errorf("bench step: %s holds another model than %s; delete it or pass --model", dir, o.Shape)
		}
		logf("reusing %s\n", dir)
		return dir, nil
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".partial-")
	if err != nil {
		return "", fmt.Errorf("bench step: %w", err)
	}
	logf("writing a random %s into %s (once; later runs reuse it)\n", o.Shape, dir)
	t0 := time.Now()
	if _, err := randmodel.WriteShapeModel(tmp, randmodel.ShapeOptions{Shape: o.Shape}); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("bench step: %w", err)
	}
	logf("wrote %s in %v\n", dir, time.Since(t0).Round(time.Second))
	return dir, nil
}
