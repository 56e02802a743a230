package distill

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llamatune/llamatune/data"
)

// vllmProtocol: what vLLM's OpenAI server does with the requests this file
// sends, read from its source (vllm-project/vllm, 2025–2026 main; read only,
// none of it copied):
//
//   - vllm/entrypoints/openai/completion/protocol.py (CompletionRequest):
//     prompt_logprobs: int | None; logprobs: int | None; echo; max_tokens
//     (default 16; 0 is allowed only with echo, so 1 is sent: it works in
//     every version); return_tokens_as_token_ids; return_token_ids (newer
//     releases; older ones ignore unknown fields with a warning, as
//     OpenAIBaseModel has extra="allow"). to_sampling_params asks the engine
//     for prompt_logprobs = request.prompt_logprobs, else logprobs when echo.
//   - vllm/entrypoints/openai/completion/serving.py
//     (request_output_to_completion_response, _create_completion_logprobs):
//     choices[i].prompt_logprobs is the engine's list, one entry per prompt
//     token, None for position 0, else {token_id: Logprob{logprob, rank,
//     decoded_token}} (ids as JSON string keys); the engine adds the prompt
//     token beside the top-k, so an entry holds k or k+1 items. With echo, the
//     prompt entries become logprobs.top_logprobs ("token_id:N" keys with
//     return_tokens_as_token_ids; -inf clamped to -9999), followed by the
//     generated token's, again k or k+1 items.
//   - vllm/v1/engine processor, _validate_logprobs: logprobs (then
//     prompt_logprobs) above ModelConfig.max_logprobs (--max-logprobs,
//     default 20; -1 means the vocabulary) is refused with a
//     VLLMValidationError → HTTP 400, "Requested prompt logprobs of K, which
//     is greater than max allowed: N" (or "sample logprobs" for logprobs).
//   - vllm/entrypoints/openai/engine/protocol.py: ErrorResponse is
//     {"error": {message, type, param, code}}; before 0.10 it was
//     {"object": "error", message, type, param, code}.
//   - vllm/v1/sample/sampler.py: logprobs_mode defaults to "raw_logprobs",
//     the log-softmax of the model's raw logits, before temperature,
//     penalties and top-k/top-p; "temperature": 0 only makes the one
//     generated token greedy. The KD temperature is applied by our loss.
//
// testdata/vllm holds request and response bodies of both routes and of the
// refusal in this schema, written by us; fakeserver answers in it.

// ServerOptions configure a teacher behind an OpenAI-compatible completions
// API as vLLM serves it (`vllm serve MODEL --max-logprobs K`).
type ServerOptions struct {
	// BaseURL of the API, e.g. http://host:8000/v1 (a URL without /v1 gets it).
	BaseURL string
	// Model is the served model name (the "model" field of each request).
	Model string
	// APIKey is sent as a bearer token; empty: read from APIKeyEnv.
	APIKey string
	// APIKeyEnv names the environment variable holding the key (default
	// OPENAI_API_KEY); unset is fine for servers without authentication.
	APIKeyEnv string
	// Concurrency is the number of requests in flight (default 8).
	Concurrency int
	// Timeout bounds each request, reply included (default 120 s).
	Timeout time.Duration
	// MaxRetries is how often one document is retried after a transient
	// failure (0: never; the job's default is 5).
	MaxRetries int
	// Backoff is the first retry delay, doubled per retry with jitter up to
	// MaxBackoff (defaults 500 ms and 30 s).
	Backoff, MaxBackoff time.Duration
	// Info identifies the teacher. Name defaults to Model; VocabHash is
	// required (the job's, or the student's when the user asserts the teacher
	// shares its tokenizer) since the server cannot be asked for it.
	Info Info
	// Client overrides the HTTP client (its Timeout is left alone).
	Client *http.Client
}

// Server is a Teacher that asks an OpenAI-compatible server (vLLM) for the
// top-k log-probabilities of every prompt token. Each document of a packed
// row is sent on its own as a token-id prompt, so nothing is re-tokenized.
//
// Two routes, as vLLM's /v1/completions serves them (see vllmProtocol below):
//
//   - prompt_logprobs (the default):
//     {"prompt": [ids], "max_tokens": 1, "prompt_logprobs": k, "temperature": 0,
//     "return_token_ids": true}. choices[0].prompt_logprobs[j] (j ≥ 1) maps
//     token ids ("123") to {logprob, rank, decoded_token} for the distribution
//     that produced prompt token j, holding the k most likely and the prompt
//     token itself (k or k+1 items); entry 0 is null. prompt_token_ids, where
//     the server returns them, are checked against the ids sent.
//   - echo + logprobs (the fallback for OpenAI-compatible servers that are not
//     vLLM): {"prompt": [ids], "max_tokens": 1, "echo": true, "logprobs": k,
//     "temperature": 0, "return_tokens_as_token_ids": true}. The echoed prompt
//     tokens ("token_id:123") are checked against the ids sent and
//     top_logprobs[j+1] gives the distribution after document position j.
//
// The client switches to the fallback for good, and resends at once, when
// the server answers a prompt_logprobs request with HTTP 400/422 naming
// prompt_logprobs that is not vLLM's max-logprobs refusal (the field is
// unknown to it), or with a 200 that has no choices[0].prompt_logprobs (it
// ignored the field). Of the up to k+1 entries per position the k largest are
// kept. A request above the server's --max-logprobs (vLLM's default 20) is
// refused by vLLM with HTTP 400; that error says which top_k the server allows
// and how to raise it.
type Server struct {
	o      ServerOptions
	url    string
	key    string
	client *http.Client
	echo   atomic.Bool // the echo + logprobs fallback is in use
}

var _ Teacher = (*Server)(nil)

// NewServer checks the options; it does not contact the server.
func NewServer(o ServerOptions) (*Server, error) {
	url, key, err := endpoint(o.BaseURL, o.Model, o.APIKey, o.APIKeyEnv, "completions",
		"set distill.teacher.url", "set distill.teacher.name")
	if err != nil {
		return nil, err
	}
	if o.Info.Name == "" {
		o.Info.Name = o.Model
	}
	if o.Info.VocabHash == "" {
		return nil, fmt.Errorf("teacher server %s: no vocabulary hash; give the teacher's vocab_hash (llamatune can compute it from a copy of its tokenizer files), or declare that it shares the student's tokenizer", o.Model)
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 8
	}
	if o.Timeout <= 0 {
		o.Timeout = 120 * time.Second
	}
	if o.MaxRetries < 0 {
		o.MaxRetries = 0
	}
	if o.Backoff <= 0 {
		o.Backoff = 500 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 30 * time.Second
	}
	s := &Server{o: o, key: key, url: url, client: o.Client}
	if s.client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = o.Concurrency
		s.client = &http.Client{Transport: tr}
	}
	return s, nil
}

// Info identifies the teacher.
func (s *Server) Info() Info { return s.o.Info }

// Close releases idle connections.
func (s *Server) Close() error {
	s.client.CloseIdleConnections()
	return nil
}

// document is one document of a packed batch: positions [start, end) of row.
type document struct {
	row, start, end int
}

// documents lists the documents of b that need the teacher: runs of equal
// DocStart of at least two tokens (a one-token document — padding included —
// has no next-token target). A nil DocStart is one document per row.
func documents(b *data.Batch) []document {
	var docs []document
	for r := 0; r < b.Rows; r++ {
		o := r * b.SeqLen
		for s := 0; s < b.SeqLen; {
			e := s + 1
			for e < b.SeqLen && (b.DocStart == nil || b.DocStart[o+e] == int32(s)) {
				e++
			}
			if e-s >= 2 {
				docs = append(docs, document{r, s, e})
			}
			s = e
		}
	}
	return docs
}

// TopK asks the server about every document of b, Concurrency at a time.
// Positions no document covers get MissingLogProb.
func (s *Server) TopK(ctx context.Context, b *data.Batch, k int) (*TopK, error) {
	if k <= 0 {
		return nil, fmt.Errorf("teacher server %s: top-k %d must be ≥ 1", s.o.Model, k)
	}
	n := b.Rows * b.SeqLen
	if b.DocStart == nil { // one document per row
		c := *b
		c.DocStart = make([]int32, n)
		b = &c
	}
	if len(b.InputIDs) != n || len(b.DocStart) != n {
		return nil, fmt.Errorf("teacher server %s: batch of %d×%d has %d ids and %d doc starts", s.o.Model, b.Rows, b.SeqLen, len(b.InputIDs), len(b.DocStart))
	}
	out := &TopK{K: k, IDs: make([]int32, n*k), LogProbs: make([]float32, n*k)}
	fillMissing(out.IDs, out.LogProbs, k)
	docs := documents(b)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan document)
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for w := 0; w < min(s.o.Concurrency, len(docs)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range jobs {
				if err := s.document(ctx, b, d, k, out); err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
				}
			}
		}()
	}
feed:
	for _, d := range docs {
		select {
		case jobs <- d:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// permanentError is a failure retrying cannot fix (a 4xx other than 429).
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

// errNoPromptLogprobs: the server does not serve prompt_logprobs (it refused
// the field, or ignored it); the echo + logprobs route is used instead.
var errNoPromptLogprobs = errors.New("the server does not return prompt_logprobs")

// Route says which request the client sends now: "prompt_logprobs" until the
// server proves not to support it, then "echo".
func (s *Server) Route() string {
	if s.echo.Load() {
		return "echo"
	}
	return "prompt_logprobs"
}

// request is the body of one document's request on the current route.
func (s *Server) request(ids []int32, k int, echo bool) []byte {
	r := completionRequest{Model: s.o.Model, Prompt: ids, MaxTokens: 1, Temperature: 0}
	if echo {
		r.Echo, r.Logprobs, r.ReturnTokensAsTokenIDs = true, &k, true
	} else {
		r.PromptLogprobs, r.ReturnTokenIDs = &k, true
	}
	body, _ := json.Marshal(r)
	return body
}

// document fetches one document's top-k, retrying transient failures.
func (s *Server) document(ctx context.Context, b *data.Batch, d document, k int, out *TopK) error {
	ids := b.InputIDs[d.row*b.SeqLen+d.start : d.row*b.SeqLen+d.end]
	what := fmt.Sprintf("teacher server %s (%s): document at row %d positions %d–%d (%d tokens, cursor batch %d)",
		s.o.Model, s.url, d.row, d.start, d.end-1, d.end-d.start, b.Cursor.Batches)
	var last error
	for attempt := 0; ; attempt++ {
		echo := s.echo.Load()
		ids2, lps, retryAfter, err := s.once(ctx, s.request(ids, k, echo), ids, k, echo)
		if !echo && errors.Is(err, errNoPromptLogprobs) {
			s.echo.Store(true) // for this document and every later one; not a failed attempt
			attempt--
			continue
		}
		if err == nil && s.o.Info.VocabSize > 0 {
			for j, id := range ids2 {
				if int(id) >= s.o.Info.VocabSize && lps[j] != MissingLogProb {
					err = fmt.Errorf("the distribution after position %d names token id %d, outside the teacher's vocabulary of %d", j/k, id, s.o.Info.VocabSize)
					break
				}
			}
		}
		if err == nil {
			o := (d.row*b.SeqLen + d.start) * k
			copy(out.IDs[o:], ids2)
			copy(out.LogProbs[o:], lps)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		last = err
		var perm permanentError
		if errors.As(err, &perm) {
			return fmt.Errorf("%s: %w", what, err)
		}
		if attempt >= s.o.MaxRetries {
			return fmt.Errorf("%s: giving up after %d attempts: %w", what, attempt+1, last)
		}
		wait := s.backoff(attempt)
		if retryAfter > wait {
			wait = min(retryAfter, s.o.MaxBackoff)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// backoff is the delay before retry attempt+1: Backoff·2^attempt capped at
// MaxBackoff, the upper half of it drawn at random (jitter).
func (s *Server) backoff(attempt int) time.Duration {
	return backoffDelay(s.o.Backoff, s.o.MaxBackoff, attempt)
}

// backoffDelay is the wait before retry attempt+1 of both server clients:
// base·2^attempt capped at limit, the upper half of it drawn at random.
func backoffDelay(base, limit time.Duration, attempt int) time.Duration {
	d := float64(base) * math.Pow(2, float64(min(attempt, 30)))
	d = min(d, float64(limit))
	return time.Duration(d/2 + rand.Float64()*d/2)
}

// completionRequest is the body of POST /v1/completions on either route
// (vLLM's CompletionRequest; unset optional fields are left out).
type completionRequest struct {
	Model                  string  `json:"model"`
	Prompt                 []int32 `json:"prompt"`
	MaxTokens              int     `json:"max_tokens"`
	Temperature            float64 `json:"temperature"`
	PromptLogprobs         *int    `json:"prompt_logprobs,omitempty"`
	ReturnTokenIDs         bool    `json:"return_token_ids,omitempty"`
	Echo                   bool    `json:"echo,omitempty"`
	Logprobs               *int    `json:"logprobs,omitempty"`
	ReturnTokensAsTokenIDs bool    `json:"return_tokens_as_token_ids,omitempty"`
}

// promptLogprob is one item of a prompt_logprobs entry (vLLM's Logprob).
type promptLogprob struct {
	Logprob      float64 `json:"logprob"`
	Rank         *int    `json:"rank"`
	DecodedToken *string `json:"decoded_token"`
}

type completionResponse struct {
	Choices []struct {
		Index    int `json:"index"`
		Logprobs *struct {
			Tokens      []string             `json:"tokens"`
			TopLogprobs []map[string]float64 `json:"top_logprobs"`
		} `json:"logprobs"`
		PromptLogprobs []map[string]*promptLogprob `json:"prompt_logprobs"`
		PromptTokenIDs []int32                     `json:"prompt_token_ids"`
	} `json:"choices"`
}

// maxReply bounds a reply body (k=1000 on an 8k-token document is ~300 MB of
// JSON; k=32 is ~10 MB).
const maxReply = 1 << 30

// maxAllowed finds vLLM's max-logprobs refusal ("Requested prompt logprobs of
// 32, which is greater than max allowed: 20") and its limit.
var maxAllowed = regexp.MustCompile(`greater than max allowed: (\d+)`)

// errorMessage is the message of an error body: vLLM's {"error": {"message"}}
// (and OpenAI's), or older vLLM's {"object": "error", "message"}; else the body.
func errorMessage(raw []byte) string {
	var e struct {
		Message string          `json:"message"`
		Error   json.RawMessage `json:"error"`
	}
	if json.Unmarshal(raw, &e) == nil {
		if e.Message != "" {
			return e.Message
		}
		var inner struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(e.Error, &inner) == nil && inner.Message != "" {
			return inner.Message
		}
	}
	return snippet(raw)
}

// once makes one request. A 4xx other than 429 is a permanentError; for 429
// the Retry-After delay comes back too. On the prompt_logprobs route a reply
// showing that the server does not serve it wraps errNoPromptLogprobs.
func (s *Server) once(ctx context.Context, body []byte, prompt []int32, k int, echo bool) ([]int32, []float32, time.Duration, error) {
	rctx, cancel := context.WithTimeout(ctx, s.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return nil, nil, 0, permanentError{err}
	}
	req.Header.Set("Content-Type", "application/json")
	if s.key != "" {
		req.Header.Set("Authorization", "Bearer "+s.key)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		if rctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
			return nil, nil, 0, fmt.Errorf("no reply within %v (timeout; raise the teacher timeout if the server is just slow)", s.o.Timeout)
		}
		var ne net.Error
		if errors.As(err, &ne) {
			return nil, nil, 0, fmt.Errorf("connection: %v", err)
		}
		return nil, nil, 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	if err != nil {
		if rctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
			return nil, nil, 0, fmt.Errorf("reply not complete within %v (timeout)", s.o.Timeout)
		}
		return nil, nil, 0, fmt.Errorf("reading the reply: %v", err)
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		return nil, nil, time.Duration(ra) * time.Second, fmt.Errorf("HTTP 429: %s", snippet(raw))
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, 0, s.statusError(resp.StatusCode, raw, k, echo)
	}
	var ids []int32
	var lps []float32
	if echo {
		ids, lps, err = parseCompletion(raw, prompt, k)
	} else {
		ids, lps, err = parsePromptLogprobs(raw, prompt, k)
	}
	return ids, lps, 0, err
}

// statusError classifies a reply other than 200 and 429: 5xx is retried,
// the max-logprobs refusal says what to change, a refusal of the unknown
// prompt_logprobs field wraps errNoPromptLogprobs, other 4xx are permanent.
func (s *Server) statusError(code int, raw []byte, k int, echo bool) error {
	msg := fmt.Errorf("HTTP %d: %s", code, snippet(raw))
	switch {
	case code >= 500:
		return msg
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return permanentError{fmt.Errorf("%w (set the API key in $%s)", msg, s.o.APIKeyEnv)}
	}
	text := errorMessage(raw)
	if m := maxAllowed.FindStringSubmatch(text); m != nil {
		return permanentError{fmt.Errorf("the server allows at most %s log-probs per position and top_k is %d; start vLLM with --max-logprobs %d or set distill.top_k: %s (HTTP %d: %s)",
			m[1], k, k, m[1], code, text)}
	}
	if !echo && (code == http.StatusBadRequest || code == http.StatusUnprocessableEntity) && strings.Contains(text, "prompt_logprobs") {
		return fmt.Errorf("%w: %v", errNoPromptLogprobs, msg)
	}
	return permanentError{fmt.Errorf("%w (check the model name; vLLM needs --max-logprobs ≥ %d and --max-model-len above the sequence length)", msg, k)}
}

// cand is one token of a distribution: id and log-prob.
type cand struct {
	id int32
	lp float64
}

// keepTopK writes the k most likely of cs (which may hold k+1: the scored
// token beside the top-k) into ids and lps, best first (ties by smaller id).
func keepTopK(cs []cand, k int, ids []int32, lps []float32) {
	sort.Slice(cs, func(a, b int) bool { return cs[a].lp > cs[b].lp || (cs[a].lp == cs[b].lp && cs[a].id < cs[b].id) })
	for j := 0; j < k; j++ {
		ids[j] = cs[j].id
		lps[j] = float32(cs[j].lp)
	}
}

// parsePromptLogprobs turns a prompt_logprobs reply into len(prompt)·k ids
// and log-probs: entry j+1 is the distribution after position j; entry 0 (no
// distribution precedes the first token) is null and the last position has
// none (it has no target within the document).
func parsePromptLogprobs(raw []byte, prompt []int32, k int) ([]int32, []float32, error) {
	var r completionResponse
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, nil, fmt.Errorf("malformed reply (not the JSON of a completion: %v): %s", err, snippet(raw))
	}
	if len(r.Choices) == 0 {
		return nil, nil, fmt.Errorf("malformed reply: no choices: %s", snippet(raw))
	}
	c := r.Choices[0]
	if c.PromptLogprobs == nil {
		return nil, nil, fmt.Errorf("%w: no choices[0].prompt_logprobs in the reply", errNoPromptLogprobs)
	}
	n := len(prompt)
	if c.PromptTokenIDs != nil {
		if len(c.PromptTokenIDs) != n {
			return nil, nil, fmt.Errorf("reply has %d prompt_token_ids for a prompt of %d tokens: the server did not score the prompt it was given", len(c.PromptTokenIDs), n)
		}
		for j, id := range prompt {
			if c.PromptTokenIDs[j] != id {
				return nil, nil, fmt.Errorf("prompt_token_ids[%d] is %d, but %d was sent: the server did not score the prompt it was given", j, c.PromptTokenIDs[j], id)
			}
		}
	}
	if len(c.PromptLogprobs) < n {
		return nil, nil, fmt.Errorf("reply truncated: %d prompt_logprobs entries for a prompt of %d tokens", len(c.PromptLogprobs), n)
	}
	ids := make([]int32, n*k)
	lps := make([]float32, n*k)
	fillMissing(ids, lps, k)
	cs := make([]cand, 0, k+1)
	for p := 0; p+1 < n; p++ {
		m := c.PromptLogprobs[p+1]
		if m == nil {
			return nil, nil, fmt.Errorf("prompt_logprobs[%d] is null: no distribution after prompt position %d", p+1, p)
		}
		cs = cs[:0]
		scored := false
		for key, v := range m {
			id, err := strconv.ParseInt(key, 10, 32)
			if err != nil || id < 0 {
				return nil, nil, fmt.Errorf("prompt_logprobs[%d] key %q is not a token id (vLLM keys entries by token id)", p+1, key)
			}
			if v == nil || math.IsNaN(v.Logprob) || v.Logprob > 1e-3 {
				return nil, nil, fmt.Errorf("prompt_logprobs[%d][%q] is not a log-probability", p+1, key)
			}
			scored = scored || int32(id) == prompt[p+1]
			cs = append(cs, cand{int32(id), v.Logprob})
		}
		if !scored {
			return nil, nil, fmt.Errorf("prompt_logprobs[%d] lacks the prompt token %d that vLLM adds beside the top-k: the server did not score the prompt it was given", p+1, prompt[p+1])
		}
		if len(m) < k {
			return nil, nil, fmt.Errorf("prompt_logprobs[%d] holds %d entries, want ≥ %d (k): truncated reply, or the server caps log-probs (vLLM --max-logprobs)", p+1, len(m), k)
		}
		keepTopK(cs, k, ids[p*k:(p+1)*k], lps[p*k:(p+1)*k])
	}
	return ids, lps, nil
}

// parseCompletion turns an echo + logprobs reply into len(prompt)·k ids and
// log-probs.
func parseCompletion(raw []byte, prompt []int32, k int) ([]int32, []float32, error) {
	var r completionResponse
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, nil, fmt.Errorf("malformed reply (not the JSON of a completion: %v): %s", err, snippet(raw))
	}
	if len(r.Choices) == 0 || r.Choices[0].Logprobs == nil {
		return nil, nil, fmt.Errorf("malformed reply: no choices[0].logprobs (does the server support echo with logprobs?): %s", snippet(raw))
	}
	lp := r.Choices[0].Logprobs
	n := len(prompt)
	if len(lp.Tokens) < n || len(lp.TopLogprobs) < n {
		return nil, nil, fmt.Errorf("reply truncated: %d echoed tokens and %d top_logprobs for a prompt of %d tokens", len(lp.Tokens), len(lp.TopLogprobs), n)
	}
	for j, id := range prompt {
		got, err := tokenIDOf(lp.Tokens[j])
		if err != nil {
			return nil, nil, fmt.Errorf("echoed prompt token %d is %q: %v (the server must honor return_tokens_as_token_ids; vLLM ≥ 0.5.4 does)", j, lp.Tokens[j], err)
		}
		if got != id {
			return nil, nil, fmt.Errorf("echoed prompt token %d is id %d, but %d was sent: the server did not score the prompt it was given", j, got, id)
		}
	}
	ids := make([]int32, n*k)
	lps := make([]float32, n*k)
	fillMissing(ids, lps, k)
	cs := make([]cand, 0, k+1)
	for p := 0; p < n; p++ {
		if p+1 >= len(lp.TopLogprobs) {
			break // the last position's distribution (from the generated token) is optional: it has no target
		}
		m := lp.TopLogprobs[p+1]
		if m == nil {
			return nil, nil, fmt.Errorf("top_logprobs[%d] is null: no distribution after prompt position %d", p+1, p)
		}
		if len(m) < k {
			return nil, nil, fmt.Errorf("top_logprobs[%d] holds %d entries, want ≥ %d (k): truncated reply, or the server caps logprobs (vLLM --max-logprobs)", p+1, len(m), k)
		}
		cs = cs[:0]
		for tok, v := range m {
			id, err := tokenIDOf(tok)
			if err != nil {
				return nil, nil, fmt.Errorf("top_logprobs[%d] key %q: %v", p+1, tok, err)
			}
			if math.IsNaN(v) || v > 1e-3 {
				return nil, nil, fmt.Errorf("top_logprobs[%d][%q] = %v is not a log-probability", p+1, tok, v)
			}
			cs = append(cs, cand{id, v})
		}
		keepTopK(cs, k, ids[p*k:(p+1)*k], lps[p*k:(p+1)*k])
	}
	return ids, lps, nil
}

// tokenIDOf parses vLLM's "token_id:123".
func tokenIDOf(tok string) (int32, error) {
	s, ok := strings.CutPrefix(tok, "token_id:")
	if !ok {
		return 0, errors.New(`not of the form "token_id:N"`)
	}
	v, err := strconv.ParseInt(s, 10, 32)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad token id %q", s)
	}
	return int32(v), nil
}

func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	if s == "" {
		s = "(empty body)"
	}
	return s
}

// fillMissing marks every position as having no teacher output: ids 0..k-1
// (distinct, as in any top-k) with MissingLogProb.
func fillMissing(ids []int32, lps []float32, k int) {
	for i := range ids {
		ids[i] = int32(i % k)
		lps[i] = MissingLogProb
	}
}
