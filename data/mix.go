package data

import (
	"fmt"
	"io"
	"path/filepath"
	"sync/atomic"
)

// dsCursor is the exact position of one dataset's stream.
//
// Shuffling is windowed: each pass is cut into consecutive windows of ShuffleBuffer rows and
// each window is permuted with a seed derived from (seed, dataset, epoch, window). Resuming
// re-reads only the current window from Start, so the cursor stays a few integers no matter how
// big the buffer is. With shuffling on, the shard order is permuted per epoch too.
type dsCursor struct {
	Epoch  int   `json:"epoch"`  // passes completed
	Window int64 `json:"window"` // index of the current window in this pass
	Start  Pos   `json:"start"`  // where the current window starts
	End    Pos   `json:"end"`    // where it ends (the next window's start)
	Len    int   `json:"len"`    // rows in the current window (0: none loaded yet)
	Taken  int   `json:"taken"`  // rows of the window already handed out
	Done   bool  `json:"done,omitempty"`
}

// datasetStream reads one dataset: its passes, shard order, window shuffle and eval split.
type datasetStream struct {
	idx    int
	spec   DatasetSpec
	shards []shard
	typ    Type
	o      *Options
	bad    *atomic.Int64
	rows   *atomic.Int64

	cur    dsCursor
	order  []int
	orderE int // epoch order was computed for (-1: none)
	rd     rowReader
	rdPos  Pos // position of rd (with Shard)
	window []Example
	perm   []int
	loaded bool
}

func (d *datasetStream) shuffle() bool { return d.o.ShuffleBuffer > 1 }

func (d *datasetStream) shardOrder(epoch int) []int {
	if d.orderE == epoch && d.order != nil {
		return d.order
	}
	if d.shuffle() {
		d.order = permutation(len(d.shards), mix(d.o.Seed, uint64(d.idx), uint64(epoch), 0x5bd1e995))
	} else {
		d.order = make([]int, len(d.shards))
		for i := range d.order {
			d.order[i] = i
		}
	}
	d.orderE = epoch
	return d.order
}

func (d *datasetStream) closeReader() {
	if d.rd != nil {
		d.rd.close()
		d.rd = nil
	}
}

// keep applies the eval split by a stable hash of (shard file name, row).
func (d *datasetStream) keep(sh shard, row int64) bool {
	if d.o.EvalFraction <= 0 || d.o.Split == SplitAll {
		return true
	}
	h := mix(strHash(filepath.Base(sh.path)), uint64(row), 0xe7a1)
	u := float64(h>>11) / (1 << 53)
	if d.o.Split == SplitEval {
		return u < d.o.EvalFraction
	}
	return u >= d.o.EvalFraction
}

// readRow reads the next raw row of the current pass starting at d.rdPos; io.EOF at pass end.
func (d *datasetStream) readRow() (Example, error) {
	order := d.shardOrder(d.cur.Epoch)
	for {
		if d.rdPos.Shard >= len(order) {
			return Example{}, io.EOF
		}
		sh := d.shards[order[d.rdPos.Shard]]
		if d.rd == nil {
			rd, err := openShard(sh, d.typ, d.spec.Columns, d.rdPos)
			if err != nil {
				return Example{}, err
			}
			d.rd = rd
		}
		ex, err := d.rd.next()
		if err == io.EOF {
			d.closeReader()
			d.rdPos = Pos{Shard: d.rdPos.Shard + 1}
			continue
		}
		p := d.rd.pos()
		p.Shard = d.rdPos.Shard
		d.rdPos = p
		if d.rows != nil {
			d.rows.Add(1)
		}
		if err != nil {
			if !IsRowError(err) {
				return Example{}, err
			}
			if !d.keep(sh, ex.Loc.Row) {
				continue
			}
			if d.o.BadRows == BadRowsSkip {
				d.bad.Add(1)
				if d.o.OnBadRow != nil {
					d.o.OnBadRow(err)
				}
				continue
			}
			return Example{}, failRow(err)
		}
		if !d.keep(sh, ex.Loc.Row) {
			continue
		}
		ex.Dataset = d.idx
		return ex, nil
	}
}

// fill loads the window starting at d.cur.Start.
func (d *datasetStream) fill() error {
	if d.rd == nil || d.rdPos != d.cur.Start {
		d.closeReader()
		d.rdPos = d.cur.Start
	}
	size := max(d.o.ShuffleBuffer, 1)
	d.window = d.window[:0]
	for len(d.window) < size {
		ex, err := d.readRow()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		d.window = append(d.window, ex)
	}
	d.cur.End = d.rdPos
	if d.cur.Len != 0 && d.cur.Len != len(d.window) {
		return fmt.Errorf("dataset %s: window %d now has %d rows, the cursor says %d; the data changed since the checkpoint",
			d.spec.Name, d.cur.Window, len(d.window), d.cur.Len)
	}
	d.cur.Len = len(d.window)
	if d.shuffle() {
		d.perm = permutation(len(d.window), mix(d.o.Seed, uint64(d.idx), uint64(d.cur.Epoch), uint64(d.cur.Window)))
	} else {
		d.perm = d.perm[:0]
		for i := range d.window {
			d.perm = append(d.perm, i)
		}
	}
	d.loaded = true
	return nil
}

func (d *datasetStream) next() (Example, error) {
	for {
		if d.cur.Done {
			return Example{}, io.EOF
		}
		if d.loaded && d.cur.Taken < d.cur.Len {
			ex := d.window[d.perm[d.cur.Taken]]
			d.window[d.perm[d.cur.Taken]] = Example{} // let it go
			d.cur.Taken++
			return ex, nil
		}
		if !d.loaded && d.cur.Len > 0 && d.cur.Taken < d.cur.Len {
			// Resuming inside a window: rebuild it, skip what was handed out.
			if err := d.fill(); err != nil {
				return Example{}, err
			}
			for i := 0; i < d.cur.Taken; i++ {
				d.window[d.perm[i]] = Example{}
			}
			continue
		}
		// Start the next window.
		if d.cur.Len > 0 {
			if d.cur.Len < max(d.o.ShuffleBuffer, 1) && d.cur.End.Shard >= len(d.shards) {
				d.nextEpoch()
				continue
			}
			d.cur.Start = d.cur.End
			d.cur.Window++
		}
		d.cur.Len, d.cur.Taken = 0, 0
		if err := d.fill(); err != nil {
			return Example{}, err
		}
		if d.cur.Len == 0 {
			if d.cur.Window == 0 && d.cur.Epoch == 0 {
				return Example{}, fmt.Errorf("dataset %s: no rows (after the eval split and skipped bad rows); the dataset is empty", d.spec.Name)
			}
			if d.cur.Window == 0 {
				// A pass with no rows: nothing can come of further passes.
				d.cur.Done = true
				return Example{}, io.EOF
			}
			d.nextEpoch()
		}
	}
}

func (d *datasetStream) nextEpoch() {
	d.closeReader()
	d.loaded = false
	d.cur.Epoch++
	d.cur = dsCursor{Epoch: d.cur.Epoch}
	d.rdPos = Pos{}
	if d.spec.Epochs > 0 && d.cur.Epoch >= d.spec.Epochs {
		d.cur.Done = true
	}
}

// mixCursor is the position of the whole mixture.
type mixCursor struct {
	RNG      uint64     `json:"rng"`
	Datasets []dsCursor `json:"datasets"`
	Done     bool       `json:"done,omitempty"`
}

func (m mixCursor) clone() mixCursor {
	m.Datasets = append([]dsCursor(nil), m.Datasets...)
	return m
}

// mixture interleaves datasets, drawing each example's dataset by weight.
type mixture struct {
	ds   []*datasetStream
	rng  rng
	stop Stop
	done bool
}

func (m *mixture) cursor() mixCursor {
	c := mixCursor{RNG: m.rng.s, Done: m.done, Datasets: make([]dsCursor, len(m.ds))}
	for i, d := range m.ds {
		c.Datasets[i] = d.cur
	}
	return c
}

func (m *mixture) restore(c mixCursor) error {
	if len(c.Datasets) != len(m.ds) {
		return fmt.Errorf("cursor has %d datasets, the job has %d", len(c.Datasets), len(m.ds))
	}
	m.rng.s, m.done = c.RNG, c.Done
	for i, d := range m.ds {
		d.closeReader()
		d.cur = c.Datasets[i]
		d.loaded = false
		d.rdPos = Pos{Shard: -1}
	}
	return nil
}

func (m *mixture) close() {
	for _, d := range m.ds {
		d.closeReader()
	}
}

func (m *mixture) next() (Example, error) {
	for {
		if m.done {
			return Example{}, io.EOF
		}
		total := 0.0
		for _, d := range m.ds {
			if !d.cur.Done {
				total += d.spec.Weight
			}
		}
		if total == 0 {
			m.done = true
			return Example{}, io.EOF
		}
		var pick *datasetStream
		if len(m.ds) == 1 {
			pick = m.ds[0]
		} else {
			x := m.rng.float() * total
			for _, d := range m.ds {
				if d.cur.Done {
					continue
				}
				pick = d
				if x < d.spec.Weight {
					break
				}
				x -= d.spec.Weight
			}
		}
		ex, err := pick.next()
		if err == io.EOF {
			if m.stop == StopFirstExhausted {
				m.done = true
			}
			continue
		}
		return ex, err
	}
}
