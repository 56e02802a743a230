package data

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
)

// batchSource yields the record batches of one shard in order. A batch stays valid until the
// next call to next.
type batchSource interface {
	next() (arrow.RecordBatch, error) // io.EOF at the end
	schema() *arrow.Schema
	close() error
}

// openBatchSource opens a shard at (or before) start. It returns the row index of the first row
// the source will yield and the index of the first batch it will yield.
func openBatchSource(sh shard, start Pos) (src batchSource, base int64, batchIdx int, err error) {
	defer func() {
		if r := recover(); r != nil { // arrow-go panics on some corrupt inputs
			src, err = nil, fmt.Errorf("%s: corrupt %s file (%v); re-export it", sh.path, sh.format, r)
		}
	}()
	switch sh.format {
	case shardArrowStream:
		s, err := openArrowStream(sh.path)
		return s, 0, 0, err
	case shardArrowFile:
		s, err := openArrowFile(sh.path)
		if err != nil {
			return nil, 0, 0, err
		}
		if start.Off > 0 && start.Off < int64(s.r.NumRecords()) && start.Base <= start.Row {
			s.i = int(start.Off)
			return s, start.Base, s.i, nil
		}
		return s, 0, 0, nil
	case shardParquet:
		s, base, err := openParquet(sh.path, start.Row)
		return s, base, 0, err
	}
	return nil, 0, 0, errors.New("not an Arrow/Parquet shard")
}

type arrowStream struct {
	f    *os.File
	r    *ipc.Reader
	path string
}

func openArrowStream(p string) (*arrowStream, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	r, err := ipc.NewReader(bufio.NewReaderSize(f, 1<<20), ipc.WithAllocator(memory.NewGoAllocator()))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: not a readable Arrow IPC stream (%v); is the file truncated or of another format?", p, err)
	}
	return &arrowStream{f: f, r: r, path: p}, nil
}

func (s *arrowStream) schema() *arrow.Schema { return s.r.Schema() }

func (s *arrowStream) next() (rec arrow.RecordBatch, err error) {
	defer func() {
		if r := recover(); r != nil {
			rec, err = nil, fmt.Errorf("%s: corrupt Arrow stream (%v); re-export it", s.path, r)
		}
	}()
	if s.r.Next() {
		return s.r.RecordBatch(), nil
	}
	if err := s.r.Err(); err != nil {
		return nil, fmt.Errorf("%s: reading Arrow stream: %v (is the file truncated?)", s.path, err)
	}
	return nil, io.EOF
}

func (s *arrowStream) close() error {
	s.r.Release()
	return s.f.Close()
}

type arrowFile struct {
	f    *os.File
	r    *ipc.FileReader
	i    int
	path string
}

func openArrowFile(p string) (*arrowFile, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	r, err := ipc.NewFileReader(f, ipc.WithAllocator(memory.NewGoAllocator()))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: not a readable Arrow IPC file (%v); is the file truncated?", p, err)
	}
	return &arrowFile{f: f, r: r, path: p}, nil
}

func (s *arrowFile) schema() *arrow.Schema { return s.r.Schema() }

func (s *arrowFile) next() (rec arrow.RecordBatch, err error) {
	defer func() {
		if r := recover(); r != nil {
			rec, err = nil, fmt.Errorf("%s: corrupt Arrow file (%v); re-export it", s.path, r)
		}
	}()
	if s.i >= s.r.NumRecords() {
		return nil, io.EOF
	}
	rec, err = s.r.RecordBatch(s.i)
	if err != nil {
		return nil, fmt.Errorf("%s: record batch %d: %v (is the file truncated?)", s.path, s.i, err)
	}
	s.i++
	return rec, nil
}

func (s *arrowFile) close() error {
	s.r.Close()
	return s.f.Close()
}

type parquetSource struct {
	pf     *file.Reader
	fr     *pqarrow.FileReader
	rr     pqarrow.RecordReader
	sch    *arrow.Schema
	groups []int
	seek   int64 // rows to seek within groups when the reader is made
	cols   []int // leaf columns to read (nil: all)
	path   string
}

// openParquet opens a Parquet file positioned at row start: only the row groups from the one
// holding start onwards are read, a batch at a time, and (after project) only the columns
// the example type needs.
func openParquet(p string, start int64) (*parquetSource, int64, error) {
	pf, err := file.OpenParquetFile(p, false)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: not a readable Parquet file (%v); is it truncated?", p, err)
	}
	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{BatchSize: 1024}, memory.NewGoAllocator())
	if err != nil {
		pf.Close()
		return nil, 0, fmt.Errorf("%s: %v", p, err)
	}
	sch, err := fr.Schema()
	if err != nil {
		pf.Close()
		return nil, 0, fmt.Errorf("%s: %v", p, err)
	}
	s := &parquetSource{pf: pf, fr: fr, sch: sch, path: p}
	n := pf.NumRowGroups()
	base := int64(0)
	for g := 0; g < n; g++ {
		rows := pf.MetaData().RowGroup(g).NumRows()
		if len(s.groups) == 0 && base+rows <= start && g < n-1 {
			base += rows
			continue
		}
		s.groups = append(s.groups, g)
	}
	total := pf.NumRows()
	switch {
	case start > total:
		pf.Close()
		return nil, 0, fmt.Errorf("%s has %d rows, fewer than the cursor expects (%d); the data changed since the checkpoint", p, total, start)
	case start == total:
		s.groups = nil // positioned at the end
		base = start
	case start > base:
		s.seek = start - base
		base = start
	}
	return s, base, nil
}

// project restricts reading to the named top-level columns and returns their schema.
func (s *parquetSource) project(names []string) *arrow.Schema {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var cols []int
	var fields []arrow.Field
	var leaves func(f *pqarrow.SchemaField)
	leaves = func(f *pqarrow.SchemaField) {
		if f.IsLeaf() {
			cols = append(cols, f.ColIndex)
		}
		for i := range f.Children {
			leaves(&f.Children[i])
		}
	}
	for i := range s.fr.Manifest.Fields {
		f := &s.fr.Manifest.Fields[i]
		if want[f.Field.Name] {
			leaves(f)
			fields = append(fields, s.sch.Field(i))
		}
	}
	if len(cols) == 0 {
		return s.sch
	}
	s.cols = cols
	return arrow.NewSchema(fields, nil)
}

func (s *parquetSource) schema() *arrow.Schema { return s.sch }

func (s *parquetSource) ensure() error {
	if s.rr != nil || len(s.groups) == 0 {
		return nil
	}
	rr, err := s.fr.GetRecordReader(context.Background(), s.cols, s.groups)
	if err != nil {
		return fmt.Errorf("%s: %v", s.path, err)
	}
	s.rr = rr
	if s.seek > 0 {
		if err := rr.SeekToRow(s.seek); err != nil {
			return fmt.Errorf("%s: seek to row %d: %v", s.path, s.seek, err)
		}
	}
	return nil
}

func (s *parquetSource) next() (rec arrow.RecordBatch, err error) {
	defer func() {
		if r := recover(); r != nil {
			rec, err = nil, fmt.Errorf("%s: corrupt Parquet file (%v); re-export it", s.path, r)
		}
	}()
	if err := s.ensure(); err != nil {
		return nil, err
	}
	if s.rr == nil {
		return nil, io.EOF
	}
	if s.rr.Next() {
		return s.rr.RecordBatch(), nil
	}
	if err := s.rr.Err(); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: reading Parquet: %v (is the file truncated?)", s.path, err)
	}
	return nil, io.EOF
}

func (s *parquetSource) close() error {
	if s.rr != nil {
		s.rr.Release()
	}
	return s.pf.Close()
}

// batchRowReader turns a batchSource into rows.
type batchRowReader struct {
	src       batchSource
	bind      *arrowBinding
	file      string
	rec       arrow.RecordBatch
	recRow    int
	row       int64 // shard row index of the next row
	batchIdx  int   // index of rec in the shard
	batchBase int64 // shard row index of rec's first row
	eof       bool
	hints     bool // report batch index/base in pos (Arrow files can seek to a batch)
}

func (r *batchRowReader) load() error {
	for r.rec == nil || r.recRow >= int(r.rec.NumRows()) {
		if r.eof {
			return io.EOF
		}
		if r.rec != nil {
			r.batchBase += r.rec.NumRows()
		}
		rec, err := r.src.next()
		if err == io.EOF {
			r.eof, r.rec = true, nil
			return io.EOF
		}
		if err != nil {
			return err
		}
		r.rec, r.recRow = rec, 0
		r.batchIdx++
	}
	return nil
}

func (r *batchRowReader) skipTo(target int64) error {
	for r.row < target {
		if err := r.load(); err != nil {
			if err == io.EOF {
				return fmt.Errorf("%s has fewer rows than the cursor expects (%d); the data changed since the checkpoint", r.file, target)
			}
			return err
		}
		avail := r.rec.NumRows() - int64(r.recRow)
		step := min(avail, target-r.row)
		r.recRow += int(step)
		r.row += step
	}
	return nil
}

func (r *batchRowReader) next() (ex Example, err error) {
	if err := r.load(); err != nil {
		return Example{}, err
	}
	ex.Loc = Loc{File: r.file, Row: r.row}
	i := r.recRow
	r.recRow++
	r.row++
	defer func() {
		if p := recover(); p != nil {
			err = rowErr(ex.Loc, "corrupt value (%v)", p)
		}
	}()
	err = r.bind.row(r.rec, i, &ex)
	return ex, err
}

func (r *batchRowReader) pos() Pos {
	if !r.hints {
		return Pos{Row: r.row}
	}
	if r.rec != nil && r.recRow < int(r.rec.NumRows()) {
		return Pos{Row: r.row, Off: int64(r.batchIdx), Base: r.batchBase}
	}
	// The next row starts the next batch.
	base := r.batchBase
	if r.rec != nil {
		base += r.rec.NumRows()
	}
	return Pos{Row: r.row, Off: int64(r.batchIdx + 1), Base: base}
}

func (r *batchRowReader) close() error { return r.src.close() }
