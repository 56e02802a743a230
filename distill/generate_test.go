package distill_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/distill"
	"github.com/llamatune/llamatune/internal/randmodel"
	"github.com/llamatune/llamatune/kernels"
	"github.com/llamatune/llamatune/kernels/cpu"
	"github.com/llamatune/llamatune/model/llama"
)

var (
	genTeacherOnce sync.Once
	genTeacherGen  *distill.ModelGenerator
	genTeacherTok  tokenizer.Tokenizer
	genTeacherErr  error
)

// genTeacher is a tiny llama2-tokenizer model as an in-process generator (built once).
func genTeacher(t *testing.T) (*distill.ModelGenerator, tokenizer.Tokenizer) {
	t.Helper()
	genTeacherOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gen-teacher-")
		if err != nil {
			genTeacherErr = err
			return
		}
		// The directory is small and lives until the test binary exits.
		if _, err := randmodel.WriteTinyModel(dir, randmodel.TinyOptions{Tokenizer: "llama2", Layers: 2, Hidden: 32, Seed: 3, Shards: 1}); err != nil {
			genTeacherErr = err
			return
		}
		m, err := llama.Load(dir, cpu.New(), kernels.F32)
		if err != nil {
			genTeacherErr = err
			return
		}
		tok, err := tokenizer.Load(dir)
		if err != nil {
			genTeacherErr = err
			return
		}
		genTeacherTok = tok
		genTeacherGen, genTeacherErr = distill.NewModelGenerator(m, tok, "llama2", "tiny-teacher")
		os.RemoveAll(dir)
	})
	if genTeacherErr != nil {
		t.Fatal(genTeacherErr)
	}
	return genTeacherGen, genTeacherTok
}

// genPromptFile writes n prompt rows ({"prompt": ...}); every fifth row repeats an earlier
// one (with other spacing and case, which the duplicate filter normalizes away).
func genPromptFile(t *testing.T, n int) (string, int) {
	t.Helper()
	var b bytes.Buffer
	dups := 0
	for i := range n {
		p := fmt.Sprintf("Tell me fact number %d about llamas.", i)
		if i%5 == 4 {
			p = fmt.Sprintf("  tell me FACT number %d   about llamas. ", i-2)
			dups++
		}
		line, _ := json.Marshal(map[string]string{"prompt": p})
		b.Write(append(line, '\n'))
	}
	path := filepath.Join(t.TempDir(), "prompts.jsonl")
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, dups
}

func genOpts() distill.GenerateOptions {
	return distill.GenerateOptions{
		Sampling:      distill.Sampling{MaxNewTokens: 6, Temperature: 0.9, TopP: 0.95, Seed: 11},
		Concurrency:   3,
		ShardRows:     5,
		CommitEvery:   2,
		KeepTruncated: true, // a random tiny model rarely says EOS
	}
}

func genRun(t *testing.T, ctx context.Context, gen distill.Generator, promptPath, out string, o distill.GenerateOptions) (distill.GenerateStats, error) {
	t.Helper()
	src, err := distill.DatasetPrompts(data.DatasetSpec{Path: promptPath}, "")
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	o.Source = promptPath
	return distill.Generate(ctx, gen, src, out, o)
}

// genReadOutput concatenates the output shards (in manifest order).
func genReadOutput(t *testing.T, dir string) []byte {
	t.Helper()
	files, err := distill.GenerateOutputs(dir)
	if err != nil {
		t.Fatal(err)
	}
	var all []byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	return all
}

// genPipelineExamples reads dir as a messages dataset through the training pipeline.
func genPipelineExamples(t *testing.T, dir string, tok tokenizer.Tokenizer) int64 {
	t.Helper()
	p, err := data.New(data.Options{Datasets: []data.DatasetSpec{{Path: dir, Type: data.TypeMessages}},
		Tokenizer: tok, Template: "llama2", SeqLen: 64, Packing: true, ShuffleBuffer: 0}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for {
		if _, err := p.Next(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if p.Stats().Tokens == 0 {
		t.Fatal("pipeline read no tokens")
	}
	return p.Stats().Examples
}

func checkStatsAddUp(t *testing.T, s distill.GenerateStats) {
	t.Helper()
	if sum := s.Written + s.Duplicates + s.DupOutputs + s.Empty + s.TooLong + s.Invalid + s.Failed; sum != s.Prompts {
		t.Fatalf("stats do not add up: %+v (sum %d)", s, sum)
	}
}

func TestGenerateInProcessWritesTrainableDataset(t *testing.T) {
	gen, tok := genTeacher(t)
	prompts, dups := genPromptFile(t, 20)
	out := filepath.Join(t.TempDir(), "gen")
	var progress bytes.Buffer
	o := genOpts()
	o.Progress = &progress
	st, err := genRun(t, context.Background(), gen, prompts, out, o)
	if err != nil {
		t.Fatal(err)
	}
	checkStatsAddUp(t, st)
	if st.Prompts != 20 || st.Duplicates != int64(dups) || st.Failed != 0 || st.Written == 0 {
		t.Fatalf("stats %+v; want 20 prompts, %d duplicates, none failed", st, dups)
	}
	if st.Tokens == 0 {
		t.Fatalf("no tokens counted: %+v", st)
	}
	if !strings.Contains(progress.String(), "generate: 20 prompts") {
		t.Errorf("no final progress line: %q", progress.String())
	}
	// Every row: the prompt as a user turn, then the teacher's reply; rows in input order.
	var lastIdx int64 = -1
	for _, line := range bytes.Split(bytes.TrimSpace(genReadOutput(t, out)), []byte{'\n'}) {
		var row struct {
			Messages []data.Message `json:"messages"`
			Index    int64          `json:"index"`
		}
		if err := json.Unmarshal(line, &row); err != nil {
			t.Fatalf("bad output line %q: %v", line, err)
		}
		if len(row.Messages) != 2 || row.Messages[0].Role != "user" || row.Messages[1].Role != "assistant" || row.Messages[1].Content == "" {
			t.Fatalf("bad conversation %+v", row.Messages)
		}
		if row.Index <= lastIdx || row.Index%5 == 4 {
			t.Fatalf("row index %d after %d (duplicates are rows 4, 9, ...)", row.Index, lastIdx)
		}
		lastIdx = row.Index
	}
	files, _ := distill.GenerateOutputs(out)
	if want := int((st.Written + 4) / 5); len(files) != want {
		t.Fatalf("%d shards for %d rows of 5 per shard, want %d", len(files), st.Written, want)
	}
	// The directory is a messages dataset the trainer reads and packs.
	if n := genPipelineExamples(t, out, tok); n != st.Written {
		t.Fatalf("pipeline read %d examples, generate wrote %d", n, st.Written)
	}
	// Running again on a finished directory does nothing and keeps the files.
	before := genReadOutput(t, out)
	st2, err := genRun(t, context.Background(), gen, prompts, out, o)
	if err != nil || st2.Written != st.Written || !bytes.Equal(before, genReadOutput(t, out)) {
		t.Fatalf("re-run of a finished directory: %v, %+v", err, st2)
	}
}

// cancelAfter cancels a context when its generator has been called k times.
type cancelAfter struct {
	distill.Generator
	k      int64
	n      atomic.Int64
	cancel context.CancelFunc
}

func (c *cancelAfter) Generate(ctx context.Context, msgs []data.Message, s distill.Sampling) (distill.Reply, error) {
	if c.n.Add(1) == c.k {
		c.cancel()
	}
	return c.Generator.Generate(ctx, msgs, s)
}

func TestGenerateResumeEqualsUninterrupted(t *testing.T) {
	gen, tok := genTeacher(t)
	prompts, _ := genPromptFile(t, 20)
	o := genOpts()
	o.DedupOutputs = true // exercises re-reading the shards on resume
	for _, format := range []string{"jsonl", "arrow"} {
		t.Run(format, func(t *testing.T) {
			o.Format = format
			whole := filepath.Join(t.TempDir(), "whole")
			want, err := genRun(t, context.Background(), gen, prompts, whole, o)
			if err != nil {
				t.Fatal(err)
			}
			cut := filepath.Join(t.TempDir(), "cut")
			for _, k := range []int64{4, 9} { // stop twice, then finish
				ctx, cancel := context.WithCancel(context.Background())
				st, err := genRun(t, ctx, &cancelAfter{Generator: gen, k: k, cancel: cancel}, prompts, cut, o)
				cancel()
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("cancelled run: err %v, stats %+v", err, st)
				}
				if st.Prompts >= 20 {
					t.Fatalf("cancelled run processed everything: %+v", st)
				}
			}
			// As after a crash: uncommitted bytes at the end of the open shard, a stray temp file.
			ents, _ := os.ReadDir(cut)
			for _, e := range ents {
				if strings.HasSuffix(e.Name(), ".partial") {
					f, _ := os.OpenFile(filepath.Join(cut, e.Name()), os.O_APPEND|os.O_WRONLY, 0)
					f.WriteString(`{"messages":[{"role":"user","content":"half a ro`)
					f.Close()
				}
			}
			os.WriteFile(filepath.Join(cut, ".tmp-generate.manifest-123"), []byte("{"), 0o644)
			got, err := genRun(t, context.Background(), gen, prompts, cut, o)
			if err != nil {
				t.Fatal(err)
			}
			if got.Resumed == 0 {
				t.Fatalf("final run did not resume: %+v", got)
			}
			got.Resumed = 0
			if got != want {
				t.Fatalf("resumed stats %+v, uninterrupted %+v", got, want)
			}
			if a, b := genReadOutput(t, whole), genReadOutput(t, cut); !bytes.Equal(a, b) || len(a) == 0 {
				t.Fatalf("resumed output differs from the uninterrupted one (%d vs %d bytes)", len(b), len(a))
			}
			if n := genPipelineExamples(t, cut, tok); n != want.Written {
				t.Fatalf("pipeline read %d examples, generate wrote %d", n, want.Written)
			}
			ents, _ = os.ReadDir(cut)
			for _, e := range ents {
				if strings.HasSuffix(e.Name(), ".partial") || strings.HasPrefix(e.Name(), ".tmp-") {
					t.Errorf("left over: %s", e.Name())
				}
			}
		})
	}
}

func TestGenerateResumeRefusesOtherSettings(t *testing.T) {
	gen, _ := genTeacher(t)
	prompts, _ := genPromptFile(t, 6)
	out := filepath.Join(t.TempDir(), "gen")
	o := genOpts()
	if _, err := genRun(t, context.Background(), gen, prompts, out, o); err != nil {
		t.Fatal(err)
	}
	o.Sampling.Temperature = 0.5
	_, err := genRun(t, context.Background(), gen, prompts, out, o)
	if err == nil || !strings.Contains(err.Error(), "temperature was 0.9, now 0.5") {
		t.Fatalf("want a settings mismatch error, got %v", err)
	}
	// Other prompt data under the same name is noticed too.
	o.Sampling.Temperature = 0.9
	raw, _ := os.ReadFile(prompts)
	os.WriteFile(prompts, bytes.Replace(raw, []byte("number 1 "), []byte("number 100 "), 1), 0o644)
	_, err = genRun(t, context.Background(), gen, prompts, out, o)
	if err == nil || !strings.Contains(err.Error(), "the prompt data changed") {
		t.Fatalf("want a changed-data error, got %v", err)
	}
}

func TestGeneratePromptsFromMessagesAndBadRows(t *testing.T) {
	gen, _ := genTeacher(t)
	dir := t.TempDir()
	rows := []string{
		`{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi?"},{"role":"assistant","content":"old answer"}]}`,
		`{"messages":[{"role":"user","content":"Why is the sky blue?"}]}`,
		`{"messages":[{"role":"assistant","content":"only an answer"}]}`,
		`{"messages":[{"role":"user","content":"   "}]}`,
		`{"messages": "not a list"}`,
		`{"messages":[{"role":"user","content":"Why is the sky blue?"},{"role":"assistant","content":"another old answer"}]}`,
	}
	path := filepath.Join(dir, "chats.jsonl")
	os.WriteFile(path, []byte(strings.Join(rows, "\n")+"\n"), 0o644)
	o := genOpts()
	_, err := genRun(t, context.Background(), gen, path, filepath.Join(dir, "fail"), o)
	if err == nil || !strings.Contains(err.Error(), "chats.jsonl:3") || !strings.Contains(err.Error(), "bad_rows") {
		t.Fatalf("want an error naming row 3 and bad_rows, got %v", err)
	}
	o.BadRows = data.BadRowsSkip
	var dropped []int64
	o.OnDrop = func(i int64, err error) { dropped = append(dropped, i) }
	st, err := genRun(t, context.Background(), gen, path, filepath.Join(dir, "skip"), o)
	if err != nil {
		t.Fatal(err)
	}
	checkStatsAddUp(t, st)
	if st.Invalid != 3 || st.Duplicates != 1 || st.Written != 2 || fmt.Sprint(dropped) != "[2 3 4]" {
		t.Fatalf("stats %+v, dropped %v; want 3 invalid (rows 2-4), 1 duplicate, 2 written", st, dropped)
	}
	out := string(genReadOutput(t, filepath.Join(dir, "skip")))
	if strings.Contains(out, "old answer") || !strings.Contains(out, `"content":"Be brief."`) {
		t.Fatalf("the final assistant turn must be replaced by the teacher's, the system turn kept:\n%s", out)
	}
}

// fakeChat is an OpenAI-compatible chat server with injected failures.
type fakeChat struct {
	mu       sync.Mutex
	calls    map[string]int // per last user message
	total    atomic.Int64
	failures map[string][]string // per prompt: what the first calls return ("500", "bad", "429", "slow", "400")
}

func (f *fakeChat) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.total.Add(1)
	if r.URL.Path != "/v1/chat/completions" || r.Method != http.MethodPost {
		http.Error(w, "not found", 404)
		return
	}
	var req struct {
		Model       string         `json:"model"`
		Messages    []data.Message `json:"messages"`
		Temperature float64        `json:"temperature"`
		TopP        float64        `json:"top_p"`
		MaxTokens   int            `json:"max_tokens"`
		Seed        int64          `json:"seed"`
		N           int            `json:"n"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Model != "big-teacher" || req.N != 1 || req.MaxTokens != 32 || len(req.Messages) == 0 {
		http.Error(w, `{"error":"bad request"}`, 400)
		return
	}
	prompt := req.Messages[len(req.Messages)-1].Content
	f.mu.Lock()
	n := f.calls[prompt]
	f.calls[prompt]++
	var inject string
	if fl := f.failures[prompt]; n < len(fl) {
		inject = fl[n]
	}
	f.mu.Unlock()
	switch inject {
	case "500":
		http.Error(w, "internal error", 500)
		return
	case "429":
		w.Header().Set("Retry-After", "0")
		http.Error(w, "slow down", 429)
		return
	case "bad":
		w.Write([]byte(`{"choices":[{"message":{"role":"assistant"`))
		return
	case "nocontent":
		w.Write([]byte(`{"choices":[]}`))
		return
	case "slow":
		<-r.Context().Done() // only the client's timeout ends it, however loaded the machine
		return
	case "400":
		http.Error(w, `{"error":"max_tokens too large"}`, 400)
		return
	case "toolong":
		http.Error(w, `{"object":"error","message":"This model's maximum context length is 8192 tokens. However, you requested 9000 tokens","code":400}`, 400)
		return
	}
	reply := fmt.Sprintf("Answer to %q (seed %d, t=%.1f)", prompt, req.Seed, req.Temperature)
	json.NewEncoder(w).Encode(map[string]any{
		"choices": []map[string]any{{"index": 0, "message": map[string]string{"role": "assistant", "content": reply}, "finish_reason": "stop"}},
		"usage":   map[string]int{"prompt_tokens": 10, "completion_tokens": 7},
	})
}

func TestGenerateChatServerRetries(t *testing.T) {
	prompts, dups := genPromptFile(t, 20)
	fc := &fakeChat{calls: map[string]int{}, failures: map[string][]string{
		"Tell me fact number 0 about llamas.": {"500", "bad"},
		"Tell me fact number 3 about llamas.": {"429", "nocontent"},
		"Tell me fact number 7 about llamas.": {"slow"},
	}}
	srv := httptest.NewServer(fc)
	defer srv.Close()
	// The timeout is the "slow" prompt's only way out; a real answer takes microseconds.
	gen, err := distill.NewChatServer(distill.ChatServerOptions{BaseURL: srv.URL, Model: "big-teacher",
		Timeout: 2 * time.Second, MaxRetries: 3, Backoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	o := genOpts()
	o.Sampling.MaxNewTokens = 32
	o.Concurrency = 4
	o.DedupOutputs = true
	out := filepath.Join(t.TempDir(), "gen")
	st, err := genRun(t, context.Background(), gen, prompts, out, o)
	if err != nil {
		t.Fatal(err)
	}
	checkStatsAddUp(t, st)
	if unique := int64(20 - dups); st.Written != unique || st.Failed != 0 || st.Tokens != 7*unique {
		t.Fatalf("stats %+v; want all %d unique prompts written, 7 tokens each", st, unique)
	}
	if got := fc.total.Load(); got != int64(20-dups)+5 {
		t.Errorf("%d requests, want %d (one per prompt + 5 injected failures)", got, 20-dups+5)
	}
	all := string(genReadOutput(t, out))
	for i := range 20 {
		if i%5 == 4 {
			continue
		}
		if !strings.Contains(all, fmt.Sprintf(`Answer to \"Tell me fact number %d about llamas.\"`, i)) {
			t.Fatalf("reply to prompt %d missing", i)
		}
	}
	// The per-prompt seed is PromptSeed(seed, row) (31 bits on the wire).
	if want := fmt.Sprintf("seed %d,", distill.PromptSeed(11, 1)&0x7fffffff); !strings.Contains(all, want) {
		t.Fatalf("row 1's seed (%s) not sent", want)
	}
}

func TestGenerateChatServerFailures(t *testing.T) {
	prompts, _ := genPromptFile(t, 4)
	fc := &fakeChat{calls: map[string]int{}, failures: map[string][]string{
		"Tell me fact number 1 about llamas.": strings.Fields(strings.Repeat("500 ", 20)),
	}}
	srv := httptest.NewServer(fc)
	defer srv.Close()
	gen, err := distill.NewChatServer(distill.ChatServerOptions{BaseURL: srv.URL + "/v1/", Model: "big-teacher",
		MaxRetries: 2, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	o := genOpts()
	o.Sampling.MaxNewTokens = 32
	out := filepath.Join(t.TempDir(), "gen")
	// Retries exhausted: the run stops, keeping row 0, and says how to go on.
	st, err := genRun(t, context.Background(), gen, prompts, out, o)
	if err == nil || !strings.Contains(err.Error(), "giving up after 3 attempts") || !strings.Contains(err.Error(), "HTTP 500") ||
		!strings.Contains(err.Error(), "prompt row 1") || st.Written != 1 {
		t.Fatalf("want a give-up error at row 1 with row 0 kept, got %v (%+v)", err, st)
	}
	// Resumed with failures allowed: row 1 is counted as failed, the rest written.
	o.MaxFailures = 5
	st, err = genRun(t, context.Background(), gen, prompts, out, o)
	if err != nil || st.Failed != 1 || st.Written != 3 || st.Resumed != 1 {
		t.Fatalf("resume with failures allowed: %v, %+v", err, st)
	}
	// A prompt over the server's context is dropped and counted, not a failure.
	fc.mu.Lock()
	fc.failures["Tell me fact number 2 about llamas."] = []string{"toolong"}
	fc.calls = map[string]int{}
	fc.mu.Unlock()
	o = genOptsWith(32)
	o.MaxFailures = 1 // row 1 still fails
	st, err = genRun(t, context.Background(), gen, prompts, filepath.Join(t.TempDir(), "g1"), o)
	if err != nil || st.TooLong != 1 || st.Written != 2 || st.Failed != 1 {
		t.Fatalf("context-length 400: %v, %+v", err, st)
	}
	// Any other 400 is not retried.
	fc.mu.Lock()
	fc.failures["Tell me fact number 0 about llamas."] = []string{"400"}
	fc.calls = map[string]int{}
	fc.mu.Unlock()
	_, err = genRun(t, context.Background(), gen, prompts, filepath.Join(t.TempDir(), "g2"), genOptsWith(32))
	if err == nil || !strings.Contains(err.Error(), "HTTP 400") || strings.Contains(err.Error(), "giving up") {
		t.Fatalf("want a permanent HTTP 400 error, got %v", err)
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if n := fc.calls["Tell me fact number 0 about llamas."]; n != 1 {
		t.Fatalf("a 400 was retried: %d calls", n)
	}
}

func genOptsWith(maxNew int) distill.GenerateOptions {
	o := genOpts()
	o.Sampling.MaxNewTokens = maxNew
	return o
}

func TestGenerateDropsEmptyAndTruncated(t *testing.T) {
	g := genFunc(func(msgs []data.Message) distill.Reply {
		switch c := msgs[len(msgs)-1].Content; c {
		case "empty":
			return distill.Reply{Text: "  \n"}
		case "long":
			return distill.Reply{Text: "cut off", Truncated: true}
		case "same1", "same2":
			return distill.Reply{Text: "Same  answer"}
		default:
			return distill.Reply{Text: "ok " + c, Tokens: 2}
		}
	})
	convs := [][]data.Message{}
	for _, c := range []string{"a", "empty", "long", "same1", "same2", "b"} {
		convs = append(convs, []data.Message{{Role: "user", Content: c}})
	}
	o := distill.GenerateOptions{DedupOutputs: true}
	st, err := distill.Generate(context.Background(), g, distill.SlicePrompts(convs), t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	checkStatsAddUp(t, st)
	if st.Written != 3 || st.Empty != 1 || st.TooLong != 1 || st.DupOutputs != 1 || st.Tokens != 4 {
		t.Fatalf("stats %+v", st)
	}
}

type genFunc func([]data.Message) distill.Reply

func (f genFunc) Generate(_ context.Context, msgs []data.Message, _ distill.Sampling) (distill.Reply, error) {
	return f(msgs), nil
}
func (genFunc) Name() string { return "func" }
