package checkpoint

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
)

// WriteTensor is one tensor to write. Data is already encoded little-endian
// (see EncodeF32, EncodeBF16, EncodeF32AsBF16, ...) and must hold exactly
// product(Shape) * size(DType) bytes.
type WriteTensor struct {
	Name  string
	DType string
	Shape []int
	Data  []byte
	// Encode, when set (and Data nil), produces the data at write time, so
	// that a whole model is never encoded in memory at once. The writers
	// call it once, write the bytes and let go of them before they encode
	// the next tensor, so an encoder may return the same buffer each time
	// (or a read-only slice of a Reader's mapping).
	Encode func() ([]byte, error)
}

// byteSize is product(Shape) · size(DType) (validated by validateTensors).
func (t WriteTensor) byteSize() int64 {
	n := int64(dtypeSizes[t.DType])
	for _, d := range t.Shape {
		n *= int64(d)
	}
	return n
}

// data returns the tensor's bytes, encoding them now when Encode is set.
func (t WriteTensor) data(file string) ([]byte, error) {
	if t.Encode == nil {
		return t.Data, nil
	}
	b, err := t.Encode()
	if err != nil {
		return nil, fmt.Errorf("%stensor %q: %w", where(file), t.Name, err)
	}
	if int64(len(b)) != t.byteSize() {
		return nil, fmt.Errorf("%stensor %q: encoded %d bytes, shape %v of %s needs %d", where(file), t.Name, len(b), t.Shape, t.DType, t.byteSize())
	}
	return b, nil
}

// FormatKey and FormatPyTorch: Hugging Face transformers refuses a safetensors
// file whose __metadata__ lacks "format" (one of pt, tf, flax, mlx). The
// writers add format=pt unless the caller sets "format" itself.
const (
	FormatKey     = "format"
	FormatPyTorch = "pt"
)

// Write encodes a safetensors file to w: the 8-byte little-endian header
// length, the JSON header (padded with spaces to a multiple of 8 bytes so the
// data section is 8-byte aligned, as the reference implementation does),
// then each tensor's data, contiguously and in the given order.
//
// The header lists __metadata__ first, then the tensors in the given order.
// metadata gets "format": "pt" unless it sets "format". Errors name the
// tensor; nothing is written to w when validation fails.
func Write(w io.Writer, tensors []WriteTensor, metadata map[string]string) error {
	return writeTo(w, "", tensors, metadata)
}

func writeTo(w io.Writer, file string, tensors []WriteTensor, metadata map[string]string) error {
	hdr, err := encodeHeader(file, tensors, metadata)
	if err != nil {
		return err
	}
	if _, err := w.Write(hdr); err != nil {
		return err
	}
	for _, t := range tensors {
		data, err := t.data(file)
		if err != nil {
			return err
		}
		if _, err := w.Write(data); err != nil {
			return err
		}
	}
	return nil
}

// where prefixes an error with the destination file when there is one.
func where(file string) string {
	if file == "" {
		return "checkpoint: "
	}
	return "checkpoint: " + file + ": "
}

// validateTensors checks names, dtypes, shapes and data lengths, and
// returns the total data size.
func validateTensors(file string, tensors []WriteTensor) (int64, error) {
	seen := make(map[string]bool, len(tensors))
	var total int64
	for i, t := range tensors {
		if t.Name == "" {
			return 0, fmt.Errorf("%stensor #%d has an empty name", where(file), i)
		}
		if t.Name == metadataKey {
			return 0, fmt.Errorf("%stensor name %q is reserved for metadata; rename the tensor", where(file), t.Name)
		}
		if seen[t.Name] {
			return 0, fmt.Errorf("%stensor %q is given twice; names must be unique", where(file), t.Name)
		}
		seen[t.Name] = true
		size, ok := dtypeSizes[t.DType]
		if !ok {
			return 0, fmt.Errorf("%stensor %q: unknown dtype %q (known: %s)", where(file), t.Name, t.DType, knownDTypes())
		}
		numel := int64(1)
		for _, d := range t.Shape {
			if d < 0 {
				return 0, fmt.Errorf("%stensor %q: shape %v has a negative dimension", where(file), t.Name, t.Shape)
			}
			if d != 0 && numel > math.MaxInt64/int64(d) {
				return 0, fmt.Errorf("%stensor %q: shape %v is too large", where(file), t.Name, t.Shape)
			}
			numel *= int64(d)
		}
		if numel > math.MaxInt64/int64(size) {
			return 0, fmt.Errorf("%stensor %q: shape %v is too large", where(file), t.Name, t.Shape)
		}
		want := numel * int64(size)
		if t.Encode == nil && int64(len(t.Data)) != want {
			return 0, fmt.Errorf("%stensor %q: shape %v of %s needs %d bytes of data, got %d", where(file), t.Name, t.Shape, t.DType, want, len(t.Data))
		}
		total += want
	}
	return total, nil
}

// jsonString returns s as a JSON string literal without HTML escaping.
func jsonString(s string) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// encodeHeader validates the tensors and returns the length prefix plus the
// padded JSON header.
func encodeHeader(file string, tensors []WriteTensor, metadata map[string]string) ([]byte, error) {
	if _, err := validateTensors(file, tensors); err != nil {
		return nil, err
	}
	md := make(map[string]string, len(metadata)+1)
	for k, v := range metadata {
		md[k] = v
	}
	if _, ok := md[FormatKey]; !ok {
		md[FormatKey] = FormatPyTorch
	}
	var h bytes.Buffer
	h.Write(make([]byte, headerPrefix)) // length, filled in below
	h.WriteByte('{')
	h.Write(jsonString(metadataKey))
	h.WriteString(":{")
	mkeys := make([]string, 0, len(md))
	for k := range md {
		mkeys = append(mkeys, k)
	}
	sort.Strings(mkeys)
	for i, k := range mkeys {
		if i > 0 {
			h.WriteByte(',')
		}
		h.Write(jsonString(k))
		h.WriteByte(':')
		h.Write(jsonString(md[k]))
	}
	h.WriteByte('}')
	var off int64
	for _, t := range tensors {
		h.WriteByte(',')
		h.Write(jsonString(t.Name))
		h.WriteString(`:{"dtype":`)
		h.Write(jsonString(t.DType))
		h.WriteString(`,"shape":[`)
		for i, d := range t.Shape {
			if i > 0 {
				h.WriteByte(',')
			}
			h.WriteString(strconv.Itoa(d))
		}
		end := off + t.byteSize()
		fmt.Fprintf(&h, `],"data_offsets":[%d,%d]}`, off, end)
		off = end
	}
	h.WriteByte('}')
	for h.Len()%8 != 0 {
		h.WriteByte(' ')
	}
	b := h.Bytes()
	n := len(b) - headerPrefix
	if n > MaxHeaderBytes {
		return nil, fmt.Errorf("%sheader would be %d bytes, over the %d-byte limit readers accept; write fewer tensors per file (use WriteSharded) or shorter metadata", where(file), n, MaxHeaderBytes)
	}
	for i := 0; i < headerPrefix; i++ {
		b[i] = byte(uint64(n) >> (8 * i))
	}
	return b, nil
}

// WriteFile writes one .safetensors file atomically: it writes a temporary
// file in the same directory, fsyncs it, renames it over path and fsyncs the
// directory, so a crash leaves either the old file or the new one. See Write
// for the layout and metadata.
func WriteFile(path string, tensors []WriteTensor, metadata map[string]string) error {
	hdr, err := encodeHeader(path, tensors, metadata)
	if err != nil {
		return err
	}
	return WriteAtomic(path, func(w io.Writer) error {
		if _, err := w.Write(hdr); err != nil {
			return err
		}
		for _, t := range tensors {
			data, err := t.data(path)
			if err != nil {
				return err
			}
			if _, err := w.Write(data); err != nil {
				return err
			}
		}
		return nil
	})
}

// WriteAtomic creates path with the bytes fill writes, atomically: a
// temporary file in the same directory is written (buffered), fsynced,
// given mode 0644, renamed over path, and the directory is fsynced. On any
// error the temporary file is removed and path is left untouched.
func WriteAtomic(path string, fill func(w io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("checkpoint: create temporary file for %s: %w (check that the directory exists and is writable)", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err := fill(bw); err != nil {
		return fmt.Errorf("checkpoint: write %s: %w", path, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("checkpoint: write %s: %w (is the disk full?)", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("checkpoint: fsync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("checkpoint: chmod %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("checkpoint: close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("checkpoint: rename %s to %s: %w", tmp.Name(), path, err)
	}
	if err := SyncDir(dir); err != nil {
		return fmt.Errorf("checkpoint: fsync directory %s after writing %s: %w", dir, filepath.Base(path), err)
	}
	return nil
}

// ShardFileName returns the Hugging Face transformers name of shard i
// (1-based) of n: model-00001-of-00003.safetensors.
func ShardFileName(i, n int) string {
	return fmt.Sprintf("model-%05d-of-%05d.safetensors", i, n)
}

var shardNameRE = regexp.MustCompile(`^model-[0-9]{5,}-of-[0-9]{5,}\.safetensors$`)

// IndexJSON is the content of model.safetensors.index.json.
type IndexJSON struct {
	Metadata  IndexMetadata     `json:"metadata"`
	WeightMap map[string]string `json:"weight_map"`
}

// IndexMetadata is the "metadata" object of the index; TotalSize is the sum
// of the tensors' data bytes (headers not counted), as transformers writes it.
type IndexMetadata struct {
	TotalSize int64 `json:"total_size"`
}

// planShards splits tensors, in order, into groups whose data size stays
// within maxShardBytes. A tensor larger than the limit gets a shard of its
// own; tensors never split.
func planShards(tensors []WriteTensor, maxShardBytes int64) [][]WriteTensor {
	if maxShardBytes <= 0 {
		return [][]WriteTensor{tensors}
	}
	var shards [][]WriteTensor
	var cur []WriteTensor
	var curBytes int64
	for _, t := range tensors {
		sz := t.byteSize()
		if len(cur) > 0 && curBytes+sz > maxShardBytes {
			shards = append(shards, cur)
			cur, curBytes = nil, 0
		}
		cur = append(cur, t)
		curBytes += sz
	}
	if len(cur) > 0 || len(shards) == 0 {
		shards = append(shards, cur)
	}
	return shards
}

// WriteSharded writes a model directory the way transformers'
// save_pretrained does. When the tensors' data fits in maxShardBytes (or
// maxShardBytes <= 0) it writes dir/model.safetensors; otherwise
// dir/model-00001-of-0000N.safetensors ... in the given tensor order (a
// tensor never splits; one larger than the limit gets its own shard) plus
// dir/model.safetensors.index.json with {"metadata": {"total_size": N},
// "weight_map": {tensor: file}}. Sizes count tensor data only, as
// transformers does. Every file is written atomically, the index last, and
// each shard carries metadata (plus format=pt).
//
// dir is created if needed. Weight files left by an earlier save in the other
// layout (model.safetensors, the index, model-XXXXX-of-YYYYY.safetensors not
// written now) are removed afterwards, as transformers does, because a stale
// model.safetensors would shadow a new index.
func WriteSharded(dir string, tensors []WriteTensor, maxShardBytes int64, metadata map[string]string) error {
	total, err := validateTensors(dir, tensors)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("checkpoint: create output directory %s: %w", dir, err)
	}
	shards := planShards(tensors, maxShardBytes)
	keep := make(map[string]bool)
	if len(shards) == 1 {
		if err := WriteFile(filepath.Join(dir, SingleFileName), tensors, metadata); err != nil {
			return err
		}
		keep[SingleFileName] = true
	} else {
		ix := IndexJSON{Metadata: IndexMetadata{TotalSize: total}, WeightMap: make(map[string]string, len(tensors))}
		for i, group := range shards {
			name := ShardFileName(i+1, len(shards))
			if err := WriteFile(filepath.Join(dir, name), group, metadata); err != nil {
				return err
			}
			keep[name] = true
			for _, t := range group {
				ix.WeightMap[t.Name] = name
			}
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		if err := enc.Encode(ix); err != nil { // ends with "\n"
			return fmt.Errorf("checkpoint: encode %s: %w", IndexFileName, err)
		}
		if err := WriteAtomic(filepath.Join(dir, IndexFileName), func(w io.Writer) error {
			_, err := w.Write(buf.Bytes())
			return err
		}); err != nil {
			return err
		}
		keep[IndexFileName] = true
	}
	return removeStale(dir, keep)
}

// removeStale deletes weight files of an earlier save that are not in keep.
func removeStale(dir string, keep map[string]bool) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("checkpoint: list %s to remove stale weight files: %w", dir, err)
	}
	var errs []error
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() || keep[name] {
			continue
		}
		if name == SingleFileName || name == IndexFileName || shardNameRE.MatchString(name) {
			if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("checkpoint: remove stale %s: %w (delete it by hand; it would confuse loaders)", filepath.Join(dir, name), err))
			}
		}
	}
	return errors.Join(errs...)
}
