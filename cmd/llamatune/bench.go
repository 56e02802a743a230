package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime/pprof"
	"strings"

	"github.com/spf13/cobra"

	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/internal/benchmark"
	"github.com/llamatune/llamatune/internal/quickstart"
	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
)

func init() {
	bench := &cobra.Command{Use: "bench", Short: "Measure GEMM GFLOP/s and training-step tokens/s on this machine"}
	bench.AddCommand(benchGEMMCmd(), benchStepCmd(), benchTokenizerCmd(), benchKernelsCmd())
	rootCmd.AddCommand(bench)
}

// benchGEMMCmd is `llamatune bench gemm`.
func benchGEMMCmd() *cobra.Command {
	var size, reps int
	var gemmCompute string
	gemm := &cobra.Command{
		Use:   "gemm [--size N] [--reps R] [--compute f32|bf16|both]",
		Short: "GEMM N×N×N on the CPU backend, f32 or bf16 compute (both: side by side)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			var dts []kernels.DType
			switch gemmCompute {
			case "f32":
				dts = []kernels.DType{kernels.F32}
			case "bf16":
				dts = []kernels.DType{kernels.BF16}
			case "both":
				dts = []kernels.DType{kernels.F32, kernels.BF16}
			default:
				return fmt.Errorf("bench gemm: --compute %q: want f32, bf16 or both", gemmCompute)
			}
			var rs []benchmark.GEMMResult
			for _, dt := range dts {
				rs = append(rs, benchmark.GEMM(size, size, size, reps, dt))
				fmt.Println(rs[len(rs)-1])
			}
			if len(rs) == 2 {
				fmt.Printf("bf16/f32: %.2f×\n", rs[1].GFLOPS/rs[0].GFLOPS)
			}
			return nil
		},
	}
	gemm.Flags().IntVar(&size, "size", 1024, "matrix size")
	gemm.Flags().IntVar(&reps, "reps", 10, "repetitions (the best is reported)")
	gemm.Flags().StringVar(&gemmCompute, "compute", "f32", "f32, bf16, or both")
	return gemm
}

// benchStepCmd is `llamatune bench step`.
func benchStepCmd() *cobra.Command {
	var o benchmark.StepOptions
	var compute, cpuProfile string
	step := &cobra.Command{
		Use:   "step [--shape " + strings.Join(randmodel.ShapeNames(), "|") + " | --model DIR | --layers N --hidden N --vocab N] [--method lora|full] [--weights bf16|nf4|both] [--compute bf16|f32|both] [--seq N] [--batch N] [--steps N]",
		Short: "Time training steps (forward, backward, AdamW) of a real-shaped model: tokens/s, GFLOP/s, peak RSS",
		Long: `Times training steps — forward, backward and AdamW on the trainable parameters — on random
tokens, and prints the step time, tokens/s, the FLOP count it uses (the formula is printed with
it) and the achieved GFLOP/s, the peak RSS (VmHWM) and the memory estimate validate would give.

The model: --model DIR (an HF directory, loaded with llama.Load as train does), --shape NAME (a
random model of that published config, written once into $TMPDIR/llamatune-bench-NAME and reused),
or a random in-memory model of --layers/--hidden/--vocab.

--method lora (default with --model/--shape): r 16, alpha 32 on q,k,v,o,gate,up,down, base weights
frozen in bf16, as a train job with precision.weights: bf16 (--weights nf4: QLoRA, the linear
layers quantized to NF4 at load, as precision.weights: nf4; --weights both: the model loaded twice,
bf16 and nf4, timed in alternating steps). --method full (default for the random model): every
weight trainable in f32. --recompute defaults to true with --model/--shape.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			real := o.Shape != "" || o.ModelDir != ""
			if o.Shape != "" && o.ModelDir != "" {
				return fmt.Errorf("bench step: give --shape or --model, not both")
			}
			if real {
				for _, f := range []string{"layers", "hidden", "vocab"} {
					if cmd.Flags().Changed(f) {
						return fmt.Errorf("bench step: --%s applies to the random model, not to --shape/--model", f)
					}
				}
				if !cmd.Flags().Changed("recompute") {
					o.Recompute = true
				}
			}
			switch compute {
			case "both":
				o.SideBySide = true
			case "f32":
				o.Compute = kernels.F32
			case "bf16":
				o.Compute = kernels.BF16
			default:
				return fmt.Errorf("bench step: --compute %q: want bf16, f32 or both", compute)
			}
			o.Log = os.Stderr
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return fmt.Errorf("bench step: --cpuprofile: %w", err)
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return fmt.Errorf("bench step: --cpuprofile: %w", err)
				}
				defer pprof.StopCPUProfile()
			}
			r, err := benchmark.Step(o)
			if err != nil {
				return err
			}
			fmt.Println(r)
			return nil
		},
	}
	step.Flags().StringVar(&o.Shape, "shape", "", "a published model shape: "+strings.Join(randmodel.ShapeNames(), ", "))
	step.Flags().StringVar(&o.ModelDir, "model", "", "an HF model directory (e.g. one init-tiny --shape wrote)")
	step.Flags().StringVar(&o.Method, "method", "", "lora or full (default lora with --shape/--model, full for the random model)")
	step.Flags().StringVar(&o.Weights, "weights", "", "LoRA base weights: bf16 (default), nf4 (QLoRA), or both (two models, alternating steps)")
	step.Flags().Float64Var(&o.LoRADropout, "lora-dropout", configs.DefaultLoRADropout, "LoRA dropout (the job default)")
	step.Flags().BoolVar(&o.DoRA, "dora", false, "DoRA adapters (lora.use_dora: true) instead of LoRA")
	step.Flags().StringVar(&compute, "compute", "f32", "compute precision: bf16, f32, or both (alternating steps, side by side)")
	step.Flags().IntVar(&o.Layers, "layers", 4, "decoder layers (random model)")
	step.Flags().IntVar(&o.Hidden, "hidden", 256, "hidden size (random model)")
	step.Flags().IntVar(&o.Vocab, "vocab", 8192, "vocabulary size (random model)")
	step.Flags().IntVar(&o.Rows, "batch", 4, "rows per step")
	step.Flags().IntVar(&o.SeqLen, "seq", 256, "tokens per row")
	step.Flags().IntVar(&o.Steps, "steps", 5, "timed steps (after one warm-up)")
	step.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write a Go CPU profile of the run to this file (go tool pprof)")
	step.Flags().BoolVar(&o.Recompute, "recompute", false, "activation recomputation per layer (default true with --shape/--model)")
	return step
}

// benchTokenizerCmd is `llamatune bench tokenizer`.
func benchTokenizerCmd() *cobra.Command {
	var kind, textFile string
	tok := &cobra.Command{
		Use:   "tokenizer [--kind llama3|llama2] [--text FILE]",
		Short: "tokenizer MB/s, one core and all cores (default text: the built-in War and Peace sample)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			text := quickstart.Text()
			if textFile != "" {
				b, err := os.ReadFile(textFile)
				if err != nil {
					return err
				}
				text = string(b)
			}
			r, err := benchmark.Tokenizer(kind, text, 3)
			if err != nil {
				return err
			}
			fmt.Println(r)
			return nil
		},
	}
	tok.Flags().StringVar(&kind, "kind", "llama3", "llama3 or llama2")
	tok.Flags().StringVar(&textFile, "text", "", "UTF-8 text file to encode")
	return tok
}

// benchKernelsCmd is `llamatune bench kernels`.
func benchKernelsCmd() *cobra.Command {
	var kShapes, kSet, kDevice, kCompute string
	var kJSON bool
	kern := &cobra.Command{
		Use:   "kernels [--device cpu|cuda] [--shapes FILE] [--set NAME] [--compute bf16|f32] [--json]",
		Short: "Time forward+backward of RMSNorm, RoPE, SwiGLU, attention, fused CE and KD at the shapes torch is timed at (tools/gpu/shapes.json)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			s, err := benchmark.LoadKernelShapes(kShapes, kSet)
			if err != nil {
				return fmt.Errorf("bench kernels: %w", err)
			}
			var cd kernels.DType
			switch kCompute {
			case "bf16":
				cd = kernels.BF16
			case "f32":
				cd = kernels.F32
			default:
				return fmt.Errorf("bench kernels: --compute %q: want bf16 or f32", kCompute)
			}
			be, err := kernels.New(kDevice)
			if err != nil {
				return fmt.Errorf("bench kernels: %w", err)
			}
			rs := benchmark.Kernels(be, s, cd)
			if kJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(map[string]any{"side": "llamatune", "device": kDevice, "compute": kCompute, "set": kSet, "shapes": s, "results": rs})
			}
			for _, r := range rs {
				fmt.Println(r)
			}
			return nil
		},
	}
	kern.Flags().StringVar(&kShapes, "shapes", "tools/gpu/shapes.json", "shapes file (shared with tools/gpu/bench_torch.py)")
	kern.Flags().StringVar(&kSet, "set", "gpu", "shape set in the file")
	kern.Flags().StringVar(&kDevice, "device", "cpu", "backend: cpu or cuda")
	kern.Flags().StringVar(&kCompute, "compute", "bf16", "GEMM precision: bf16 or f32")
	kern.Flags().BoolVar(&kJSON, "json", false, "print JSON")
	return kern
}
