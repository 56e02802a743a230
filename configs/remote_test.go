package configs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHubRemote: model, teacher and dataset values that are not local paths go through
// Remote; local paths next to the job file win; Remote's errors name the key once.
func TestHubRemote(t *testing.T) {
	cache := t.TempDir()
	var asked []string
	Remote = func(r RemoteRef) (string, error) {
		kind, ref := r.Kind, r.Ref
		asked = append(asked, kind+" "+ref)
		switch {
		case ref == "meta-llama/Gated-8B":
			return "", errors.New("gated: accept the license")
		case !strings.Contains(ref, "/"):
			return "", nil
		}
		dir := filepath.Join(cache, strings.ReplaceAll(ref, "/", "--"))
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "config.json"), []byte("{}"), 0o644)
		os.WriteFile(filepath.Join(dir, "train.jsonl"), []byte(`{"text":"x"}`+"\n"), 0o644)
		return dir, nil
	}
	t.Cleanup(func() { Remote = nil })

	path := tinyJob(t, `
model: meta-llama/Tiny-1B@main
data:
  datasets: [{path: org/chat-data}, {path: train.jsonl}]
  seq_len: 64
distill:
  teacher: {model: meta-llama/Big-70B}
`)
	j, err := Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(cache, "meta-llama--Tiny-1B@main"); j.Model != want {
		t.Errorf("model = %s, want %s", j.Model, want)
	}
	if want := filepath.Join(cache, "meta-llama--Big-70B"); j.Distill.Teacher.Model != want {
		t.Errorf("teacher = %s, want %s", j.Distill.Teacher.Model, want)
	}
	if d := j.Data.Datasets[0]; d.Path != filepath.Join(cache, "org--chat-data") || d.Name != "org/chat-data" {
		t.Errorf("dataset 0 = %+v", d)
	}
	if want := "model meta-llama/Tiny-1B@main,model meta-llama/Big-70B,dataset org/chat-data"; strings.Join(asked, ",") != want {
		t.Errorf("Remote asked %q, want %q (train.jsonl is local)", asked, want)
	}

	// Errors: named by key, no second "does not exist" for the same key.
	path = tinyJob(t, `
model: meta-llama/Gated-8B
data:
  datasets: [{path: missing.jsonl}]
  seq_len: 64
`)
	_, err = Load(path, nil)
	mustContain(t, err, "model: meta-llama/Gated-8B: gated: accept the license", "data.datasets[0].path")
	if strings.Contains(err.Error(), "Gated-8B does not exist") {
		t.Errorf("the model's problem is reported twice: %v", err)
	}

	// A job with another problem downloads nothing.
	asked = nil
	path = tinyJob(t, `
model: meta-llama/Tiny-1B
method: lora-typo
data:
  datasets: [{path: org/chat-data}]
  seq_len: 64
`)
	_, err = Load(path, nil)
	mustContain(t, err, "method")
	if len(asked) != 0 || strings.Contains(err.Error(), "does not exist") {
		t.Errorf("a job with a problem: Remote asked %q; %v", asked, err)
	}

	// A local directory of that name wins.
	asked = nil
	path = tinyJob(t, minimalJob)
	if _, err := Load(path, nil); err != nil || len(asked) != 0 {
		t.Errorf("local model: %v, Remote asked %q", err, asked)
	}
}
