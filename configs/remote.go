package configs

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// RemoteRef is a job value that may name a Hugging Face Hub repository.
type RemoteRef struct {
	Kind  string // "model" or "dataset"
	Ref   string // the value: "org/name" or "org/name@revision"
	Split string // a dataset's split: ("" = train)
}

// Remote, when set, fetches what a job names by Hugging Face Hub repository id instead of a
// local path (in model:, distill.teacher.model: or a dataset's path:) and returns its local
// path: a model's directory, or a dataset's directory or glob of the split's files. It
// returns ("", nil) for a value that is not a repository id, which then fails the usual
// "does not exist" check. Load calls it only for a value that is not an existing path
// (relative to the job file), and never when SkipFileChecks is set.
//
// cmd/llamatune sets it to the hub package (the huggingface_hub cache, HF_TOKEN,
// HF_HUB_OFFLINE), so that configs itself reaches no network.
var Remote func(r RemoteRef) (path string, err error)

// fetchRemote replaces each model / teacher model / dataset path that names a Hub
// repository by its local snapshot directory. It returns the problems and the key paths
// they are about (so that Validate's "does not exist" is not repeated for them).
func (j *Job) fetchRemote() (errs []error, bad []string) {
	if Remote == nil || SkipFileChecks {
		return nil, nil
	}
	fetch := func(key, kind, split string, p *string) bool {
		ref := *p
		if ref == "" || filepath.IsAbs(ref) || strings.HasPrefix(ref, "~") || strings.HasPrefix(ref, ".") {
			return false
		}
		if _, err := os.Lstat(filepath.Join(j.Dir, ref)); err == nil {
			return false // a local path next to the job file wins
		}
		dir, err := Remote(RemoteRef{Kind: kind, Ref: ref, Split: split})
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %s: %w", key, ref, err))
			bad = append(bad, key)
		case dir != "":
			*p = dir
			return true
		}
		return false
	}
	fetch("model", "model", "", &j.Model)
	if d := j.Distill; d != nil {
		fetch("distill.teacher.model", "model", "", &d.Teacher.Model)
	}
	datasets := func(key string, ds []Dataset) {
		for i := range ds {
			ref := ds[i].Path
			if fetch(fmt.Sprintf("%s[%d].path", key, i), "dataset", ds[i].Split, &ds[i].Path) && ds[i].Name == "" {
				ds[i].Name = ref
			}
		}
	}
	datasets("data.datasets", j.Data.Datasets)
	if j.Data.Eval != nil {
		datasets("data.eval.datasets", j.Data.Eval.Datasets)
	}
	return errs, bad
}
