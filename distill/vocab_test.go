package distill_test

import (
	"strings"
	"testing"

	"github.com/llamatune/llamatune/distill"
)

func TestVocabHash(t *testing.T) {
	a, b := tinyModel(t, "llama2", 0), tinyModel(t, "llama2", 1)
	c := tinyModel(t, "llama3", 0)
	ha, err := distill.VocabHash(a)
	if err != nil {
		t.Fatal(err)
	}
	hb, _ := distill.VocabHash(b)
	hc, err := distill.VocabHash(c)
	if err != nil {
		t.Fatal(err)
	}
	if ha != hb {
		t.Fatalf("same tokenizer, different weights: hashes %s vs %s", ha, hb)
	}
	if ha == hc {
		t.Fatalf("llama2 and llama3 vocabularies hash equal: %s", ha)
	}
	if !strings.HasPrefix(ha, "sha256:") {
		t.Fatalf("hash %q", ha)
	}
	if err := distill.CheckVocab(distill.Info{Name: "t", VocabSize: 32000, VocabHash: ha}, distill.Info{Name: "s", VocabSize: 32000, VocabHash: hb}); err != nil {
		t.Fatal(err)
	}
	err = distill.CheckVocab(distill.Info{Name: "big-llama3", VocabSize: 128256, VocabHash: hc}, distill.Info{Name: "small-llama2", VocabSize: 32000, VocabHash: ha})
	if err == nil {
		t.Fatal("mismatch accepted")
	}
	for _, want := range []string{"big-llama3", "small-llama2", "128256", "32000", hc, ha, "same tokenizer"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if _, err := distill.VocabHash(t.TempDir()); err == nil {
		t.Fatal("no tokenizer: want an error")
	}
}
