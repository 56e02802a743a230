package distill_test

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/distill"
	"github.com/llamatune/llamatune/distill/fakeserver"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
)

func inProcessTeacher(t *testing.T) *distill.InProcess {
	t.Helper()
	te, err := distill.NewInProcess(tinyModel(t, "llama2", 0), cpu.New(), kernels.F32)
	if err != nil {
		t.Fatal(err)
	}
	return te
}

// sameTopK compares two teachers' answers on the positions that have a target.
func sameTopK(t *testing.T, b *data.Batch, want, got *distill.TopK) {
	t.Helper()
	k := want.K
	if got.K != k || len(got.IDs) != len(want.IDs) || len(got.LogProbs) != len(want.LogProbs) {
		t.Fatalf("shape: K %d/%d, %d/%d ids", got.K, k, len(got.IDs), len(want.IDs))
	}
	for i := 0; i < b.Rows*b.SeqLen; i++ {
		if !hasTarget(b, i) {
			continue
		}
		for j := 0; j < k; j++ {
			w, g := want.LogProbs[i*k+j], got.LogProbs[i*k+j]
			if math.Abs(float64(w-g)) > 2e-4 {
				t.Fatalf("position %d rank %d: logprob %v, want %v", i, j, g, w)
			}
			if want.IDs[i*k+j] != got.IDs[i*k+j] && (j+1 >= k || math.Abs(float64(want.LogProbs[i*k+j+1]-w)) > 2e-4) && (j == 0 || math.Abs(float64(want.LogProbs[i*k+j-1]-w)) > 2e-4) {
				t.Fatalf("position %d rank %d: id %d, want %d", i, j, got.IDs[i*k+j], want.IDs[i*k+j])
			}
		}
	}
}

// docKeys are the documents of b that a server teacher sends, as strings.
func docKeys(b *data.Batch) []string {
	var keys []string
	for r := 0; r < b.Rows; r++ {
		for s := 0; s < b.SeqLen; {
			e := s + 1
			for e < b.SeqLen && b.DocStart[r*b.SeqLen+e] == int32(s) {
				e++
			}
			if e-s >= 2 {
				keys = append(keys, fmt.Sprint(b.InputIDs[r*b.SeqLen+s:r*b.SeqLen+e]))
			}
			s = e
		}
	}
	sort.Strings(keys)
	return keys
}

func servedKeys(fs *fakeserver.Server) []string {
	var keys []string
	for _, s := range fs.Served() {
		keys = append(keys, fmt.Sprint(s.Prompt))
	}
	sort.Strings(keys)
	return keys
}

func newClient(t *testing.T, fs *fakeserver.Server, info distill.Info, mod func(*distill.ServerOptions)) *distill.Server {
	t.Helper()
	o := distill.ServerOptions{BaseURL: fs.URL(), Model: "teacher", Info: info, Concurrency: 3,
		Timeout: time.Minute, MaxRetries: 4, Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond}
	if mod != nil {
		mod(&o)
	}
	c, err := distill.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestServerTeacherMatchesInProcess(t *testing.T) {
	te := inProcessTeacher(t)
	V := te.Info().VocabSize
	b := packBatch([][]int{{5, 7, 4}, {9, 1, 2}, {1, 3, 12}}, 16, 2, V, 11)
	const k = 6
	want, err := te.TopK(context.Background(), b, k)
	if err != nil {
		t.Fatal(err)
	}
	nDocs := len(docKeys(b))
	cases := []struct {
		name  string
		fault fakeserver.Fault
	}{
		{"none", fakeserver.Fault{OnRequest: -1}},
		{"delay", fakeserver.Fault{Kind: fakeserver.Hang, OnRequest: 2}},
		{"5xx", fakeserver.Fault{Kind: fakeserver.Status5xx, OnRequest: 1, Status: 502}},
		{"429", fakeserver.Fault{Kind: fakeserver.Status429, OnRequest: 3}},
		{"malformed", fakeserver.Fault{Kind: fakeserver.Malformed, OnRequest: 2}},
		{"wrong-ids", fakeserver.Fault{Kind: fakeserver.WrongIDs, OnRequest: 4}},
		{"missing-ids", fakeserver.Fault{Kind: fakeserver.MissingIDs, OnRequest: 1}},
		{"truncated", fakeserver.Fault{Kind: fakeserver.Truncated, OnRequest: 5}},
		{"random", fakeserver.Fault{Kind: fakeserver.Status5xx, Probability: 0.3}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fs := fakeserver.New(fakeserver.Options{Model: te.Model(), Faults: []fakeserver.Fault{c.fault}, Seed: 5})
			defer fs.Close()
			cl := newClient(t, fs, te.Info(), func(o *distill.ServerOptions) {
				if c.name == "delay" {
					// The hung request ends only by this timeout; the others must beat it
					// however loaded the machine (-race on 2 cores: a request takes < 0.5 s).
					o.Timeout = 3 * time.Second
				}
				if c.name == "random" {
					o.MaxRetries = 20
				}
			})
			got, err := cl.TopK(context.Background(), b, k)
			if err != nil {
				t.Fatal(err)
			}
			sameTopK(t, b, want, got)
			if c.name == "random" && fs.Injected()[fakeserver.Status5xx] == 0 {
				t.Fatal("no random fault was injected")
			}
			if c.name != "none" && c.name != "random" && fs.Injected()[c.fault.Kind] != 1 {
				t.Fatalf("fault injected %d times", fs.Injected()[c.fault.Kind])
			}
			if fs.Requests() < nDocs || (c.name != "none" && c.name != "random" && fs.Requests() != nDocs+1) {
				t.Fatalf("%d requests for %d documents", fs.Requests(), nDocs)
			}
			if g, w := servedKeys(fs), docKeys(b); fmt.Sprint(g) != fmt.Sprint(w) {
				t.Fatalf("documents answered:\n%v\nwant each once:\n%v", g, w)
			}
		})
	}
}

func TestServerTeacherErrors(t *testing.T) {
	te := inProcessTeacher(t)
	V := te.Info().VocabSize
	b := packBatch([][]int{{6, 10}}, 16, 2, V, 3)
	ctx := context.Background()

	t.Run("exhausted", func(t *testing.T) {
		// Each fault on every request, on both routes: prompt_logprobs (vLLM) and
		// echo + logprobs (a server that refuses prompt_logprobs).
		for _, support := range []fakeserver.Support{fakeserver.Supported, fakeserver.Rejected} {
			for _, kind := range []fakeserver.Kind{fakeserver.Status5xx, fakeserver.Malformed, fakeserver.WrongIDs, fakeserver.Truncated, fakeserver.MissingIDs, fakeserver.Hang} {
				fs := fakeserver.New(fakeserver.Options{Model: te.Model(), PromptLogprobs: support, Faults: []fakeserver.Fault{{Kind: kind, Probability: 1}}})
				cl := newClient(t, fs, te.Info(), func(o *distill.ServerOptions) {
					o.MaxRetries = 2
					if kind == fakeserver.Hang {
						// Every request hangs until the client's timeout, so the timeout can be
						// short: no answer has to arrive within it. The other kinds keep the
						// minute-long default, which a slow answer cannot reach.
						o.Timeout = 100 * time.Millisecond
					}
				})
				_, err := cl.TopK(ctx, b, 4)
				fs.Close()
				if err == nil {
					t.Fatalf("%v on every request (support %d): no error", kind, support)
				}
				msg := err.Error()
				want := map[fakeserver.Kind]string{fakeserver.Status5xx: "HTTP 503", fakeserver.Malformed: "malformed reply",
					fakeserver.WrongIDs: "was sent", fakeserver.Truncated: "truncated", fakeserver.MissingIDs: "is not a token id",
					fakeserver.Hang: "timeout"}[kind]
				if support == fakeserver.Rejected && kind == fakeserver.MissingIDs {
					want = "token_id:N"
				}
				for _, s := range []string{"giving up after 3 attempts", "row 0 positions", want} {
					if !strings.Contains(msg, s) {
						t.Errorf("%v (support %d): error %q lacks %q", kind, support, msg, s)
					}
				}
			}
		}
	})
	t.Run("4xx not retried", func(t *testing.T) {
		fs := fakeserver.New(fakeserver.Options{Model: te.Model(), Faults: []fakeserver.Fault{{Kind: fakeserver.Status400, Probability: 1}}})
		defer fs.Close()
		cl := newClient(t, fs, te.Info(), func(o *distill.ServerOptions) { o.Concurrency = 1 })
		_, err := cl.TopK(ctx, b, 4)
		if err == nil || !strings.Contains(err.Error(), "HTTP 400") || fs.Requests() != 1 {
			t.Fatalf("err %v after %d requests", err, fs.Requests())
		}
	})
	t.Run("k above max-logprobs", func(t *testing.T) {
		fs := fakeserver.New(fakeserver.Options{Model: te.Model()})
		defer fs.Close()
		cl := newClient(t, fs, te.Info(), nil)
		_, err := cl.TopK(ctx, b, 32)
		if err == nil || !strings.Contains(err.Error(), "start vLLM with --max-logprobs 32 or set distill.top_k: 20") || !strings.Contains(err.Error(), "Requested prompt logprobs of 32, which is greater than max allowed: 20") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("options", func(t *testing.T) {
		if _, err := distill.NewServer(distill.ServerOptions{BaseURL: "http://x/v1", Model: "m"}); err == nil || !strings.Contains(err.Error(), "vocab") {
			t.Fatalf("missing hash: %v", err)
		}
		if _, err := distill.NewServer(distill.ServerOptions{BaseURL: "x", Model: "m", Info: distill.Info{VocabHash: "h"}}); err == nil {
			t.Fatal("bad URL accepted")
		}
	})
	t.Run("cancel", func(t *testing.T) {
		// The server never answers and the client's own timeout is a minute: only the
		// caller's cancel can end TopK, well before that however loaded the machine.
		fs := fakeserver.New(fakeserver.Options{Model: te.Model(), Faults: []fakeserver.Fault{{Kind: fakeserver.Hang, Probability: 1}}})
		defer fs.Close()
		cl := newClient(t, fs, te.Info(), nil)
		cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		if _, err := cl.TopK(cctx, b, 4); err == nil || time.Since(start) > 30*time.Second {
			t.Fatalf("err %v after %v", err, time.Since(start))
		}
	})
}
