package export

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/tensor"
)

// fixture is a tiny base model with a LoRA adapter (non-zero B) written as
// PEFT, and the logits of base+adapter (unmerged) on a few tokens.
type fixture struct {
	base, adapter string
	ids           []int32
	want          []float32 // [len(ids), vocab] logits of base + adapter
	set           *lora.Set
	cfg           llama.Config
}

var (
	fixMu    sync.Mutex
	fixCache = map[string]*fixture{}
	fixRoot  string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "llamatune-export-test-")
	if err != nil {
		panic(err)
	}
	fixRoot = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// loraFixture builds (once per tokenizer kind) the base model and adapter.
// Tests must not modify the returned directories.
func loraFixture(t *testing.T, kind string) *fixture {
	t.Helper()
	fixMu.Lock()
	defer fixMu.Unlock()
	if f, ok := fixCache[kind]; ok {
		return f
	}
	f := &fixture{base: filepath.Join(fixRoot, kind+"-base"), adapter: filepath.Join(fixRoot, kind+"-adapter")}
	cfg, err := randmodel.WriteTinyModel(f.base, randmodel.TinyOptions{Tokenizer: kind, Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	f.cfg = cfg
	be := cpu.New()
	m, err := llama.Load(f.base, be, kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	lc := lora.Config{R: 4, Alpha: 8, TargetModules: []string{"all-linear"}}
	set, err := lora.Attach(m, lc, 11)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(9, 9))
	var ts []checkpoint.WriteTensor
	for _, l := range set.Linears {
		v := make([]float32, l.B.Numel())
		for i := range v {
			v[i] = float32(r.NormFloat64() * 0.05)
		}
		be.Copy(l.B.Buf, be.FromF32(kernels.F32, v))
		ts = append(ts,
			checkpoint.WriteTensor{Name: l.A.Name, DType: "F32", Shape: l.A.Shape, Data: checkpoint.EncodeF32(l.A.F32())},
			checkpoint.WriteTensor{Name: l.B.Name, DType: "F32", Shape: l.B.Shape, Data: checkpoint.EncodeF32(l.B.F32())})
	}
	ac := checkpoint.NewAdapterConfig(f.base, lc.R, lc.Alpha, 0.05, []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}, false)
	if err := checkpoint.WritePEFT(f.adapter, ac, ts); err != nil {
		t.Fatal(err)
	}
	f.set = set
	f.ids = []int32{1, 450, 4996, 17354, 1701, 432, 29875, 2, 100, 7}
	f.want = logits(t, m, f.ids)
	fixCache[kind] = f
	return f
}

func logits(t *testing.T, m *llama.Model, ids []int32) []float32 {
	t.Helper()
	tp := tensor.NewTape(m.Backend())
	tp.NoGrad = true
	out, err := m.Logits(tp, &llama.Input{Rows: 1, SeqLen: len(ids), InputIDs: ids})
	if err != nil {
		t.Fatal(err)
	}
	v := out.F32()
	tp.Release()
	return v
}

// maxDiff returns max |a-b| and max |b|.
func maxDiff(t *testing.T, a, b []float32) (diff, scale float64) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%d vs %d values", len(a), len(b))
	}
	for i := range a {
		diff = math.Max(diff, math.Abs(float64(a[i]-b[i])))
		scale = math.Max(scale, math.Abs(float64(b[i])))
	}
	return
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("expected an error mentioning %q, got nil", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not mention %q", err, p)
		}
	}
}

func numel(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}
