package distill

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/train"
)

// ShardReaderOptions configure OpenShards.
type ShardReaderOptions struct {
	// BatchRows is the rows per batch handed out (the job's micro-batch
	// size; default 1). The last batch may hold fewer.
	BatchRows int
	// From continues after the batch this cursor came with (Cursor.Batches
	// counts batches of BatchRows rows); nil starts at the first row.
	From *data.Cursor
	// Keep is how many recent batches TopK can still be asked about
	// (default 16; older ones are dropped to bound memory).
	Keep int
}

// ShardReader reads teacher-logits shards back: it is both the batch stream
// (Next / Close, like a data pipeline) and the Teacher for the batches it
// handed out (TopK looks the batch up by pointer).
type ShardReader struct {
	dir  string
	man  *ShardManifest
	o    ShardReaderOptions
	fp   string
	mu   sync.Mutex
	kept map[*data.Batch]*TopK
	ring []*data.Batch

	shard   int // index of the open shard
	f       *os.File
	r       *ipc.FileReader
	rec     int               // next record of the open shard
	cur     arrow.RecordBatch // record being consumed
	curRow  int
	batches int64
	skip    int64 // rows still to skip (resume)
}

var (
	_ Teacher       = (*ShardReader)(nil)
	_ train.Batches = (*ShardReader)(nil)
)

// OpenShards opens the shard directory dir written by WriteShards.
func OpenShards(dir string, o ShardReaderOptions) (*ShardReader, error) {
	man, err := ReadShardManifest(dir)
	if err != nil {
		return nil, err
	}
	if len(man.Shards) == 0 {
		return nil, fmt.Errorf("%s: the manifest lists no shards; the teacher-logits run wrote nothing yet", dir)
	}
	if o.BatchRows <= 0 {
		o.BatchRows = 1
	}
	if o.Keep <= 0 {
		o.Keep = 16
	}
	for _, s := range man.Shards {
		p := filepath.Join(dir, s.File)
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("%s: shard listed in %s is missing: %v", p, ShardManifestName, err)
		}
		if st.Size() != s.Bytes {
			return nil, fmt.Errorf("%s: %d bytes, the manifest says %d: the shard is truncated or was replaced; re-run llamatune teacher-logits", p, st.Size(), s.Bytes)
		}
	}
	sr := &ShardReader{dir: dir, man: man, o: o, kept: map[*data.Batch]*TopK{}, shard: -1,
		fp: "teacher-logits:" + man.DataHash}
	if o.From != nil && !o.From.IsZero() {
		if o.From.Fingerprint != sr.fp {
			return nil, fmt.Errorf("%s: the cursor was made for other data (fingerprint %s, these shards %s); resume without the data cursor", dir, o.From.Fingerprint, sr.fp)
		}
		sr.batches = o.From.Batches
		sr.skip = o.From.Batches * int64(o.BatchRows)
		if sr.skip > man.Rows {
			return nil, fmt.Errorf("%s: the cursor is at batch %d (%d rows) but the shards hold %d rows", dir, o.From.Batches, sr.skip, man.Rows)
		}
	}
	return sr, nil
}

// Manifest is the directory's manifest.
func (sr *ShardReader) Manifest() *ShardManifest { return sr.man }

// Info is the teacher that wrote the shards.
func (sr *ShardReader) Info() Info { return sr.man.Teacher }

// Close closes the open shard.
func (sr *ShardReader) Close() error {
	sr.closeShard()
	sr.mu.Lock()
	sr.kept, sr.ring = map[*data.Batch]*TopK{}, nil
	sr.mu.Unlock()
	return nil
}

func (sr *ShardReader) closeShard() {
	if sr.cur != nil {
		sr.cur.Release()
		sr.cur = nil
	}
	if sr.r != nil {
		sr.r.Close()
		sr.r = nil
	}
	if sr.f != nil {
		sr.f.Close()
		sr.f = nil
	}
}

func (sr *ShardReader) path() string { return filepath.Join(sr.dir, sr.man.Shards[sr.shard].File) }

// openNext opens the next shard; io.EOF after the last.
func (sr *ShardReader) openNext() error {
	sr.closeShard()
	sr.shard++
	// Skip whole shards while resuming.
	for sr.shard < len(sr.man.Shards) && sr.skip >= sr.man.Shards[sr.shard].Rows {
		sr.skip -= sr.man.Shards[sr.shard].Rows
		sr.shard++
	}
	if sr.shard >= len(sr.man.Shards) {
		return io.EOF
	}
	p := sr.path()
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("%s: %v", p, err)
	}
	r, err := ipc.NewFileReader(f, ipc.WithAllocator(memory.NewGoAllocator()))
	if err != nil {
		f.Close()
		return fmt.Errorf("%s: not a readable Arrow IPC file (%v): the shard is damaged or truncated; re-run llamatune teacher-logits into a fresh directory", p, err)
	}
	if err := checkShardSchema(r.Schema(), sr.man); err != nil {
		r.Close()
		f.Close()
		return fmt.Errorf("%s: %v", p, err)
	}
	sr.f, sr.r, sr.rec = f, r, 0
	return nil
}

func checkShardSchema(s *arrow.Schema, man *ShardManifest) error {
	want := ShardSchema(man.K, man.SeqLen)
	if !s.Equal(want) {
		return fmt.Errorf("schema %v is not a teacher-logits shard's (%v)", s, want)
	}
	md := s.Metadata()
	if i := md.FindKey("llamatune.k"); i < 0 || md.Values()[i] != strconv.Itoa(man.K) {
		return fmt.Errorf("schema metadata llamatune.k differs from the manifest's k %d", man.K)
	}
	return nil
}

// nextRecord makes sr.cur the next record with rows left.
func (sr *ShardReader) nextRecord() error {
	for {
		if sr.cur != nil && sr.curRow < int(sr.cur.NumRows()) {
			return nil
		}
		if sr.cur != nil {
			sr.cur.Release()
			sr.cur = nil
		}
		if sr.r == nil || sr.rec >= sr.r.NumRecords() {
			if err := sr.openNext(); err != nil {
				return err
			}
			continue
		}
		rec, err := sr.r.RecordBatch(sr.rec)
		if err != nil {
			return fmt.Errorf("%s: record %d: %v: the shard is damaged; re-run llamatune teacher-logits into a fresh directory", sr.path(), sr.rec, err)
		}
		rec.Retain()
		sr.cur, sr.curRow = rec, 0
		sr.rec++
		if sr.skip > 0 {
			n := min(sr.skip, rec.NumRows())
			sr.curRow = int(n)
			sr.skip -= n
		}
	}
}

// Next returns the next batch of up to BatchRows rows, io.EOF at the end.
func (sr *ShardReader) Next() (*data.Batch, error) {
	S, K := sr.man.SeqLen, sr.man.K
	b := &data.Batch{SeqLen: S}
	tk := &TopK{K: K}
	for b.Rows < sr.o.BatchRows {
		err := sr.nextRecord()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if err := sr.appendRow(b, tk); err != nil {
			return nil, err
		}
	}
	if b.Rows == 0 {
		return nil, io.EOF
	}
	sr.batches++
	b.Cursor = data.Cursor{Version: 1, Fingerprint: sr.fp, Batches: sr.batches}
	sr.mu.Lock()
	sr.kept[b] = tk
	sr.ring = append(sr.ring, b)
	if len(sr.ring) > sr.o.Keep {
		delete(sr.kept, sr.ring[0])
		sr.ring[0] = nil
		sr.ring = sr.ring[1:]
	}
	sr.mu.Unlock()
	return b, nil
}

// appendRow moves row curRow of the current record into b and tk.
func (sr *ShardReader) appendRow(b *data.Batch, tk *TopK) error {
	S, K := sr.man.SeqLen, sr.man.K
	rec, row := sr.cur, sr.curRow
	bad := func(col string, got, want int) error {
		return fmt.Errorf("%s: record %d row %d: column %s holds %d values, want %d: the shard is damaged; re-run llamatune teacher-logits", sr.path(), sr.rec-1, row, col, got, want)
	}
	ints := func(c int, want int) ([]int32, error) {
		l := rec.Column(c).(*array.List)
		if l.IsNull(row) {
			return nil, bad(rec.ColumnName(c), 0, want)
		}
		s, e := l.ValueOffsets(row)
		if int(e-s) != want {
			return nil, bad(rec.ColumnName(c), int(e-s), want)
		}
		return l.ListValues().(*array.Int32).Int32Values()[s:e], nil
	}
	dst := []*[]int32{&b.InputIDs, &b.Labels, &b.PositionIDs, &b.DocStart}
	for c := 0; c < 4; c++ {
		v, err := ints(c, S)
		if err != nil {
			return err
		}
		*dst[c] = append(*dst[c], v...)
	}
	deltas, err := ints(4, S*K)
	if err != nil {
		return err
	}
	l := rec.Column(5).(*array.List)
	s, e := l.ValueOffsets(row)
	if l.IsNull(row) || int(e-s) != S*K {
		return bad("topk_logprobs", int(e-s), S*K)
	}
	f16 := l.ListValues().(*array.Float16).Values()[s:e]
	V := sr.man.Teacher.VocabSize
	pairs := make([]idLogProb, K)
	for p := 0; p < S; p++ {
		id := int32(0)
		for j := 0; j < K; j++ {
			d := deltas[p*K+j]
			if d < 0 || (j > 0 && d == 0) {
				return fmt.Errorf("%s: record %d row %d position %d: top-k id deltas %v are not increasing: the shard is damaged; re-run llamatune teacher-logits", sr.path(), sr.rec-1, row, p, deltas[p*K:(p+1)*K])
			}
			id += d
			if V > 0 && int(id) >= V {
				return fmt.Errorf("%s: record %d row %d position %d: top-k id %d is outside the teacher's vocabulary (%d): the shard is damaged", sr.path(), sr.rec-1, row, p, id, V)
			}
			pairs[j] = idLogProb{id, f16[p*K+j].Float32()}
		}
		slices.SortFunc(pairs, func(a, b idLogProb) int {
			if c := cmp.Compare(b.lp, a.lp); c != 0 {
				return c
			}
			return cmp.Compare(a.id, b.id)
		})
		for _, e := range pairs {
			tk.IDs = append(tk.IDs, e.id)
			tk.LogProbs = append(tk.LogProbs, e.lp)
		}
	}
	b.Rows++
	sr.curRow++
	return nil
}

// TopK returns the stored top-k of a batch this reader handed out (one of the
// last Keep), cut to the k best when k is below the stored K.
func (sr *ShardReader) TopK(ctx context.Context, b *data.Batch, k int) (*TopK, error) {
	sr.mu.Lock()
	tk, ok := sr.kept[b]
	sr.mu.Unlock()
	if !ok {
		return nil, errors.New("teacher-logits shards: this batch was not handed out by this shard reader (or is older than its last Keep batches); train from the reader's own batches")
	}
	if k <= 0 || k > tk.K {
		return nil, fmt.Errorf("teacher-logits shards in %s hold top-%d; top_k %d must be in [1, %d] (re-run llamatune teacher-logits with a larger k)", sr.dir, tk.K, k, tk.K)
	}
	if k == tk.K {
		return tk, nil
	}
	n := b.Rows * b.SeqLen
	out := &TopK{K: k, IDs: make([]int32, n*k), LogProbs: make([]float32, n*k)}
	for i := 0; i < n; i++ {
		copy(out.IDs[i*k:(i+1)*k], tk.IDs[i*tk.K:])
		copy(out.LogProbs[i*k:(i+1)*k], tk.LogProbs[i*tk.K:])
	}
	return out, nil
}
