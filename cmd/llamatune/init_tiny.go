package main

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/internal/benchmark"
	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/tensor"
)

func init() {
	var o randmodel.TinyOptions
	var out string
	var check bool
	var shape string
	cmd := &cobra.Command{
		Use:   "init-tiny --out DIR [--shape " + strings.Join(randmodel.ShapeNames(), "|") + "]",
		Short: "Write a tiny random Llama (or one of a published shape) as a complete HF model directory, then load it and run forward+backward",
		Long: `Writes a random Llama as a Hugging Face model directory: config.json, generation_config.json,
safetensors (sharded with model.safetensors.index.json) and the tokenizer files.

Without --shape the model is tiny (--layers, --hidden; f32) and is loaded back for one
forward+backward pass (--check). With --shape it has the exact config.json of a published model
(` + strings.Join(randmodel.ShapeNames(), ", ") + `) in bf16, written tensor by tensor
(peak memory is one tensor, about 1 GB for the 8B's embedding); the check is off unless --check
is given. Sizes on disk: 1B 2.5 GB, 3B 6.4 GB, 8B 16 GB.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("init-tiny: --out DIR is required")
			}
			if shape != "" {
				for _, f := range []string{"layers", "hidden", "tokenizer"} {
					if cmd.Flags().Changed(f) {
						return fmt.Errorf("init-tiny: --%s does not apply with --shape %s (the shape fixes the config and uses the Llama 3 tokenizer)", f, shape)
					}
				}
				if !cmd.Flags().Changed("check") {
					check = false // a forward pass of a 1B-8B model on the CPU takes minutes
				}
				return initShape(out, shape, o.Seed, check)
			}
			cfg, err := randmodel.WriteTinyModel(out, o)
			if err != nil {
				return err
			}
			fmt.Printf("wrote %s: %d layers, hidden %d, %d heads (%d kv), vocab %d (%s tokenizer)\n",
				out, cfg.NumHiddenLayers, cfg.HiddenSize, cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.VocabSize, o.Tokenizer)
			if !check {
				return nil
			}
			return forwardBackwardDemo(out)
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "directory to write")
	cmd.Flags().StringVar(&o.Tokenizer, "tokenizer", "llama3", "llama3 or llama2")
	cmd.Flags().IntVar(&o.Layers, "layers", 2, "decoder layers")
	cmd.Flags().IntVar(&o.Hidden, "hidden", 64, "hidden size (multiple of 16)")
	cmd.Flags().Uint64Var(&o.Seed, "seed", 0, "weights seed")
	cmd.Flags().BoolVar(&check, "check", true, "load the directory back and run one forward+backward pass (default false with --shape)")
	cmd.Flags().StringVar(&shape, "shape", "", "write the exact config of a published model, in bf16: "+strings.Join(randmodel.ShapeNames(), ", "))
	rootCmd.AddCommand(cmd)
}

// initShape writes a model of a published shape into out.
func initShape(out, shape string, seed uint64, check bool) error {
	if _, err := randmodel.ShapeConfig(shape); err != nil {
		return fmt.Errorf("init-tiny: --shape: %w", err)
	}
	t0 := time.Now()
	cfg, err := randmodel.WriteShapeModel(out, randmodel.ShapeOptions{Shape: shape, Seed: seed})
	if err != nil {
		return err
	}
	n := randmodel.ParamCount(cfg)
	fmt.Printf("wrote %s: %s shape, %d layers, hidden %d, %d heads (%d kv), intermediate %d, vocab %d, tied %v: %d parameters, %.2f GB bf16 in %v (peak RSS %.0f MiB)\n",
		out, shape, cfg.NumHiddenLayers, cfg.HiddenSize, cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.IntermediateSize,
		cfg.VocabSize, cfg.TieWordEmbeddings, n, float64(2*n)/1e9, time.Since(t0).Round(time.Millisecond), float64(benchmark.PeakRSS())/(1<<20))
	if !check {
		return nil
	}
	return forwardBackwardDemo(out)
}

const demoText = "Well, Prince, so Genoa and Lucca are now just family estates of the Buonapartes."

// forwardBackwardDemo loads dir, tokenizes a sentence, and runs the loss and
// its gradient with respect to every parameter.
func forwardBackwardDemo(dir string) error {
	be := cpu.New()
	m, err := llama.Load(dir, be, kernels.F32)
	if err != nil {
		return err
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		return err
	}
	ids := []int32{int32(tok.BOS())}
	for _, id := range tok.Encode(demoText) {
		ids = append(ids, int32(id))
	}
	for _, n := range m.Names() {
		m.Param(n).SetRequiresGrad(true)
	}
	t0 := time.Now()
	tp := tensor.NewTape(be)
	in := &llama.Input{Rows: 1, SeqLen: len(ids), InputIDs: ids}
	loss, n, err := m.Loss(tp, in, ids, 0)
	if err != nil {
		return err
	}
	lossValue := loss.Item()
	tp.Backward(loss)
	tp.Release()
	var sq float64
	for _, name := range m.Names() {
		sq += be.SumSquares(m.Param(name).Grad)
	}
	fmt.Printf("loaded it back; forward+backward on %d tokens (%d targets) in %v: loss %.4f (ln vocab = %.4f), grad norm %.4g over %d tensors\n",
		len(ids), n, time.Since(t0).Round(time.Millisecond), lossValue, math.Log(float64(m.Config.VocabSize)), math.Sqrt(sq), len(m.Names()))
	return nil
}
