package export

import (
	"go/ast"
	"go/parser"
	"go/token"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
)

// HF and GGUF never load the whole model: nothing they reach in this package
// calls llama.Load, llama.New, lora.Attach, Open, or a Save / Merge method
// (llama.Model.Save, lora.Set.Merge). Calls are followed by name through the
// package's functions and methods (a method call x.F reaches every method
// named F here), so the check errs on the side of finding a path.
func TestExportsDoNotLoadTheModel(t *testing.T) {
	fset := token.NewFileSet()
	paths, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	funcs := map[string]*ast.FuncDecl{}     // package functions by name
	methods := map[string][]*ast.FuncDecl{} // methods by name
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok {
				if fd.Recv == nil {
					funcs[fd.Name.Name] = fd
				} else {
					methods[fd.Name.Name] = append(methods[fd.Name.Name], fd)
				}
			}
		}
	}
	forbidden := map[string]bool{"llama.Load": true, "llama.New": true, "lora.Attach": true, "Open": true, ".Save": true, ".Merge": true}
	for _, root := range []string{"HF", "GGUF"} {
		seen := map[*ast.FuncDecl]bool{}
		via := map[*ast.FuncDecl]string{funcs[root]: root}
		queue := []*ast.FuncDecl{funcs[root]}
		for len(queue) > 0 {
			fd := queue[0]
			queue = queue[1:]
			if fd == nil || seen[fd] {
				continue
			}
			seen[fd] = true
			ast.Inspect(fd.Body, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				var name string
				var next []*ast.FuncDecl
				switch fn := call.Fun.(type) {
				case *ast.Ident:
					name = fn.Name
					if d := funcs[name]; d != nil {
						next = append(next, d)
					}
				case *ast.SelectorExpr:
					if pkg, ok := fn.X.(*ast.Ident); ok && (pkg.Name == "llama" || pkg.Name == "lora" || pkg.Name == "checkpoint") {
						name = pkg.Name + "." + fn.Sel.Name
					} else {
						name = "." + fn.Sel.Name
						next = append(next, methods[fn.Sel.Name]...)
					}
				}
				if forbidden[name] {
					t.Errorf("%s reaches %s (via %s, %s)", root, name, via[fd], fset.Position(call.Pos()))
				}
				for _, d := range next {
					if _, ok := via[d]; !ok {
						via[d] = via[fd] + " → " + d.Name.Name
					}
					queue = append(queue, d)
				}
				return true
			})
		}
		if len(seen) < 5 {
			t.Fatalf("%s: only %d functions reached; the walk is broken", root, len(seen))
		}
	}
}

// heapInUse is HeapInuse read without stopping the world.
func heapInUse() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64() + s[1].Value.Uint64()
}

// peakHeapGrowth runs fn and returns how far the heap in use rose above
// where it stood before, sampled every 200µs (a sample can only miss a
// peak, never invent one). The collector runs eagerly meanwhile (GOGC=5), so
// the heap follows what fn holds rather than how much garbage the collector
// lets pile up before it runs.
func peakHeapGrowth(t *testing.T, fn func() error) uint64 {
	t.Helper()
	defer debug.SetGCPercent(debug.SetGCPercent(5))
	runtime.GC()
	base := heapInUse()
	var peak uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(200 * time.Microsecond)
		defer tick.Stop()
		for {
			peak = max(peak, heapInUse())
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	err := fn()
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if peak < base {
		return 0
	}
	return peak - base
}

// Exporting a LoRA run holds a few tensors, not the model: the peak heap
// growth of HF (BF16) and GGUF (Q8_0) export of an all-linear adapter on a
// BF16 base stays under 40% of the model's float32 size, where the
// in-memory path holds it all. The model has 37M parameters, and its largest
// tensor, the embeddings, is 45% of it: the streaming export's floor is that
// tensor's encoded bytes, which the GGUF writer takes whole (the HF export
// writes it as stored, straight from the mapping).
func TestStreamingExportMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 150 MB model")
	}
	f32Base := filepath.Join(t.TempDir(), "base")
	cfg, err := randmodel.WriteTinyModel(f32Base, randmodel.TinyOptions{Tokenizer: "llama2", Layers: 8, Hidden: 512, Seed: 3, Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	base := convertWeights(t, f32Base, "BF16", false) // as Llama checkpoints are published
	names, shapes := llama.ParamShapes(cfg)
	var f32Bytes uint64
	for _, n := range names {
		f32Bytes += uint64(numel(shapes[n])) * 4
	}
	// An all-linear rank-8 adapter with non-zero B.
	r := rand.New(rand.NewPCG(4, 5))
	rnd := func(n int) []byte {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(r.NormFloat64() * 0.02)
		}
		return checkpoint.EncodeF32(v)
	}
	const rank = 8
	var ts []checkpoint.WriteTensor
	for _, n := range names {
		module := strings.TrimSuffix(n, ".weight")
		if !slices.Contains(lora.Modules[:7], module[strings.LastIndex(module, ".")+1:]) {
			continue
		}
		s := shapes[n]
		ts = append(ts,
			checkpoint.WriteTensor{Name: lora.PEFTKey(module, "A"), DType: "F32", Shape: []int{rank, s[1]}, Data: rnd(rank * s[1])},
			checkpoint.WriteTensor{Name: lora.PEFTKey(module, "B"), DType: "F32", Shape: []int{s[0], rank}, Data: rnd(s[0] * rank)})
	}
	adapter := filepath.Join(t.TempDir(), "adapter")
	if err := checkpoint.WritePEFT(adapter, checkpoint.NewAdapterConfig(base, rank, 16, 0, lora.Modules[:7], false), ts); err != nil {
		t.Fatal(err)
	}
	src := Source{BaseDir: base, AdapterDir: adapter}
	out := t.TempDir()
	limit := f32Bytes * 4 / 10
	mib := func(b uint64) float64 { return float64(b) / (1 << 20) }
	for _, c := range []struct {
		name string
		run  func() error
	}{
		{"hf-bf16", func() error { return HF(src, filepath.Join(out, "hf"), "BF16", 0) }},
		{"gguf-q8_0", func() error { return GGUF(src, filepath.Join(out, "m.gguf"), "Q8_0") }},
	} {
		got := peakHeapGrowth(t, c.run)
		t.Logf("%s: peak heap growth %.1f MiB, model %.1f MiB in float32 (%.0f%%)", c.name, mib(got), mib(f32Bytes), 100*float64(got)/float64(f32Bytes))
		if got > limit {
			t.Errorf("%s: peak heap growth %.1f MiB, over 40%% of the model's %.1f MiB in float32", c.name, mib(got), mib(f32Bytes))
		}
	}
	// The reference: the in-memory path holds the whole model, so the sampler
	// must see at least that.
	old := peakHeapGrowth(t, func() error { return hfInMemory(src, filepath.Join(out, "old"), "BF16", 0) })
	t.Logf("in-memory HF export: peak heap growth %.1f MiB", mib(old))
	if old < f32Bytes*9/10 {
		t.Errorf("the in-memory export peaked at only %.1f MiB of a %.1f MiB model; the heap sampler misses peaks", mib(old), mib(f32Bytes))
	}
}
