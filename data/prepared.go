package data

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// PreparedSchema is the schema of prepared shards: one packed row of seq_len tokens per record,
// plus the number of non-pad tokens (padding is always at the end of a row).
var PreparedSchema = arrow.NewSchema([]arrow.Field{
	{Name: "input_ids", Type: arrow.ListOf(arrow.PrimitiveTypes.Int32)},
	{Name: "labels", Type: arrow.ListOf(arrow.PrimitiveTypes.Int32)},
	{Name: "position_ids", Type: arrow.ListOf(arrow.PrimitiveTypes.Int32)},
	{Name: "doc_start", Type: arrow.ListOf(arrow.PrimitiveTypes.Int32)},
	{Name: "num_tokens", Type: arrow.PrimitiveTypes.Int32},
}, nil)

// PreparedWriter writes packed batches as Arrow IPC files (part-NNNNN.arrow) plus a manifest
// (llamatune_prepared.json). A directory written by it is a dataset the pipeline reads back as
// tokenized data: its rows are split into their documents again and re-packed.
type PreparedWriter struct {
	dir          string
	man          preparedManifest
	rowsPerBatch int
	rowsPerShard int64

	created bool     // dir did not exist before: Abort removes it
	f       *os.File // the shard being written, as NAME.tmp
	w       *ipc.FileWriter
	b       *array.RecordBuilder
	inBatch int
	inShard int64
}

// NewPreparedWriter creates dir (which must not hold a prepared dataset already unless
// overwrite) and writes rows of seqLen tokens into it.
func NewPreparedWriter(dir string, seqLen int, packing bool, padID int, tokenizer string) (*PreparedWriter, error) {
	if seqLen <= 0 {
		return nil, fmt.Errorf("prepared writer: seq_len must be > 0")
	}
	_, statErr := os.Stat(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %v", dir, err)
	}
	if _, err := os.Stat(filepath.Join(dir, preparedManifestName)); err == nil {
		return nil, fmt.Errorf("%s already holds a prepared dataset; remove it or choose another --out", dir)
	}
	w := &PreparedWriter{dir: dir, created: os.IsNotExist(statErr), man: preparedManifest{Format: "llamatune-prepared", Version: 1, SeqLen: seqLen, Packing: packing, PadID: padID, Tokenizer: tokenizer}}
	w.rowsPerBatch = max(1, (1<<20)/seqLen)              // ~1M tokens per record batch
	w.rowsPerShard = max(1, int64(32<<20)/int64(seqLen)) // ~32M tokens (~512 MB) per shard
	return w, nil
}

func (w *PreparedWriter) openShard() error {
	// Written as part-NNNNN.arrow.tmp and renamed when complete: a shard
	// with its final name is always whole.
	name := fmt.Sprintf("part-%05d.arrow", len(w.man.Shards))
	tmp := filepath.Join(w.dir, name+".tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("create %s: %v", tmp, err)
	}
	fw, err := ipc.NewFileWriter(f, ipc.WithSchema(PreparedSchema), ipc.WithAllocator(memory.NewGoAllocator()))
	if err != nil {
		f.Close()
		return err
	}
	w.f, w.w, w.inShard = f, fw, 0
	w.man.Shards = append(w.man.Shards, name)
	return nil
}

func (w *PreparedWriter) flushBatch() error {
	if w.inBatch == 0 {
		return nil
	}
	rec := w.b.NewRecordBatch()
	defer rec.Release()
	w.inBatch = 0
	if err := w.w.Write(rec); err != nil {
		return fmt.Errorf("write %s: %v", w.dir, err)
	}
	return nil
}

func (w *PreparedWriter) closeShard() error {
	if w.w == nil {
		return nil
	}
	if err := w.flushBatch(); err != nil {
		return err
	}
	if err := w.w.Close(); err != nil {
		return fmt.Errorf("write %s: %v", w.f.Name(), err)
	}
	tmp := w.f.Name()
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %v (is the disk full?)", tmp, err)
	}
	err := w.f.Close()
	w.w, w.f = nil, nil
	if err != nil {
		return fmt.Errorf("close %s: %v", tmp, err)
	}
	final := strings.TrimSuffix(tmp, ".tmp")
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("rename %s to %s: %v", tmp, final, err)
	}
	return nil
}

// Abort stops an unfinished dataset (an error, or the user pressed Ctrl-C)
// and removes what this writer wrote: the shard being written, the finished
// shards and, when the writer created it, the directory. Nothing is left
// that looks like data.
func (w *PreparedWriter) Abort() error {
	var first error
	if w.f != nil {
		w.w = nil // its footer is never written
		w.f.Close()
		if err := os.Remove(w.f.Name()); err != nil && !os.IsNotExist(err) {
			first = err
		}
		w.f = nil
	}
	if w.b != nil {
		w.b.Release()
		w.b = nil
	}
	for _, name := range w.man.Shards {
		if err := os.Remove(filepath.Join(w.dir, name)); err != nil && !os.IsNotExist(err) && first == nil {
			first = err
		}
	}
	w.man.Shards = nil
	if w.created {
		os.Remove(w.dir) // only if empty
	}
	return first
}

// Write appends the rows of a batch.
func (w *PreparedWriter) Write(b *Batch) error {
	if b.SeqLen != w.man.SeqLen {
		return fmt.Errorf("prepared writer: batch seq_len %d, writer %d", b.SeqLen, w.man.SeqLen)
	}
	if w.b == nil {
		w.b = array.NewRecordBuilder(memory.NewGoAllocator(), PreparedSchema)
	}
	for r := 0; r < b.Rows; r++ {
		if w.w == nil {
			if err := w.openShard(); err != nil {
				return err
			}
		}
		o, e := r*b.SeqLen, (r+1)*b.SeqLen
		n := rowTokens(b, r, int32(w.man.PadID))
		for c, col := range [][]int32{b.InputIDs[o:e], b.Labels[o:e], b.PositionIDs[o:e], b.DocStart[o:e]} {
			lb := w.b.Field(c).(*array.ListBuilder)
			lb.Append(true)
			lb.ValueBuilder().(*array.Int32Builder).AppendValues(col, nil)
		}
		w.b.Field(4).(*array.Int32Builder).Append(int32(n))
		for _, l := range b.Labels[o : o+n] {
			if l != IgnoreIndex {
				w.man.Trained++
			}
		}
		w.man.Tokens += int64(n)
		w.man.Rows++
		w.inBatch++
		w.inShard++
		if w.inBatch >= w.rowsPerBatch {
			if err := w.flushBatch(); err != nil {
				return err
			}
		}
		if w.inShard >= w.rowsPerShard {
			if err := w.closeShard(); err != nil {
				return err
			}
		}
	}
	return nil
}

// rowTokens counts the non-pad tokens of row r (padding is a tail of self-started pad ids).
func rowTokens(b *Batch, r int, pad int32) int {
	o := r * b.SeqLen
	n := b.SeqLen
	for n > 0 {
		k := o + n - 1
		if b.InputIDs[k] != pad || b.DocStart[k] != int32(n-1) || b.Labels[k] != IgnoreIndex {
			break
		}
		n--
	}
	return n
}

// Close finishes the last shard and writes the manifest.
func (w *PreparedWriter) Close() error {
	if err := w.closeShard(); err != nil {
		return err
	}
	if w.b != nil {
		w.b.Release()
	}
	if len(w.man.Shards) == 0 {
		return fmt.Errorf("prepared writer: no rows were written to %s", w.dir)
	}
	js, _ := json.MarshalIndent(w.man, "", "  ")
	tmp := filepath.Join(w.dir, preparedManifestName+".tmp")
	if err := writeSynced(tmp, append(js, '\n')); err != nil {
		return fmt.Errorf("write %s: %v", tmp, err)
	}
	return os.Rename(tmp, filepath.Join(w.dir, preparedManifestName))
}

// PreparedSummary returns rows, tokens and trained tokens written so far.
func (w *PreparedWriter) PreparedSummary() (rows, tokens, trained int64, shards int) {
	return w.man.Rows, w.man.Tokens, w.man.Trained, len(w.man.Shards)
}

// writeSynced writes b to path and fsyncs it.
func writeSynced(path string, b []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
