package data

import "encoding/json"

// Batch is what the trainer consumes.
//
// Attention rule: position i of a row may attend to position j only if DocStart[i] <= j <= i.
// Labels are aligned with InputIDs (not shifted; the model shifts by one itself), -100 = no
// loss. The first label of every document is -100, so no loss term ever crosses a document
// boundary.
type Batch struct {
	Rows, SeqLen int
	InputIDs     []int32 // [Rows*SeqLen]
	Labels       []int32 // [Rows*SeqLen]
	PositionIDs  []int32 // restart at 0 for every document
	DocStart     []int32 // index within its row where each position's document starts (padding: itself)
	Cursor       Cursor  // position of the pipeline after this batch
}

// packRow is one row being filled. Ready rows are never mutated again.
type packRow struct {
	IDs    []int32 `json:"ids"`
	Labels []int32 `json:"labels"`
	Docs   []int32 `json:"docs"` // document lengths, in order
}

func (r *packRow) free(seqLen int) int { return seqLen - len(r.IDs) }

func (r packRow) clone() packRow {
	return packRow{
		IDs:    append([]int32(nil), r.IDs...),
		Labels: append([]int32(nil), r.Labels...),
		Docs:   append([]int32(nil), r.Docs...),
	}
}

// packerState is the packer's carry-over: rows not yet handed out in a batch.
type packerState struct {
	Open  []packRow `json:"open,omitempty"`
	Ready []packRow `json:"ready,omitempty"`
}

// packer places documents (each at most seqLen long) into rows.
//
// Packing mode is best-fit over a pool of open rows: a document goes into the open row with the
// least free space that still holds it; when none does and the pool is full, the fullest open
// row is closed (its tail padded) and a new row is opened. Without packing every document gets
// its own row.
type packer struct {
	seqLen  int
	pool    int
	packing bool
	padID   int32
	open    []*packRow
	ready   []*packRow
}

func (p *packer) newRow() *packRow {
	return &packRow{IDs: make([]int32, 0, p.seqLen), Labels: make([]int32, 0, p.seqLen), Docs: make([]int32, 0, 4)}
}

func (p *packer) put(r *packRow, d Doc) {
	r.IDs = append(r.IDs, d.IDs...)
	start := len(r.Labels)
	r.Labels = append(r.Labels, d.Labels...)
	r.Labels[start] = IgnoreIndex // the first token of a document predicts nothing from the previous one
	r.Docs = append(r.Docs, int32(len(d.IDs)))
}

// add places one document; len(d.IDs) must be in [1, seqLen].
func (p *packer) add(d Doc) {
	if len(d.IDs) == 0 {
		return
	}
	if len(d.IDs) > p.seqLen {
		panic("packer: document longer than seq_len reached the packer")
	}
	if !p.packing {
		r := p.newRow()
		p.put(r, d)
		p.ready = append(p.ready, r)
		return
	}
	best := -1
	for i, r := range p.open {
		f := r.free(p.seqLen)
		if f >= len(d.IDs) && (best < 0 || f < p.open[best].free(p.seqLen)) {
			best = i
		}
	}
	if best < 0 {
		if len(p.open) >= p.pool {
			// Close the fullest open row.
			full := 0
			for i, r := range p.open {
				if len(r.IDs) > len(p.open[full].IDs) {
					full = i
				}
			}
			p.closeOpen(full)
		}
		p.open = append(p.open, p.newRow())
		best = len(p.open) - 1
	}
	r := p.open[best]
	p.put(r, d)
	if r.free(p.seqLen) == 0 {
		p.closeOpen(best)
	}
}

func (p *packer) closeOpen(i int) {
	p.ready = append(p.ready, p.open[i])
	p.open = append(p.open[:i], p.open[i+1:]...)
}

// flush closes every open row (end of data).
func (p *packer) flush() {
	p.ready = append(p.ready, p.open...)
	p.open = nil
}

// take builds a batch of n ready rows (fewer if partial and fewer are ready). It also returns
// the number of non-pad tokens in it.
func (p *packer) take(n int, partial bool) (*Batch, int) {
	if len(p.ready) < n {
		if !partial || len(p.ready) == 0 {
			return nil, 0
		}
		n = len(p.ready)
	}
	real := 0
	rows := p.ready[:n]
	b := &Batch{Rows: n, SeqLen: p.seqLen}
	size := n * p.seqLen
	b.InputIDs = make([]int32, size)
	b.Labels = make([]int32, size)
	b.PositionIDs = make([]int32, size)
	b.DocStart = make([]int32, size)
	for ri, r := range rows {
		o := ri * p.seqLen
		copy(b.InputIDs[o:], r.IDs)
		copy(b.Labels[o:], r.Labels)
		real += len(r.IDs)
		pos := 0
		for _, l := range r.Docs {
			for k := 0; k < int(l); k++ {
				b.PositionIDs[o+pos+k] = int32(k)
				b.DocStart[o+pos+k] = int32(pos)
			}
			pos += int(l)
		}
		for k := pos; k < p.seqLen; k++ {
			b.InputIDs[o+k] = p.padID
			b.Labels[o+k] = IgnoreIndex
			b.PositionIDs[o+k] = 0
			b.DocStart[o+k] = int32(k)
		}
	}
	clear(p.ready[:n])
	p.ready = p.ready[n:]
	return b, real
}

func (p *packer) state() packerState {
	var s packerState
	for _, r := range p.open {
		s.Open = append(s.Open, r.clone())
	}
	for _, r := range p.ready {
		s.Ready = append(s.Ready, *r) // ready rows are immutable
	}
	return s
}

func (p *packer) restore(s packerState) error {
	p.open, p.ready = nil, nil
	for _, rs := range [][]packRow{s.Open, s.Ready} {
		for _, r := range rs {
			if len(r.IDs) != len(r.Labels) || len(r.IDs) > p.seqLen {
				return errCursor("packer row has %d ids, %d labels (seq_len %d)", len(r.IDs), len(r.Labels), p.seqLen)
			}
			sum := 0
			for _, l := range r.Docs {
				if l <= 0 {
					return errCursor("packer row has a document of length %d", l)
				}
				sum += int(l)
			}
			if sum != len(r.IDs) {
				return errCursor("packer row document lengths sum to %d, not %d", sum, len(r.IDs))
			}
		}
	}
	for _, r := range s.Open {
		c := r.clone()
		c.IDs = append(make([]int32, 0, p.seqLen), c.IDs...)
		c.Labels = append(make([]int32, 0, p.seqLen), c.Labels...)
		p.open = append(p.open, &c)
	}
	for _, r := range s.Ready {
		c := r
		p.ready = append(p.ready, &c)
	}
	return nil
}

// packRowJSON is packRow on disk: labels are stored as the runs where they differ from the
// ids by being -100 (the usual case), or in full when they differ otherwise.
type packRowJSON struct {
	IDs    []int32    `json:"ids"`
	Masked [][2]int32 `json:"masked,omitempty"` // [start, end) runs of label -100
	Labels []int32    `json:"labels,omitempty"` // full labels, when not expressible as runs
	Docs   []int32    `json:"docs"`
}

func (r packRow) MarshalJSON() ([]byte, error) {
	j := packRowJSON{IDs: r.IDs, Docs: r.Docs}
	if j.IDs == nil {
		j.IDs = []int32{}
	}
	for i := 0; i < len(r.Labels); i++ {
		switch r.Labels[i] {
		case r.IDs[i]:
		case IgnoreIndex:
			if n := len(j.Masked); n > 0 && j.Masked[n-1][1] == int32(i) {
				j.Masked[n-1][1]++
			} else {
				j.Masked = append(j.Masked, [2]int32{int32(i), int32(i + 1)})
			}
		default:
			j.Masked, j.Labels = nil, r.Labels
			return json.Marshal(j)
		}
	}
	return json.Marshal(j)
}

func (r *packRow) UnmarshalJSON(b []byte) error {
	var j packRowJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	r.IDs, r.Docs = j.IDs, j.Docs
	if j.Labels != nil {
		r.Labels = j.Labels
		return nil
	}
	r.Labels = make([]int32, len(j.IDs))
	copy(r.Labels, j.IDs)
	for _, m := range j.Masked {
		if m[0] < 0 || m[1] > int32(len(r.Labels)) || m[0] > m[1] {
			return errCursor("packer row: masked run %v outside the row", m)
		}
		for i := m[0]; i < m[1]; i++ {
			r.Labels[i] = IgnoreIndex
		}
	}
	return nil
}
