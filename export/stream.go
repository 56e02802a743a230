package export

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/lora"
	"github.com/llamatune/llamatune/model/llama"
)

// weights is the model an export writes, read one tensor at a time and never
// held whole: each tensor comes from the memory-mapped base model (or full
// fine-tuned weights), is replaced by its trained value from a
// trainable.safetensors overlay, or gets its LoRA update (W += scaling·B·A,
// through lora.AddLowRank as lora.Set.Merge does; for DoRA then each row
// scaled to its magnitude, lora.ScaleRows) when it is encoded. The
// values are exactly those Open loads into memory.
//
// A weights is not safe for concurrent use; the writers encode one tensor
// after another.
type weights struct {
	cfg    llama.Config // of the exported model: tie_word_embeddings false once lm_head got its own tensor
	names  []string     // HF order; an untied lm_head last
	shapes map[string][]int
	srcs   map[string]tensorSrc
	dirs   Dirs

	readers []*checkpoint.Reader
	be      *cpu.Backend

	// Buffers reused from tensor to tensor: the writers are done with one
	// tensor's bytes before they ask for the next.
	out                     []byte
	full, delta, rows, perm []float32
	evict                   func() // drops the pages of the tensor passed through last
}

// tensorSrc is where one exported tensor comes from.
type tensorSrc struct {
	r    *checkpoint.Reader
	key  string      // key in r (model.embed_tokens.weight for an lm_head untied from it)
	lora *loraUpdate // nil: the tensor as stored
}

// loraUpdate is one adapter to merge.
type loraUpdate struct {
	r          *checkpoint.Reader // nil: a module adapted by pattern without tensors in the file (B = 0, as PEFT)
	aKey, bKey string
	mKey       string // DoRA magnitude vector [out]; "" for LoRA
	rank       int
	scaling    float32
}

// rowBlock is how many values a tensor is converted at a time (1 MiB of f32).
const rowBlock = 1 << 18

// openWeights finds the pieces of src and checks every tensor it will read
// (names, shapes, dtypes, the adapter's modules) before anything is written,
// with the errors Open gives.
func openWeights(src Source) (_ *weights, err error) {
	if err := src.validate(); err != nil {
		return nil, err
	}
	d := Dirs{ConfigDir: src.BaseDir}
	overlay := ""
	if src.WeightsDir != "" {
		if isFile(filepath.Join(src.WeightsDir, "config.json")) && hasWeights(src.WeightsDir) {
			d.ConfigDir = src.WeightsDir
		} else if p := filepath.Join(src.WeightsDir, checkpoint.TrainableFile); isFile(p) {
			if src.BaseDir == "" || sameDir(src.BaseDir, src.WeightsDir) {
				return nil, fmt.Errorf("export: %s holds only the trained tensors (%s); the base model is needed too (pass --base DIR)", src.WeightsDir, checkpoint.TrainableFile)
			}
			overlay = p
		} else {
			return nil, fmt.Errorf("export: %s has neither config.json + model.safetensors nor %s; it holds no weights to export", src.WeightsDir, checkpoint.TrainableFile)
		}
	}
	switch {
	case hasTokenizer(src.WeightsDir):
		d.TokenizerDir = src.WeightsDir
	case hasTokenizer(src.BaseDir):
		d.TokenizerDir = src.BaseDir
	}
	w := &weights{srcs: map[string]tensorSrc{}, be: cpu.New()}
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	if err := w.openBase(d.ConfigDir); err != nil {
		return nil, err
	}
	if overlay != "" {
		if err := w.overlay(overlay); err != nil {
			return nil, err
		}
	}
	if src.AdapterDir != "" {
		cfg, err := w.addAdapter(src.AdapterDir)
		if err != nil {
			return nil, err
		}
		d.Adapter = &cfg
	}
	w.dirs = d
	return w, nil
}

// Close releases the mappings.
func (w *weights) Close() error {
	w.dropPassedThrough()
	var first error
	for _, r := range w.readers {
		if err := r.Close(); err != nil && first == nil {
			first = err
		}
	}
	w.readers = nil
	return first
}

// openBase reads the model directory's config and checks its tensors as
// llama.Load does (a checkpoint without lm_head.weight is tied).
func (w *weights) openBase(dir string) error {
	cfg, r, names, shapes, err := llama.OpenChecked(dir)
	if err != nil {
		return fmt.Errorf("export: load %s: %w", dir, err)
	}
	w.readers = append(w.readers, r)
	for _, n := range names {
		if err := floatTensor(r, n); err != nil {
			return fmt.Errorf("export: load %s: %w", dir, err)
		}
		w.srcs[n] = tensorSrc{r: r, key: n}
	}
	w.cfg, w.names, w.shapes = cfg, names, shapes
	return nil
}

// floatTensor checks that tensor name of r widens to float32.
func floatTensor(r *checkpoint.Reader, name string) error {
	info, _ := r.Info(name)
	switch info.DType {
	case checkpoint.F32, checkpoint.BF16, checkpoint.F16, checkpoint.F64, "Q8_0": // Q8_0: a GGUF base
		return nil
	}
	return fmt.Errorf("%s: tensor %q has dtype %s, which does not convert to float32; llamatune reads F32, BF16, F16 and F64 weights (convert the model to one of those first)", info.File, name, info.DType)
}

// untie gives lm_head its own tensor, a copy of the embeddings as they are
// now (llama.Model.Untie).
func (w *weights) untie() {
	if !w.cfg.TieWordEmbeddings {
		return
	}
	const embed, head = "model.embed_tokens.weight", "lm_head.weight"
	w.cfg.TieWordEmbeddings = false
	w.names = append(w.names, head)
	w.shapes[head] = slices.Clone(w.shapes[embed])
	w.srcs[head] = w.srcs[embed]
}

// overlay makes the tensors of path (HF names, as full fine-tuning saves
// them) replace the base model's.
func (w *weights) overlay(path string) error {
	r, err := checkpoint.Open(path)
	if err != nil {
		return err
	}
	w.readers = append(w.readers, r)
	for _, k := range r.Keys() {
		if _, _, ok := checkpoint.ParsePEFTKey(k); ok {
			return fmt.Errorf("export: %s holds LoRA weights (%s); export the checkpoint's PEFT adapter instead (its state.json should say method lora)", path, k)
		}
		if k == "lm_head.weight" && w.cfg.TieWordEmbeddings {
			w.untie() // trained separately from the embeddings
		}
		shape, ok := w.shapes[k]
		if !ok {
			return fmt.Errorf("export: %s: tensor %q is not a parameter of the base model; is the checkpoint for another model?", path, k)
		}
		if err := r.Expect(k, shape); err != nil {
			return err
		}
		if err := floatTensor(r, k); err != nil {
			return fmt.Errorf("export: %w", err)
		}
		w.srcs[k] = tensorSrc{r: r, key: k}
	}
	return nil
}

var layerRE = regexp.MustCompile(`^model\.layers\.([0-9]+)\.`)

// addAdapter attaches the PEFT adapter in dir to the tensors it updates,
// choosing the modules as lora.Attach does (every module the adapter's
// targets and layers name; one absent from the file is left unchanged, as
// PEFT leaves its B zero).
func (w *weights) addAdapter(dir string) (checkpoint.AdapterConfig, error) {
	cfg, r, err := checkpoint.ReadPEFT(dir)
	if err != nil {
		return cfg, err
	}
	w.readers = append(w.readers, r)
	if len(cfg.RankPattern) > 0 || len(cfg.AlphaPattern) > 0 {
		return cfg, fmt.Errorf("export: %s: rank_pattern/alpha_pattern (per-module ranks or alphas) are not supported; merge this adapter with PEFT's merge_and_unload", filepath.Join(dir, checkpoint.PEFTConfigFile))
	}
	shapes := map[string][]int{}
	for _, k := range r.Keys() {
		info, _ := r.Info(k)
		shapes[k] = info.Shape
	}
	pairs, err := checkpoint.PEFTPairs(r.Path(), shapes)
	if err != nil {
		return cfg, err
	}
	byModule := map[string]checkpoint.PEFTPair{}
	var targets []string
	var layers []int
	for _, p := range pairs {
		byModule[p.Module] = p
		short := p.Module[strings.LastIndex(p.Module, ".")+1:]
		if !slices.Contains(lora.Modules, short) {
			return cfg, fmt.Errorf("export: %s: tensor %q adapts module %s, which is not a Llama linear layer (%s)", r.Path(), p.AKey, p.Module, strings.Join(lora.Modules, ", "))
		}
		if !slices.Contains(targets, short) {
			targets = append(targets, short)
		}
		if mm := layerRE.FindStringSubmatch(p.Module); mm != nil {
			n, _ := strconv.Atoi(mm[1])
			if !slices.Contains(layers, n) {
				layers = append(layers, n)
			}
		}
		shape, ok := w.shapes[p.Module+".weight"]
		if p.Module == "lm_head" && w.cfg.TieWordEmbeddings {
			shape, ok = w.shapes["model.embed_tokens.weight"], true // merging unties them
		}
		if !ok {
			return cfg, fmt.Errorf("export: %s: tensor %q adapts %s, which the base model (%d layers) does not have; is this adapter for a different base model?", r.Path(), p.AKey, p.Module+".weight", w.cfg.NumHiddenLayers)
		}
		if shape[0] != p.Out || shape[1] != p.In {
			return cfg, fmt.Errorf("export: %s: %q is [%d, %d] and %q is [%d, %d], but the base weight %s is %v ([out, in]); the adapter does not match this base model", r.Path(), p.AKey, p.Rank, p.In, p.BKey, p.Out, p.Rank, p.Module+".weight", shape)
		}
		for _, k := range []string{p.AKey, p.BKey, p.MKey} {
			if k == "" {
				continue
			}
			if err := floatTensor(r, k); err != nil {
				return cfg, fmt.Errorf("export: %w", err)
			}
		}
	}
	sort.Ints(layers)
	lc := lora.Config{R: cfg.R, Alpha: cfg.LoraAlpha, TargetModules: targets, RSLoRA: cfg.UseRSLoRA, Layers: layers}
	if err := lc.Validate(); err != nil {
		return cfg, fmt.Errorf("export: %s: %w", dir, err)
	}
	names := w.names
	if w.cfg.TieWordEmbeddings && lc.Adapts("lm_head") {
		names = append(slices.Clone(names), "lm_head.weight")
	}
	used := 0
	for _, name := range names {
		module := strings.TrimSuffix(name, ".weight")
		if !lc.Adapts(module) {
			continue
		}
		if module == "lm_head" {
			w.untie() // merging must not change the input embeddings
		}
		u := &loraUpdate{rank: cfg.R, scaling: float32(lc.Scaling())}
		if p, ok := byModule[module]; ok {
			u.r, u.aKey, u.bKey, u.mKey = r, p.AKey, p.BKey, p.MKey
			used++
		}
		s := w.srcs[name]
		s.lora = u
		w.srcs[name] = s
	}
	if used != len(pairs) {
		return cfg, fmt.Errorf("export: %s: only %d of the %d adapted modules could be attached to the base model", r.Path(), used, len(pairs))
	}
	return cfg, nil
}

// resize returns buf with n elements, reallocated only when it is too short.
func resize[T any](buf []T, n int) []T {
	if cap(buf) < n {
		return make([]T, n)
	}
	return buf[:n]
}

// F32 returns the exported tensor name as new float32 values.
func (w *weights) F32(name string) ([]float32, error) {
	s := w.srcs[name]
	info, _ := s.r.Info(s.key)
	v := make([]float32, info.NumElements())
	if err := w.f32Into(name, v); err != nil {
		return nil, err
	}
	return v, nil
}

// f32Into widens the whole tensor name into v and applies its LoRA update
// (DoRA: W' = m/‖W + s·B·A‖_row ⊙ (W + s·B·A), the norm taken row by row of
// the merged values; a DoRA module adapted by pattern without tensors keeps
// W, as PEFT's B = 0 and m = ‖W‖_row do).
func (w *weights) f32Into(name string, v []float32) error {
	s := w.srcs[name]
	if err := s.r.F32Into(s.key, v); err != nil {
		return err
	}
	s.r.Evict(s.key, 0, len(v))
	if s.lora == nil {
		return nil
	}
	shape := w.shapes[name]
	out, in := shape[0], shape[1]
	u := s.lora
	var a, b []float32
	if u.r == nil {
		a, b = make([]float32, u.rank*in), make([]float32, out*u.rank)
	} else {
		var err error
		if a, err = u.r.F32(u.aKey); err != nil {
			return err
		}
		if b, err = u.r.F32(u.bKey); err != nil {
			return err
		}
	}
	w.delta = resize(w.delta, out*in)
	lora.AddLowRank(w.be, cpu.WrapF32(v), cpu.WrapF32(a), cpu.WrapF32(b), cpu.WrapF32(w.delta), out, in, u.rank, u.scaling)
	if u.mKey != "" {
		mag, err := u.r.F32(u.mKey)
		if err != nil {
			return err
		}
		lora.ScaleRows(v, mag, out, in)
	}
	return nil
}

// encoding is how an export stores a tensor.
type encoding struct {
	// dtype is the safetensors dtype whose stored bytes already are this
	// encoding ("" for none, as Q8_0).
	dtype  string
	size   func(n int) int // bytes of n values
	append func(dst []byte, v []float32) ([]byte, error)
}

func hfEncoding(dtype string) encoding {
	fn := map[string]func([]byte, []float32) []byte{
		checkpoint.F32: checkpoint.AppendF32, checkpoint.BF16: checkpoint.AppendF32AsBF16, checkpoint.F16: checkpoint.AppendF32AsF16,
	}[dtype]
	size, _ := checkpoint.DTypeSize(dtype)
	return encoding{dtype: dtype,
		size:   func(n int) int { return n * size },
		append: func(dst []byte, v []float32) ([]byte, error) { return fn(dst, v), nil }}
}

func ggufEncoding(t checkpoint.GGMLType, cols int) encoding {
	dtype := map[checkpoint.GGMLType]string{
		checkpoint.GGMLTypeF32: checkpoint.F32, checkpoint.GGMLTypeF16: checkpoint.F16, checkpoint.GGMLTypeBF16: checkpoint.BF16,
	}[t]
	return encoding{dtype: dtype,
		size: func(n int) int {
			b, _ := checkpoint.GGMLTypeBytes(t, int64(n), int64(cols)) // an impossible type fails in AppendGGUFData
			return int(b)
		},
		append: func(dst []byte, v []float32) ([]byte, error) {
			return checkpoint.AppendGGUFData(dst, v, t, cols)
		}}
}

// encode returns the bytes of tensor name stored as e, with the rows of each
// of heads heads permuted for GGUF (PermuteQK) when heads > 0. The result is
// valid until the next call: it is w's reused buffer, or the stored bytes
// themselves when they already are the output (then no float32 copy is made
// at all). A tensor without a LoRA update is converted a block of rows at a
// time, so only its encoded bytes are ever in memory whole.
func (w *weights) encode(name string, e encoding, heads int) ([]byte, error) {
	if err := checkFailHook(name); err != nil {
		return nil, err
	}
	w.dropPassedThrough()
	s := w.srcs[name]
	shape := w.shapes[name]
	info, _ := s.r.Info(s.key)
	n := int(info.NumElements())
	cols := shape[len(shape)-1]
	rows := n / cols
	if s.lora == nil && heads == 0 && info.DType == e.dtype {
		raw, err := s.r.Raw(s.key)
		if err != nil {
			return nil, err
		}
		// Widening and rounding back gives the same bytes, except that a
		// signalling NaN in 16 bits comes back quiet: those tensors convert.
		if info.DType == checkpoint.F32 || !hasNaN16(raw, info.DType) {
			r, key := s.r, s.key
			w.evict = func() { r.Evict(key, 0, n) }
			return raw, nil
		}
	}
	out := slices.Grow(w.out[:0], e.size(n)) // one allocation, kept for the next tensors
	var err error
	if s.lora != nil {
		w.full = resize(w.full, n)
		v := w.full
		if err := w.f32Into(name, v); err != nil {
			return nil, err
		}
		if heads > 0 {
			w.perm = resize(w.perm, n)
			permuteQKInto(w.perm, v, heads, cols)
			v = w.perm
		}
		if out, err = e.append(out, v); err != nil {
			return nil, err
		}
	} else {
		block := max(1, rowBlock/cols)
		if heads > 0 {
			block = rows / heads // one head: PermuteQK moves rows only within a head
		}
		for r0 := 0; r0 < rows; r0 += block {
			nr := min(block, rows-r0)
			w.rows = resize(w.rows, nr*cols)
			v := w.rows
			if err := s.r.F32Range(s.key, r0*cols, v); err != nil {
				return nil, err
			}
			s.r.Evict(s.key, r0*cols, nr*cols)
			if heads > 0 {
				w.perm = resize(w.perm, len(v))
				permuteQKInto(w.perm, v, 1, cols)
				v = w.perm
			}
			if out, err = e.append(out, v); err != nil {
				return nil, err
			}
		}
	}
	w.out = out
	return out, nil
}

// dropPassedThrough evicts the mapped pages of the tensor encode last
// returned as stored (the writer has written them by now).
func (w *weights) dropPassedThrough() {
	if w.evict != nil {
		w.evict()
		w.evict = nil
	}
}

// hasNaN16 reports whether raw BF16 or F16 data holds a NaN.
func hasNaN16(raw []byte, dtype string) bool {
	inf := uint16(0x7c00) // F16
	if dtype == checkpoint.BF16 {
		inf = 0x7f80
	}
	for i := 0; i+1 < len(raw); i += 2 {
		if binary.LittleEndian.Uint16(raw[i:])&0x7fff > inf {
			return true
		}
	}
	return false
}
