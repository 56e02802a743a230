package hub

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// splitKeywords are the names the datasets library recognizes for each split in file and
// folder names (datasets/data_files.py), in the order it tries them.
var splitKeywords = []struct {
	split    string
	keywords []string
}{
	{"train", []string{"train", "training"}},
	{"validation", []string{"validation", "valid", "dev", "val"}},
	{"test", []string{"test", "testing", "eval", "evaluation"}},
}

// dataExts are the data files a dataset snapshot is read from.
var dataExts = []string{".parquet", ".arrow", ".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz"}

func isSep(b byte) bool { return strings.IndexByte("-._ 0123456789", b) >= 0 }

// hasKeyword reports whether a path component names kw as the datasets library's
// patterns do: the whole name, or kw between separators (-._ space digits) or the ends.
func hasKeyword(name, kw string) bool {
	for i := 0; ; {
		j := strings.Index(name[i:], kw)
		if j < 0 {
			return false
		}
		j += i
		end := j + len(kw)
		if (j == 0 || isSep(name[j-1])) && (end == len(name) || isSep(name[end])) {
			return true
		}
		i = j + 1
	}
}

// splitOf is the split a repository file belongs to by its name ("" for none).
func splitOf(rel string) string {
	parts := strings.Split(rel, "/")
	for _, s := range splitKeywords {
		for _, kw := range s.keywords {
			for _, p := range parts {
				if hasKeyword(strings.ToLower(p), kw) {
					return s.split
				}
			}
		}
	}
	return ""
}

// SplitPath is the path of the files of one split (default train) in a dataset snapshot,
// for a job's path:. A save_to_disk layout (dataset_dict.json, state.json) and a dataset
// whose files name no split give dir itself (the data reader handles the former's splits;
// the latter is all train). Otherwise, following the datasets library's naming conventions
// (data/train-00000-of-00001.parquet, test.jsonl, train/...), it is the one folder or glob
// that names exactly that split's files; an error lists the splits when there is none.
func SplitPath(dir, split string) (string, error) {
	if split == "" {
		split = "train"
	}
	for _, f := range []string{"dataset_dict.json", "state.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return dir, nil
		}
	}
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), ".") && p != dir {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		lower := strings.ToLower(d.Name())
		for _, e := range dataExts {
			if strings.HasSuffix(lower, e) {
				rel, _ := filepath.Rel(dir, p)
				files = append(files, filepath.ToSlash(rel))
				break
			}
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(files)
	found := map[string][]string{}
	for _, f := range files {
		if s := splitOf(f); s != "" {
			found[s] = append(found[s], f)
		}
	}
	if len(found) == 0 {
		if split == "train" {
			return dir, nil
		}
		return "", fmt.Errorf("dataset %s names no splits in its files; split %q does not exist (leave split: unset for all of it)", dir, split)
	}
	want := found[split]
	if len(want) == 0 {
		var names []string
		for s := range found {
			names = append(names, s)
		}
		sort.Strings(names)
		return "", fmt.Errorf("dataset %s has no %q split (it has: %s); set the dataset's split:", dir, split, strings.Join(names, ", "))
	}
	for _, cand := range splitCandidates(want) {
		if matchesExactly(cand, files, want) {
			return filepath.Join(dir, filepath.FromSlash(cand)), nil
		}
	}
	return "", fmt.Errorf("dataset %s: the files of split %q (%s) cannot be named by one folder or glob; download it with llamatune download and list them in path: globs", dir, split, sample(want))
}

// splitCandidates are the folders and globs that might name exactly the files want: their
// common folder, and that folder with their common name prefix and a '*'.
func splitCandidates(want []string) []string {
	dir := path.Dir(want[0])
	for _, f := range want[1:] {
		for fd := path.Dir(f); dir != "." && fd != dir && !strings.HasPrefix(fd, dir+"/"); {
			dir = path.Dir(dir)
		}
	}
	rel := func(f string) string {
		if dir == "." {
			return f
		}
		return f[len(dir)+1:]
	}
	prefix := rel(want[0])
	for _, f := range want[1:] {
		for !strings.HasPrefix(rel(f), prefix) {
			prefix = prefix[:len(prefix)-1]
		}
	}
	var out []string
	if dir != "." {
		out = append(out, dir)
	}
	if prefix != "" && !strings.ContainsAny(prefix, "*?[\\/") {
		out = append(out, path.Join(dir, prefix)+"*")
	}
	return out
}

// matchesExactly reports whether a folder or glob (relative, '/'-separated) covers exactly
// the files want among files.
func matchesExactly(cand string, files, want []string) bool {
	in := map[string]bool{}
	for _, w := range want {
		in[w] = true
	}
	n := 0
	for _, f := range files {
		var hit bool
		if strings.HasSuffix(cand, "*") {
			hit, _ = path.Match(cand, f)
		} else {
			hit = strings.HasPrefix(f, cand+"/")
		}
		if hit != in[f] {
			return false
		}
		if hit {
			n++
		}
	}
	return n == len(want)
}
