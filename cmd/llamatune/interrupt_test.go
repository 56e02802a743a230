package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/llamatune/llamatune/configs"
	"github.com/llamatune/llamatune/internal/randmodel"
)

// A run a signal stopped exits 128 + the signal: 130 for SIGINT, 143 for
// SIGTERM; other errors 1, success 0.
func TestInterruptExitCodes(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{errors.New("bad job"), 1},
		{&interruptedError{sig: syscall.SIGINT}, 130},
		{&interruptedError{sig: syscall.SIGTERM, saved: "run/checkpoints/step-000002"}, 143},
		{fmt.Errorf("distill: %w", &interruptedError{sig: syscall.SIGTERM}), 143},
	} {
		if got := exitCode(c.err); got != c.want {
			t.Errorf("exitCode(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}

// The first signal cancels the run at once with a message naming the signal
// and where the run saves, and the context's cause carries the signal; the
// second exits at once with its code, saying nothing is saved.
func TestWatchSignals(t *testing.T) {
	sigs, done := make(chan os.Signal, 2), make(chan struct{})
	ctx, cancel := context.WithCancelCause(context.Background())
	var log bytes.Buffer
	exited, finished := make(chan int, 1), make(chan struct{})
	go func() {
		watchSignals(sigs, done, cancel, &log, "run/checkpoints", func(code int) { exited <- code })
		close(finished)
	}()
	sigs <- syscall.SIGTERM
	<-ctx.Done()
	if msg := log.String(); !strings.Contains(msg, "SIGTERM received: stopping") || !strings.Contains(msg, "run/checkpoints") {
		t.Fatalf("first signal said %q", msg)
	}
	if code := exitCode(interruptedBy(ctx, "run/checkpoints/step-000001")); code != 143 {
		t.Fatalf("a run SIGTERM stopped exits %d, want 143", code)
	}
	sigs <- syscall.SIGINT
	if code := <-exited; code != 130 {
		t.Fatalf("second signal exited %d, want 130", code)
	}
	<-finished
	if msg := log.String(); !strings.Contains(msg, "second SIGINT: exiting now without saving") {
		t.Fatalf("second signal said %q", msg)
	}

	// A run that ends before any signal: no cancel, no exit.
	sigs, done = make(chan os.Signal, 2), make(chan struct{})
	ctx, cancel = context.WithCancelCause(context.Background())
	finished = make(chan struct{})
	go func() {
		watchSignals(sigs, done, cancel, &log, "run/checkpoints", func(int) { t.Error("exit called") })
		close(finished)
	}()
	close(done)
	<-finished
	if ctx.Err() != nil {
		t.Fatal("the context was cancelled without a signal")
	}
}

// Ctrl-C before step 1 completes: exit code 130, no checkpoint, no loss.png,
// no metrics, and a fresh run into the same output_dir then succeeds.
func TestTrainInterruptedBeforeFirstStep(t *testing.T) {
	dir := t.TempDir()
	if _, err := randmodel.WriteTinyModel(filepath.Join(dir, "model"), randmodel.TinyOptions{Tokenizer: "llama2", Layers: 1, Hidden: 32}); err != nil {
		t.Fatal(err)
	}
	writeTextRows(t, filepath.Join(dir, "data.jsonl"), 4000)
	jobPath := writeTinyJob(t, dir, "lora: {r: 4, alpha: 8, target_modules: [all-linear]}", 1)
	job, err := configs.Load(jobPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(&interruptedError{sig: syscall.SIGINT}) // as the first Ctrl-C does
	var log bytes.Buffer
	_, err = runTrain(ctx, job, "", &log)
	if code := exitCode(err); code != 130 || !strings.Contains(err.Error(), "nothing saved") {
		t.Fatalf("interrupted before step 1: exit %d, %v\n%s", code, err, log.String())
	}
	for _, f := range []string{"checkpoints", "loss.png", "metrics.jsonl"} {
		if _, err := os.Stat(filepath.Join(job.OutputDir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s left after a Ctrl-C before step 1 (%v)\n%s", f, err, log.String())
		}
	}
	res, err := runTrain(context.Background(), job, "", &log)
	if err != nil || res.Steps != 1 {
		t.Fatalf("a fresh run into the same directory: %v (%+v)\n%s", err, res, log.String())
	}
	if _, err := os.Stat(filepath.Join(job.OutputDir, "loss.png")); err != nil {
		t.Fatal(err)
	}
}
