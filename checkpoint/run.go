package checkpoint

import (
	"cmp"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// A run directory is what one training job writes, and what export, eval,
// distill and a resumed run read back. Run is its one owner:
//
//	RUN/metrics.jsonl                   one line per step (package train)
//	RUN/loss.png                        its plot
//	RUN/checkpoints/step-NNNNNN/        a complete checkpoint: StateFile (the
//	                                    step, data cursor and run identity),
//	                                    the trainable tensors, the optimizer
//	                                    state and, for LoRA, the PEFT adapter
//	RUN/checkpoints/.tmp-step-NNNNNN-*/ one being written; a crash leaves it,
//	                                    CleanTemp removes it
//	RUN/export/                         the job's exports
//
// A checkpoint is written into a temporary directory, every file fsynced,
// and renamed into place (WriteCheckpoint), so a listed checkpoint is whole.
type Run struct{ Dir string }

const (
	// CheckpointsDir holds a run's checkpoints.
	CheckpointsDir = "checkpoints"
	// StateFile is the file every checkpoint directory holds.
	StateFile = "state.json"
	// StateFormat tags StateFile.
	StateFormat = "llamatune-checkpoint/1"
	// TrainableFile holds a checkpoint's trained tensors in f32 (PEFT keys
	// for LoRA, HF keys for full fine-tuning).
	TrainableFile = "trainable.safetensors"
	// OptimizerFile holds the optimizer state.
	OptimizerFile = "optimizer.safetensors"

	tmpPrefix = ".tmp-step-"
)

var stepDirRE = regexp.MustCompile(`^step-([0-9]+)$`)

// StepName is the directory name of step's checkpoint.
func StepName(step int) string { return fmt.Sprintf("step-%06d", step) }

// Root is RUN/checkpoints.
func (r Run) Root() string { return filepath.Join(r.Dir, CheckpointsDir) }

// IsRun reports whether dir has a checkpoints directory.
func IsRun(dir string) bool {
	st, err := os.Stat(filepath.Join(dir, CheckpointsDir))
	return err == nil && st.IsDir()
}

// Checkpoints lists the complete checkpoints (step-N directories holding
// StateFile), oldest first; none when the run has no checkpoints directory.
func (r Run) Checkpoints() ([]string, error) {
	entries, err := os.ReadDir(r.Root())
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("listing %s: %w", r.Root(), err)
	}
	type step struct {
		n   int64
		dir string
	}
	var steps []step
	for _, e := range entries {
		m := stepDirRE.FindStringSubmatch(e.Name())
		if m == nil || !e.IsDir() {
			continue
		}
		n, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil {
			continue
		}
		dir := filepath.Join(r.Root(), e.Name())
		if _, err := os.Stat(filepath.Join(dir, StateFile)); err == nil {
			steps = append(steps, step{n, dir})
		}
	}
	// By step number, so that step-1000000 comes after step-999999.
	slices.SortFunc(steps, func(a, b step) int { return cmp.Compare(a.n, b.n) })
	out := make([]string, len(steps))
	for i, s := range steps {
		out[i] = s.dir
	}
	return out, nil
}

// Latest is the newest complete checkpoint.
func (r Run) Latest() (string, error) {
	list, err := r.Checkpoints()
	if err != nil {
		return "", err
	}
	if len(list) == 0 {
		return "", fmt.Errorf("no checkpoint in %s (looked for %s/step-*/%s)", r.Dir, CheckpointsDir, StateFile)
	}
	return list[len(list)-1], nil
}

// Before is the newest complete checkpoint older than dir, for which ok
// holds, or "".
func (r Run) Before(dir string, ok func(string) bool) string {
	list, err := r.Checkpoints()
	if err != nil {
		return ""
	}
	for i := len(list) - 1; i >= 0; i-- {
		if list[i] != dir && stepOf(list[i]) < stepOf(dir) && ok(list[i]) {
			return list[i]
		}
	}
	return ""
}

func stepOf(dir string) int64 {
	m := stepDirRE.FindStringSubmatch(filepath.Base(dir))
	if m == nil {
		return -1
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

// WriteCheckpoint writes step's checkpoint: fill writes the files into a
// temporary directory (each atomically), which then replaces
// checkpoints/step-N. With keep > 0 only the newest keep checkpoints stay.
func (r Run) WriteCheckpoint(step, keep int, fill func(tmp string) error) (string, error) {
	root := r.Root()
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("creating %s: %w", root, err)
	}
	final := filepath.Join(root, StepName(step))
	tmp, err := os.MkdirTemp(root, tmpPrefix+StepName(step)[len("step-"):]+"-")
	if err != nil {
		return "", fmt.Errorf("creating a temporary checkpoint directory in %s: %w", root, err)
	}
	defer os.RemoveAll(tmp)
	if err := fill(tmp); err != nil {
		return "", err
	}
	if err := os.RemoveAll(final); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("moving checkpoint into place: %w", err)
	}
	SyncDir(root)
	if keep > 0 {
		if err := r.Prune(keep); err != nil {
			return "", err
		}
	}
	return final, nil
}

// Prune keeps the newest keep complete checkpoints.
func (r Run) Prune(keep int) error {
	list, err := r.Checkpoints()
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

// CleanTemp removes the temporary directories a save killed mid-way
// (kill -9, power loss) left, and says so on log. Only one process trains
// in a run directory at a time, so none of them is still being written.
func (r Run) CleanTemp(log io.Writer) error {
	root := r.Root()
	entries, err := os.ReadDir(root)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("listing %s: %w", root, err)
	}
	var removed []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), tmpPrefix) {
			continue
		}
		p := filepath.Join(root, e.Name())
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("removing the unfinished checkpoint %s: %w (delete it by hand)", p, err)
		}
		removed = append(removed, e.Name())
	}
	if len(removed) > 0 {
		fmt.Fprintf(log, "removed %d unfinished checkpoint(s) left by an interrupted save in %s: %s\n", len(removed), root, strings.Join(removed, ", "))
	}
	return nil
}
