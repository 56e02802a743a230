package distill_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/distill"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
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
	for _, want := range []string{"big-llama3", "small-llama2", "128256", "32000", hc, ha, "same tokenizer", "distill.cross_tokenizer: uld"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if _, err := distill.VocabHash(t.TempDir()); err == nil {
		t.Fatal("no tokenizer: want an error")
	}
}

// OpenTeacher with another tokenizer: refused (naming cross_tokenizer)
// without distill.cross_tokenizer, opened with uld (a note says it aligns),
// and uld with a server teacher whose tokenizer is unknown is refused.
func TestOpenTeacherCrossTokenizer(t *testing.T) {
	teacher, studentDir := tinyModel(t, "llama3", 0), tinyModel(t, "llama2", 0)
	hs, err := distill.VocabHash(studentDir)
	if err != nil {
		t.Fatal(err)
	}
	o := distill.OpenOptions{Model: teacher, Backend: cpu.New(), Weights: kernels.F32,
		Student: distill.Info{Name: studentDir, VocabSize: 32000, VocabHash: hs}}
	if _, err := distill.OpenTeacher(o); err == nil || !strings.Contains(err.Error(), "cross_tokenizer: uld") {
		t.Fatalf("llama3 teacher for a llama2 student without cross_tokenizer: %v", err)
	}
	var log bytes.Buffer
	o.CrossTokenizer, o.Log = "uld", &log
	tt, err := distill.OpenTeacher(o)
	if err != nil {
		t.Fatal(err)
	}
	tt.Close()
	if !strings.Contains(log.String(), "different tokenizers") {
		t.Fatalf("no note: %q", log.String())
	}
	o.Model, o.Server = "", distill.ServerOptions{BaseURL: "http://localhost:1/v1", Model: "m"}
	if _, err := distill.OpenTeacher(o); err == nil || !strings.Contains(err.Error(), "distill.teacher.tokenizer") {
		t.Fatalf("uld with a server teacher of unknown tokenizer: %v", err)
	}
	o.CrossTokenizer = "dsk"
	if _, err := distill.OpenTeacher(o); err == nil || !strings.Contains(err.Error(), "distill.cross_tokenizer") {
		t.Fatalf("unknown cross_tokenizer: %v", err)
	}
}
