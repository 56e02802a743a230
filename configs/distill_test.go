package configs

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestDistillTopKDefault: a server teacher's top_k defaults to vLLM's default
// --max-logprobs (20), shards keep 32, in-process 0; a set top_k stays.
func TestDistillTopKDefault(t *testing.T) {
	for _, c := range []struct {
		name    string
		teacher Teacher
		topK    int
		want    int
	}{
		{"server", Teacher{URL: "http://localhost:8000/v1", Name: "m"}, 0, ServerTopK},
		{"server set", Teacher{URL: "http://localhost:8000/v1", Name: "m"}, 64, 64},
		{"shards", Teacher{Shards: "runs/teacher-logits"}, 0, 32},
		{"in-process", Teacher{Model: "/models/teacher"}, 0, 0},
	} {
		j := &Job{Distill: &Distill{Teacher: c.teacher, TopK: c.topK}}
		j.ApplyDefaults()
		if j.Distill.TopK != c.want {
			t.Errorf("%s: top_k %d, want %d", c.name, j.Distill.TopK, c.want)
		}
	}
	if ServerTopK != 20 {
		t.Fatalf("ServerTopK %d: vLLM's default --max-logprobs is 20", ServerTopK)
	}
}

// distill.cross_tokenizer: "" or uld; uld with an in-process teacher, or a
// server with teacher.tokenizer and temperature 1, never shards;
// teacher.tokenizer only there. The errors name the key.
func TestDistillCrossTokenizer(t *testing.T) {
	path := tinyJob(t, minimalJob+"distill: {teacher: {model: model}}\n")
	j, err := Load(path, []string{"distill.cross_tokenizer=uld"})
	if err != nil {
		t.Fatal(err)
	}
	if j.Distill.CrossTokenizer != "uld" {
		t.Fatalf("cross_tokenizer %q", j.Distill.CrossTokenizer)
	}
	_, err = Load(path, []string{"distill.cross_tokenizer=ulb"})
	mustContain(t, err, "distill.cross_tokenizer", `"ulb"`, "uld")
	server := []string{"distill.cross_tokenizer=uld", "distill.teacher.model=", "distill.teacher.url=http://h:8000/v1", "distill.teacher.name=m"}
	_, err = Load(path, server)
	mustContain(t, err, "distill.teacher.tokenizer: missing")
	_, err = Load(path, append(server, "distill.teacher.tokenizer=model", "distill.temperature=2"))
	mustContain(t, err, "distill.temperature", "temperature 1")
	j, err = Load(path, append(server, "distill.teacher.tokenizer=model"))
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(j.Distill.Teacher.Tokenizer) || filepath.Base(j.Distill.Teacher.Tokenizer) != "model" {
		t.Fatalf("teacher.tokenizer %q is not resolved against the job file", j.Distill.Teacher.Tokenizer)
	}
	_, err = Load(path, []string{"distill.teacher.tokenizer=model"})
	mustContain(t, err, "distill.teacher.tokenizer", "only used with cross_tokenizer: uld")
	_, err = Load(path, []string{"distill.cross_tokenizer=uld", "distill.teacher.model=", "distill.teacher.shards=s"})
	mustContain(t, err, "distill.cross_tokenizer", "shards")
}

// TestDistillOnPolicy: distill.on_policy is λ in [0, 1]; a shards teacher
// (pre-computed logits of fixed sequences) cannot score the student's
// samples and is refused with the key named; 0 stays out of the resolved job.
func TestDistillOnPolicy(t *testing.T) {
	load := func(distill string) (*Job, error) {
		return Load(tinyJob(t, minimalJob+"distill:\n"+distill), nil)
	}
	j, err := load("  teacher: {model: model}\n  on_policy: 0.5\n  loss: reverse_kl\n")
	if err != nil || j.Distill.OnPolicy != 0.5 {
		t.Fatalf("on_policy 0.5: %v %+v", err, j)
	}
	for _, bad := range []string{"-0.1", "1.5"} {
		_, err := load("  teacher: {model: model}\n  on_policy: " + bad + "\n")
		mustContain(t, err, "distill.on_policy", "[0, 1]")
	}
	if _, err = load("  teacher: {model: model}\n  on_policy: 0.5\n  cross_tokenizer: uld\n"); err != nil {
		t.Fatalf("on-policy cross-tokenizer distillation refused: %v", err)
	}
	_, err = load("  teacher: {shards: model}\n  on_policy: 1\n")
	mustContain(t, err, "distill.on_policy", "shards", "score new sequences")
	j, err = load("  teacher: {model: model}\n")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := j.YAML()
	if strings.Contains(string(b), "on_policy") {
		t.Fatalf("on_policy 0 shows in the resolved job (existing jobs' hashes would change):\n%s", b)
	}
}
