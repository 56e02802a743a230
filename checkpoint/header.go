package checkpoint

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
)

// MaxHeaderBytes caps the JSON header length a file may declare (the same
// 100 MB limit the reference implementation uses). A real Llama 405B header
// is well under 1 MB; anything larger is corruption or an attack.
const MaxHeaderBytes = 100_000_000

// metadataKey is the reserved header entry that holds free-form string pairs.
const metadataKey = "__metadata__"

// headerPrefix is the size of the little-endian u64 header length.
const headerPrefix = 8

// parsedFile is the validated content of one safetensors header.
type parsedFile struct {
	dataStart int64 // absolute offset of the data section in the file
	tensors   []TensorInfo
	metadata  map[string]string
}

// rawTensor mirrors one tensor entry in the JSON header.
type rawTensor struct {
	DType       *string  `json:"dtype"`
	Shape       *[]int64 `json:"shape"`
	DataOffsets *[]int64 `json:"data_offsets"`
}

// parseHeader validates the header of a safetensors file whose bytes are b
// (at least the header; the whole file when fileSize == len(b)). file is used
// only for error messages. fileSize is the size of the whole file.
//
// Checks, each reported with the file name and where relevant the key:
// the 8-byte length prefix, the header length against the file size and
// MaxHeaderBytes, JSON syntax, duplicate keys, __metadata__ being string
// pairs, known dtypes, non-negative dims, offsets in [0, data length] with
// begin <= end, end-begin == product(shape)*dtype size, and no two tensors
// overlapping. Holes between tensors and unused bytes after the last tensor
// are accepted (see the package documentation).
func parseHeader(file string, b []byte, fileSize int64) (*parsedFile, error) {
	if fileSize < headerPrefix || len(b) < headerPrefix {
		return nil, fmt.Errorf("checkpoint: %s: file is %d bytes, shorter than the 8-byte safetensors header length; the file is truncated or not a safetensors file", file, fileSize)
	}
	n := binary.LittleEndian.Uint64(b[:headerPrefix])
	if n > MaxHeaderBytes {
		return nil, fmt.Errorf("checkpoint: %s: header length %d exceeds the %d-byte limit; the file is corrupt or not a safetensors file", file, n, MaxHeaderBytes)
	}
	if n > uint64(fileSize-headerPrefix) {
		return nil, fmt.Errorf("checkpoint: %s: header length %d is larger than the %d bytes that follow it; the file is truncated or not a safetensors file", file, n, fileSize-headerPrefix)
	}
	if uint64(len(b)-headerPrefix) < n {
		return nil, fmt.Errorf("checkpoint: %s: header length %d exceeds the bytes read (%d)", file, n, len(b)-headerPrefix)
	}
	hdr := b[headerPrefix : headerPrefix+int(n)]
	dataStart := int64(headerPrefix) + int64(n)
	dataLen := fileSize - dataStart

	trimmed := bytes.TrimLeft(hdr, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, fmt.Errorf("checkpoint: %s: header is not a JSON object (it must start with '{'); the file is corrupt or not a safetensors file", file)
	}

	dec := json.NewDecoder(bytes.NewReader(hdr))
	if _, err := dec.Token(); err != nil { // the opening '{'
		return nil, jsonErr(file, "", err)
	}
	pf := &parsedFile{dataStart: dataStart}
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, jsonErr(file, "", err)
		}
		key, ok := tok.(string)
		if !ok { // cannot happen with encoding/json, kept for safety
			return nil, fmt.Errorf("checkpoint: %s: header has a non-string key; the file is corrupt", file)
		}
		if seen[key] {
			return nil, fmt.Errorf("checkpoint: %s: key %q appears twice in the header; the file is corrupt", file, key)
		}
		seen[key] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, jsonErr(file, key, err)
		}
		if key == metadataKey {
			md, err := parseMetadata(file, raw)
			if err != nil {
				return nil, err
			}
			pf.metadata = md
			continue
		}
		ti, err := parseTensor(file, key, raw, dataLen)
		if err != nil {
			return nil, err
		}
		pf.tensors = append(pf.tensors, ti)
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, jsonErr(file, "", err)
	}
	// Only whitespace (the spec pads with spaces) may follow the object.
	if tok, err := dec.Token(); err != io.EOF {
		if err == nil {
			err = fmt.Errorf("unexpected %v after the header object", tok)
		}
		return nil, jsonErr(file, "", err)
	}
	if err := checkOverlap(file, pf.tensors); err != nil {
		return nil, err
	}
	return pf, nil
}

func jsonErr(file, key string, err error) error {
	detail := err.Error()
	if key != "" {
		return fmt.Errorf("checkpoint: %s: invalid JSON header at key %q: %s; the file is corrupt or not a safetensors file", file, key, detail)
	}
	return fmt.Errorf("checkpoint: %s: invalid JSON header: %s; the file is corrupt or not a safetensors file", file, detail)
}

func parseMetadata(file string, raw json.RawMessage) (map[string]string, error) {
	if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return nil, nil
	}
	var md map[string]string
	if err := json.Unmarshal(raw, &md); err != nil {
		return nil, fmt.Errorf("checkpoint: %s: key %q must be an object of string values: %v", file, metadataKey, err)
	}
	return md, nil
}

func parseTensor(file, key string, raw json.RawMessage, dataLen int64) (TensorInfo, error) {
	var rt rawTensor
	if err := json.Unmarshal(raw, &rt); err != nil {
		return TensorInfo{}, fmt.Errorf("checkpoint: %s: tensor %q: entry must be {\"dtype\", \"shape\", \"data_offsets\"} with integer shape and offsets: %v", file, key, err)
	}
	switch {
	case rt.DType == nil:
		return TensorInfo{}, fmt.Errorf("checkpoint: %s: tensor %q: missing \"dtype\"; the file is corrupt", file, key)
	case rt.Shape == nil:
		return TensorInfo{}, fmt.Errorf("checkpoint: %s: tensor %q: missing \"shape\"; the file is corrupt", file, key)
	case rt.DataOffsets == nil:
		return TensorInfo{}, fmt.Errorf("checkpoint: %s: tensor %q: missing \"data_offsets\"; the file is corrupt", file, key)
	}
	dtype := *rt.DType
	size, ok := dtypeSizes[dtype]
	if !ok {
		if subByteDTypes[dtype] {
			return TensorInfo{}, fmt.Errorf("checkpoint: %s: tensor %q: sub-byte dtype %q is not supported; convert the checkpoint to BF16, F16 or F32", file, key, dtype)
		}
		return TensorInfo{}, fmt.Errorf("checkpoint: %s: tensor %q: unknown dtype %q (known: %s)", file, key, dtype, knownDTypes())
	}
	shape := make([]int, len(*rt.Shape))
	numel := int64(1)
	for i, d := range *rt.Shape {
		if d < 0 {
			return TensorInfo{}, fmt.Errorf("checkpoint: %s: tensor %q: shape %v has negative dimension %d; the file is corrupt", file, key, *rt.Shape, d)
		}
		if d > math.MaxInt {
			return TensorInfo{}, fmt.Errorf("checkpoint: %s: tensor %q: dimension %d is too large for this platform", file, key, d)
		}
		shape[i] = int(d)
		if numel != 0 && d != 0 && numel > math.MaxInt64/d {
			return TensorInfo{}, fmt.Errorf("checkpoint: %s: tensor %q: shape %v has more elements than fit in 64 bits; the file is corrupt", file, key, *rt.Shape)
		}
		numel *= d
	}
	if numel > math.MaxInt64/int64(size) {
		return TensorInfo{}, fmt.Errorf("checkpoint: %s: tensor %q: shape %v is too large in bytes; the file is corrupt", file, key, *rt.Shape)
	}
	nbytes := numel * int64(size)
	offs := *rt.DataOffsets
	if len(offs) != 2 {
		return TensorInfo{}, fmt.Errorf("checkpoint: %s: tensor %q: data_offsets must be [begin, end], got %d numbers", file, key, len(offs))
	}
	begin, end := offs[0], offs[1]
	if begin < 0 || end < begin || end > dataLen {
		return TensorInfo{}, fmt.Errorf("checkpoint: %s: tensor %q: data_offsets [%d, %d] are outside the %d-byte data section; the file is truncated or corrupt", file, key, begin, end, dataLen)
	}
	if end-begin != nbytes {
		return TensorInfo{}, fmt.Errorf("checkpoint: %s: tensor %q: shape %v of %s needs %d bytes but data_offsets [%d, %d] span %d; the file is corrupt", file, key, shape, dtype, nbytes, begin, end, end-begin)
	}
	return TensorInfo{Name: key, DType: dtype, Shape: shape, Offsets: [2]int64{begin, end}, File: file}, nil
}

// checkOverlap reports two tensors whose byte ranges intersect. Empty tensors
// occupy no bytes and never overlap anything.
func checkOverlap(file string, ts []TensorInfo) error {
	idx := make([]int, 0, len(ts))
	for i, t := range ts {
		if t.Offsets[1] > t.Offsets[0] {
			idx = append(idx, i)
		}
	}
	sort.Slice(idx, func(a, b int) bool { return ts[idx[a]].Offsets[0] < ts[idx[b]].Offsets[0] })
	for k := 1; k < len(idx); k++ {
		prev, cur := ts[idx[k-1]], ts[idx[k]]
		if cur.Offsets[0] < prev.Offsets[1] {
			return fmt.Errorf("checkpoint: %s: tensors %q [%d, %d] and %q [%d, %d] overlap in the data section; the file is corrupt", file, prev.Name, prev.Offsets[0], prev.Offsets[1], cur.Name, cur.Offsets[0], cur.Offsets[1])
		}
	}
	return nil
}

// fullyCovered reports whether the tensors tile the data section exactly,
// with no holes and no trailing bytes: the stricter rule the reference
// implementation enforces. Our writer always satisfies it; the reader does
// not require it.
func fullyCovered(ts []TensorInfo, dataLen int64) bool {
	rs := make([][2]int64, 0, len(ts))
	for _, t := range ts {
		rs = append(rs, t.Offsets)
	}
	sort.Slice(rs, func(a, b int) bool {
		if rs[a][0] != rs[b][0] {
			return rs[a][0] < rs[b][0]
		}
		return rs[a][1] < rs[b][1]
	})
	pos := int64(0)
	for _, r := range rs {
		if r[0] != pos {
			return false
		}
		pos = r[1]
	}
	return pos == dataLen
}
