package distill_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/distill"
	"github.com/llamatune/llamatune/distill/fakeserver"
)

// The vLLM protocol as the fixtures in testdata/vllm record it (issue 15
// item 2): the fake server speaks exactly that schema, and the client reads it
// on both routes.

func readFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "vllm", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// isTokenKey: a key of a map keyed by token ("123" or "token_id:123").
func isTokenKey(k string) bool {
	_, err := strconv.Atoi(strings.TrimPrefix(k, "token_id:"))
	return err == nil
}

// shape is the structure of a JSON value: object keys with the shapes of
// their values (a map keyed by token ids becomes {"<token>": shape}), lists
// as the set of their elements' shapes, scalars as their JSON type.
func shape(v any) any {
	switch x := v.(type) {
	case map[string]any:
		token := len(x) > 0
		for k := range x {
			token = token && isTokenKey(k)
		}
		out := map[string]any{}
		for k, e := range x {
			if token {
				k = "<token>"
			}
			out[k] = shape(e)
		}
		return out
	case []any:
		set := map[string]bool{}
		for _, e := range x {
			b, _ := json.Marshal(shape(e))
			set[string(b)] = true
		}
		var elems []string
		for s := range set {
			elems = append(elems, s)
		}
		sort.Strings(elems)
		return elems
	case float64:
		return "number"
	case string:
		return "string"
	case bool:
		return "bool"
	case nil:
		return "null"
	}
	panic(fmt.Sprintf("shape of %T", v))
}

func shapeOf(t *testing.T, raw []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%v: %s", err, raw)
	}
	b, _ := json.MarshalIndent(shape(v), "", " ")
	return string(b)
}

// TestServerFakeSpeaksVLLMSchema posts the fixtures' requests (with ids the
// tiny model knows) to the fake and compares the shapes of its replies with
// the fixtures' responses.
func TestServerFakeSpeaksVLLMSchema(t *testing.T) {
	te := inProcessTeacher(t)
	fs := fakeserver.New(fakeserver.Options{Model: te.Model(), Name: "meta-llama/Llama-3.2-1B"})
	defer fs.Close()
	for _, name := range []string{"prompt_logprobs", "echo", "max_logprobs"} {
		t.Run(name, func(t *testing.T) {
			var req map[string]any
			if err := json.Unmarshal(readFixture(t, name+".request.json"), &req); err != nil {
				t.Fatal(err)
			}
			req["prompt"] = []int{1, 7, 12}
			body, _ := json.Marshal(req)
			resp, err := http.Post(fs.URL()+"/completions", "application/json", bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			wantCode := 200
			if name == "max_logprobs" {
				wantCode = 400
			}
			if resp.StatusCode != wantCode {
				t.Fatalf("HTTP %d, want %d: %s", resp.StatusCode, wantCode, raw)
			}
			if g, w := shapeOf(t, raw), shapeOf(t, readFixture(t, name+".response.json")); g != w {
				t.Fatalf("the fake's reply has the shape\n%s\nthe fixture's\n%s", g, w)
			}
		})
	}
}

// fixtureServer answers every request with one fixture response; for the
// echo fixture it first refuses prompt_logprobs as OpenAI's API does.
func fixtureServer(t *testing.T, name string, code int, got *[]map[string]any) *httptest.Server {
	body := readFixture(t, name)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req map[string]any
		json.NewDecoder(r.Body).Decode(&req)
		*got = append(*got, req)
		w.Header().Set("Content-Type", "application/json")
		if _, ok := req["prompt_logprobs"]; ok && name == "echo.response.json" {
			w.WriteHeader(400)
			io.WriteString(w, `{"error": {"message": "Unrecognized request argument supplied: prompt_logprobs", "type": "invalid_request_error", "param": null, "code": null}}`)
			return
		}
		w.WriteHeader(code)
		w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

// TestServerReadsVLLMFixtures runs the client against the fixtures' bodies:
// position 0 has no entry, an entry may hold k+1 items (the prompt token
// beside the top-k) of which the k largest are kept, the last position has
// no distribution, and the request is the fixture's request.
func TestServerReadsVLLMFixtures(t *testing.T) {
	b := &data.Batch{Rows: 1, SeqLen: 3, InputIDs: []int32{128000, 791, 6864}}
	const k = 2
	type dist struct {
		ids []int32
		lps []float32
	}
	for _, route := range []string{"prompt_logprobs", "echo"} {
		t.Run(route, func(t *testing.T) {
			want := []dist{{[]int32{791, 40}, []float32{-2.5, -3}}, {[]int32{1176, 1888}, []float32{-1.75, -2}},
				{[]int32{0, 1}, []float32{distill.MissingLogProb, distill.MissingLogProb}}}
			var reqs []map[string]any
			srv := fixtureServer(t, route+".response.json", 200, &reqs)
			cl, err := distill.NewServer(distill.ServerOptions{BaseURL: srv.URL, Model: "meta-llama/Llama-3.2-1B", Info: distill.Info{VocabHash: "h", VocabSize: 128256}})
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			got, err := cl.TopK(context.Background(), b, k)
			if err != nil {
				t.Fatal(err)
			}
			if route == "echo" {
				// The echo route also has the distribution after the last prompt
				// token (it produced the generated token); it has no target.
				want[2].ids, want[2].lps = []int32{315, 11}, []float32{-0.5, -2.25}
			}
			for p, w := range want {
				if g := got.IDs[p*k : (p+1)*k]; fmt.Sprint(g) != fmt.Sprint(w.ids) {
					t.Errorf("position %d: ids %v, want %v", p, g, w.ids)
				}
				if g := got.LogProbs[p*k : (p+1)*k]; fmt.Sprint(g) != fmt.Sprint(w.lps) {
					t.Errorf("position %d: log-probs %v, want %v", p, g, w.lps)
				}
			}
			var wantReq map[string]any
			json.Unmarshal(readFixture(t, route+".request.json"), &wantReq)
			if g, w := fmt.Sprint(reqs[len(reqs)-1]), fmt.Sprint(wantReq); g != w {
				t.Errorf("request\n%s\nwant the fixture's\n%s", g, w)
			}
			if cl.Route() != route || len(reqs) != map[string]int{"prompt_logprobs": 1, "echo": 2}[route] {
				t.Errorf("route %s after %d requests", cl.Route(), len(reqs))
			}
		})
	}
	t.Run("max_logprobs", func(t *testing.T) {
		var reqs []map[string]any
		srv := fixtureServer(t, "max_logprobs.response.json", 400, &reqs)
		cl, err := distill.NewServer(distill.ServerOptions{BaseURL: srv.URL, Model: "meta-llama/Llama-3.2-1B", Info: distill.Info{VocabHash: "h"}, MaxRetries: 3})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		_, err = cl.TopK(context.Background(), b, 32)
		if err == nil {
			t.Fatal("no error")
		}
		for _, s := range []string{"meta-llama/Llama-3.2-1B", srv.URL, "allows at most 20 log-probs", "start vLLM with --max-logprobs 32", "set distill.top_k: 20", "greater than max allowed: 20"} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q lacks %q", err, s)
			}
		}
		if len(reqs) != 1 || cl.Route() != "prompt_logprobs" {
			t.Errorf("%d requests (a refusal is not retried), route %s", len(reqs), cl.Route())
		}
	})
}

// TestServerTeacherRoutes: against vLLM the client asks for prompt_logprobs;
// against a server that refuses the field or ignores it, it falls back to
// echo + logprobs; either way it matches the in-process teacher, with
// vLLM's default --max-logprobs 20 and the server teacher's default top_k 20.
func TestServerTeacherRoutes(t *testing.T) {
	te := inProcessTeacher(t)
	V := te.Info().VocabSize
	b := packBatch([][]int{{5, 7, 4}, {9, 1, 2}}, 16, 2, V, 13)
	const k = 20 // distill.top_k's default for a server teacher = vLLM's default --max-logprobs
	want, err := te.TopK(context.Background(), b, k)
	if err != nil {
		t.Fatal(err)
	}
	nDocs := len(docKeys(b))
	for _, c := range []struct {
		support fakeserver.Support
		route   string
	}{{fakeserver.Supported, "prompt_logprobs"}, {fakeserver.Rejected, "echo"}, {fakeserver.Ignored, "echo"}} {
		t.Run(c.route+fmt.Sprint(c.support), func(t *testing.T) {
			fs := fakeserver.New(fakeserver.Options{Model: te.Model(), PromptLogprobs: c.support, MaxLogprobs: 20})
			defer fs.Close()
			cl := newClient(t, fs, te.Info(), func(o *distill.ServerOptions) { o.Concurrency = 1; o.MaxRetries = 0 })
			got, err := cl.TopK(context.Background(), b, k)
			if err != nil {
				t.Fatal(err)
			}
			sameTopK(t, b, want, got)
			if cl.Route() != c.route {
				t.Fatalf("route %s, want %s", cl.Route(), c.route)
			}
			wantReqs := nDocs
			if c.support != fakeserver.Supported {
				wantReqs++ // the one prompt_logprobs request that showed the field unsupported
			}
			if fs.Requests() != wantReqs {
				t.Fatalf("%d requests for %d documents", fs.Requests(), nDocs)
			}
		})
	}
	t.Run("refusal on the echo route", func(t *testing.T) {
		fs := fakeserver.New(fakeserver.Options{Model: te.Model(), PromptLogprobs: fakeserver.Rejected})
		defer fs.Close()
		cl := newClient(t, fs, te.Info(), func(o *distill.ServerOptions) { o.Concurrency = 1 })
		_, err := cl.TopK(context.Background(), b, 21)
		if err == nil || !strings.Contains(err.Error(), "Requested sample logprobs of 21, which is greater than max allowed: 20") ||
			!strings.Contains(err.Error(), "--max-logprobs 21 or set distill.top_k: 20") || fs.Requests() != 2 {
			t.Fatalf("err %v after %d requests", err, fs.Requests())
		}
	})
}

// TestServerOldVLLMErrorBody: vLLM before 0.10 sent its refusal as
// {"object": "error", "message": ...}; the client reads that too.
func TestServerOldVLLMErrorBody(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(400)
		io.WriteString(w, `{"object": "error", "message": "Requested prompt logprobs of 32, which is greater than max allowed: 16", "type": "BadRequestError", "param": null, "code": 400}`)
	}))
	defer srv.Close()
	cl, err := distill.NewServer(distill.ServerOptions{BaseURL: srv.URL, Model: "m", Info: distill.Info{VocabHash: "h"}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	b := &data.Batch{Rows: 1, SeqLen: 3, InputIDs: []int32{1, 2, 3}}
	_, err = cl.TopK(context.Background(), b, 32)
	if err == nil || !strings.Contains(err.Error(), "allows at most 16 log-probs") || !strings.Contains(err.Error(), "--max-logprobs 32 or set distill.top_k: 16") {
		t.Fatalf("err %v", err)
	}
}
