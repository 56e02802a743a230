package configs

import "testing"

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
