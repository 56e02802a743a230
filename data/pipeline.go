package data

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
)

// Stats counts what went through a pipeline.
type Stats struct {
	RowsRead      int64 `json:"rows_read"`       // raw rows read (re-reads after a resume included)
	Examples      int64 `json:"examples"`        // examples tokenized
	BadRows       int64 `json:"bad_rows"`        // rows skipped under bad_rows: skip
	Docs          int64 `json:"docs"`            // documents placed into rows
	Truncated     int64 `json:"truncated"`       // documents longer than seq_len (truncated or split)
	DroppedLong   int64 `json:"dropped_long"`    // documents dropped by truncation: drop
	DroppedNoLoss int64 `json:"dropped_no_loss"` // documents with no trained token (e.g. no assistant turn)
	Rows          int64 `json:"rows"`            // rows handed out
	Batches       int64 `json:"batches"`
	Tokens        int64 `json:"tokens"`         // non-pad tokens handed out
	TrainedTokens int64 `json:"trained_tokens"` // labels != -100
	PadTokens     int64 `json:"pad_tokens"`
}

// Efficiency is the packing efficiency: non-pad tokens / all tokens handed out.
func (s Stats) Efficiency() float64 {
	if s.Tokens+s.PadTokens == 0 {
		return 0
	}
	return float64(s.Tokens) / float64(s.Tokens+s.PadTokens)
}

// item is one formatted example with the mixture position right after it.
type item struct {
	f   formatted
	ex  *Example // kept only for ExampleStream
	cur mixCursor
}

type chunk struct {
	exs   []Example
	curs  []mixCursor
	items []item
	err   error // fatal error after the items
	eof   bool  // end of data after the items
	done  chan struct{}
}

// Pipeline streams batches. It is not safe for concurrent use.
type Pipeline struct {
	o      Options
	fmtr   *formatter
	mix    *mixture
	pk     *packer
	fp     string
	bad    atomic.Int64
	rows   atomic.Int64
	stats  Stats
	cur    mixCursor // after the last example consumed
	batchN int64

	keepExamples bool
	started      bool
	ordered      chan *chunk
	quit         chan struct{}
	wg           sync.WaitGroup
	pending      *chunk
	pendingI     int
	finished     bool
	err          error
	closeOnce    sync.Once
}

// New opens a pipeline. With from != nil it continues exactly after the batch that cursor came with.
func New(opts Options, from *Cursor) (*Pipeline, error) {
	if err := opts.normalize(); err != nil {
		return nil, err
	}
	p := &Pipeline{o: opts}
	if cb := opts.OnBadRow; cb != nil {
		var mu sync.Mutex // reader and consumer goroutines both report
		p.o.OnBadRow = func(err error) {
			mu.Lock()
			defer mu.Unlock()
			cb(err)
		}
	}
	if p.o.PadID < 0 {
		p.o.PadID = 0
		if p.o.Tokenizer != nil {
			p.o.PadID = p.o.Tokenizer.EOS()
		}
	}
	p.fmtr = newFormatter(&p.o)
	p.pk = &packer{seqLen: p.o.SeqLen, pool: p.o.PackPool, packing: p.o.Packing, padID: int32(p.o.PadID)}
	p.mix = &mixture{rng: rng{s: mix(p.o.Seed, 0x3c6ef372fe94f82b)}, stop: p.o.Stop}
	var allShards [][]shard
	var types []Type
	for i, spec := range p.o.Datasets {
		shards, err := resolveShards(spec)
		if err != nil {
			return nil, err
		}
		typ := spec.Type
		if typ == TypeAuto {
			if typ, err = detectTypeOf(shards[0], spec.Columns); err != nil {
				return nil, fmt.Errorf("dataset %s: %w", spec.Name, err)
			}
		}
		if typ != TypeTokenized && p.o.Tokenizer == nil {
			return nil, fmt.Errorf("dataset %s is of type %s and needs a tokenizer; set model: in the job (or use pre-tokenized input_ids)", spec.Name, typ)
		}
		allShards = append(allShards, shards)
		types = append(types, typ)
		p.mix.ds = append(p.mix.ds, &datasetStream{idx: i, spec: spec, shards: shards, typ: typ, o: &p.o, bad: &p.bad, rows: &p.rows, orderE: -1})
	}
	p.fp = fingerprint(&p.o, allShards, types)
	p.cur = p.mix.cursor()
	if from != nil && !from.IsZero() {
		if from.Fingerprint != p.fp {
			return nil, fmt.Errorf("data cursor was made for another data configuration or other files (fingerprint %s, now %s); restore the original data section or resume without the data cursor", from.Fingerprint, p.fp)
		}
		if err := p.mix.restore(from.Mix); err != nil {
			return nil, errCursor("%v", err)
		}
		if err := p.pk.restore(from.Packer); err != nil {
			return nil, err
		}
		p.cur = from.Mix.clone()
		p.batchN = from.Batches
	}
	return p, nil
}

// Types returns the example type of each dataset (auto types resolved).
func (p *Pipeline) Types() []Type {
	out := make([]Type, len(p.mix.ds))
	for i, d := range p.mix.ds {
		out[i] = d.typ
	}
	return out
}

// Options returns the normalized options.
func (p *Pipeline) Options() Options { return p.o }

// Stats returns the counts so far.
func (p *Pipeline) Stats() Stats {
	s := p.stats
	s.BadRows = p.bad.Load()
	s.RowsRead = p.rows.Load()
	return s
}

// Report says in one line what of the data was not trained as written: rows skipped under
// bad_rows: skip and documents dropped by truncation: drop (counts so far); "" when none.
func (p *Pipeline) Report() string {
	s := p.Stats()
	var parts []string
	if s.DroppedLong > 0 {
		parts = append(parts, fmt.Sprintf("%d documents dropped as longer than seq_len %d (truncation: drop; split or truncate keeps them)",
			s.DroppedLong, p.o.SeqLen))
	}
	if s.BadRows > 0 {
		parts = append(parts, fmt.Sprintf("%d bad rows skipped (bad_rows: skip)", s.BadRows))
	}
	if len(parts) == 0 {
		return ""
	}
	return "data: " + strings.Join(parts, "; ")
}

func (p *Pipeline) start() {
	p.started = true
	p.quit = make(chan struct{})
	p.ordered = make(chan *chunk, p.o.Workers*2)
	work := make(chan *chunk, p.o.Workers*2)
	for w := 0; w < p.o.Workers; w++ {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for c := range work {
				c.items = make([]item, len(c.exs))
				for i := range c.exs {
					c.items[i] = item{f: p.safeFormat(&c.exs[i]), cur: c.curs[i]}
					if p.keepExamples {
						c.items[i].ex = &c.exs[i]
					} else {
						c.exs[i] = Example{}
					}
				}
				close(c.done)
			}
		}()
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer close(work)
		defer close(p.ordered)
		defer p.mix.close()
		const chunkSize = 32
		for {
			c := &chunk{done: make(chan struct{})}
			for len(c.exs) < chunkSize {
				ex, err := p.mix.next()
				if err == io.EOF {
					c.eof = true
					break
				}
				if err != nil {
					c.err = err
					break
				}
				c.exs = append(c.exs, ex)
				c.curs = append(c.curs, p.mix.cursor())
			}
			select {
			case p.ordered <- c:
			case <-p.quit:
				return
			}
			select {
			case work <- c:
			case <-p.quit:
				return
			}
			if c.eof || c.err != nil {
				return
			}
		}
	}()
}

func (p *Pipeline) safeFormat(ex *Example) (f formatted) {
	defer func() {
		if r := recover(); r != nil {
			f = formatted{err: rowErr(ex.Loc, "could not be tokenized: %v", r)}
		}
	}()
	return p.fmtr.format(ex)
}

// nextItem returns the next formatted example in order; io.EOF at the end.
func (p *Pipeline) nextItem() (*item, error) {
	if !p.started {
		p.start()
	}
	for {
		if p.pending != nil {
			c := p.pending
			if p.pendingI < len(c.items) {
				it := &c.items[p.pendingI]
				p.pendingI++
				return it, nil
			}
			p.pending = nil
			if c.err != nil {
				return nil, c.err
			}
			if c.eof {
				return nil, io.EOF
			}
		}
		c, ok := <-p.ordered
		if !ok {
			return nil, io.EOF
		}
		<-c.done
		p.pending, p.pendingI = c, 0
	}
}

// consume applies one item's policy and counts; it returns the documents to pack.
func (p *Pipeline) consume(it *item) ([]Doc, error) {
	p.cur = it.cur
	f := it.f
	if f.err != nil {
		if IsRowError(f.err) && p.o.BadRows == BadRowsSkip {
			p.bad.Add(1)
			if p.o.OnBadRow != nil {
				p.o.OnBadRow(f.err)
			}
			return nil, nil
		}
		if IsRowError(f.err) {
			return nil, failRow(f.err)
		}
		return nil, f.err
	}
	p.stats.Examples++
	p.stats.Truncated += int64(f.st.truncated)
	p.stats.DroppedLong += int64(f.st.droppedLong)
	p.stats.DroppedNoLoss += int64(f.st.droppedNoLoss)
	p.stats.Docs += int64(len(f.docs))
	return f.docs, nil
}

// Next returns the next batch, or io.EOF after the last one.
func (p *Pipeline) Next() (*Batch, error) {
	if p.err != nil {
		return nil, p.err
	}
	for {
		if b, real := p.pk.take(p.o.BatchRows, p.finished && !p.o.DropLast); b != nil {
			return p.emit(b, real), nil
		}
		if p.finished {
			return nil, io.EOF
		}
		it, err := p.nextItem()
		if err == io.EOF {
			p.finished = true
			p.pk.flush()
			continue
		}
		if err != nil {
			p.err = err
			return nil, err
		}
		docs, err := p.consume(it)
		if err != nil {
			p.err = err
			return nil, err
		}
		for _, d := range docs {
			p.pk.add(d)
		}
	}
}

func (p *Pipeline) emit(b *Batch, real int) *Batch {
	p.batchN++
	p.stats.Batches++
	p.stats.Rows += int64(b.Rows)
	p.stats.Tokens += int64(real)
	p.stats.PadTokens += int64(len(b.InputIDs) - real)
	for _, l := range b.Labels {
		if l != IgnoreIndex {
			p.stats.TrainedTokens++
		}
	}
	b.Cursor = Cursor{Version: cursorVersion, Fingerprint: p.fp, Mix: p.cur.clone(), Packer: p.pk.state(), Batches: p.batchN}
	return b
}

// Close stops the background readers. It is safe to call more than once.
func (p *Pipeline) Close() error {
	p.closeOnce.Do(func() {
		if p.started {
			close(p.quit)
			// Drain so that the producer and workers can finish.
			go func() {
				for range p.ordered {
				}
			}()
			p.wg.Wait()
		} else {
			p.mix.close()
		}
	})
	return nil
}

// Inspected is one example as the packer would receive it, for inspection tools.
type Inspected struct {
	Example Example
	Docs    []Doc // after truncation; documents with no trained token are left out
	Err     error // the row's error when bad_rows is skip (Docs is empty then)
}

// NextExample returns the next example in pipeline order with its documents, instead of
// batches; io.EOF at the end. Don't mix it with Next on the same pipeline.
func (p *Pipeline) NextExample() (*Inspected, error) {
	if !p.started {
		p.keepExamples = true
	}
	it, err := p.nextItem()
	if err != nil {
		return nil, err
	}
	out := &Inspected{}
	if it.ex != nil {
		out.Example = *it.ex
	}
	docs, err := p.consume(it)
	if err != nil {
		return nil, err
	}
	out.Docs = docs
	if it.f.err != nil {
		out.Err = it.f.err
	}
	return out, nil
}
