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
	// MetadataOnly: only the model's configuration and tokenizer files are
	// needed (distill.teacher.tokenizer), never its weights.
	MetadataOnly bool
}

// Remote, when set, fetches what a job names by Hugging Face Hub repository id instead of a
// local path (in model:, distill.teacher.model:, distill.teacher.tokenizer: or a dataset's path:) and returns its local
// path: a model's directory, or a dataset's directory or glob of the split's files. It
// returns ("", nil) for a value that is not a repository id, which then fails the usual
// "does not exist" check. Load calls it only for a value that is not an existing path
// (relative to the job file), only once every other check of the job has passed (so a typo
// costs no download), and never when SkipFileChecks is set.
//
// cmd/llamatune sets it to the hub package (the huggingface_hub cache, HF_TOKEN,
// HF_HUB_OFFLINE), so that configs itself reaches no network.
var Remote func(r RemoteRef) (path string, err error)

// pendingRef is a job value that is no local path and may name a Hub repository.
type pendingRef struct {
	key string // its key path, as problems name it
	ref RemoteRef
	p   *string // the field
	ds  *Dataset
}

// remoteRefs are the values Load hands to Remote once every other check has passed.
type remoteRefs struct {
	j    *Job
	refs []pendingRef
}

// pendingRemote lists the model / teacher model / dataset paths that are not local paths
// (relative to the job file). Call it before resolvePaths.
func (j *Job) pendingRemote() *remoteRefs {
	r := &remoteRefs{j: j}
	if Remote == nil || SkipFileChecks {
		return r
	}
	add := func(key, kind string, p *string, ds *Dataset) {
		ref := *p
		if ref == "" || filepath.IsAbs(ref) || strings.HasPrefix(ref, "~") || strings.HasPrefix(ref, ".") || strings.ContainsAny(ref, "*?[") {
			return
		}
		if _, err := os.Lstat(filepath.Join(j.Dir, ref)); err == nil {
			return // a local path next to the job file wins
		}
		rr := RemoteRef{Kind: kind, Ref: ref}
		if ds != nil {
			rr.Split = ds.Split
		}
		r.refs = append(r.refs, pendingRef{key: key, ref: rr, p: p, ds: ds})
	}
	add("model", "model", &j.Model, nil)
	if d := j.Distill; d != nil {
		add("distill.teacher.model", "model", &d.Teacher.Model, nil)
		add("distill.teacher.tokenizer", "model", &d.Teacher.Tokenizer, nil)
		if n := len(r.refs); n > 0 && r.refs[n-1].key == "distill.teacher.tokenizer" {
			r.refs[n-1].ref.MetadataOnly = true
		}
	}
	datasets := func(key string, ds []Dataset) {
		for i := range ds {
			add(fmt.Sprintf("%s[%d].path", key, i), "dataset", &ds[i].Path, &ds[i])
		}
	}
	datasets("data.datasets", j.Data.Datasets)
	if j.Data.Eval != nil {
		datasets("data.eval.datasets", j.Data.Eval.Datasets)
	}
	return r
}

// restore puts back the values resolvePaths made relative to the job file: they are
// fetched (or checked as paths) later.
func (r *remoteRefs) restore() {
	for _, p := range r.refs {
		*p.p = p.ref.Ref
	}
}

// covers reports whether a problem is Validate's "does not exist" about a pending value.
func (r *remoteRefs) covers(err error) bool {
	msg := err.Error()
	for _, p := range r.refs {
		if strings.HasPrefix(msg, p.key+": ") && strings.Contains(msg, " does not exist") {
			return true
		}
	}
	return false
}

// fetch hands each pending value to Remote and puts the local path it returns in its
// place (a value that is no repository id becomes a path relative to the job file again),
// then checks those paths as Validate does. It returns the problems, each naming its key.
func (r *remoteRefs) fetch() []error {
	if len(r.refs) == 0 {
		return nil
	}
	var errs []error
	keys := map[string]bool{}
	for _, p := range r.refs {
		dir, err := Remote(p.ref)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %s: %w", p.key, p.ref.Ref, err))
			continue
		case dir == "":
			*p.p = filepath.Join(r.j.Dir, p.ref.Ref)
		default:
			*p.p = dir
			if p.ds != nil && p.ds.Name == "" {
				p.ds.Name = p.ref.Ref
			}
		}
		keys[p.key] = true
	}
	for _, e := range r.j.checkFiles() {
		if k, _, ok := strings.Cut(e.Error(), ": "); ok && keys[k] {
			errs = append(errs, e)
		}
	}
	return errs
}
