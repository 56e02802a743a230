package hub

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSplitPath(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []string
		split string
		want  string // relative to the snapshot; "." = itself; "error: ..." = an error containing it
	}{
		{"no splits", []string{"README.md", "chat.jsonl", "more/part.parquet"}, "", "."},
		{"no splits, test asked", []string{"chat.jsonl"}, "test", "error: names no splits"},
		{"parquet convention", []string{"README.md", "data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet", "data/test-00000-of-00001.parquet"}, "", "data/train-0000*"},
		{"parquet test", []string{"data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet", "data/test-00000-of-00001.parquet"}, "test", "data/test-00000-of-00001.parquet*"},
		{"split folders", []string{"train/a.jsonl", "train/b.jsonl", "validation/a.jsonl"}, "train", "train"},
		{"top-level files", []string{"train.jsonl", "dev.jsonl"}, "validation", "dev.jsonl*"},
		{"train and training", []string{"train.jsonl", "training_extra.jsonl", "test.jsonl"}, "", "train*"},
		{"missing split", []string{"data/train-0.parquet", "data/test-0.parquet"}, "validation", "error: has no \"validation\" split (it has: test, train)"},
		{"save_to_disk", []string{"dataset_dict.json", "train/data-00000-of-00001.arrow", "test/data-00000-of-00001.arrow"}, "test", "."},
		{"not a keyword inside a word", []string{"contest.jsonl", "attrain.jsonl"}, "", "."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tc.files {
				p := filepath.Join(dir, filepath.FromSlash(f))
				os.MkdirAll(filepath.Dir(p), 0o755)
				os.WriteFile(p, []byte("{}"), 0o644)
			}
			got, err := SplitPath(dir, tc.split)
			if strings.HasPrefix(tc.want, "error: ") {
				if err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(tc.want, "error: ")) {
					t.Fatalf("SplitPath = %q, %v; want an error with %q", got, err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(dir, filepath.FromSlash(tc.want)); got != want {
				t.Fatalf("SplitPath = %s, want %s", got, want)
			}
		})
	}
}
