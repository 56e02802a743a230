package llama_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/internal/switches"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/tensor"
)

// TestGoldenPEFT compares logits, loss and every LoRA gradient of the tiny
// model with the ones transformers + peft computed (tools/gpu/golden_hf.py,
// run on a machine that has them: tools/gpu/check.sh), in f32 and with bf16
// weights and compute. The golden files live in
// testdata/golden/tiny_llama_peft, or in $LLAMATUNE_PEFT_GOLDEN (check.sh
// --dry-run points it at the plain-torch stand-in's output).
func TestGoldenPEFT(t *testing.T) {
	dir := switches.Value(switches.TestPEFTGolden)
	if dir == "" {
		dir = "../../testdata/golden/tiny_llama_peft"
	}
	for _, c := range []struct {
		file string
		dt   kernels.DType
		tol  float64
	}{
		{"golden_f32.safetensors", kernels.F32, 1e-4},
		// HF keeps bf16 activations between ops; llamatune keeps them in
		// f32 and rounds only GEMM operands: both are bf16-accurate.
		{"golden_bf16.safetensors", kernels.BF16, 3e-2},
	} {
		t.Run(c.dt.String(), func(t *testing.T) {
			path := filepath.Join(dir, c.file)
			if _, err := os.Stat(path); err != nil {
				t.Skipf("no transformers+peft golden %s yet: it is written by tools/gpu/golden_hf.py on a machine with transformers and peft (tools/gpu/check.sh on a GPU)", path)
			}
			goldenPEFT(t, path, c.dt, c.tol)
		})
	}
}

func goldenPEFT(t *testing.T, path string, dt kernels.DType, tol float64) {
	be := cpu.New()
	m, err := llama.Load("../../testdata/golden/tiny_llama", be, dt)
	if err != nil {
		t.Fatal(err)
	}
	m.Compute = dt
	g, err := checkpoint.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ints, floats := goldenReaders(t, g)
	info, ok := g.Info("input_ids")
	if !ok {
		t.Fatalf("%s has no input_ids", path)
	}
	in := &llama.Input{Rows: info.Shape[0], SeqLen: info.Shape[1], InputIDs: ints("input_ids")}
	labels := ints("labels")

	set, err := lora.Attach(m, lora.Config{R: 4, Alpha: 8, TargetModules: []string{"all-linear"}}, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range set.Linears {
		a, b := floats("lora_A."+l.Module), floats("lora_B."+l.Module)
		l.A = tensor.FromF32(be, kernels.F32, a, l.A.Shape...).SetRequiresGrad(true)
		l.B = tensor.FromF32(be, kernels.F32, b, l.B.Shape...).SetRequiresGrad(true)
	}

	logits, err := m.Logits(llama.NewInferenceTape(be), in)
	if err != nil {
		t.Fatal(err)
	}
	compare(t, "logits", logits.F32(), floats("logits"), tol)
	tp := tensor.NewTape(be)
	loss, _, err := m.Loss(tp, in, labels, 0)
	if err != nil {
		t.Fatal(err)
	}
	compare(t, "loss", []float32{loss.Item()}, floats("loss"), tol)
	tp.Backward(loss)
	for _, l := range set.Linears {
		compare(t, "grad lora_A "+l.Module, l.A.GradF32(), floats("grad.lora_A."+l.Module), tol)
		compare(t, "grad lora_B "+l.Module, l.B.GradF32(), floats("grad.lora_B."+l.Module), tol)
	}
}
