package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// interruptedError is what a run stopped by a signal returns: main exits
// with its code (128 + the signal number: 130 for SIGINT, 143 for SIGTERM),
// as shells and process supervisors expect of a program a signal ended.
type interruptedError struct {
	sig   os.Signal
	saved string // the checkpoint holding the last completed step ("": none)
}

func (e *interruptedError) Error() string {
	if e.saved == "" {
		return fmt.Sprintf("interrupted by %s before the first step completed: nothing saved; a fresh run may use the same output_dir", signalName(e.sig))
	}
	return fmt.Sprintf("interrupted by %s: the last completed step is in %s; continue with --resume", signalName(e.sig), e.saved)
}

// ExitCode is 128 + the signal's number.
func (e *interruptedError) ExitCode() int { return signalExitCode(e.sig) }

// signalExitCode maps a signal to the exit status of a process it ended:
// 128 + its number (SIGINT 130, SIGTERM 143).
func signalExitCode(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return 1
}

func signalName(sig os.Signal) string {
	switch sig {
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return sig.String()
}

// exitCode is the process exit status for the error a command returned.
func exitCode(err error) int {
	var ie *interruptedError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ie):
		return ie.ExitCode()
	}
	return 1
}

// interruptible returns a context that the first SIGINT or SIGTERM cancels
// (its cause an *interruptedError naming the signal); a second one exits at
// once without saving. saveDir is where the message says the run will save.
// stop unregisters the handler.
func interruptible(w io.Writer, saveDir string) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		watchSignals(sigs, done, cancel, w, saveDir, os.Exit)
	}()
	return ctx, func() {
		signal.Stop(sigs)
		close(done)
		cancel(nil)
	}
}

// watchSignals handles the signals of one run until done closes: the first
// cancels the run with a message saying what happens next, the second calls
// exit with its code.
func watchSignals(sigs <-chan os.Signal, done <-chan struct{}, cancel context.CancelCauseFunc, w io.Writer, saveDir string, exit func(int)) {
	select {
	case <-done:
		return
	case sig := <-sigs:
		fmt.Fprintf(w, "\nllamatune: %s received: stopping at the next layer boundary and saving the last completed step under %s (nothing if no step has completed). Send it again to exit at once without saving.\n",
			signalName(sig), saveDir)
		cancel(&interruptedError{sig: sig})
	}
	select {
	case <-done:
	case sig := <-sigs:
		fmt.Fprintf(w, "llamatune: second %s: exiting now without saving (the last checkpoint written before stays; --resume continues from it)\n", signalName(sig))
		exit(signalExitCode(sig))
	}
}

// interruptedBy is the error of a run ctx stopped: the signal from
// interruptible's cause (SIGINT when ctx was cancelled otherwise).
func interruptedBy(ctx context.Context, saved string) error {
	e := &interruptedError{sig: os.Interrupt}
	var ie *interruptedError
	if errors.As(context.Cause(ctx), &ie) {
		e.sig = ie.sig
	}
	e.saved = saved
	return e
}
