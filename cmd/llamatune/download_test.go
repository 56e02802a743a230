package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/hub/hubtest"
	"github.com/llamatune/llamatune/internal/randmodel"
)

// hubEnv points the hub package at a fake Hub and a fresh HF_HOME; it returns HF_HOME.
func hubEnv(t *testing.T, f *hubtest.Server) string {
	home := t.TempDir()
	for k, v := range map[string]string{"HF_ENDPOINT": f.Hub.URL, "HF_HOME": home, "HF_TOKEN": f.Token,
		"HF_HUB_CACHE": "", "HF_HUB_OFFLINE": "", "TRANSFORMERS_OFFLINE": "", "HUGGINGFACE_HUB_CACHE": ""} {
		t.Setenv(k, v)
	}
	return home
}

// hubRepos serves a tiny model (safetensors as LFS) and a JSONL dataset.
func hubRepos(t *testing.T) (*hubtest.Server, *hubtest.Repo) {
	src := t.TempDir()
	if _, err := randmodel.WriteTinyModel(src, randmodel.TinyOptions{Tokenizer: "llama2", Layers: 1, Hidden: 32, Shards: 1}); err != nil {
		t.Fatal(err)
	}
	f := hubtest.New(t)
	model := &hubtest.Repo{ID: "org/tiny", Files: map[string][]byte{}, LFS: map[string]bool{}}
	ents, _ := os.ReadDir(src)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		model.Files[e.Name()] = b
		model.LFS[e.Name()] = strings.HasSuffix(e.Name(), ".safetensors") || e.Name() == "tokenizer.model"
	}
	model.Files["original/consolidated.00.pth"] = []byte("not fetched by default")
	f.Add(model)
	f.Add(&hubtest.Repo{Type: "dataset", ID: "org/chat", Files: map[string][]byte{
		"README.md":                       []byte("# chat"),
		"data/train-00000-of-00001.jsonl": []byte(`{"text": "hello world"}` + "\n" + `{"text": "good morning"}` + "\n"),
		"data/test-00000-of-00001.jsonl":  []byte(`{"text": "held out"}` + "\n"),
	}})
	return f, model
}

func TestDownloadCommand(t *testing.T) {
	f, model := hubRepos(t)
	home := hubEnv(t, f)
	out, err := runCLI(t, "download", "org/tiny")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	snap := filepath.Join(home, "hub", "models--org--tiny", "snapshots", model.Commit)
	if lines := strings.Split(strings.TrimSpace(out), "\n"); lines[len(lines)-1] != snap {
		t.Fatalf("download printed %q, want the snapshot %s last", out, snap)
	}
	if l, err := os.Readlink(filepath.Join(snap, "model.safetensors")); err != nil || l != "../../blobs/"+hubtest.SHA256Hex(model.Files["model.safetensors"]) {
		t.Errorf("model.safetensors -> %q (%v)", l, err)
	}
	if _, err := os.Lstat(filepath.Join(snap, "original")); err == nil {
		t.Error("original/ was fetched without --include")
	}
	out, err = runCLI(t, "download", "org/chat", "--repo-type", "dataset")
	if err != nil || !strings.Contains(out, filepath.Join(home, "hub", "datasets--org--chat", "snapshots")) {
		t.Fatalf("dataset: %v\n%s", err, out)
	}
	out, err = runCLI(t, "tokenize", "--model", "org/tiny", "--text", "hello")
	if err != nil || len(strings.Fields(out)) == 0 {
		t.Errorf("tokenize --model org/tiny: %v\n%s", err, out)
	}
	_, err = runCLI(t, "download", "org/nope", "--repo-type", "model")
	if err == nil || !strings.Contains(err.Error(), "model org/nope not found") {
		t.Errorf("missing repo: %v", err)
	}
	_, err = runCLI(t, "download", "org/tiny@v1", "--revision", "v2")
	if err == nil || !strings.Contains(err.Error(), "disagree") {
		t.Errorf("two revisions: %v", err)
	}
}

// A job naming a model and a dataset by repository id: validate fetches the model's config
// and tokenizer only, Load (train, distill, eval) the weights too, and offline the cache
// answers with no request.
func TestHubJobResolution(t *testing.T) {
	f, model := hubRepos(t)
	home := hubEnv(t, f)
	dir := t.TempDir()
	job := filepath.Join(dir, "job.yaml")
	os.WriteFile(job, []byte("model: org/tiny\ndata:\n  datasets: [{path: org/chat}]\n  seq_len: 32\nmax_steps: 1\n"), 0o644)
	snap := filepath.Join(home, "hub", "models--org--tiny", "snapshots", model.Commit)

	out, err := runCLI(t, "validate", job)
	if err != nil {
		t.Fatalf("validate: %v\n%s", err, out)
	}
	if !strings.Contains(out, "model: "+snap) {
		t.Errorf("validate does not show the snapshot:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(snap, "config.json")); err != nil {
		t.Errorf("validate did not fetch config.json: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(snap, "model.safetensors")); err == nil {
		t.Error("validate fetched the weights")
	}

	j, err := configs.Load(job, nil)
	if err != nil {
		t.Fatal(err)
	}
	if j.Model != snap {
		t.Errorf("model = %s, want %s", j.Model, snap)
	}
	dsnap := filepath.Join(home, "hub", "datasets--org--chat", "snapshots", hubtest.GitSHA1([]byte("org/chat")))
	if d := j.Data.Datasets[0]; d.Name != "org/chat" || d.Path != filepath.Join(dsnap, "data", "train-00000-of-00001.jsonl*") {
		t.Errorf("dataset = %+v, want the train split of %s", d, dsnap)
	}
	if _, err := os.Stat(filepath.Join(snap, "model.safetensors")); err != nil {
		t.Errorf("Load did not fetch the weights: %v", err)
	}

	// The data commands: the tokenizer from the snapshot, the train split only.
	out, err = runCLI(t, "data", "inspect", job, "-n", "5", "--color", "never")
	if err != nil || !strings.Contains(out, "hello world") || strings.Contains(out, "held out") {
		t.Errorf("data inspect: %v\n%s", err, out)
	}

	// Offline: the same job resolves from the cache, no request.
	t.Setenv("HF_HUB_OFFLINE", "1")
	n := f.Requests()
	if j, err := configs.Load(job, nil); err != nil || j.Model != snap {
		t.Fatalf("offline Load: %v", err)
	}
	if got := f.Requests() - n; got != 0 {
		t.Errorf("offline Load sent %d requests", got)
	}
	// Offline, not cached: a clear problem under the key.
	os.WriteFile(job, []byte("model: org/other\ndata:\n  datasets: [{path: org/chat}]\n  seq_len: 32\n"), 0o644)
	_, err = configs.Load(job, nil)
	if err == nil || !strings.Contains(err.Error(), "model: org/other:") || !strings.Contains(err.Error(), "HF_HUB_OFFLINE") {
		t.Errorf("offline, not cached: %v", err)
	}
}
