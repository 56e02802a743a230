package main

import (
	"bytes"
	"context"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/distill/fakeserver"
	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/model/llama"
	"github.com/llamatune/llamatune/train"
)

// The distill command with each teacher source: in-process (full
// distribution), offline shards written by teacher-logits, and an
// OpenAI-compatible server (the fake vLLM).
func TestDistillTeachers(t *testing.T) {
	dir := t.TempDir()
	teacherDir := filepath.Join(dir, "teacher")
	if _, err := randmodel.WriteTinyModel(teacherDir, randmodel.TinyOptions{Tokenizer: "llama2", Layers: 2, Hidden: 64, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := randmodel.WriteTinyModel(filepath.Join(dir, "student"), randmodel.TinyOptions{Tokenizer: "llama2", Layers: 1, Hidden: 32, Seed: 2}); err != nil {
		t.Fatal(err)
	}
	writeTextRows(t, filepath.Join(dir, "data.jsonl"), 6000)
	job, err := os.ReadFile("../../configs/examples/distill_tiny.yaml")
	if err != nil {
		t.Fatal(err)
	}
	jobPath := filepath.Join(dir, "job.yaml")
	os.WriteFile(jobPath, job, 0o644)
	run := func(name string, sets ...string) {
		t.Helper()
		sets = append(sets, "output_dir="+filepath.Join(dir, "run-"+name))
		j, err := configs.Load(jobPath, sets)
		if err != nil {
			t.Fatal(err)
		}
		var log bytes.Buffer
		res, err := runTrainWith(context.Background(), j, "", &log, runHooks{setup: distillSetup})
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, log.String())
		}
		if res.Steps != 3 || len(res.Losses) != 3 {
			t.Fatalf("%s: %d steps, losses %v", name, res.Steps, res.Losses)
		}
		for _, l := range res.Losses {
			if math.IsNaN(l) || l <= 0 {
				t.Fatalf("%s: losses %v", name, res.Losses)
			}
		}
		if !strings.Contains(log.String(), "distilling from") {
			t.Fatalf("%s: %s", name, log.String())
		}
		checkLossParts(t, name, j, log.String())
	}
	run("in-process dense", "distill.top_k=0")
	run("in-process top-k", "distill.top_k=8", "distill.loss=jsd")

	shards := filepath.Join(dir, "shards")
	var out bytes.Buffer
	if err := runTeacherLogits(context.Background(), jobPath, nil, teacherLogitsFlags{out: shards, k: 8}, &out, &out); err != nil {
		t.Fatalf("teacher-logits: %v\n%s", err, out.String())
	}
	run("shards", "distill.teacher.model=", "distill.teacher.shards="+shards, "distill.top_k=8", "distill.loss=reverse_kl")

	tm, err := llama.Load(teacherDir, cpu.New(), kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	srv := fakeserver.New(fakeserver.Options{Model: tm, Name: "tiny-teacher",
		Faults: []fakeserver.Fault{{Kind: fakeserver.Status5xx, OnRequest: 2}, {Kind: fakeserver.Malformed, OnRequest: 5}}})
	defer srv.Close()
	run("server", "distill.teacher.model=", "distill.teacher.url="+srv.URL(), "distill.teacher.name=tiny-teacher",
		"distill.top_k=8", "distill.teacher.retries=3")
}

// checkLossParts: every metrics.jsonl line of a distillation run carries the
// loss's parts, kd and ce, which make up the total as the job weighs them,
// and the progress lines show them.
func checkLossParts(t *testing.T, name string, j *configs.Job, log string) {
	t.Helper()
	ms, err := train.ReadMetrics(j.OutputDir)
	if err != nil {
		t.Fatal(err)
	}
	d := j.Distill
	w, T := d.KDWeight, d.Temperature
	for _, m := range ms {
		if m.Tokens == 0 {
			continue // an evaluation's line
		}
		kd, okKD := m.Parts["kd"]
		ce, okCE := m.Parts["ce"]
		if !okKD || !okCE || len(m.Parts) != 2 {
			t.Fatalf("%s: step %d: loss_parts %v, want kd and ce", name, m.Step, m.Parts)
		}
		if want := w*T*T*kd + (1-w)*ce; math.Abs(m.Loss-want) > 1e-5*math.Max(1, want) {
			t.Fatalf("%s: step %d: loss %v but %g·T²·kd + %g·ce = %v (kd %v ce %v)", name, m.Step, m.Loss, w, 1-w, want, kd, ce)
		}
	}
	if !strings.Contains(log, "(ce ") || !strings.Contains(log, " kd ") {
		t.Fatalf("%s: progress lines lack the loss parts:\n%s", name, log)
	}
}

// The cross-tokenizer example job (configs/examples/distill_cross_tokenizer_tiny.yaml):
// a Llama 3 teacher in-process and a Llama 2 student. It trains with the
// ULD loss, whose parts (uld, ce) make up the total as kd_weight weighs
// them, and so does the same teacher behind an OpenAI-compatible server
// (the fake vLLM) with distill.teacher.tokenizer; teacher-logits refuses the
// job (shards are over the student's ids); the same job without
// cross_tokenizer is refused with the advice to set it.
func TestDistillCrossTokenizer(t *testing.T) {
	dir := t.TempDir()
	teacherDir := filepath.Join(dir, "teacher")
	if _, err := randmodel.WriteTinyModel(teacherDir, randmodel.TinyOptions{Tokenizer: "llama3", Layers: 2, Hidden: 64, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := randmodel.WriteTinyModel(filepath.Join(dir, "student"), randmodel.TinyOptions{Tokenizer: "llama2", Layers: 1, Hidden: 32, Seed: 2}); err != nil {
		t.Fatal(err)
	}
	writeTextRows(t, filepath.Join(dir, "data.jsonl"), 6000)
	job, err := os.ReadFile("../../configs/examples/distill_cross_tokenizer_tiny.yaml")
	if err != nil {
		t.Fatal(err)
	}
	jobPath := filepath.Join(dir, "job.yaml")
	os.WriteFile(jobPath, job, 0o644)
	run := func(name string, sets ...string) {
		t.Helper()
		j, err := configs.Load(jobPath, append(sets, "output_dir="+filepath.Join(dir, "run-"+name)))
		if err != nil {
			t.Fatal(err)
		}
		var log bytes.Buffer
		res, err := runTrainWith(context.Background(), j, "", &log, runHooks{setup: distillSetup})
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, log.String())
		}
		if res.Steps != 3 || len(res.Losses) != 3 {
			t.Fatalf("%s: %d steps, losses %v", name, res.Steps, res.Losses)
		}
		if !strings.Contains(log.String(), "across tokenizers") || !strings.Contains(log.String(), " uld ") ||
			!strings.Contains(log.String(), "paired with a teacher position") {
			t.Fatalf("%s: log:\n%s", name, log.String())
		}
		checkULDParts(t, name, j)
	}
	run("in-process")

	// The same teacher behind the fake vLLM, its tokenizer named by teacher.tokenizer.
	tm, err := llama.Load(teacherDir, cpu.New(), kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	srv := fakeserver.New(fakeserver.Options{Model: tm, Name: "tiny-llama3"})
	defer srv.Close()
	run("server", "distill.teacher.model=", "distill.teacher.url="+srv.URL(), "distill.teacher.name=tiny-llama3",
		"distill.teacher.tokenizer=teacher", "distill.top_k=8")

	var out bytes.Buffer
	err = runTeacherLogits(context.Background(), jobPath, nil, teacherLogitsFlags{out: filepath.Join(dir, "shards"), k: 8}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "distill.cross_tokenizer") {
		t.Fatalf("teacher-logits for a cross-tokenizer job: %v", err)
	}
	j, err := configs.Load(jobPath, []string{"output_dir=" + filepath.Join(dir, "run-same"), "distill.cross_tokenizer="})
	if err != nil {
		t.Fatal(err)
	}
	_, err = runTrainWith(context.Background(), j, "", io.Discard, runHooks{setup: distillSetup})
	if err == nil || !strings.Contains(err.Error(), "distill.cross_tokenizer: uld") {
		t.Fatalf("a llama3 teacher for a llama2 student without cross_tokenizer: %v", err)
	}
}

// checkULDParts: every training line of metrics.jsonl carries the parts
// uld and ce, and the loss is kd_weight·uld + (1 − kd_weight)·ce.
func checkULDParts(t *testing.T, name string, j *configs.Job) {
	t.Helper()
	ms, err := train.ReadMetrics(j.OutputDir)
	if err != nil {
		t.Fatal(err)
	}
	w := j.Distill.KDWeight
	for _, m := range ms {
		if m.Tokens == 0 {
			continue // an evaluation's line
		}
		uld, ce := m.Parts["uld"], m.Parts["ce"]
		if len(m.Parts) != 2 || uld <= 0 || ce <= 0 || math.IsNaN(m.Loss) {
			t.Fatalf("%s: step %d: loss %v, parts %v", name, m.Step, m.Loss, m.Parts)
		}
		if want := w*uld + (1-w)*ce; math.Abs(m.Loss-want) > 1e-5*math.Max(1, want) {
			t.Fatalf("%s: step %d: loss %v but %g·uld + %g·ce = %v", name, m.Step, m.Loss, w, 1-w, want)
		}
	}
}
