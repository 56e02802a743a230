package train

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/tensor"
)

// CheckpointFormat tags state.json.
const CheckpointFormat = "llamatune-checkpoint/1"

// A checkpoint directory (RUN/checkpoints/step-NNNNNN) holds:
//
//	state.json                 step, micro-batches, data cursor, Meta
//	trainable.safetensors      the trainable tensors, exact f32 (names: PEFT
//	                           keys for LoRA, HF keys for full fine-tuning)
//	adapter_model.safetensors  (LoRA) the adapter as PEFT writes it
//	adapter_config.json        (LoRA)
//	optimizer.safetensors      AdamW moments
//	job.yaml                   the resolved job
//
// It is written into a temporary directory (every file fsynced) and renamed
// into place, so a crash never leaves a half-written checkpoint.
type state struct {
	Format string       `json:"format"`
	Step   int          `json:"step"`
	Micro  int          `json:"micro_batches"`
	Cursor *data.Cursor `json:"data_cursor,omitempty"`
	Meta
}

func ckptName(step int) string { return fmt.Sprintf("step-%06d", step) }

func saveCheckpoint(o Options, opt interface {
	StateTensors() []checkpoint.WriteTensor
}, st state) (string, error) {
	root := filepath.Join(o.OutDir, "checkpoints")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("creating %s: %w", root, err)
	}
	final := filepath.Join(root, ckptName(st.Step))
	tmp, err := os.MkdirTemp(root, ".tmp-"+ckptName(st.Step)+"-")
	if err != nil {
		return "", fmt.Errorf("creating a temporary checkpoint directory in %s: %w", root, err)
	}
	defer os.RemoveAll(tmp)
	st.Format, st.Meta = CheckpointFormat, o.Meta
	// Encoded one tensor at a time as the file is written: with full
	// fine-tuning the trainable tensors are the whole model.
	var ts []checkpoint.WriteTensor
	for _, p := range o.Trainable {
		ts = append(ts, checkpoint.WriteTensor{Name: p.Name, DType: "F32", Shape: p.Shape,
			Encode: func() ([]byte, error) { return checkpoint.EncodeF32(p.F32()), nil }})
	}
	if err := checkpoint.WriteFile(filepath.Join(tmp, "trainable.safetensors"), ts, nil); err != nil {
		return "", err
	}
	if o.LoRA != nil {
		if err := writeAdapter(tmp, o); err != nil {
			return "", err
		}
	}
	if err := checkpoint.WriteFile(filepath.Join(tmp, "optimizer.safetensors"), opt.StateTensors(), nil); err != nil {
		return "", err
	}
	if err := writeFileAtomic(filepath.Join(tmp, "job.yaml"), []byte(o.Meta.JobYAML)); err != nil {
		return "", err
	}
	raw, _ := json.MarshalIndent(st, "", "  ")
	if err := writeFileAtomic(filepath.Join(tmp, "state.json"), append(raw, '\n')); err != nil {
		return "", err
	}
	if err := os.RemoveAll(final); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("moving checkpoint into place: %w", err)
	}
	syncDir(root)
	if o.KeepLast > 0 {
		if err := prune(root, o.KeepLast); err != nil {
			return "", err
		}
	}
	return final, nil
}

func writeFileAtomic(path string, b []byte) error {
	return checkpoint.WriteAtomic(path, func(w io.Writer) error { _, err := w.Write(b); return err })
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// prune keeps the newest keep checkpoints.
func prune(root string, keep int) error {
	list, err := listCheckpoints(root)
	if err != nil {
		return err
	}
	for len(list) > keep {
		if err := os.RemoveAll(list[0]); err != nil {
			return fmt.Errorf("removing old checkpoint: %w", err)
		}
		list = list[1:]
	}
	return nil
}

// listCheckpoints returns complete checkpoint dirs, oldest first.
func listCheckpoints(root string) ([]string, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "step-") {
			if _, err := os.Stat(filepath.Join(root, e.Name(), "state.json")); err == nil {
				out = append(out, filepath.Join(root, e.Name()))
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// LatestCheckpoint returns the newest complete checkpoint of a run directory.
func LatestCheckpoint(runDir string) (string, error) {
	list, err := listCheckpoints(filepath.Join(runDir, "checkpoints"))
	if err != nil {
		return "", err
	}
	if len(list) == 0 {
		return "", fmt.Errorf("no checkpoint in %s (looked for checkpoints/step-*/state.json)", runDir)
	}
	return list[len(list)-1], nil
}

func resolveResume(runDir, resume string) (string, error) {
	if resume == "latest" {
		return LatestCheckpoint(runDir)
	}
	if _, err := os.Stat(filepath.Join(resume, "state.json")); err != nil {
		if l, err2 := LatestCheckpoint(resume); err2 == nil {
			return l, nil
		}
		return "", fmt.Errorf("--resume %s: not a checkpoint directory (no state.json) nor a run directory with checkpoints", resume)
	}
	return resume, nil
}

// ReadState reads a checkpoint's state.json.
func ReadState(dir string) (state, error) {
	var st state
	raw, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return st, fmt.Errorf("reading checkpoint state: %w", err)
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, fmt.Errorf("%s: invalid JSON: %v", filepath.Join(dir, "state.json"), err)
	}
	if st.Format != CheckpointFormat {
		return st, fmt.Errorf("%s: format %q, want %q", filepath.Join(dir, "state.json"), st.Format, CheckpointFormat)
	}
	return st, nil
}

func loadCheckpoint(dir string, o Options, opt interface {
	LoadState(*checkpoint.Reader, int) error
}) (state, error) {
	st, err := ReadState(dir)
	if err != nil {
		return st, err
	}
	var diffs []string
	check := func(what, was, now string) {
		if was != now {
			diffs = append(diffs, fmt.Sprintf("%s: checkpoint %q, now %q", what, was, now))
		}
	}
	check("method", st.Method, o.Meta.Method)
	check("base model", st.BaseModel, o.Meta.BaseModel)
	check("model (config.json and weights index)", st.ModelHash, o.Meta.ModelHash)
	check("data section", st.DataHash, o.Meta.DataHash)
	if len(diffs) > 0 {
		if old, err := os.ReadFile(filepath.Join(dir, "job.yaml")); err == nil && o.Meta.JobYAML != "" {
			if keys := changedKeys(old, []byte(o.Meta.JobYAML)); len(keys) > 0 {
				diffs = append(diffs, "changed job keys: "+strings.Join(keys, ", "))
			}
		}
		return st, fmt.Errorf("refusing to resume from %s, it belongs to another run: %s", dir, strings.Join(diffs, "; "))
	}
	r, err := checkpoint.Open(filepath.Join(dir, "trainable.safetensors"))
	if err != nil {
		return st, err
	}
	defer r.Close()
	for _, p := range o.Trainable {
		if err := r.Expect(p.Name, p.Shape); err != nil {
			return st, err
		}
		v, err := r.F32(p.Name)
		if err != nil {
			return st, err
		}
		restore(p, v)
	}
	or, err := checkpoint.Open(filepath.Join(dir, "optimizer.safetensors"))
	if err != nil {
		return st, err
	}
	defer or.Close()
	if err := opt.LoadState(or, st.Step); err != nil {
		return st, err
	}
	return st, nil
}

func restore(p *tensor.Tensor, v []float32) {
	be := p.Backend()
	be.Copy(p.Buf, be.FromF32(kernels.F32, v))
}

// changedKeys lists the key paths whose values differ between two job YAMLs
// ("data.seq_len: 128 -> 256"), at most 10.
func changedKeys(a, b []byte) []string {
	var ma, mb any
	if yaml.Unmarshal(a, &ma) != nil || yaml.Unmarshal(b, &mb) != nil {
		return nil
	}
	fa, fb := map[string]string{}, map[string]string{}
	flatten("", ma, fa)
	flatten("", mb, fb)
	var out []string
	for k, v := range fa {
		if w, ok := fb[k]; !ok || w != v {
			out = append(out, fmt.Sprintf("%s: %s -> %s", k, v, orNone(w, ok)))
		}
	}
	for k, w := range fb {
		if _, ok := fa[k]; !ok {
			out = append(out, fmt.Sprintf("%s: (none) -> %s", k, w))
		}
	}
	sort.Strings(out)
	if len(out) > 10 {
		out = append(out[:10], fmt.Sprintf("and %d more", len(out)-10))
	}
	return out
}

func orNone(s string, ok bool) string {
	if !ok {
		return "(none)"
	}
	return s
}

func flatten(prefix string, v any, out map[string]string) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			flatten(p, e, out)
		}
	case []any:
		for i, e := range x {
			flatten(fmt.Sprintf("%s[%d]", prefix, i), e, out)
		}
	default:
		out[prefix] = fmt.Sprint(x)
	}
}
