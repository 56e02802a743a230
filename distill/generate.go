package distill

// Sequence-level distillation: a teacher answers prompts and the answers become a chat
// dataset that the student is fine-tuned on (`llamatune generate`).
//
// Generate streams prompts from a PromptSource, sends them to a Generator (an in-process model
// or an OpenAI-compatible server) several at a time, and writes the conversations with the
// teacher's reply, in input order, as JSONL (or Arrow IPC) shards of a messages dataset:
//
//	OUT/part-00000.jsonl     {"messages":[{"role":"user","content":"..."},{"role":"assistant","content":"..."}],"index":0}
//	OUT/part-00001.jsonl     ...
//	OUT/part-00002.jsonl.partial   the shard being written (ignored by readers)
//	OUT/generate.manifest    JSON: settings, prompts done, shards, stats
//
// A job's dataset path pointed at OUT (type messages, or auto) trains on it directly.
//
// Resuming: the manifest records how many input rows are done and how many bytes of the open
// shard hold them; it is replaced atomically after the shard is fsynced. A killed run started
// again with the same settings truncates the open shard to that length, re-reads (without
// generating) the rows already done to rebuild the duplicate filter, and goes on from the next
// row. Each prompt's sampling seed is a hash of the global seed and the prompt's row index, so
// a resumed run writes exactly what an uninterrupted one would.

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/llamatune/llamatune/data"
)

// Sampling are the sampling settings of one request.
type Sampling struct {
	MaxNewTokens int     // reply length limit in tokens (default 512)
	Temperature  float64 // 0 = greedy
	TopP         float64 // nucleus sampling; 0 or 1 = off
	Seed         uint64  // Generate passes a per-prompt seed derived from the global one
}

// Reply is a teacher's answer to one prompt.
type Reply struct {
	Text      string
	Tokens    int  // completion tokens (0 when the server does not say)
	Truncated bool // stopped at MaxNewTokens (finish_reason "length") rather than at end of turn
}

// Generator answers a conversation with the assistant's next turn. Implementations must be
// safe for concurrent use: Generate calls them from several goroutines.
type Generator interface {
	Generate(ctx context.Context, msgs []data.Message, s Sampling) (Reply, error)
	// Name identifies the teacher (model path or served model name); it is recorded in the
	// manifest and a resumed run must use the same one.
	Name() string
}

// ErrPromptTooLong is returned (wrapped) by a Generator for a prompt that does not fit the
// teacher's context; Generate drops the prompt and counts it in TooLong.
var ErrPromptTooLong = errors.New("prompt does not fit the teacher's context")

// GenerateOptions configure Generate. Zero values take the documented defaults.
type GenerateOptions struct {
	Sampling    Sampling // Seed is the global seed; prompt i is sampled with PromptSeed(Seed, i)
	Concurrency int      // requests in flight (default 4)
	ShardRows   int      // written rows per shard (default 1000)
	Format      string   // "jsonl" (default) or "arrow" (Arrow IPC files, converted as shards complete)
	// CommitEvery is how many prompts may finish between two manifest commits (default 16);
	// a commit also happens at least every CommitInterval (default 10 s) while results arrive.
	CommitEvery    int
	CommitInterval time.Duration

	DedupOutputs  bool // drop replies identical (after whitespace/case normalization) to an earlier one
	KeepTruncated bool // keep replies cut off at MaxNewTokens (dropped by default)
	MaxReplyChars int  // drop longer replies (0 = no limit)
	// MaxFailures is how many prompts may fail (after the Generator's own retries) before
	// Generate stops; 0 stops at the first failure, which is retried by the next resume.
	MaxFailures int64
	// BadRows: what to do with an input row that is not a usable prompt (no user turn, empty,
	// unreadable): data.BadRowsFail (default) stops with an error naming the row, data.BadRowsSkip
	// counts it in Invalid and goes on.
	BadRows data.BadRows
	// Source names the prompt data (e.g. the dataset path); recorded in the manifest.
	Source string

	Progress   io.Writer                    // progress bar (terminal) or a line every 5 s; nil = none
	Total      int64                        // prompts expected, for the progress bar (0 = unknown)
	OnProgress func(GenerateStats)          // called after every prompt, in input order
	OnDrop     func(index int64, err error) // called for each failed or invalid prompt that is skipped
}

// GenerateStats count what Generate did. They accumulate across resumed runs.
type GenerateStats struct {
	Prompts    int64 `json:"prompts"`     // input rows processed (every kind below included)
	Written    int64 `json:"written"`     // conversations written
	Duplicates int64 `json:"duplicates"`  // prompts skipped as duplicates of an earlier prompt
	DupOutputs int64 `json:"dup_outputs"` // replies dropped as identical to an earlier reply
	Empty      int64 `json:"empty"`       // replies dropped as empty
	TooLong    int64 `json:"too_long"`    // replies cut off / over MaxReplyChars, prompts over the context
	Invalid    int64 `json:"invalid"`     // rows that are not a usable prompt (BadRows skip)
	Failed     int64 `json:"failed"`      // prompts the teacher failed on (MaxFailures > 0)
	Tokens     int64 `json:"tokens"`      // completion tokens of the written replies
	Resumed    int64 `json:"-"`           // prompts already done when this run started
}

func (o *GenerateOptions) normalize() error {
	if o.Sampling.MaxNewTokens <= 0 {
		o.Sampling.MaxNewTokens = 512
	}
	if o.Sampling.Temperature < 0 {
		return fmt.Errorf("generate: temperature %v must be >= 0", o.Sampling.Temperature)
	}
	if o.Sampling.TopP < 0 || o.Sampling.TopP > 1 {
		return fmt.Errorf("generate: top_p %v must be in [0, 1]", o.Sampling.TopP)
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.ShardRows <= 0 {
		o.ShardRows = 1000
	}
	if o.CommitEvery <= 0 {
		o.CommitEvery = 16
	}
	if o.CommitInterval <= 0 {
		o.CommitInterval = 10 * time.Second
	}
	switch o.Format {
	case "":
		o.Format = "jsonl"
	case "jsonl", "arrow":
	default:
		return fmt.Errorf("generate: format %q: use jsonl or arrow", o.Format)
	}
	switch o.BadRows {
	case "":
		o.BadRows = data.BadRowsFail
	case data.BadRowsFail, data.BadRowsSkip:
	default:
		return fmt.Errorf("generate: bad_rows %q: use fail or skip", o.BadRows)
	}
	if o.MaxFailures < 0 {
		return fmt.Errorf("generate: max failures %d must be >= 0", o.MaxFailures)
	}
	return nil
}

// PromptSeed is the sampling seed of the prompt at row index of a run with seed seed.
func PromptSeed(seed uint64, index int64) uint64 {
	z := seed ^ (uint64(index)+1)*0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// PromptKey is the duplicate-detection hash of a conversation: roles and contents lower-cased
// with runs of white space collapsed.
func PromptKey(msgs []data.Message) uint64 {
	h := sha256.New()
	for _, m := range msgs {
		h.Write([]byte(normalizeText(m.Role)))
		h.Write([]byte{0})
		h.Write([]byte(normalizeText(m.Content)))
		h.Write([]byte{1})
	}
	return binary.LittleEndian.Uint64(h.Sum(nil))
}

func rollHash(h, key uint64) uint64 { return PromptSeed(h, int64(key)) }

func textKey(s string) uint64 {
	sum := sha256.Sum256([]byte(normalizeText(s)))
	return binary.LittleEndian.Uint64(sum[:])
}

func normalizeText(s string) string { return strings.ToLower(strings.Join(strings.Fields(s), " ")) }

// genTask is one input row on its way through the workers.
type genTask struct {
	index int64
	msgs  []data.Message
	key   uint64 // PromptKey of the prompt (0 for an invalid row)
	skip  int    // genSkip*: decided without the teacher
	err   error  // invalid row / source error
}

const (
	genRun = iota
	genSkipDup
	genSkipInvalid
	genSourceErr
)

type genResult struct {
	genTask
	reply Reply
	gerr  error // teacher error
}

// Generate answers every prompt of src with gen and writes the conversations to the directory
// out (see the comment at the top of this file for the layout), resuming a run that stopped there. It
// returns the statistics of the whole output (earlier runs included). On cancellation it
// commits every prompt finished in order and returns ctx.Err(); running it again resumes.
func Generate(ctx context.Context, gen Generator, src PromptSource, out string, o GenerateOptions) (GenerateStats, error) {
	if err := o.normalize(); err != nil {
		return GenerateStats{}, err
	}
	w, err := openGenWriter(out, genSettingsOf(gen, o), o)
	if err != nil {
		return GenerateStats{}, err
	}
	defer w.abandon()
	c := &genCollector{w: w, o: &o, stats: w.m.Stats, next: w.m.Done, lastCommit: time.Now()}
	c.stats.Resumed = w.m.Done
	seen, err := replayDone(src, w, out)
	if err != nil {
		return c.stats, err
	}

	parent := ctx
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	p := startGenPipeline(ctx, gen, src, w.m.Done, seen, &o)
	c.prog = newGenProgress(o.Progress, o.Total, c.stats)
	fatal := c.collect(ctx, p)
	cancel()
	for range p.results { // let the workers and the feeder finish
	}
	if err := c.commit(); err != nil && fatal == nil {
		fatal = err
	}
	c.prog.update(c.stats, true)
	if fatal != nil {
		return c.stats, fatal
	}
	if !p.fedAll || c.next != p.fedEnd { // read after the pipeline closed results
		if err := parent.Err(); err != nil {
			return c.stats, err
		}
		return c.stats, fmt.Errorf("generate: stopped after %d of the prompts; run again to resume", c.next)
	}
	return c.stats, w.finish()
}

// replayDone reads again the prompt rows a resumed run has done, rebuilding
// the duplicate filter, and checks that they are the rows the output was
// made from (the manifest's rolling hash of their prompt keys).
func replayDone(src PromptSource, w *genWriter, out string) (seen map[uint64]bool, err error) {
	seen = map[uint64]bool{}
	var inputHash uint64
	for i := int64(0); i < w.m.Done; i++ {
		p, err := src.Next()
		if err == io.EOF {
			return nil, fmt.Errorf("generate: %s says %d prompts are done but the prompt data has only %d rows; the data changed since — use a new --out directory", w.manifestPath(), w.m.Done, i)
		}
		var key uint64
		if err != nil && !data.IsRowError(err) {
			return nil, err
		}
		if err == nil {
			if msgs, perr := p.messages(); perr == nil {
				key = PromptKey(msgs)
				seen[key] = true
			}
		}
		inputHash = rollHash(inputHash, key)
	}
	if inputHash != w.m.InputHash {
		return nil, fmt.Errorf("generate: the first %d prompt rows are not the ones %s was made from; the prompt data changed — use a new --out directory", w.m.Done, out)
	}
	return seen, nil
}

// genPipeline is a feeder reading prompt rows in order and a pool of
// workers generating replies; results arrive out of order on results, at
// most len(slots) rows in flight (a slot is released when its row is
// settled, so sending on results never blocks).
type genPipeline struct {
	slots   chan struct{}
	work    chan genTask
	results chan genResult
	wg      sync.WaitGroup
	fedAll  bool  // the feeder reached the end of the prompts (read after results is closed)
	fedEnd  int64 // index one past the last row fed
}

func startGenPipeline(ctx context.Context, gen Generator, src PromptSource, from int64, seen map[uint64]bool, o *GenerateOptions) *genPipeline {
	window := 4*o.Concurrency + 16
	p := &genPipeline{slots: make(chan struct{}, window), work: make(chan genTask), results: make(chan genResult, window)}
	p.wg.Add(1 + o.Concurrency)
	go p.feed(ctx, src, from, seen)
	for range o.Concurrency {
		go p.generate(ctx, gen, o.Sampling)
	}
	go func() { p.wg.Wait(); close(p.results) }()
	return p
}

// feed reads rows in order from index from and decides duplicates and
// invalid rows on the spot; the others go to the workers.
func (p *genPipeline) feed(ctx context.Context, src PromptSource, from int64, seen map[uint64]bool) {
	defer p.wg.Done()
	defer close(p.work)
	for idx := from; ; idx++ {
		select {
		case p.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		t := genTask{index: idx}
		r, err := src.Next()
		if err == io.EOF {
			<-p.slots
			p.fedAll, p.fedEnd = true, idx
			return
		}
		switch {
		case err != nil && data.IsRowError(err):
			t.skip, t.err = genSkipInvalid, err
		case err != nil:
			t.skip, t.err = genSourceErr, err
		default:
			msgs, perr := r.messages()
			if perr != nil {
				t.skip, t.err = genSkipInvalid, perr
			} else if k := PromptKey(msgs); seen[k] {
				t.skip, t.key = genSkipDup, k
			} else {
				t.key = k
				seen[k] = true
				t.msgs = msgs
			}
		}
		if t.skip != genRun {
			p.results <- genResult{genTask: t} // never blocks: a slot is held
			if t.skip == genSourceErr {
				return
			}
			continue
		}
		select {
		case p.work <- t:
		case <-ctx.Done():
			return
		}
	}
}

// generate is one worker: each prompt is sampled with its own seed (from
// the run's seed and the row index), so a resumed run makes the same rows.
func (p *genPipeline) generate(ctx context.Context, gen Generator, sampling Sampling) {
	defer p.wg.Done()
	for t := range p.work {
		s := sampling
		s.Seed = PromptSeed(sampling.Seed, t.index)
		r, err := gen.Generate(ctx, t.msgs, s)
		p.results <- genResult{genTask: t, reply: r, gerr: err} // never blocks: a slot is held
	}
}

// genCollector settles the pipeline's results in prompt order, writes the
// rows and commits the output every CommitEvery rows or CommitInterval.
type genCollector struct {
	w           *genWriter
	o           *GenerateOptions
	stats       GenerateStats
	prog        *genProgress
	next        int64 // the next row index to settle
	sinceCommit int
	lastCommit  time.Time
}

func (c *genCollector) commit() error {
	c.w.m.Done, c.w.m.Stats = c.next, c.stats
	c.sinceCommit, c.lastCommit = 0, time.Now()
	return c.w.commit()
}

// collect runs until the results end or a row fails (returned); a row
// whose generation was cancelled in flight is left for a resume to redo.
func (c *genCollector) collect(ctx context.Context, p *genPipeline) error {
	pending := map[int64]genResult{}
	for r := range p.results {
		pending[r.index] = r
		for {
			r, ok := pending[c.next]
			if !ok {
				break
			}
			if r.skip == genRun && r.gerr != nil && ctx.Err() != nil {
				return nil // cancelled while in flight: not done, a resume redoes it
			}
			delete(pending, c.next)
			row, err := settle(r, &c.stats, c.o, c.w)
			if err != nil {
				return err
			}
			if row != nil {
				if err := c.w.write(r.index, row, r.reply.Tokens, &c.stats); err != nil {
					return err
				}
			}
			c.next++
			c.w.m.InputHash = rollHash(c.w.m.InputHash, r.key)
			<-p.slots
			c.stats.Prompts++
			c.sinceCommit++
			if c.o.OnProgress != nil {
				c.o.OnProgress(c.stats)
			}
			c.prog.update(c.stats, false)
			if c.w.shardFull() || c.sinceCommit >= c.o.CommitEvery || time.Since(c.lastCommit) >= c.o.CommitInterval {
				if err := c.commit(); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// settle decides what happens to one finished prompt: a row to write (nil for none) and the
// counters; an error stops the run.
func settle(r genResult, st *GenerateStats, o *GenerateOptions, w *genWriter) ([]data.Message, error) {
	drop := func(err error) {
		if o.OnDrop != nil {
			o.OnDrop(r.index, err)
		}
	}
	switch r.skip {
	case genSkipDup:
		st.Duplicates++
		return nil, nil
	case genSkipInvalid:
		if o.BadRows != data.BadRowsSkip {
			return nil, fmt.Errorf("generate: prompt row %d: %w (fix or remove the row, or skip such rows: --set bad_rows=skip / data.bad_rows: skip)", r.index, r.err)
		}
		st.Invalid++
		drop(r.err)
		return nil, nil
	case genSourceErr:
		return nil, fmt.Errorf("generate: reading prompt row %d: %w", r.index, r.err)
	}
	if r.gerr != nil {
		if errors.Is(r.gerr, ErrPromptTooLong) {
			st.TooLong++
			drop(r.gerr)
			return nil, nil
		}
		if st.Failed >= o.MaxFailures {
			return nil, fmt.Errorf("generate: prompt row %d: %w (the run is resumable: run the same command again; to skip prompts the teacher fails on, allow failures with --max-failures)", r.index, r.gerr)
		}
		st.Failed++
		drop(r.gerr)
		return nil, nil
	}
	text := strings.TrimSpace(r.reply.Text)
	switch {
	case text == "":
		st.Empty++
		return nil, nil
	case r.reply.Truncated && !o.KeepTruncated, o.MaxReplyChars > 0 && len(text) > o.MaxReplyChars:
		st.TooLong++
		return nil, nil
	}
	if o.DedupOutputs {
		k := textKey(text)
		if w.replies[k] {
			st.DupOutputs++
			return nil, nil
		}
		w.replies[k] = true
	}
	row := append(append(make([]data.Message, 0, len(r.msgs)+1), r.msgs...), data.Message{Role: "assistant", Content: text})
	return row, nil
}
