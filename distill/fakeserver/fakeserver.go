// Package fakeserver is an OpenAI-compatible completions server for tests:
// it answers POST /v1/completions for token-id prompts the way vLLM does, in
// vLLM's exact reply schema (distill/testdata/vllm holds the shapes), on both
// routes llamatune's server teacher uses — prompt_logprobs, and echo +
// logprobs — computing the log-probabilities with a tiny in-process Llama. It
// refuses logprobs or prompt_logprobs above MaxLogprobs as vLLM refuses them
// above --max-logprobs (HTTP 400, "Requested prompt logprobs of K, which is
// greater than max allowed: N"), can play a server that is not vLLM
// (PromptLogprobs: Rejected or Ignored), and injects faults (delays, 5xx,
// 429, malformed JSON, wrong or missing token ids, truncated lists) on chosen
// requests or at random under a seed.
package fakeserver

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llamatune/llamatune/model/llama"
)

// Kind is a fault.
type Kind int

const (
	Delay      Kind = iota // answer after Fault.Delay (beyond the client's timeout)
	Status5xx              // HTTP Fault.Status (default 503)
	Status429              // HTTP 429 Too Many Requests with Retry-After: 0
	Malformed              // a 200 whose body is cut in the middle of the JSON
	WrongIDs               // one echoed prompt token id differs from the prompt
	MissingIDs             // tokens come back as text, not "token_id:N"
	Truncated              // top_logprobs lists one entry short, and fewer than k candidates
	Status400              // HTTP 400 (a client error, not retried)
	Hang                   // no answer until the client gives up (its timeout or cancel) or the server closes
)

func (k Kind) String() string {
	return [...]string{"delay", "5xx", "429", "malformed", "wrong-ids", "missing-ids", "truncated", "400", "hang"}[k]
}

// Fault is injected on request number OnRequest (1-based, counting every
// request the server receives) or, when OnRequest is 0, on each request with
// Probability.
type Fault struct {
	Kind        Kind
	OnRequest   int
	Probability float64
	Delay       time.Duration
	Status      int
}

// Support says how the server treats the prompt_logprobs request field.
type Support int

const (
	Supported Support = iota // as vLLM: choices[0].prompt_logprobs
	Rejected                 // as OpenAI: HTTP 400 "Unrecognized request argument supplied: prompt_logprobs"
	Ignored                  // as a server that drops unknown fields: no prompt_logprobs in the reply
)

// Options configure a Server.
type Options struct {
	Model  *llama.Model // required
	Name   string       // served model name (default "teacher")
	Faults []Fault
	Seed   uint64 // for probabilistic faults
	// MaxLogprobs is the largest logprobs a request may ask for (vLLM's
	// --max-logprobs; default 20 as vLLM's).
	MaxLogprobs int
	// PromptLogprobs: how the prompt_logprobs field is treated (default Supported).
	PromptLogprobs Support
}

// Served is one successful answer: the prompt it scored.
type Served struct {
	Request int
	Prompt  []int32
}

// Server is a running fake.
type Server struct {
	o    Options
	http *httptest.Server
	n    atomic.Int64

	mu     sync.Mutex // model, rng, served
	rng    *rand.Rand
	served []Served
	faults map[Kind]int
}

// New starts a server on a loopback port.
func New(o Options) *Server {
	if o.Name == "" {
		o.Name = "teacher"
	}
	if o.MaxLogprobs <= 0 {
		o.MaxLogprobs = 20
	}
	s := &Server{o: o, rng: rand.New(rand.NewPCG(o.Seed, 0xfa4e)), faults: map[Kind]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/completions", s.completions)
	mux.HandleFunc("/v1/models", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"object": "list", "data": []map[string]any{{"id": o.Name, "object": "model", "owned_by": "vllm"}}})
	})
	s.http = httptest.NewServer(mux)
	return s
}

// URL is the API base, ending in /v1.
func (s *Server) URL() string { return s.http.URL + "/v1" }

// Close stops the server.
func (s *Server) Close() { s.http.CloseClientConnections(); s.http.Close() }

// Requests is the number of requests received.
func (s *Server) Requests() int { return int(s.n.Load()) }

// Served lists the prompts answered without a fault, in order of answer.
func (s *Server) Served() []Served {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Served(nil), s.served...)
}

// Injected counts the faults injected, by kind.
func (s *Server) Injected() map[Kind]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := map[Kind]int{}
	for k, v := range s.faults {
		m[k] = v
	}
	return m
}

type request struct {
	Model                  string  `json:"model"`
	Prompt                 []int32 `json:"prompt"`
	MaxTokens              *int    `json:"max_tokens"`
	Echo                   bool    `json:"echo"`
	Logprobs               *int    `json:"logprobs"`
	PromptLogprobs         *int    `json:"prompt_logprobs"`
	Temperature            float64 `json:"temperature"`
	ReturnTokensAsTokenIDs bool    `json:"return_tokens_as_token_ids"`
	ReturnTokenIDs         bool    `json:"return_token_ids"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// errorBody is vLLM's ErrorResponse: {"error": {message, type, param, code}}
// (vLLM before 0.10 sent the fields at the top level with "object": "error").
func errorBody(msg, typ string, code int) map[string]any {
	return paramError(msg, typ, nil, code)
}

func paramError(msg, typ string, param any, code int) map[string]any {
	return map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": param, "code": code}}
}

// fault picks the fault of request n, if any.
func (s *Server) fault(n int) *Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.o.Faults {
		f := &s.o.Faults[i]
		if (f.OnRequest > 0 && f.OnRequest == n) || (f.OnRequest == 0 && f.Probability > 0 && s.rng.Float64() < f.Probability) {
			s.faults[f.Kind]++
			return f
		}
	}
	return nil
}

func (s *Server) completions(w http.ResponseWriter, r *http.Request) {
	n := int(s.n.Add(1))
	if r.Method != http.MethodPost {
		writeJSON(w, 405, errorBody("method not allowed", "BadRequestError", 405))
		return
	}
	var req request
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeJSON(w, 400, errorBody("invalid JSON: "+err.Error(), "BadRequestError", 400))
		return
	}
	f := s.fault(n)
	if f != nil {
		switch f.Kind {
		case Delay:
			select {
			case <-time.After(f.Delay):
			case <-r.Context().Done():
				return
			}
		case Hang:
			// Whatever the machine's load, only the client ends this request: a test
			// of its timeout cannot be beaten by a quick answer.
			<-r.Context().Done()
			return
		case Status5xx:
			code := f.Status
			if code == 0 {
				code = 503
			}
			writeJSON(w, code, errorBody("injected server error", "InternalServerError", code))
			return
		case Status429:
			w.Header().Set("Retry-After", "0")
			writeJSON(w, 429, errorBody("too many requests", "RateLimitError", 429))
			return
		case Status400:
			writeJSON(w, 400, errorBody("injected bad request", "BadRequestError", 400))
			return
		}
	}
	if req.Model != s.o.Name {
		writeJSON(w, 404, errorBody(fmt.Sprintf("The model `%s` does not exist.", req.Model), "NotFoundError", 404))
		return
	}
	V := s.o.Model.Config.VocabSize
	if len(req.Prompt) == 0 {
		writeJSON(w, 400, errorBody("prompt must be a non-empty list of token ids", "BadRequestError", 400))
		return
	}
	for _, id := range req.Prompt {
		if id < 0 || int(id) >= V {
			writeJSON(w, 400, errorBody(fmt.Sprintf("token id %d out of vocabulary", id), "BadRequestError", 400))
			return
		}
	}
	if req.PromptLogprobs != nil && s.o.PromptLogprobs == Rejected {
		writeJSON(w, 400, map[string]any{"error": map[string]any{"message": "Unrecognized request argument supplied: prompt_logprobs",
			"type": "invalid_request_error", "param": nil, "code": nil}})
		return
	}
	if s.o.PromptLogprobs == Ignored {
		req.PromptLogprobs = nil
	}
	// vLLM's checks, in its order: sample logprobs, then prompt logprobs (the
	// request's, else logprobs when echo is set).
	if req.Logprobs != nil && *req.Logprobs > s.o.MaxLogprobs {
		writeJSON(w, 400, paramError(fmt.Sprintf("Requested sample logprobs of %d, which is greater than max allowed: %d", *req.Logprobs, s.o.MaxLogprobs), "BadRequestError", "logprobs", 400))
		return
	}
	promptK := req.PromptLogprobs
	if promptK == nil && req.Echo {
		promptK = req.Logprobs
	}
	if promptK != nil && *promptK > s.o.MaxLogprobs {
		writeJSON(w, 400, paramError(fmt.Sprintf("Requested prompt logprobs of %d, which is greater than max allowed: %d", *promptK, s.o.MaxLogprobs), "BadRequestError", "prompt_logprobs", 400))
		return
	}
	maxTokens := 16
	if req.MaxTokens != nil {
		maxTokens = *req.MaxTokens
	}
	if maxTokens != 1 || promptK == nil || (req.Echo && req.Logprobs == nil) || (!req.Echo && req.Logprobs != nil) || *promptK < 0 {
		writeJSON(w, 400, errorBody("this fake server answers only max_tokens 1 with prompt_logprobs, or with echo + logprobs", "BadRequestError", 400))
		return
	}
	k := *promptK
	body := s.answer(req, k, n)
	if f != nil {
		body = corrupt(body, f.Kind, k)
	}
	raw, _ := json.Marshal(body)
	if f != nil && f.Kind == Malformed {
		raw = raw[:len(raw)/2]
	}
	if r.Context().Err() != nil {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(200)
	w.Write(raw)
	if f == nil || f.Kind == Delay {
		s.mu.Lock()
		s.served = append(s.served, Served{Request: n, Prompt: append([]int32(nil), req.Prompt...)})
		s.mu.Unlock()
	}
}

// logprobs is vLLM's CompletionLogProbs.
type logprobs struct {
	TextOffset    []int                `json:"text_offset"`
	TokenLogprobs []*float64           `json:"token_logprobs"`
	Tokens        []string             `json:"tokens"`
	TopLogprobs   []map[string]float64 `json:"top_logprobs"`
}

// logprob is vLLM's Logprob, an item of a prompt_logprobs entry.
type logprob struct {
	Logprob      float64 `json:"logprob"`
	Rank         int     `json:"rank"`
	DecodedToken string  `json:"decoded_token"`
}

// choice is vLLM's CompletionResponseChoice.
type choice struct {
	Index          int                   `json:"index"`
	Text           string                `json:"text"`
	Logprobs       *logprobs             `json:"logprobs"`
	FinishReason   string                `json:"finish_reason"`
	StopReason     any                   `json:"stop_reason"`
	TokenIDs       []int32               `json:"token_ids"`
	PromptLogprobs []map[string]*logprob `json:"prompt_logprobs"`
	PromptTokenIDs []int32               `json:"prompt_token_ids"`
}

// usage is vLLM's UsageInfo.
type usage struct {
	PromptTokens        int `json:"prompt_tokens"`
	TotalTokens         int `json:"total_tokens"`
	CompletionTokens    int `json:"completion_tokens"`
	PromptTokensDetails any `json:"prompt_tokens_details"`
}

// response is vLLM's CompletionResponse.
type response struct {
	ID                string   `json:"id"`
	Object            string   `json:"object"`
	Created           int64    `json:"created"`
	Model             string   `json:"model"`
	Choices           []choice `json:"choices"`
	ServiceTier       any      `json:"service_tier"`
	SystemFingerprint any      `json:"system_fingerprint"`
	Usage             usage    `json:"usage"`
	KVTransferParams  any      `json:"kv_transfer_params"`
}

// answer scores the prompt as vLLM does with k prompt log-probs: entry j of
// prompt_logprobs is the distribution that produced prompt token j (null for
// the first), holding the k most likely and the prompt token itself (k or k+1
// items); one greedy token is generated. With echo the prompt and that token
// come back in logprobs, top_logprobs[j] holding the token itself plus the k
// most likely; without echo logprobs is null.
func (s *Server) answer(req request, k, n int) response {
	m := s.o.Model
	V := m.Config.VocabSize
	s.mu.Lock()
	lg, err := m.Logits(llama.NewInferenceTape(m.Backend()), &llama.Input{Rows: 1, SeqLen: len(req.Prompt), InputIDs: req.Prompt})
	var full []float32
	if err == nil {
		full = lg.F32()
	}
	s.mu.Unlock()
	if err != nil {
		panic(err) // ids were checked above
	}
	P := len(req.Prompt)
	name := func(id int32) string {
		if req.ReturnTokensAsTokenIDs {
			return fmt.Sprintf("token_id:%d", id)
		}
		return text(id)
	}
	lp := &logprobs{}
	promptLPs := []map[string]*logprob{nil}
	var gen int32
	for j := 0; j <= P; j++ {
		var tok int32
		if j < P {
			tok = req.Prompt[j]
		}
		if j == 0 {
			lp.Tokens = append(lp.Tokens, name(tok))
			lp.TokenLogprobs = append(lp.TokenLogprobs, nil)
			lp.TopLogprobs = append(lp.TopLogprobs, nil)
			lp.TextOffset = append(lp.TextOffset, 0)
			continue
		}
		row := full[(j-1)*V : j*V]
		ls := logSoftmax(row)
		order := topIDs(ls, max(k, 1))
		if j == P {
			tok = order[0]
			gen = tok
		}
		top := map[string]float64{name(tok): max(float64(ls[tok]), -9999)}
		for _, id := range order[:k] {
			top[name(id)] = max(float64(ls[id]), -9999)
		}
		if j < P {
			rank := 1
			for id, v := range ls {
				if v > ls[tok] || (v == ls[tok] && int32(id) < tok) {
					rank++
				}
			}
			pl := map[string]*logprob{fmt.Sprint(tok): {Logprob: float64(ls[tok]), Rank: rank, DecodedToken: text(tok)}}
			for r, id := range order[:k] {
				pl[fmt.Sprint(id)] = &logprob{Logprob: float64(ls[id]), Rank: r + 1, DecodedToken: text(id)}
			}
			promptLPs = append(promptLPs, pl)
		}
		v := max(float64(ls[tok]), -9999)
		lp.Tokens = append(lp.Tokens, name(tok))
		lp.TokenLogprobs = append(lp.TokenLogprobs, &v)
		lp.TopLogprobs = append(lp.TopLogprobs, top)
		lp.TextOffset = append(lp.TextOffset, lp.TextOffset[len(lp.TextOffset)-1]+len(lp.Tokens[len(lp.Tokens)-2]))
	}
	c := choice{Index: 0, Text: text(gen), FinishReason: "length", PromptLogprobs: promptLPs}
	if req.Echo {
		c.Logprobs = lp
		c.Text = ""
		for _, id := range req.Prompt {
			c.Text += text(id)
		}
		c.Text += text(gen)
	}
	if req.ReturnTokenIDs {
		c.TokenIDs = []int32{gen}
		c.PromptTokenIDs = append([]int32(nil), req.Prompt...)
	}
	if s.o.PromptLogprobs == Ignored && !req.Echo {
		c.PromptLogprobs = nil // a server that dropped the field computes none
	}
	return response{ID: fmt.Sprintf("cmpl-%d", n), Object: "text_completion", Created: time.Now().Unix(), Model: req.Model,
		Choices: []choice{c}, Usage: usage{PromptTokens: P, CompletionTokens: 1, TotalTokens: P + 1}}
}

// text is the fake detokenization of id.
func text(id int32) string { return fmt.Sprintf("<%d>", id) }

// topIDs returns the ids of the n largest values, best first (equal values
// by smaller id), by insertion into a short sorted list.
func topIDs(v []float32, n int) []int32 {
	top := make([]int32, 0, n+1)
	better := func(a, b int32) bool { return v[a] > v[b] || (v[a] == v[b] && a < b) }
	for i := range v {
		id := int32(i)
		if len(top) == n && !better(id, top[n-1]) {
			continue
		}
		p := sort.Search(len(top), func(j int) bool { return better(id, top[j]) })
		top = append(top, 0)
		copy(top[p+1:], top[p:])
		top[p] = id
		if len(top) > n {
			top = top[:n]
		}
	}
	return top
}

func logSoftmax(row []float32) []float32 {
	mx := math.Inf(-1)
	for _, v := range row {
		mx = math.Max(mx, float64(v))
	}
	var sum float64
	for _, v := range row {
		sum += math.Exp(float64(v) - mx)
	}
	lse := mx + math.Log(sum)
	out := make([]float32, len(row))
	for i, v := range row {
		out[i] = float32(float64(v) - lse)
	}
	return out
}

// corrupt applies a content fault to a good reply: to logprobs on the echo
// route, to prompt_logprobs (and prompt_token_ids) on the other.
func corrupt(r response, kind Kind, k int) response {
	c := &r.Choices[0]
	if c.Logprobs == nil {
		corruptPrompt(c, kind, k)
		return r
	}
	lp := c.Logprobs
	switch kind {
	case WrongIDs:
		j := len(lp.Tokens) / 2
		var id int
		fmt.Sscanf(strings.TrimPrefix(lp.Tokens[j], "token_id:"), "%d", &id)
		lp.Tokens[j] = fmt.Sprintf("token_id:%d", id+1)
	case MissingIDs:
		for j, t := range lp.Tokens {
			lp.Tokens[j] = "▁" + strings.TrimPrefix(t, "token_id:")
		}
	case Truncated:
		lp.Tokens = lp.Tokens[:len(lp.Tokens)-2]
		lp.TopLogprobs = lp.TopLogprobs[:len(lp.TopLogprobs)-2]
		if len(lp.TopLogprobs) > 1 {
			shrink(lp.TopLogprobs[1], k)
		}
	}
	return r
}

func corruptPrompt(c *choice, kind Kind, k int) {
	pl := c.PromptLogprobs
	switch kind {
	case WrongIDs: // the server scored another prompt: one token differs
		j := len(pl) / 2
		if c.PromptTokenIDs != nil {
			c.PromptTokenIDs[j]++
		}
		m := map[string]*logprob{}
		for key, v := range pl[j] {
			var id int
			fmt.Sscanf(key, "%d", &id)
			m[fmt.Sprint(id+1000003)] = v
		}
		pl[j] = m
	case MissingIDs: // keys are text, not token ids
		for j, m := range pl {
			if m == nil {
				continue
			}
			t := map[string]*logprob{}
			for key, v := range m {
				t["▁"+key] = v
			}
			pl[j] = t
		}
	case Truncated:
		c.PromptLogprobs = pl[:max(len(pl)-2, 0)]
		if len(c.PromptLogprobs) > 1 {
			shrink(c.PromptLogprobs[1], k)
		}
	}
}

// shrink keeps about k/2 entries of m.
func shrink[V any](m map[string]V, k int) {
	i := 0
	for key := range m {
		if i >= k/2 {
			delete(m, key)
		}
		i++
	}
}
