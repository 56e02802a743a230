package llama

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"unsafe"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/nf4"
	"github.com/llamatune/llamatune/tensor"
)

// Load reads an HF model directory (config.json + model.safetensors, or
// sharded safetensors with model.safetensors.index.json), or a GGUF file
// (path ending in .gguf; see ConfigFromGGUF), onto be, storing the
// weights as dt. Every parameter is checked against the shape config.json
// implies; errors name the file and key. A checkpoint without lm_head.weight
// is read as tied embeddings, as transformers does.
//
// With dt BF16 on a backend that computes on host memory (kernels.HostMapper,
// the CPU), tensors stored as BF16 are used in place from the memory-mapped
// files: the base model costs no heap, only the page cache the OS manages.
// The mapping then lives as long as the model (Close releases it). Other
// tensors are converted one at a time (F16 and F32 rounded to bf16), so the
// model is never held in f32 as a whole on the way.
//
// With dt NF4 (QLoRA, backends implementing kernels.NF4Wrapper) the linear
// weights of the decoder layers (q, k, v, o, gate, up, down) are quantized
// one tensor at a time straight from the mapped file (kernels/nf4), whose
// pages are then dropped (Evict) so they do not stay resident; embeddings,
// norms and lm_head are loaded as with BF16 (zero-copy).
func Load(dir string, be kernels.Backend, dt kernels.DType) (*Model, error) {
	quant := dt == kernels.NF4
	var nw kernels.NF4Wrapper
	if quant {
		var ok bool
		if nw, ok = be.(kernels.NF4Wrapper); !ok {
			return nil, fmt.Errorf("llama: backend %s cannot compute with NF4 weights (precision.weights: nf4 runs on the cpu device; use bf16 here)", be.Name())
		}
		dt = kernels.BF16 // everything that is not quantized
	}
	cfg, r, names, shapes, err := OpenChecked(dir)
	if err != nil {
		return nil, err
	}
	keep := false
	params := map[string]*tensor.Tensor{}
	defer func() {
		if !keep {
			r.Close()
			for _, p := range params { // a failed load frees what it made (NF4 lives off the Go heap)
				if p.DType() == kernels.NF4 {
					be.Free(p.Buf)
				}
			}
		}
	}()
	hm, _ := be.(kernels.HostMapper)
	mapped := 0
	for _, n := range names {
		var buf kernels.Buffer
		switch info, _ := r.Info(n); {
		case quant && QuantizedParam(n):
			t, err := quantizeParam(r, n, info.DType)
			if err != nil {
				return nil, err
			}
			buf = nw.WrapNF4(t)
		case dt == kernels.BF16 && hm != nil && info.DType == "BF16":
			if v := mappedBF16(r, n); v != nil {
				buf = hm.WrapHostBF16(v) // zero-copy
				mapped++
				break
			}
			fallthrough
		case dt == kernels.BF16 && hm != nil:
			v, err := r.BF16(n) // one tensor converted on the heap
			if err != nil {
				return nil, err
			}
			buf = hm.WrapHostBF16(v)
		default:
			v, err := r.F32(n) // F32, BF16 or F16 in the file, widened exactly
			if err != nil {
				return nil, err
			}
			buf = be.FromF32(dt, v) // stored as dt (bf16: round to nearest even)
		}
		params[n] = tensor.Wrap(be, buf, shapes[n]...)
	}
	m, err := New(cfg, be, params)
	if err != nil {
		return nil, err
	}
	keep = true // the model owns its buffers now
	if mapped > 0 {
		m.mapping = r
	} else {
		r.Close()
	}
	return m, nil
}

// QuantizedParam reports whether a precision.weights: nf4 load quantizes
// parameter n: the linear weights of the decoder layers.
func QuantizedParam(n string) bool {
	if !strings.HasPrefix(n, "model.layers.") || !strings.HasSuffix(n, "_proj.weight") {
		return false
	}
	for _, m := range []string{".self_attn.q_proj.", ".self_attn.k_proj.", ".self_attn.v_proj.", ".self_attn.o_proj.",
		".mlp.gate_proj.", ".mlp.up_proj.", ".mlp.down_proj."} {
		if strings.Contains(n, m) {
			return true
		}
	}
	return false
}

// quantizeParam quantizes tensor n to NF4: bf16 tensors from the mapped file
// in place, others converted to bf16 on the heap first (one tensor). The
// tensor's pages are evicted afterwards, so the file does not stay resident.
//
// A NaN or infinite weight is refused: its block scale would make the mean
// scale of the double quantization, and so every weight of the tensor, NaN.
func quantizeParam(r *checkpoint.Reader, n, fileDType string) (*nf4.Tensor, error) {
	v := mappedBF16(r, n)
	if fileDType != "BF16" || v == nil {
		var err error
		if v, err = r.BF16(n); err != nil {
			return nil, err
		}
	}
	t := nf4.QuantizeBF16(v)
	if off := float64(t.Offset); math.IsNaN(off) || math.IsInf(off, 0) {
		t.Free()
		r.Evict(n, 0, len(v))
		for i, h := range v {
			if h&0x7f80 == 0x7f80 { // exponent all ones: Inf or NaN
				return nil, fmt.Errorf("%s: element %d is %v; NF4 quantization (precision.weights: nf4) needs finite weights: the checkpoint is damaged, or use precision.weights: bf16 to train on it as it is",
					n, i, kernels.BF16ToF32(h))
			}
		}
		return nil, fmt.Errorf("%s: the NF4 block scales are not finite; precision.weights: nf4 needs finite weights", n)
	}
	r.Evict(n, 0, t.N)
	return t, nil
}

// OpenChecked reads dir's config.json and opens its weights (single or
// sharded safetensors), checking that every parameter it implies is there
// with its shape; errors name the file and key. A checkpoint without
// lm_head.weight is read as tied embeddings, as transformers does. It
// returns the parameter names in HF order with their shapes; the caller
// closes the reader.
//
// dir may be a GGUF file instead (a path ending in .gguf): the config comes
// from its llama.* keys and the reader shows its tensors under their HF
// names, Q and K un-permuted, of dtype F32, F16, BF16 or Q8_0 (which the
// reader's F32/BF16 methods widen); any other tensor type is an error naming
// the tensor and how to convert the file.
func OpenChecked(dir string) (Config, *checkpoint.Reader, []string, map[string][]int, error) {
	if IsGGUF(dir) {
		return openGGUF(dir)
	}
	cfg, err := LoadConfig(dir)
	if err != nil {
		return cfg, nil, nil, nil, err
	}
	r, err := checkpoint.Open(dir)
	if err != nil {
		return cfg, nil, nil, nil, err
	}
	if _, ok := r.Info("lm_head.weight"); !ok {
		cfg.TieWordEmbeddings = true
	}
	names, shapes := ParamShapes(cfg)
	for _, n := range names {
		if err := r.Expect(n, shapes[n]); err != nil {
			r.Close()
			return cfg, nil, nil, nil, fmt.Errorf("%w (config.json: %s)", err, filepath.Join(dir, "config.json"))
		}
	}
	return cfg, r, names, shapes, nil
}

// mappedBF16 views tensor n's bytes in the memory map as bf16 values, or
// returns nil where that is impossible (a big-endian host, an odd offset).
func mappedBF16(r *checkpoint.Reader, n string) []uint16 {
	raw, err := r.Raw(n)
	if err != nil || len(raw) < 2 || !littleEndian || uintptr(unsafe.Pointer(&raw[0]))%2 != 0 {
		return nil
	}
	return unsafe.Slice((*uint16)(unsafe.Pointer(&raw[0])), len(raw)/2)
}

var littleEndian = func() bool { x := uint16(1); return *(*byte)(unsafe.Pointer(&x)) == 1 }()

// Close releases the memory-mapped weight files a BF16 Load used in place
// and the quantized weights of an NF4 Load; the model must not be used
// afterwards. It is harmless on other models.
func (m *Model) Close() error {
	for _, n := range m.names {
		if p := m.params[n]; p != nil && p.Buf != nil && p.Buf.DType() == kernels.NF4 {
			m.be.Free(p.Buf) // quantized weights live outside the Go heap
		}
	}
	if m.mapping == nil {
		return nil
	}
	err := m.mapping.Close()
	m.mapping = nil
	return err
}

// SaveOptions control Save.
type SaveOptions struct {
	DType         string // "F32", "BF16" or "F16"; default F32
	MaxShardBytes int64  // ≤ 0: one file
}

// Save writes config.json and the weights (sharded, with an index when they
// exceed MaxShardBytes) into dir, atomically file by file.
func (m *Model) Save(dir string, o SaveOptions) error {
	dt := o.DType
	if dt == "" {
		dt = "F32"
	}
	var encode func([]float32) []byte
	switch dt {
	case "F32":
		encode = checkpoint.EncodeF32
	case "BF16":
		encode = checkpoint.EncodeF32AsBF16
	case "F16":
		encode = checkpoint.EncodeF32AsF16
	default:
		return fmt.Errorf("llama: unsupported save dtype %q (F32, BF16, F16)", dt)
	}
	var ts []checkpoint.WriteTensor
	for _, n := range m.names {
		p := m.params[n]
		// Encoded one tensor at a time as the files are written.
		ts = append(ts, checkpoint.WriteTensor{Name: n, DType: dt, Shape: p.Shape,
			Encode: func() ([]byte, error) { return encode(p.F32()), nil }})
	}
	cfg := m.Config
	cfg.TorchDtype = map[string]string{"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dt]
	raw, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("llama: creating %s: %w", dir, err)
	}
	err = checkpoint.WriteAtomic(filepath.Join(dir, "config.json"), func(w io.Writer) error {
		_, err := w.Write(append(raw, '\n'))
		return err
	})
	if err != nil {
		return err
	}
	return checkpoint.WriteSharded(dir, ts, o.MaxShardBytes, map[string]string{"format": "pt"})
}

// Fingerprint identifies a model directory cheaply: a hash of config.json,
// the safetensors index, and the name and size of every weight file. A resume
// uses it to refuse a checkpoint made for another model. For a GGUF file it
// is a hash of the file's size, metadata and tensor infos.
func Fingerprint(dir string) (string, error) {
	if IsGGUF(dir) {
		return ggufFingerprint(dir)
	}
	h := sha256.New()
	for _, name := range []string{"config.json", checkpoint.IndexFileName} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil && !os.IsNotExist(err) {
			return "", err
		}
		h.Write(b)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	sort.Strings(files)
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s:%d\n", filepath.Base(f), st.Size())
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// WeightsFingerprint identifies a model directory's weights by content, so
// that two models of the same shape (same config.json and file sizes, where
// Fingerprint agrees) still differ: a hash of Fingerprint, every weight
// file's header and three 64 KiB samples of its data (start, middle, end).
// It reads a few hundred KiB whatever the model's size.
func WeightsFingerprint(dir string) (string, error) {
	fp, err := Fingerprint(dir)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	h.Write([]byte(fp))
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	sort.Strings(files)
	if IsGGUF(dir) {
		files = []string{dir}
	}
	const sample = 64 << 10
	buf := make([]byte, sample)
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return "", err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return "", err
		}
		size := st.Size()
		for _, off := range []int64{0, size/2 - sample/2, size - sample} {
			off = max(0, off)
			n, err := f.ReadAt(buf, off)
			if err != nil && err != io.EOF {
				f.Close()
				return "", fmt.Errorf("reading %s: %w", name, err)
			}
			fmt.Fprintf(h, "%s@%d:", filepath.Base(name), off)
			h.Write(buf[:n])
		}
		f.Close()
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}
