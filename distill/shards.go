package distill

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/float16"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/llamatune/llamatune/checkpoint"
	"github.com/llamatune/llamatune/data"
)

// Teacher-logits shards, as `llamatune teacher-logits` writes them: a
// directory of Arrow IPC files part-NNNNN.arrow (zstd-compressed buffers),
// one record per packed row:
//
//	input_ids, labels, position_ids, doc_start   list<int32>    seq_len each
//	topk_ids                                     list<int32>    seq_len·k, delta-encoded (below)
//	topk_logprobs                                list<float16>  seq_len·k
//
// Per position, the k (id, log-prob) pairs are stored in ascending id order
// and the ids as differences: the first id itself, then id[j] − id[j−1]
// (ids = cumulative sum of each position's k values). Small gaps compress far
// better than raw ids. Readers restore best-first order by sorting on the
// log-prob (equal ones by smaller id).
//
// plus the manifest teacher_logits.json (ShardManifest): the teacher's
// identity and vocabulary hash, k, seq_len, the data fingerprint, the shards
// with their row counts and the data cursor after the last complete shard.
// Shards and then the manifest are written atomically, so a killed run
// resumes from the manifest's cursor without losing or repeating a row.

// ShardManifestName is the manifest's file name in a shard directory.
const ShardManifestName = "teacher_logits.json"

const shardFormat = "llamatune-teacher-logits"

const idsEncoding = "sorted-delta"

// ShardSchema is the schema of every shard (k is in the schema metadata).
func ShardSchema(k, seqLen int) *arrow.Schema {
	i32 := arrow.ListOf(arrow.PrimitiveTypes.Int32)
	md := arrow.NewMetadata([]string{"llamatune.k", "llamatune.seq_len", "llamatune.topk_ids_encoding"}, []string{strconv.Itoa(k), strconv.Itoa(seqLen), idsEncoding})
	return arrow.NewSchema([]arrow.Field{
		{Name: "input_ids", Type: i32},
		{Name: "labels", Type: i32},
		{Name: "position_ids", Type: i32},
		{Name: "doc_start", Type: i32},
		{Name: "topk_ids", Type: i32},
		{Name: "topk_logprobs", Type: arrow.ListOf(arrow.FixedWidthTypes.Float16)},
	}, &md)
}

// ShardFile is one complete shard.
type ShardFile struct {
	File    string `json:"file"`
	Rows    int64  `json:"rows"`
	Batches int64  `json:"batches"`
	Tokens  int64  `json:"tokens"` // non-pad tokens
	Bytes   int64  `json:"bytes"`
}

// ShardManifest describes a shard directory.
type ShardManifest struct {
	Format       string      `json:"format"`
	Version      int         `json:"version"`
	Teacher      Info        `json:"teacher"`
	VocabHash    string      `json:"vocab_hash"`
	K            int         `json:"k"`
	SeqLen       int         `json:"seq_len"`
	LogProbDType string      `json:"logprob_dtype"`
	IDsEncoding  string      `json:"ids_encoding"` // "sorted-delta" (see the package comment on shards)
	Compression  string      `json:"compression"`
	DataHash     string      `json:"data_hash"` // the data pipeline's fingerprint
	Shards       []ShardFile `json:"shards"`
	Rows         int64       `json:"rows"`
	Batches      int64       `json:"batches"`
	Tokens       int64       `json:"tokens"`
	Bytes        int64       `json:"bytes"`
	// Cursor is the data position after the last complete shard: a resumed
	// run reopens the pipeline there.
	Cursor   *data.Cursor `json:"cursor,omitempty"`
	Complete bool         `json:"complete"`
	Updated  time.Time    `json:"updated"`
}

// BytesPerToken is the size of the shards per non-pad token.
func (m *ShardManifest) BytesPerToken() float64 {
	if m.Tokens == 0 {
		return 0
	}
	return float64(m.Bytes) / float64(m.Tokens)
}

// ReadShardManifest reads dir/teacher_logits.json.
func ReadShardManifest(dir string) (*ShardManifest, error) {
	path := filepath.Join(dir, ShardManifestName)
	raw, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: no %s here; write teacher logits with `llamatune teacher-logits JOB.yaml --out %s`", dir, ShardManifestName, dir)
		}
		return nil, fmt.Errorf("read %s: %v", path, err)
	}
	var m ShardManifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%s: damaged manifest (%v); re-run llamatune teacher-logits into a fresh directory", path, err)
	}
	if m.Format != shardFormat || m.Version != 1 {
		return nil, fmt.Errorf("%s: format %q version %d, this build reads %s version 1", path, m.Format, m.Version, shardFormat)
	}
	if m.K <= 0 || m.SeqLen <= 0 {
		return nil, fmt.Errorf("%s: k %d and seq_len %d must be > 0", path, m.K, m.SeqLen)
	}
	return &m, nil
}

// BatchSource is a stream of packed batches (a *data.Pipeline).
type BatchSource interface {
	Next() (*data.Batch, error) // io.EOF at the end
	Close() error
}

// ShardProgress is reported after every batch written.
type ShardProgress struct {
	Batches, Rows, Tokens int64 // so far, resumed shards included
	Shards                int   // complete shards
	Bytes                 int64 // of complete shards
	ShardTokens           int64 // tokens in complete shards
	Resumed               bool  // this run continues an earlier one
}

// WriteShardsOptions configure WriteShards.
type WriteShardsOptions struct {
	Dir     string
	Teacher Teacher
	K       int
	// Open opens the data at a cursor (nil: from the start); the batch size
	// it yields is the shards' record size.
	Open func(from *data.Cursor) (BatchSource, error)
	// ShardTokens is the size of a shard in tokens (rows·seq_len), rounded
	// up to whole batches (default 4M tokens, ~0.5 GB at k=32 before
	// compression).
	ShardTokens int64
	// Progress, if set, is called after every batch.
	Progress func(ShardProgress)
	// AfterShard, if set, is called after shard i (0-based) and the manifest
	// are on disk; an error stops the run there (tests use it to "kill" it).
	AfterShard func(i int) error
}

var partRE = regexp.MustCompile(`^part-\d{5,}\.arrow$`)

// WriteShards runs the data through the teacher and writes shards into Dir.
// A directory holding a manifest of an unfinished run is resumed from its
// cursor (same teacher, k and data required); one of a finished run is left
// alone. Partial shards of a killed run (temporary files, or shards the
// manifest does not list) are removed first.
func WriteShards(ctx context.Context, o WriteShardsOptions) (*ShardManifest, error) {
	if o.K <= 0 {
		return nil, fmt.Errorf("teacher logits: k must be ≥ 1 (got %d)", o.K)
	}
	if o.Teacher == nil || o.Open == nil {
		return nil, errors.New("teacher logits: a teacher and a data source are required")
	}
	if o.ShardTokens <= 0 {
		o.ShardTokens = 4 << 20
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %v", o.Dir, err)
	}
	info := o.Teacher.Info()
	man, resumed, err := openShardManifest(o, info)
	if err != nil || man.Complete {
		return man, err
	}
	if err := cleanShardDir(o.Dir, man); err != nil {
		return nil, err
	}
	src, err := o.Open(man.Cursor)
	if err != nil {
		return nil, err
	}
	defer src.Close()

	prog := ShardProgress{Batches: man.Batches, Rows: man.Rows, Tokens: man.Tokens, Shards: len(man.Shards), Bytes: man.Bytes,
		ShardTokens: man.Tokens, Resumed: resumed}
	if o.Progress != nil {
		o.Progress(prog)
	}
	var sw *shardWriter
	defer func() {
		if sw != nil {
			sw.abort()
		}
	}()
	for {
		if err := ctx.Err(); err != nil {
			return man, err
		}
		b, err := src.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return man, err
		}
		tk, err := batchTopK(ctx, o, man, b)
		if err != nil {
			return man, err
		}
		if sw == nil {
			if sw, err = newShardWriter(o.Dir, len(man.Shards), o.K, man.SeqLen); err != nil {
				return man, err
			}
		}
		if err := sw.write(b, tk); err != nil {
			return man, err
		}
		prog.Batches++
		prog.Rows += int64(b.Rows)
		prog.Tokens += int64(batchTokens(b))
		if sw.rows*int64(man.SeqLen) >= o.ShardTokens {
			if err := finishShard(o, man, sw, b.Cursor); err != nil {
				return man, err
			}
			sw = nil
			prog.Shards, prog.Bytes, prog.ShardTokens = len(man.Shards), man.Bytes, man.Tokens
			if o.AfterShard != nil {
				if err := o.AfterShard(len(man.Shards) - 1); err != nil {
					if o.Progress != nil {
						o.Progress(prog)
					}
					return man, err
				}
			}
		} else {
			sw.cursor = b.Cursor
		}
		if o.Progress != nil {
			o.Progress(prog)
		}
	}
	if sw != nil && sw.rows > 0 {
		if err := finishShard(o, man, sw, sw.cursor); err != nil {
			return man, err
		}
		sw = nil
		if o.AfterShard != nil {
			if err := o.AfterShard(len(man.Shards) - 1); err != nil {
				return man, err
			}
		}
	}
	if len(man.Shards) == 0 {
		return man, fmt.Errorf("teacher logits: the data yielded no rows; check the job's data section")
	}
	man.Complete = true
	if err := writeManifest(o.Dir, man); err != nil {
		return man, err
	}
	prog.Shards, prog.Bytes, prog.ShardTokens = len(man.Shards), man.Bytes, man.Tokens
	if o.Progress != nil {
		o.Progress(prog)
	}
	return man, nil
}

// batchTopK asks the teacher for batch b's top-k, checking that the batch
// has the shards' seq_len (the first batch sets it and the data hash) and
// that the teacher answered for every position.
func batchTopK(ctx context.Context, o WriteShardsOptions, man *ShardManifest, b *data.Batch) (*TopK, error) {
	if man.SeqLen == 0 {
		man.SeqLen = b.SeqLen
	}
	if b.SeqLen != man.SeqLen {
		return nil, fmt.Errorf("%s: data has seq_len %d, the shards %d; keep data.seq_len as it was, or use another --out", o.Dir, b.SeqLen, man.SeqLen)
	}
	if man.DataHash == "" {
		man.DataHash = b.Cursor.Fingerprint
	}
	tk, err := o.Teacher.TopK(ctx, b, o.K)
	if err != nil {
		return nil, err
	}
	if tk.K != o.K || len(tk.IDs) != b.Rows*b.SeqLen*o.K || len(tk.LogProbs) != len(tk.IDs) {
		return nil, fmt.Errorf("teacher %s returned k %d with %d ids for a batch of %d×%d (want k %d)", man.Teacher.Name, tk.K, len(tk.IDs), b.Rows, b.SeqLen, o.K)
	}
	return tk, nil
}

// openShardManifest starts the manifest of a new run, or reads the one a
// run into the same directory left (resumed; Complete when it finished),
// refusing one made by another teacher, k or vocabulary.
func openShardManifest(o WriteShardsOptions, info Info) (man *ShardManifest, resumed bool, err error) {
	man = &ShardManifest{Format: shardFormat, Version: 1, Teacher: info, VocabHash: info.VocabHash, K: o.K,
		LogProbDType: "float16", IDsEncoding: idsEncoding, Compression: "zstd"}
	if _, err := os.Stat(filepath.Join(o.Dir, ShardManifestName)); err != nil {
		return man, false, nil
	}
	old, err := ReadShardManifest(o.Dir)
	if err != nil {
		return nil, false, err
	}
	if old.K != o.K || old.Teacher.Name != info.Name || old.VocabHash != info.VocabHash {
		state := "an unfinished run"
		if old.Complete {
			state = "the finished run"
		}
		return nil, false, fmt.Errorf("%s holds %s of teacher %q (k %d, vocab %s); this run is teacher %q (k %d, vocab %s): use another --out, or remove %s to start over",
			o.Dir, state, old.Teacher.Name, old.K, old.VocabHash, info.Name, o.K, info.VocabHash, o.Dir)
	}
	return old, true, nil
}

// cleanShardDir removes what a killed run left behind in dir (temporaries
// and shards the manifest does not list) after checking that every listed
// shard is there with its size.
func cleanShardDir(dir string, man *ShardManifest) error {
	listed := map[string]bool{}
	for _, s := range man.Shards {
		listed[s.File] = true
		st, err := os.Stat(filepath.Join(dir, s.File))
		if err != nil || st.Size() != s.Bytes {
			return fmt.Errorf("%s: shard %s listed in the manifest is missing or has another size (%v); the directory was modified — remove it and start over", dir, s.File, err)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read %s: %v", dir, err)
	}
	for _, e := range entries {
		n := e.Name()
		if (partRE.MatchString(n) && !listed[n]) || (strings.HasPrefix(n, "part-") && strings.HasSuffix(n, ".tmp")) ||
			strings.HasPrefix(n, "."+ShardManifestName+".tmp-") {
			if err := os.Remove(filepath.Join(dir, n)); err != nil {
				return fmt.Errorf("remove partial shard %s: %v", filepath.Join(dir, n), err)
			}
		}
	}
	return nil
}

// batchTokens counts non-pad tokens: positions with a real document (padding
// is a tail of one-token "documents" whose label is ignored, position 0).
func batchTokens(b *data.Batch) int {
	n := 0
	for r := 0; r < b.Rows; r++ {
		o := r * b.SeqLen
		e := b.SeqLen
		for e > 0 {
			k := o + e - 1
			if b.DocStart[k] != int32(e-1) || b.Labels[k] != data.IgnoreIndex || b.PositionIDs[k] != 0 {
				break
			}
			e--
		}
		n += e
	}
	return n
}

func finishShard(o WriteShardsOptions, man *ShardManifest, sw *shardWriter, cur data.Cursor) error {
	f, err := sw.finish()
	if err != nil {
		return err
	}
	man.Shards = append(man.Shards, f)
	man.Rows += f.Rows
	man.Batches += f.Batches
	man.Tokens += f.Tokens
	man.Bytes += f.Bytes
	c := cur
	man.Cursor = &c
	return writeManifest(o.Dir, man)
}

func writeManifest(dir string, man *ShardManifest) error {
	man.Updated = time.Now().UTC()
	js, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return err
	}
	return checkpoint.WriteAtomic(filepath.Join(dir, ShardManifestName), func(w io.Writer) error {
		_, err := w.Write(append(js, '\n'))
		return err
	})
}

// shardWriter writes one shard to a temporary file, a record per batch.
type shardWriter struct {
	dir, name, tmp string
	k, seqLen      int
	f              *os.File
	bw             *bufio.Writer
	w              *ipc.FileWriter
	b              *array.RecordBuilder
	rows, batches  int64
	tokens         int64
	cursor         data.Cursor
	f16            []float16.Num
	ids            []int32
	pairs          []idLogProb
}

type idLogProb struct {
	id int32
	lp float32
}

func newShardWriter(dir string, index, k, seqLen int) (*shardWriter, error) {
	sw := &shardWriter{dir: dir, name: fmt.Sprintf("part-%05d.arrow", index), k: k, seqLen: seqLen}
	sw.tmp = filepath.Join(dir, sw.name+".tmp")
	f, err := os.Create(sw.tmp)
	if err != nil {
		return nil, fmt.Errorf("create %s: %v (check that the directory is writable)", sw.tmp, err)
	}
	sw.f = f
	sw.bw = bufio.NewWriterSize(f, 1<<20)
	mem := memory.NewGoAllocator()
	schema := ShardSchema(k, seqLen)
	sw.w, err = ipc.NewFileWriter(sw.bw, ipc.WithSchema(schema), ipc.WithAllocator(mem), ipc.WithZstd())
	if err != nil {
		f.Close()
		os.Remove(sw.tmp)
		return nil, fmt.Errorf("write %s: %v", sw.tmp, err)
	}
	sw.b = array.NewRecordBuilder(mem, schema)
	return sw, nil
}

func (sw *shardWriter) write(b *data.Batch, tk *TopK) error {
	S, K := b.SeqLen, sw.k
	for r := 0; r < b.Rows; r++ {
		o := r * S
		sw.ids, sw.f16 = sw.ids[:0], sw.f16[:0]
		for p := o; p < o+S; p++ {
			sw.pairs = sw.pairs[:0]
			for j := 0; j < K; j++ {
				sw.pairs = append(sw.pairs, idLogProb{tk.IDs[p*K+j], tk.LogProbs[p*K+j]})
			}
			slices.SortFunc(sw.pairs, func(a, b idLogProb) int { return cmp.Compare(a.id, b.id) })
			prev := int32(0)
			for j, e := range sw.pairs {
				if e.id < 0 || (j > 0 && e.id == prev) {
					return fmt.Errorf("teacher gave top-k ids %v at row %d position %d: ids must be distinct and ≥ 0", tk.IDs[p*K:(p+1)*K], r, p-o)
				}
				sw.ids = append(sw.ids, e.id-prev)
				sw.f16 = append(sw.f16, float16.New(e.lp))
				prev = e.id
			}
		}
		for c, col := range [][]int32{b.InputIDs[o : o+S], b.Labels[o : o+S], b.PositionIDs[o : o+S], b.DocStart[o : o+S], sw.ids} {
			lb := sw.b.Field(c).(*array.ListBuilder)
			lb.Append(true)
			lb.ValueBuilder().(*array.Int32Builder).AppendValues(col, nil)
		}
		lb := sw.b.Field(5).(*array.ListBuilder)
		lb.Append(true)
		lb.ValueBuilder().(*array.Float16Builder).AppendValues(sw.f16, nil)
	}
	rec := sw.b.NewRecordBatch()
	defer rec.Release()
	if err := sw.w.Write(rec); err != nil {
		return fmt.Errorf("write %s: %v (is the disk full?)", sw.tmp, err)
	}
	sw.rows += int64(b.Rows)
	sw.batches++
	sw.tokens += int64(batchTokens(b))
	return nil
}

// finish closes, fsyncs and renames the shard into place.
func (sw *shardWriter) finish() (ShardFile, error) {
	fail := func(err error) (ShardFile, error) {
		sw.abort()
		return ShardFile{}, fmt.Errorf("write %s: %v (is the disk full?)", sw.tmp, err)
	}
	if err := sw.w.Close(); err != nil {
		return fail(err)
	}
	sw.w = nil
	if err := sw.bw.Flush(); err != nil {
		return fail(err)
	}
	if err := sw.f.Sync(); err != nil {
		return fail(err)
	}
	st, err := sw.f.Stat()
	if err != nil {
		return fail(err)
	}
	if err := sw.f.Close(); err != nil {
		return fail(err)
	}
	sw.f = nil
	sw.b.Release()
	sw.b = nil
	final := filepath.Join(sw.dir, sw.name)
	if err := os.Rename(sw.tmp, final); err != nil {
		return fail(err)
	}
	if d, err := os.Open(sw.dir); err == nil {
		d.Sync()
		d.Close()
	}
	return ShardFile{File: sw.name, Rows: sw.rows, Batches: sw.batches, Tokens: sw.tokens, Bytes: st.Size()}, nil
}

// abort drops an unfinished shard.
func (sw *shardWriter) abort() {
	if sw.w != nil {
		sw.w.Close()
		sw.w = nil
	}
	if sw.f != nil {
		sw.f.Close()
		sw.f = nil
	}
	if sw.b != nil {
		sw.b.Release()
		sw.b = nil
	}
	os.Remove(sw.tmp)
}
