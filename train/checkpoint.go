package train

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/tensor"
)

// CheckpointFormat tags state.json.
const CheckpointFormat = checkpoint.StateFormat

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
	Format string `json:"format"`
	Step   int    `json:"step"`
	Micro  int    `json:"micro_batches"`
	// OnPolicy counts the micro-batches Options.Rollout replaced.
	OnPolicy int          `json:"on_policy_batches,omitempty"`
	Cursor   *data.Cursor `json:"data_cursor,omitempty"`
	// ElapsedSec is the training time of the run up to this checkpoint,
	// summed over every process that worked on it: a resumed run goes on
	// counting from here (metrics elapsed_sec, ETA).
	ElapsedSec float64 `json:"elapsed_sec,omitempty"`
	// BaseWeights is llama.WeightsFingerprint of the base model: export
	// refuses to merge into another base of the same shape.
	BaseWeights string `json:"base_weights,omitempty"`
	Meta
}

// elapsed is the run's training time before this process.
func (s state) elapsed() time.Duration { return time.Duration(s.ElapsedSec * float64(time.Second)) }

func saveCheckpoint(o Options, opt interface {
	StateTensors() []checkpoint.WriteTensor
}, st state) (string, error) {
	st.Format, st.Meta = CheckpointFormat, o.Meta
	return checkpoint.Run{Dir: o.OutDir}.WriteCheckpoint(st.Step, o.KeepLast, func(tmp string) error {
		// Encoded one tensor at a time as the file is written: with full
		// fine-tuning the trainable tensors are the whole model.
		var ts []checkpoint.WriteTensor
		for _, p := range o.Trainable {
			ts = append(ts, checkpoint.WriteTensor{Name: p.Name, DType: "F32", Shape: p.Shape,
				Encode: func() ([]byte, error) { return checkpoint.EncodeF32(p.F32()), nil }})
		}
		if err := checkpoint.WriteFile(filepath.Join(tmp, checkpoint.TrainableFile), ts, nil); err != nil {
			return err
		}
		if o.LoRA != nil {
			if err := writeAdapter(tmp, o); err != nil {
				return err
			}
		}
		if err := checkpoint.WriteFile(filepath.Join(tmp, checkpoint.OptimizerFile), opt.StateTensors(), nil); err != nil {
			return err
		}
		if err := writeFileAtomic(filepath.Join(tmp, "job.yaml"), []byte(o.Meta.JobYAML)); err != nil {
			return err
		}
		raw, _ := json.MarshalIndent(st, "", "  ")
		return writeFileAtomic(filepath.Join(tmp, checkpoint.StateFile), append(raw, '\n'))
	})
}

func writeFileAtomic(path string, b []byte) error {
	return checkpoint.WriteAtomic(path, func(w io.Writer) error { _, err := w.Write(b); return err })
}

// LatestCheckpoint returns the newest complete checkpoint of a run directory.
func LatestCheckpoint(runDir string) (string, error) { return checkpoint.Run{Dir: runDir}.Latest() }

// resolveResume finds the checkpoint to resume from and checks that it can
// be read; a broken one is refused with the previous good one named.
func resolveResume(runDir, resume string) (string, error) {
	dir, err := findResume(runDir, resume)
	if err != nil {
		return "", err
	}
	if err := verifyCheckpoint(dir); err != nil {
		if prev := previousGood(dir); prev != "" {
			return "", fmt.Errorf("checkpoint %s is corrupt or incomplete (%v); the previous good checkpoint is %s: resume from it with --resume %s (and move the broken one out of checkpoints/)", dir, err, prev, prev)
		}
		return "", fmt.Errorf("checkpoint %s is corrupt or incomplete (%v) and no earlier checkpoint of this run can be read; start afresh in a new output_dir", dir, err)
	}
	return dir, nil
}

func findResume(runDir, resume string) (string, error) {
	if resume == "latest" {
		return LatestCheckpoint(runDir)
	}
	if _, err := os.Stat(filepath.Join(resume, checkpoint.StateFile)); err != nil {
		if l, err2 := LatestCheckpoint(resume); err2 == nil {
			return l, nil
		}
		return "", fmt.Errorf("--resume %s: not a checkpoint directory (no state.json) nor a run directory with checkpoints", resume)
	}
	return resume, nil
}

// verifyCheckpoint checks that a checkpoint's state.json parses and that its
// tensor files open (headers valid, sizes matching the files).
func verifyCheckpoint(dir string) error {
	if _, err := ReadState(dir); err != nil {
		return err
	}
	for _, name := range []string{checkpoint.TrainableFile, checkpoint.OptimizerFile} {
		r, err := checkpoint.Open(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		r.Close()
	}
	return nil
}

// previousGood returns the newest readable checkpoint older than dir in the
// same run, or "".
func previousGood(dir string) string {
	run := checkpoint.Run{Dir: filepath.Dir(filepath.Dir(dir))}
	return run.Before(dir, func(d string) bool { return verifyCheckpoint(d) == nil })
}

// ReadState reads a checkpoint's state.json.
func ReadState(dir string) (state, error) {
	var st state
	raw, err := os.ReadFile(filepath.Join(dir, checkpoint.StateFile))
	if err != nil {
		return st, fmt.Errorf("reading checkpoint state: %w", err)
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, fmt.Errorf("%s: invalid JSON: %v", filepath.Join(dir, checkpoint.StateFile), err)
	}
	if st.Format != CheckpointFormat {
		return st, fmt.Errorf("%s: format %q, want %q", filepath.Join(dir, checkpoint.StateFile), st.Format, CheckpointFormat)
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
	if st.LoRA != nil && o.Meta.LoRA != nil {
		// DoRA and LoRA adapters have different tensors (the magnitudes).
		check("lora.use_dora", fmt.Sprint(st.LoRA.UseDoRA), fmt.Sprint(o.Meta.LoRA.UseDoRA))
	}
	if len(diffs) > 0 {
		if old, err := os.ReadFile(filepath.Join(dir, "job.yaml")); err == nil && o.Meta.JobYAML != "" {
			if keys := changedKeys(old, []byte(o.Meta.JobYAML)); len(keys) > 0 {
				diffs = append(diffs, "changed job keys: "+strings.Join(keys, ", "))
			}
		}
		return st, fmt.Errorf("refusing to resume from %s, it belongs to another run: %s", dir, strings.Join(diffs, "; "))
	}
	if old, err := os.ReadFile(filepath.Join(dir, "job.yaml")); err == nil && o.Meta.JobYAML != "" {
		reportChanges(o.Log, dir, st.Step, old, []byte(o.Meta.JobYAML))
	}
	r, err := checkpoint.Open(filepath.Join(dir, checkpoint.TrainableFile))
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
	or, err := checkpoint.Open(filepath.Join(dir, checkpoint.OptimizerFile))
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

// keyChange is one job key whose value differs between two job YAMLs.
type keyChange struct{ key, old, new string }

func (c keyChange) String() string { return fmt.Sprintf("%s: %s -> %s", c.key, c.old, c.new) }

// jobChanges lists the keys whose values differ between two job YAMLs,
// sorted by key, and the new job's flattened keys.
func jobChanges(a, b []byte) ([]keyChange, map[string]string) {
	var ma, mb any
	if yaml.Unmarshal(a, &ma) != nil || yaml.Unmarshal(b, &mb) != nil {
		return nil, nil
	}
	fa, fb := map[string]string{}, map[string]string{}
	flatten("", ma, fa)
	flatten("", mb, fb)
	var out []keyChange
	for k, v := range fa {
		if w, ok := fb[k]; !ok || w != v {
			out = append(out, keyChange{k, v, orNone(w, ok)})
		}
	}
	for k, w := range fb {
		if _, ok := fa[k]; !ok {
			out = append(out, keyChange{k, "(none)", w})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out, fb
}

// changedKeys lists the key paths whose values differ between two job YAMLs
// ("data.seq_len: 128 -> 256"), at most 10.
func changedKeys(a, b []byte) []string {
	ch, _ := jobChanges(a, b)
	var out []string
	for _, c := range ch {
		out = append(out, c.String())
	}
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

// What a changed job key does to a resumed run.
const (
	keyHarmless = iota // bookkeeping: the trained weights are the same
	keySchedule        // optimizer/schedule: steps after the checkpoint follow the new value
	keyBreaks          // changes what every step computes (numerics, batches, RNG)
)

// classifyKey says what changing key does to a resumed run; next is the new
// job's flattened keys (schedule.type decides about max_steps).
func classifyKey(key string, next map[string]string) int {
	top, _, _ := strings.Cut(key, ".")
	switch top {
	case "checkpoint", "eval", "logging", "export", "output_dir":
		return keyHarmless
	case "optimizer", "schedule", "on_nan":
		return keySchedule
	case "max_steps":
		// With a constant schedule and no warm-up ratio, max_steps only
		// says where the run ends.
		if next["schedule.type"] == "constant" && (next["schedule.warmup_ratio"] == "" || next["schedule.warmup_ratio"] == "0") {
			return keyHarmless
		}
		return keySchedule
	}
	return keyBreaks
}

// reportChanges prints which job keys differ from the checkpoint's job.yaml
// and whether the resumed run is still exact.
func reportChanges(log io.Writer, dir string, step int, old, now []byte) {
	ch, next := jobChanges(old, now)
	if len(ch) == 0 {
		return
	}
	fmt.Fprintf(log, "resume: the job differs from the one that wrote %s:\n", dir)
	worst := keyHarmless
	var sched, breaks []string
	for _, c := range ch {
		k := classifyKey(c.key, next)
		note := "bookkeeping only, does not change the weights"
		switch k {
		case keySchedule:
			note = fmt.Sprintf("optimizer/schedule: steps 1-%d stay as trained, later steps use the new value", step)
			sched = append(sched, c.key)
		case keyBreaks:
			note = "changes what every step computes"
			breaks = append(breaks, c.key)
		}
		worst = max(worst, k)
		fmt.Fprintf(log, "  %s (%s)\n", c, note)
	}
	switch worst {
	case keyHarmless:
		fmt.Fprintln(log, "resume: still exact (same weights as an uninterrupted run)")
	case keySchedule:
		fmt.Fprintf(log, "resume: NOT exact: the run continues from step %d with the new %s, so it will not match an uninterrupted run of either job; restore the old values for an exact resume\n", step, strings.Join(sched, ", "))
	default:
		fmt.Fprintf(log, "resume: NOT exact: %s changed, so steps after %d are computed differently from the checkpointed run; restore the old values for an exact resume\n", strings.Join(breaks, ", "), step)
	}
}
