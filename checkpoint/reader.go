package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Standard file names in a Hugging Face model directory.
const (
	SingleFileName = "model.safetensors"
	IndexFileName  = "model.safetensors.index.json"
)

// ErrNotFound is wrapped by errors for a tensor name the checkpoint lacks,
// so callers can test errors.Is(err, checkpoint.ErrNotFound) (for example to
// treat an absent lm_head.weight as tied embeddings).
var ErrNotFound = errors.New("tensor not found")

// TensorInfo describes one tensor in a safetensors file.
type TensorInfo struct {
	Name    string
	DType   string   // as in the header: "F32", "BF16", "F16", ...
	Shape   []int    // empty for a scalar
	Offsets [2]int64 // [begin, end) relative to the start of the data section
	File    string   // path of the file that holds the tensor
}

// NumElements returns the product of Shape (1 for a scalar).
func (t TensorInfo) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= int64(d)
	}
	return n
}

// NumBytes returns the size of the tensor's data in bytes.
func (t TensorInfo) NumBytes() int64 { return t.Offsets[1] - t.Offsets[0] }

// mappedFile is one open safetensors file: its bytes (memory-mapped where
// the platform allows) and where its data section starts.
type mappedFile struct {
	path      string
	data      []byte
	dataStart int64
	release   func() error
	// dontNeed drops the pages of b (a page-aligned part of data) from the
	// process's memory; nil where data is not a file mapping.
	dontNeed func(b []byte)
}

type entry struct {
	info TensorInfo
	file *mappedFile
	gguf *ggufEntry // a tensor of a GGUF file (GGUFFile.Reader); nil for safetensors
}

// Reader gives access to the tensors of one safetensors file or of a model
// directory (single file or sharded with an index). All methods except Close
// are safe for concurrent use; Close must not run concurrently with them.
type Reader struct {
	path     string
	files    []*mappedFile
	entries  map[string]*entry
	keys     []string
	metadata map[string]string
	closed   bool
}

// Open opens a single .safetensors file, or a model directory. For a
// directory it follows the Hugging Face transformers lookup order:
// model.safetensors if present, otherwise model.safetensors.index.json and
// the shards its weight_map names. A directory with neither is an error that
// lists the *.safetensors files it does hold. A path to the index file itself
// opens the sharded model it describes.
//
// Every file is validated when opened (see parseHeader); tensor data is
// memory-mapped on unix and read into memory elsewhere, and is not touched
// until asked for.
func Open(path string) (*Reader, error) {
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("checkpoint: %s does not exist; pass a .safetensors file or a model directory containing %s or %s: %w", path, SingleFileName, IndexFileName, err)
		}
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	if !st.IsDir() && filepath.Base(path) == IndexFileName {
		return openIndexed(filepath.Dir(path), path)
	}
	if !st.IsDir() {
		r := &Reader{path: path}
		if err := r.addFile(path); err != nil {
			return nil, err
		}
		r.finish()
		return r, nil
	}
	single := filepath.Join(path, SingleFileName)
	if fileExists(single) {
		r := &Reader{path: path}
		if err := r.addFile(single); err != nil {
			return nil, err
		}
		r.finish()
		return r, nil
	}
	index := filepath.Join(path, IndexFileName)
	if fileExists(index) {
		return openIndexed(path, index)
	}
	found, _ := filepath.Glob(filepath.Join(path, "*.safetensors"))
	if len(found) > 0 {
		names := make([]string, len(found))
		for i, f := range found {
			names[i] = filepath.Base(f)
		}
		return nil, fmt.Errorf("checkpoint: directory %s has neither %s nor %s (it holds %s); open one of those files directly, or add an index", path, SingleFileName, IndexFileName, strings.Join(names, ", "))
	}
	return nil, fmt.Errorf("checkpoint: directory %s has neither %s nor %s; point at a Hugging Face model directory or a .safetensors file", path, SingleFileName, IndexFileName)
}

// FromBytes parses an in-memory safetensors file. name is used in error
// messages and as TensorInfo.File. The Reader aliases b; do not modify it
// while the Reader is in use.
func FromBytes(name string, b []byte) (*Reader, error) {
	pf, err := parseHeader(name, b, int64(len(b)))
	if err != nil {
		return nil, err
	}
	r := &Reader{path: name}
	if err := r.add(&mappedFile{path: name, data: b, dataStart: pf.dataStart}, pf); err != nil {
		return nil, err
	}
	r.finish()
	return r, nil
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

type indexFile struct {
	Metadata  map[string]any     `json:"metadata"`
	WeightMap *map[string]string `json:"weight_map"`
}

func openIndexed(dir, index string) (*Reader, error) {
	raw, err := os.ReadFile(index)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: read %s: %w", index, err)
	}
	var ix indexFile
	if err := json.Unmarshal(raw, &ix); err != nil {
		return nil, fmt.Errorf("checkpoint: %s: invalid JSON (want {\"metadata\": {...}, \"weight_map\": {tensor: file}}): %v", index, err)
	}
	if ix.WeightMap == nil || len(*ix.WeightMap) == 0 {
		return nil, fmt.Errorf("checkpoint: %s: \"weight_map\" is missing or empty; the index must map every tensor name to its shard file", index)
	}
	wm := *ix.WeightMap
	// Shards in name order, each with one key that maps to it for messages.
	shardKey := make(map[string]string)
	for key, shard := range wm {
		if !filepath.IsLocal(shard) {
			return nil, fmt.Errorf("checkpoint: %s: tensor %q maps to %q, which is not a file name inside %s", index, key, shard, dir)
		}
		if k, ok := shardKey[shard]; !ok || key < k {
			shardKey[shard] = key
		}
	}
	shards := make([]string, 0, len(shardKey))
	for s := range shardKey {
		shards = append(shards, s)
	}
	sort.Strings(shards)

	r := &Reader{path: dir}
	for _, s := range shards {
		p := filepath.Join(dir, s)
		if !fileExists(p) {
			r.Close()
			return nil, fmt.Errorf("checkpoint: %s maps tensor %q (and maybe others) to shard %s, which is missing from %s; download or copy the missing shard", index, shardKey[s], s, dir)
		}
		if err := r.addFile(p); err != nil {
			r.Close()
			return nil, err
		}
	}
	// Every mapped key must be in the shard the index names.
	keys := make([]string, 0, len(wm))
	for k := range wm {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		want := filepath.Join(dir, wm[k])
		e, ok := r.entries[k]
		if !ok {
			r.Close()
			return nil, fmt.Errorf("checkpoint: %s maps tensor %q to %s, but that shard has no such tensor; the index and shards do not match (re-download or re-export the model)", index, k, want)
		}
		if e.file.path != want {
			r.Close()
			return nil, fmt.Errorf("checkpoint: %s maps tensor %q to %s, but it is in %s; the index and shards do not match (re-download or re-export the model)", index, k, want, e.file.path)
		}
	}
	r.finish()
	return r, nil
}

// addFile maps and validates one file and adds its tensors.
func (r *Reader) addFile(path string) error {
	mf, err := mapFile(path)
	if err != nil {
		return err
	}
	pf, err := parseHeader(path, mf.data, int64(len(mf.data)))
	if err != nil {
		mf.release()
		return err
	}
	mf.dataStart = pf.dataStart
	return r.add(mf, pf)
}

func (r *Reader) add(mf *mappedFile, pf *parsedFile) error {
	if r.entries == nil {
		r.entries = make(map[string]*entry)
	}
	for _, t := range pf.tensors {
		if prev, dup := r.entries[t.Name]; dup {
			if mf.release != nil {
				mf.release()
			}
			return fmt.Errorf("checkpoint: tensor %q is in both %s and %s; a tensor must live in exactly one shard (remove the stale file)", t.Name, prev.file.path, mf.path)
		}
		r.entries[t.Name] = &entry{info: t, file: mf}
	}
	r.files = append(r.files, mf)
	if len(pf.metadata) > 0 && r.metadata == nil {
		r.metadata = make(map[string]string)
	}
	// Merge: the first shard (in name order) to set a key wins.
	for k, v := range pf.metadata {
		if _, ok := r.metadata[k]; !ok {
			r.metadata[k] = v
		}
	}
	return nil
}

func (r *Reader) finish() {
	r.keys = make([]string, 0, len(r.entries))
	for k := range r.entries {
		r.keys = append(r.keys, k)
	}
	sort.Strings(r.keys)
}

// Path returns what Open was given (a file or a directory).
func (r *Reader) Path() string { return r.path }

// Files returns the paths of the safetensors files backing the Reader.
func (r *Reader) Files() []string {
	out := make([]string, len(r.files))
	for i, f := range r.files {
		out[i] = f.path
	}
	return out
}

// Keys returns all tensor names, sorted.
func (r *Reader) Keys() []string { return slices.Clone(r.keys) }

// Len returns the number of tensors.
func (r *Reader) Len() int { return len(r.keys) }

// Info returns the description of tensor name.
func (r *Reader) Info(name string) (TensorInfo, bool) {
	e, ok := r.entries[name]
	if !ok {
		return TensorInfo{}, false
	}
	ti := e.info
	ti.Shape = slices.Clone(ti.Shape)
	return ti, true
}

// Metadata returns the __metadata__ string pairs, merged over shards (the
// first shard in name order wins a conflicting key). The map is a copy.
func (r *Reader) Metadata() map[string]string {
	out := make(map[string]string, len(r.metadata))
	for k, v := range r.metadata {
		out[k] = v
	}
	return out
}

func (r *Reader) lookup(name string) (*entry, error) {
	if r.closed {
		return nil, fmt.Errorf("checkpoint: %s: reader is closed (tensor %q)", r.path, name)
	}
	e, ok := r.entries[name]
	if !ok {
		return nil, r.notFound(name)
	}
	return e, nil
}

func (r *Reader) notFound(name string) error {
	hint := ""
	switch {
	case strings.HasPrefix(name, "model.") && r.entries[strings.TrimPrefix(name, "model.")] != nil:
		hint = fmt.Sprintf(" (it has %q: the checkpoint uses names without the \"model.\" prefix)", strings.TrimPrefix(name, "model."))
	case r.entries["model."+name] != nil:
		hint = fmt.Sprintf(" (it has %q: the checkpoint uses the \"model.\" prefix)", "model."+name)
	}
	return fmt.Errorf("checkpoint: %s has no tensor %q%s; check that the checkpoint matches the model config: %w", r.path, name, hint, ErrNotFound)
}

// Raw returns the bytes of tensor name as stored (little-endian). The slice
// points into the memory map (zero-copy); it is read-only, and valid only
// until Close. Writing into it crashes the program on unix. (A GGUF tensor
// whose rows a GGUFView reorders comes back as a reordered copy.)
func (r *Reader) Raw(name string) ([]byte, error) {
	e, err := r.lookup(name)
	if err != nil {
		return nil, err
	}
	if e.gguf != nil {
		return e.ggufRaw(), nil
	}
	a := e.file.dataStart + e.info.Offsets[0]
	b := e.file.dataStart + e.info.Offsets[1]
	return e.file.data[a:b:b], nil
}

// F32 returns tensor name as a new []float32, converting from F32, BF16, F16
// (exact) or F64 (rounded to nearest).
func (r *Reader) F32(name string) ([]float32, error) {
	e, err := r.lookup(name)
	if err != nil {
		return nil, err
	}
	dst := make([]float32, e.info.NumElements())
	if err := r.F32Into(name, dst); err != nil {
		return nil, err
	}
	return dst, nil
}

// F32Into is F32 writing into dst, which must have exactly as many elements
// as the tensor.
func (r *Reader) F32Into(name string, dst []float32) error {
	e, err := r.lookup(name)
	if err != nil {
		return err
	}
	if int64(len(dst)) != e.info.NumElements() {
		return fmt.Errorf("checkpoint: %s: tensor %q has %d elements (shape %v), destination has %d", e.file.path, name, e.info.NumElements(), e.info.Shape, len(dst))
	}
	return r.F32Range(name, 0, dst)
}

// F32Range widens elements [start, start+len(dst)) of tensor name (counted
// in row-major order) into dst, as F32 does for the whole tensor, so that a
// large tensor can be converted a block of rows at a time.
func (r *Reader) F32Range(name string, start int, dst []float32) error {
	e, err := r.lookup(name)
	if err != nil {
		return err
	}
	n := e.info.NumElements()
	if start < 0 || int64(start)+int64(len(dst)) > n {
		return fmt.Errorf("checkpoint: %s: tensor %q has %d elements (shape %v); elements [%d, %d) are out of range", e.file.path, name, n, e.info.Shape, start, start+len(dst))
	}
	if e.gguf != nil {
		e.ggufRange(start, dst)
		return nil
	}
	size := int64(dtypeSizes[e.info.DType])
	raw, _ := r.Raw(name)
	raw = raw[int64(start)*size : (int64(start)+int64(len(dst)))*size]
	if !decodeToF32(dst, raw, e.info.DType) {
		return fmt.Errorf("checkpoint: %s: tensor %q has dtype %s, which does not convert to float32 (F32, BF16, F16 and F64 do); use Raw", e.file.path, name, e.info.DType)
	}
	return nil
}

// Evict tells the operating system that this process no longer needs the
// mapped pages holding elements [start, start+count) of tensor name
// (madvise MADV_DONTNEED on unix). The data stays valid: a later read maps
// it again from the page cache or the disk. Reading a whole model through a
// mapping otherwise leaves every page touched counted in the process's
// resident memory; a reader that streams tensors evicts each one once it is
// done. Where files are read into memory rather than mapped, Evict does
// nothing. Slices from Raw remain usable.
func (r *Reader) Evict(name string, start, count int) {
	e, ok := r.entries[name]
	if !ok || r.closed || e.file.dontNeed == nil || count <= 0 || start < 0 {
		return
	}
	size := int64(dtypeSizes[e.info.DType])
	n := e.info.NumElements()
	if int64(start) >= n {
		return
	}
	end := min(int64(start)+int64(count), n)
	a := e.file.dataStart + e.info.Offsets[0] + int64(start)*size
	b := e.file.dataStart + e.info.Offsets[0] + end*size
	if e.gguf != nil {
		a, b = e.ggufEvictSpan(int64(start), end)
	}
	page := int64(os.Getpagesize())
	a = a / page * page
	b = min((b+page-1)/page*page, int64(len(e.file.data)))
	if a < b {
		e.file.dontNeed(e.file.data[a:b])
	}
}

// BF16 returns tensor name as new bfloat16 bits: BF16 is copied, F32 is
// rounded to nearest-even, F16 is converted through float32 (one rounding).
func (r *Reader) BF16(name string) ([]uint16, error) {
	e, err := r.lookup(name)
	if err != nil {
		return nil, err
	}
	dst := make([]uint16, e.info.NumElements())
	if err := r.BF16Into(name, dst); err != nil {
		return nil, err
	}
	return dst, nil
}

// BF16Into is BF16 writing into dst, which must have exactly as many elements
// as the tensor.
func (r *Reader) BF16Into(name string, dst []uint16) error {
	e, err := r.lookup(name)
	if err != nil {
		return err
	}
	if int64(len(dst)) != e.info.NumElements() {
		return fmt.Errorf("checkpoint: %s: tensor %q has %d elements (shape %v), destination has %d", e.file.path, name, e.info.NumElements(), e.info.Shape, len(dst))
	}
	if e.gguf != nil && (e.gguf.rowOrder != nil || e.gguf.typ == GGMLTypeQ8_0) {
		// Through float32 a row at a time: exact for F32/F16/BF16 rows, one
		// rounding for Q8_0's d·q.
		row := make([]float32, e.gguf.cols)
		for i := 0; i < e.gguf.rows; i++ {
			e.ggufRange(i*e.gguf.cols, row)
			for j, f := range row {
				dst[i*e.gguf.cols+j] = F32ToBF16(f)
			}
		}
		return nil
	}
	raw, _ := r.Raw(name)
	if !decodeToBF16(dst, raw, e.info.DType) {
		return fmt.Errorf("checkpoint: %s: tensor %q has dtype %s, which does not convert to bfloat16 (F32, BF16 and F16 do); use Raw", e.file.path, name, e.info.DType)
	}
	return nil
}

// Expect checks that tensor name exists with exactly the given shape. The
// error names the file and key and gives both shapes; a missing key wraps
// ErrNotFound.
func (r *Reader) Expect(name string, shape []int) error {
	e, ok := r.entries[name]
	if !ok {
		return r.notFound(name)
	}
	if !slices.Equal(e.info.Shape, shape) {
		return fmt.Errorf("checkpoint: %s: tensor %q has shape %v (%s), want %v; the checkpoint does not match the model config (check hidden_size, num_heads, vocab_size in config.json)", e.file.path, name, fmtShape(e.info.Shape), e.info.DType, fmtShape(shape))
	}
	return nil
}

func fmtShape(s []int) string {
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = fmt.Sprint(d)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// Close unmaps every file. Slices returned by Raw must not be used after it.
// Calling Close twice is harmless.
func (r *Reader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	var errs []error
	for _, f := range r.files {
		if f.release != nil {
			if err := f.release(); err != nil {
				errs = append(errs, fmt.Errorf("checkpoint: unmap %s: %w", f.path, err))
			}
		}
	}
	r.files = nil
	return errors.Join(errs...)
}
