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
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/llamatune/llamatune/data"
)

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
// row is sent on its own as a token-id prompt
//
//	{"prompt": [ids], "max_tokens": 1, "echo": true, "logprobs": k,
//	 "temperature": 0, "return_tokens_as_token_ids": true}
//
// so nothing is re-tokenized: the echoed prompt tokens ("token_id:123") are
// checked against the ids sent, top_logprobs[j+1] gives the distribution after
// document position j (the last one from the generated token), and of the up to
// k+1 entries vLLM returns per position the k largest are kept.
type Server struct {
	o      ServerOptions
	url    string
	key    string
	client *http.Client
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
// has no next-token target).
func documents(b *data.Batch) []document {
	var docs []document
	for r := 0; r < b.Rows; r++ {
		o := r * b.SeqLen
		for s := 0; s < b.SeqLen; {
			e := s + 1
			for e < b.SeqLen && b.DocStart[o+e] == int32(s) {
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

// document fetches one document's top-k, retrying transient failures.
func (s *Server) document(ctx context.Context, b *data.Batch, d document, k int, out *TopK) error {
	ids := b.InputIDs[d.row*b.SeqLen+d.start : d.row*b.SeqLen+d.end]
	what := fmt.Sprintf("teacher server %s (%s): document at row %d positions %d–%d (%d tokens, cursor batch %d)",
		s.o.Model, s.url, d.row, d.start, d.end-1, d.end-d.start, b.Cursor.Batches)
	body, _ := json.Marshal(completionRequest{Model: s.o.Model, Prompt: ids, MaxTokens: 1, Echo: true, Logprobs: k,
		Temperature: 0, ReturnTokensAsTokenIDs: true})
	var last error
	for attempt := 0; ; attempt++ {
		ids2, lps, retryAfter, err := s.once(ctx, body, ids, k)
		if err == nil && s.o.Info.VocabSize > 0 {
			for j, id := range ids2 {
				if int(id) >= s.o.Info.VocabSize {
					err = fmt.Errorf("top_logprobs[%d] names token id %d, outside the teacher's vocabulary of %d", j/k+1, id, s.o.Info.VocabSize)
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

type completionRequest struct {
	Model                  string  `json:"model"`
	Prompt                 []int32 `json:"prompt"`
	MaxTokens              int     `json:"max_tokens"`
	Echo                   bool    `json:"echo"`
	Logprobs               int     `json:"logprobs"`
	Temperature            float64 `json:"temperature"`
	ReturnTokensAsTokenIDs bool    `json:"return_tokens_as_token_ids"`
}

type completionResponse struct {
	Choices []struct {
		Index    int `json:"index"`
		Logprobs *struct {
			Tokens      []string             `json:"tokens"`
			TopLogprobs []map[string]float64 `json:"top_logprobs"`
		} `json:"logprobs"`
	} `json:"choices"`
}

// maxReply bounds a reply body (k=1000 on an 8k-token document is ~300 MB of
// JSON; k=32 is ~10 MB).
const maxReply = 1 << 30

// once makes one request. A 4xx other than 429 is a permanentError; for 429
// the Retry-After delay comes back too.
func (s *Server) once(ctx context.Context, body []byte, prompt []int32, k int) ([]int32, []float32, time.Duration, error) {
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
	if resp.StatusCode != http.StatusOK {
		msg := fmt.Errorf("HTTP %d: %s", resp.StatusCode, snippet(raw))
		switch {
		case resp.StatusCode == http.StatusTooManyRequests:
			ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
			return nil, nil, time.Duration(ra) * time.Second, msg
		case resp.StatusCode >= 500:
			return nil, nil, 0, msg
		case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
			return nil, nil, 0, permanentError{fmt.Errorf("%w (set the API key in $%s)", msg, s.o.APIKeyEnv)}
		default:
			return nil, nil, 0, permanentError{fmt.Errorf("%w (vLLM needs --max-logprobs ≥ %d and --max-model-len above the sequence length; check the model name)", msg, k)}
		}
	}
	ids, lps, err := parseCompletion(raw, prompt, k)
	return ids, lps, 0, err
}

// parseCompletion turns a reply into len(prompt)·k ids and log-probs.
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
	type cand struct {
		id int32
		lp float64
	}
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
		sort.Slice(cs, func(a, b int) bool { return cs[a].lp > cs[b].lp || (cs[a].lp == cs[b].lp && cs[a].id < cs[b].id) })
		for j := 0; j < k; j++ {
			ids[p*k+j] = cs[j].id
			lps[p*k+j] = float32(cs[j].lp)
		}
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
