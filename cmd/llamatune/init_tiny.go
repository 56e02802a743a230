package main

import (
	"fmt"
	"math"
	"time"

	"github.com/spf13/cobra"

	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/internal/testutil"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/tensor"
)

func init() {
	var o testutil.TinyOptions
	var out string
	var check bool
	cmd := &cobra.Command{
		Use:   "init-tiny --out DIR",
		Short: "Write a tiny random Llama as a complete HF model directory, then load it and run forward+backward",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("init-tiny: --out DIR is required")
			}
			cfg, err := testutil.WriteTinyModel(out, o)
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
	cmd.Flags().BoolVar(&check, "check", true, "load the directory back and run one forward+backward pass")
	rootCmd.AddCommand(cmd)
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
