package distill

// The OpenAI-compatible chat generator. Its retry loop (genHTTP) is written to be shared: it
// does for any JSON POST what Server.document/once do for /v1/completions, and the two can be
// merged into one helper later.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/llamatune/llamatune/data"
)

// ChatServerOptions configure a teacher behind an OpenAI-compatible chat API (vLLM, SGLang,
// TGI, llama.cpp server, OpenAI).
type ChatServerOptions struct {
	// BaseURL of the API, e.g. http://host:8000/v1 (a URL without /v1 gets it).
	BaseURL string
	// Model is the served model name (the "model" field of each request).
	Model string
	// APIKey is sent as a bearer token; empty: read from APIKeyEnv (default OPENAI_API_KEY).
	APIKey, APIKeyEnv string
	// Timeout bounds each request, reply included (default 300 s: long replies of a big model).
	Timeout time.Duration
	// MaxRetries is how often one prompt is retried after a transient failure — connection
	// error, timeout, HTTP 429 or 5xx, malformed reply (default 5; < 0: never).
	MaxRetries int
	// Backoff is the first retry delay, doubled per retry with jitter, up to MaxBackoff
	// (defaults 500 ms and 30 s). A Retry-After header is honoured up to MaxBackoff.
	Backoff, MaxBackoff time.Duration
	// Client overrides the HTTP client.
	Client *http.Client
}

// ChatServer is a Generator that POSTs each prompt to {BaseURL}/chat/completions:
//
//	{"model": M, "messages": [...], "temperature": T, "top_p": P, "max_tokens": N, "seed": S, "n": 1}
//
// and takes choices[0].message.content as the reply (finish_reason "length" marks it cut off;
// usage.completion_tokens counts its tokens).
type ChatServer struct {
	o   ChatServerOptions
	url string
	h   genHTTP
}

// NewChatServer checks the options; it does not contact the server.
func NewChatServer(o ChatServerOptions) (*ChatServer, error) {
	url, key, err := endpoint(o.BaseURL, o.Model, o.APIKey, o.APIKeyEnv, "chat/completions",
		"give --teacher-url", "give --teacher-name")
	if err != nil {
		return nil, err
	}
	if o.Timeout <= 0 {
		o.Timeout = 300 * time.Second
	}
	s := &ChatServer{o: o, url: url}
	s.h = newGenHTTP(o.Client, key, o.APIKeyEnv, o.Timeout, o.MaxRetries, o.Backoff, o.MaxBackoff)
	return s, nil
}

// Name is the served model name.
func (s *ChatServer) Name() string { return s.o.Model }

type genChatRequest struct {
	Model       string         `json:"model"`
	Messages    []data.Message `json:"messages"`
	Temperature float64        `json:"temperature"`
	TopP        float64        `json:"top_p,omitempty"`
	MaxTokens   int            `json:"max_tokens"`
	Seed        int64          `json:"seed"`
	N           int            `json:"n"`
}

type genChatResponse struct {
	Choices []struct {
		Message *struct {
			Role    string  `json:"role"`
			Content *string `json:"content"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
}

// Generate asks the server for one reply.
func (s *ChatServer) Generate(ctx context.Context, msgs []data.Message, sm Sampling) (Reply, error) {
	req := genChatRequest{Model: s.o.Model, Messages: msgs, Temperature: sm.Temperature, MaxTokens: sm.MaxNewTokens,
		Seed: int64(sm.Seed & 0x7fffffff), N: 1}
	if sm.TopP > 0 && sm.TopP < 1 {
		req.TopP = sm.TopP
	}
	body, err := json.Marshal(req)
	if err != nil {
		return Reply{}, err
	}
	var rep Reply
	err = s.h.post(ctx, s.url, body, func(raw []byte) error {
		var r genChatResponse
		if err := json.Unmarshal(raw, &r); err != nil {
			return fmt.Errorf("malformed reply (not the JSON of a chat completion: %v): %s", err, snippet(raw))
		}
		if len(r.Choices) == 0 || r.Choices[0].Message == nil || r.Choices[0].Message.Content == nil {
			return fmt.Errorf("malformed reply: no choices[0].message.content: %s", snippet(raw))
		}
		c := r.Choices[0]
		rep = Reply{Text: *c.Message.Content, Truncated: c.FinishReason == "length"}
		if r.Usage != nil {
			rep.Tokens = r.Usage.CompletionTokens
		}
		return nil
	})
	if err != nil {
		var perm genPermanent
		if errors.As(err, &perm) && strings.HasPrefix(err.Error(), "HTTP 400") && contextTooLong(err.Error()) {
			return Reply{}, fmt.Errorf("teacher server %s: %w: %v", s.o.Model, ErrPromptTooLong, err)
		}
		return Reply{}, fmt.Errorf("teacher server %s (%s): %w", s.o.Model, s.url, err)
	}
	return rep, nil
}

// genHTTP posts JSON with timeouts and retries.
type genHTTP struct {
	client              *http.Client
	key, keyEnv         string
	timeout             time.Duration
	retries             int
	backoff, maxBackoff time.Duration
}

func newGenHTTP(client *http.Client, key, keyEnv string, timeout time.Duration, retries int, backoff, maxBackoff time.Duration) genHTTP {
	if client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 64
		client = &http.Client{Transport: tr}
	}
	if retries == 0 {
		retries = 5
	}
	if retries < 0 {
		retries = 0
	}
	if backoff <= 0 {
		backoff = 500 * time.Millisecond
	}
	if maxBackoff <= 0 {
		maxBackoff = 30 * time.Second
	}
	if timeout <= 0 {
		timeout = 300 * time.Second
	}
	return genHTTP{client: client, key: key, keyEnv: keyEnv, timeout: timeout, retries: retries, backoff: backoff, maxBackoff: maxBackoff}
}

// genPermanent is a failure retrying cannot fix (a 4xx other than 408 and 429).
type genPermanent struct{ error }

func (e genPermanent) Unwrap() error { return e.error }

// post sends body to url and hands a 200 reply to parse; transient failures (connection,
// timeout, 408/429/5xx, parse errors) are retried with exponential backoff.
func (h genHTTP) post(ctx context.Context, url string, body []byte, parse func([]byte) error) error {
	for attempt := 0; ; attempt++ {
		raw, retryAfter, err := h.once(ctx, url, body)
		if err == nil {
			if err = parse(raw); err == nil {
				return nil
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var perm genPermanent
		if errors.As(err, &perm) {
			return err
		}
		if attempt >= h.retries {
			return fmt.Errorf("giving up after %d attempts: %w", attempt+1, err)
		}
		wait := h.delay(attempt)
		if retryAfter > wait {
			wait = min(retryAfter, h.maxBackoff)
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

// delay is the wait before retry attempt+1 (see backoffDelay).
func (h genHTTP) delay(attempt int) time.Duration {
	return backoffDelay(h.backoff, h.maxBackoff, attempt)
}

// genMaxReply bounds a reply body.
const genMaxReply = 64 << 20

func (h genHTTP) once(ctx context.Context, url string, body []byte) ([]byte, time.Duration, error) {
	rctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, 0, genPermanent{err}
	}
	req.Header.Set("Content-Type", "application/json")
	if h.key != "" {
		req.Header.Set("Authorization", "Bearer "+h.key)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		if rctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
			return nil, 0, fmt.Errorf("no reply within %v (timeout; raise the teacher timeout if the server is just slow)", h.timeout)
		}
		return nil, 0, fmt.Errorf("connection: %v", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, genMaxReply))
	if err != nil {
		if rctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
			return nil, 0, fmt.Errorf("reply not complete within %v (timeout)", h.timeout)
		}
		return nil, 0, fmt.Errorf("reading the reply: %v", err)
	}
	if resp.StatusCode == http.StatusOK {
		return raw, 0, nil
	}
	msg := fmt.Errorf("HTTP %d: %s", resp.StatusCode, snippet(raw))
	switch {
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable:
		ra, _ := strconv.Atoi(strings.TrimSpace(resp.Header.Get("Retry-After")))
		return nil, time.Duration(ra) * time.Second, msg
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusRequestTimeout:
		return nil, 0, msg
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return nil, 0, genPermanent{fmt.Errorf("%w (set the API key in $%s)", msg, h.keyEnv)}
	default:
		return nil, 0, genPermanent{fmt.Errorf("%w (check the model name and that max_tokens fits the server's context)", msg)}
	}
}

// contextTooLong recognizes the 400 replies of vLLM, SGLang, TGI and OpenAI to a prompt that
// does not fit the model's context.
func contextTooLong(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "context length") || strings.Contains(m, "context window") ||
		strings.Contains(m, "prompt is too long") || strings.Contains(m, "input is too long") ||
		strings.Contains(m, "must be less than or equal to the max")
}
