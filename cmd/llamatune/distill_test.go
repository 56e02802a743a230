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
	dir, jobPath := distillTinyDir(t, "distill_tiny.yaml", "llama2")
	teacherDir := filepath.Join(dir, "teacher")
	run := func(name string, sets ...string) {
		t.Helper()
		j, log := runDistillJob(t, dir, jobPath, name, sets...)
		if !strings.Contains(log, "distilling from") {
			t.Fatalf("%s: %s", name, log)
		}
		checkLossParts(t, name, j, log)
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
		if m.OnPolicyShare != nil && j.Distill.OnPolicy == 0 {
			t.Fatalf("%s: step %d logs on_policy_share %v without on_policy", name, m.Step, *m.OnPolicyShare)
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

// distillTinyDir copies the example job name into a temp dir beside a tiny
// teacher (2 layers, hidden 64, teacherTok's vocabulary), a tiny student
// (1 layer, hidden 32, Llama 2 vocabulary) and data.jsonl; it returns the
// dir and the job's path.
func distillTinyDir(t *testing.T, name, teacherTok string) (dir, jobPath string) {
	t.Helper()
	dir = t.TempDir()
	if _, err := randmodel.WriteTinyModel(filepath.Join(dir, "teacher"), randmodel.TinyOptions{Tokenizer: teacherTok, Layers: 2, Hidden: 64, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := randmodel.WriteTinyModel(filepath.Join(dir, "student"), randmodel.TinyOptions{Tokenizer: "llama2", Layers: 1, Hidden: 32, Seed: 2}); err != nil {
		t.Fatal(err)
	}
	writeTextRows(t, filepath.Join(dir, "data.jsonl"), 6000)
	job, err := os.ReadFile("../../configs/examples/" + name)
	if err != nil {
		t.Fatal(err)
	}
	jobPath = filepath.Join(dir, "job.yaml")
	if err := os.WriteFile(jobPath, job, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, jobPath
}

// runDistillJob runs the job at jobPath with sets (output in dir/run-name)
// and checks it made 3 steps of finite positive loss; it returns the job
// and the run's log.
func runDistillJob(t *testing.T, dir, jobPath, name string, sets ...string) (*configs.Job, string) {
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
	for _, l := range res.Losses {
		if math.IsNaN(l) || l <= 0 {
			t.Fatalf("%s: losses %v", name, res.Losses)
		}
	}
	return j, log.String()
}

// The on-policy example job (distill_on_policy_tiny.yaml, λ 0.5, in-process
// teacher) trains with LoRA and full fine-tuning, logs on_policy_share in
// metrics.jsonl and the progress lines, and a run stopped after step 2 and
// resumed makes bit-identical losses and on-policy choices to one that ran
// straight through.
func TestDistillOnPolicy(t *testing.T) {
	dir, jobPath := distillTinyDir(t, "distill_on_policy_tiny.yaml", "llama2")
	run := func(name string, stopAt int, resume string, sets ...string) ([]train.StepMetrics, string) {
		t.Helper()
		j, err := configs.Load(jobPath, append(sets, "output_dir="+filepath.Join(dir, "run-"+name)))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		setup := func(ctx context.Context, s *session, o *train.Options) (func(), error) {
			if stopAt > 0 {
				o.AfterStep = func(m train.StepMetrics) {
					if m.Step == stopAt {
						cancel() // as SIGINT would
					}
				}
			}
			return distillSetup(ctx, s, o)
		}
		var log bytes.Buffer
		res, err := runTrainWith(ctx, j, resume, &log, runHooks{setup: setup})
		if err != nil && !res.Interrupted {
			t.Fatalf("%s: %v\n%s", name, err, log.String())
		}
		all, err := train.ReadMetrics(j.OutputDir)
		if err != nil {
			t.Fatal(err)
		}
		var steps []train.StepMetrics
		for _, m := range all {
			if m.Tokens > 0 { // not an evaluation's line
				steps = append(steps, m)
			}
		}
		return steps, log.String()
	}
	want, log := run("straight", 0, "")
	if len(want) != 3 || !strings.Contains(log, "on-policy (λ 0.5): the student completes") || !strings.Contains(log, " on_policy ") {
		t.Fatalf("%d metrics lines; log:\n%s", len(want), log)
	}
	last := want[len(want)-1].OnPolicyShare
	for _, m := range want {
		if m.OnPolicyShare == nil || math.IsNaN(m.Loss) || m.Loss <= 0 {
			t.Fatalf("step %d: loss %v, on_policy_share %v", m.Step, m.Loss, m.OnPolicyShare)
		}
	}
	if *last <= 0 || *last >= 1 {
		t.Fatalf("on_policy 0.5 over 6 micro-batches: share %v", *last)
	}
	first, _ := run("resumed", 2, "")
	if len(first) != 2 {
		t.Fatalf("the stopped run made %d steps, want 2", len(first))
	}
	got, log := run("resumed", 0, "latest")
	if len(got) != len(want) || !strings.Contains(log, "resumed from") {
		t.Fatalf("resumed run: %d metrics lines, want %d\n%s", len(got), len(want), log)
	}
	for i := range want {
		if got[i].Loss != want[i].Loss || *got[i].OnPolicyShare != *want[i].OnPolicyShare || got[i].TrainedTokens != want[i].TrainedTokens {
			t.Fatalf("step %d: resumed loss %v share %v tokens %d; straight %v %v %d", i+1, got[i].Loss, *got[i].OnPolicyShare,
				got[i].TrainedTokens, want[i].Loss, *want[i].OnPolicyShare, want[i].TrainedTokens)
		}
	}
	t.Logf("on_policy_share after %d steps: %.3f; losses %v", len(want), *last, []float64{want[0].Loss, want[1].Loss, want[2].Loss})
	full, _ := run("full", 0, "", "method=full", "max_steps=1", "distill.on_policy=1")
	if len(full) != 1 || *full[0].OnPolicyShare != 1 {
		t.Fatalf("full fine-tuning, on_policy 1: %d steps, share %v", len(full), full[len(full)-1].OnPolicyShare)
	}
	// A server teacher scores the student's samples through prompt log-probs.
	tm, err := llama.Load(filepath.Join(dir, "teacher"), cpu.New(), kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	srv := fakeserver.New(fakeserver.Options{Model: tm, Name: "tiny-teacher"})
	defer srv.Close()
	server, log := run("server", 0, "", "max_steps=1", "distill.on_policy=1", "distill.teacher.model=",
		"distill.teacher.url="+srv.URL(), "distill.teacher.name=tiny-teacher", "distill.top_k=8")
	if len(server) != 1 || *server[0].OnPolicyShare != 1 || !(server[0].Loss > 0) || math.IsInf(server[0].Loss, 0) {
		t.Fatalf("server teacher, on_policy 1: %+v\n%s", server, log)
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
	dir, jobPath := distillTinyDir(t, "distill_cross_tokenizer_tiny.yaml", "llama3")
	teacherDir := filepath.Join(dir, "teacher")
	run := func(name string, sets ...string) {
		t.Helper()
		j, log := runDistillJob(t, dir, jobPath, name, sets...)
		if !strings.Contains(log, "across tokenizers") || !strings.Contains(log, " uld ") ||
			!strings.Contains(log, "paired with a teacher position") {
			t.Fatalf("%s: log:\n%s", name, log)
		}
		checkULDParts(t, name, j)
	}
	run("in-process")
	// On-policy across tokenizers: the student's own samples, aligned and scored by the teacher.
	run("on-policy", "distill.on_policy=1")

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
// uld and ce, and the loss is kd_weight·uld + (1 − kd_weight)·ce (uld alone
// when on_policy is 1: every batch is then the student's own samples).
func checkULDParts(t *testing.T, name string, j *configs.Job) {
	t.Helper()
	ms, err := train.ReadMetrics(j.OutputDir)
	if err != nil {
		t.Fatal(err)
	}
	w := j.Distill.KDWeight
	if j.Distill.OnPolicy == 1 {
		w = 1 // every batch is the student's own samples: ULD alone
	}
	for _, m := range ms {
		if m.Tokens == 0 {
			continue // an evaluation's line
		}
		if j.Distill.OnPolicy == 1 && (m.OnPolicyShare == nil || *m.OnPolicyShare != 1) {
			t.Fatalf("%s: step %d: on_policy_share %v, want 1", name, m.Step, m.OnPolicyShare)
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
