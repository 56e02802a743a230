package randmodel

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/internal/memplan"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/model/llama"
)

// shapes are the published Llama configurations WriteShapeModel can write,
// by the name `llamatune init-tiny --shape` takes.
var shapes = map[string]func() llama.Config{
	"llama3.2-1b": func() llama.Config { return llama3Shape(2048, 16, 32, 8, 8192, true, 32, 64) },
	"llama3.2-3b": func() llama.Config { return llama3Shape(3072, 28, 24, 8, 8192, true, 32, 128) },
	"llama3.1-8b": func() llama.Config { return llama3Shape(4096, 32, 32, 8, 14336, false, 8, 0) },
}

// ShapeNames lists the shapes WriteShapeModel knows, sorted.
func ShapeNames() []string {
	var out []string
	for n := range shapes {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// ShapeConfig returns the HF config.json of a published Llama shape
// (llama3.2-1b, llama3.2-3b, llama3.1-8b) exactly as Meta ships it, with
// the Llama 3 BOS/EOS ids of the instruct models.
func ShapeConfig(name string) (llama.Config, error) {
	f, ok := shapes[name]
	if !ok {
		return llama.Config{}, fmt.Errorf("unknown shape %q; known: %s", name, strings.Join(ShapeNames(), ", "))
	}
	return f(), nil
}

// llama3Shape is a Llama 3.x config.json; headDim is written as the 3.2
// configs do (0: omitted, as in 3.1's).
func llama3Shape(hidden, layers, heads, kvHeads, inter int, tied bool, ropeFactor float64, headDim int) llama.Config {
	return llama.Config{
		Architectures:         []string{"LlamaForCausalLM"},
		ModelType:             "llama",
		VocabSize:             128256,
		HiddenSize:            hidden,
		IntermediateSize:      inter,
		NumHiddenLayers:       layers,
		NumAttentionHeads:     heads,
		NumKeyValueHeads:      kvHeads,
		HeadDim:               headDim,
		MaxPositionEmbeddings: 131072,
		RMSNormEps:            1e-5,
		RopeTheta:             500000,
		RopeScaling: &llama.RopeScaling{RopeType: "llama3", Factor: ropeFactor, LowFreqFactor: 1, HighFreqFactor: 4,
			OriginalMaxPositionEmbeddings: 8192},
		TieWordEmbeddings: tied,
		HiddenAct:         "silu",
		InitializerRange:  0.02,
		BosTokenID:        json.RawMessage(`128000`),
		EosTokenID:        json.RawMessage(`[128001, 128008, 128009]`),
		TorchDtype:        "bfloat16",
	}
}

// ParamCount is the number of parameters of a model with config c (a tied
// lm_head counted once).
func ParamCount(c llama.Config) int64 { return memplan.ParamCount(c) }

func numel(s []int) int64 {
	n := int64(1)
	for _, d := range s {
		n *= int64(d)
	}
	return n
}

// HFMaxShardBytes is transformers' default max_shard_size ("5GB", decimal).
const HFMaxShardBytes = 5_000_000_000

// ShapeOptions say what WriteShapeModel writes.
type ShapeOptions struct {
	Shape  string        // a name of ShapeNames, or "" when Config is set
	Config *llama.Config // an explicit config instead of a named shape (tests: scaled-down shapes)
	Seed   uint64
	// MaxShardBytes splits the weights into model-0000i-of-0000N.safetensors
	// with an index (default HFMaxShardBytes, as save_pretrained).
	MaxShardBytes int64
	// Progress, when set, gets one line per tensor written.
	Progress io.Writer
}

// WriteShapeModel writes a random Llama of a published shape as a complete HF
// directory: config.json, generation_config.json, the Llama 3 tokenizer
// files, and bf16 safetensors sharded as save_pretrained does. Weights are
// normal(0, initializer_range) and norms 1, as llama.NewRandom, but drawn
// straight into bf16 one tensor at a time: peak memory is one tensor's bf16
// bytes (1 GB for the 8B's embedding), never the model. The values depend on
// Seed alone (each block of a tensor has its own PCG stream, so the work is
// spread over every core without changing the result).
func WriteShapeModel(dir string, o ShapeOptions) (llama.Config, error) {
	var c llama.Config
	switch {
	case o.Config != nil:
		c = *o.Config
	case o.Shape != "":
		var err error
		if c, err = ShapeConfig(o.Shape); err != nil {
			return c, err
		}
	default:
		return c, fmt.Errorf("shape model: set a shape (%s)", strings.Join(ShapeNames(), ", "))
	}
	if err := c.Validate(); err != nil {
		return c, err
	}
	c.TorchDtype = "bfloat16"
	if err := tokenizer.WriteFiles(dir, "llama3"); err != nil {
		return c, err
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		return c, err
	}
	if tok.VocabSize() > c.VocabSize {
		return c, fmt.Errorf("shape model: the Llama 3 tokenizer has %d ids, over vocab_size %d", tok.VocabSize(), c.VocabSize)
	}
	if err := WriteShapeConfig(dir, c); err != nil {
		return c, err
	}
	std := c.InitializerRange
	if std <= 0 {
		std = 0.02
	}
	names, shapes := llama.ParamShapes(c)
	var largest int64
	for _, n := range names {
		largest = max(largest, numel(shapes[n]))
	}
	// One buffer serves every tensor: the writer consumes each tensor's
	// bytes before it asks for the next.
	buf := make([]byte, 2*largest)
	var ts []checkpoint.WriteTensor
	for i, n := range names {
		s := shapes[n]
		ts = append(ts, checkpoint.WriteTensor{Name: n, DType: "BF16", Shape: s, Encode: func() ([]byte, error) {
			b := buf[:2*numel(s)]
			if len(s) == 1 {
				fillOnes(b)
			} else {
				fillNormalBF16(b, std, o.Seed, uint64(i))
			}
			if o.Progress != nil {
				fmt.Fprintf(o.Progress, "  %s %v\n", n, s)
			}
			return b, nil
		}})
	}
	shard := o.MaxShardBytes
	if shard <= 0 {
		shard = HFMaxShardBytes
	}
	if err := checkpoint.WriteSharded(dir, ts, shard, map[string]string{"format": "pt"}); err != nil {
		return c, err
	}
	gen, _ := json.MarshalIndent(map[string]any{"bos_token_id": c.BOSID(), "eos_token_id": c.EOSIDs(),
		"do_sample": true, "temperature": 0.6, "top_p": 0.9}, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "generation_config.json"), append(gen, '\n'), 0o644); err != nil {
		return c, fmt.Errorf("shape model: %w", err)
	}
	return c, nil
}

// WriteShapeConfig writes c as dir/config.json (what WriteShapeModel writes
// first).
func WriteShapeConfig(dir string, c llama.Config) error {
	raw, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("shape model: %w", err)
	}
	return checkpoint.WriteAtomic(filepath.Join(dir, "config.json"), func(w io.Writer) error {
		_, err := w.Write(append(raw, '\n'))
		return err
	})
}

func fillOnes(b []byte) {
	one := kernels.F32ToBF16(1)
	for i := 0; i+1 < len(b); i += 2 {
		binary.LittleEndian.PutUint16(b[i:], one)
	}
}

// normBlock is how many values one PCG stream draws.
const normBlock = 1 << 20

// fillNormalBF16 fills b with little-endian bf16 normal(0, std) values:
// block k of tensor t draws from PCG(seed, t<<32|k), blocks spread over
// GOMAXPROCS goroutines.
func fillNormalBF16(b []byte, std float64, seed, tensor uint64) {
	n := len(b) / 2
	blocks := (n + normBlock - 1) / normBlock
	workers := min(runtime.GOMAXPROCS(0), blocks)
	var wg sync.WaitGroup
	next := make(chan int, blocks)
	for k := range blocks {
		next <- k
	}
	close(next)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range next {
				r := rand.New(rand.NewPCG(seed, tensor<<32|uint64(k)))
				lo, hi := k*normBlock, min((k+1)*normBlock, n)
				out := b[2*lo : 2*hi]
				for i := 0; i < hi-lo; i++ {
					binary.LittleEndian.PutUint16(out[2*i:], kernels.F32ToBF16(float32(r.NormFloat64()*std)))
				}
			}
		}()
	}
	wg.Wait()
}
