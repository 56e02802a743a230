package distill

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/llamatune/llamatune/data"

	"github.com/llamatune/llamatune/checkpoint"
)

// GenerateManifestName is the file in Generate's output directory that records its progress.
// Its name has no data extension, so dataset readers pointed at the directory skip it.
const GenerateManifestName = "generate.manifest"

const (
	genManifestFormat = "llamatune-generate"
	genPartialSuffix  = ".partial"
)

// genSettings are what a resumed run must share with the run that started the directory.
type genSettings struct {
	Teacher       string  `json:"teacher"`
	Source        string  `json:"source"`
	MaxNewTokens  int     `json:"max_new_tokens"`
	Temperature   float64 `json:"temperature"`
	TopP          float64 `json:"top_p"`
	Seed          uint64  `json:"seed"`
	DedupOutputs  bool    `json:"dedup_outputs"`
	KeepTruncated bool    `json:"keep_truncated"`
	MaxReplyChars int     `json:"max_reply_chars"`
	Format        string  `json:"format"`
	ShardRows     int     `json:"shard_rows"`
}

func genSettingsOf(gen Generator, o GenerateOptions) genSettings {
	return genSettings{Teacher: gen.Name(), Source: o.Source, MaxNewTokens: o.Sampling.MaxNewTokens,
		Temperature: o.Sampling.Temperature, TopP: o.Sampling.TopP, Seed: o.Sampling.Seed,
		DedupOutputs: o.DedupOutputs, KeepTruncated: o.KeepTruncated, MaxReplyChars: o.MaxReplyChars,
		Format: o.Format, ShardRows: o.ShardRows}
}

// genShard is one output shard: Name is the final file name; while open, its rows are in
// Name+".partial" and only the first Bytes bytes of that file count.
type genShard struct {
	Name  string `json:"name"`
	Rows  int64  `json:"rows"`
	Bytes int64  `json:"bytes"`
}

type genManifest struct {
	Format   string      `json:"format"`
	Version  int         `json:"version"`
	Settings genSettings `json:"settings"`
	Done     int64       `json:"done"` // input rows processed
	// InputHash is a rolling hash of the prompt keys of those rows, to notice changed data.
	InputHash uint64        `json:"input_hash"`
	Shards    []genShard    `json:"shards"`   // complete shards
	Open      genShard      `json:"open"`     // the shard being written
	Complete  bool          `json:"complete"` // every prompt of the source was processed
	Stats     GenerateStats `json:"stats"`
	Updated   time.Time     `json:"updated"`
}

type genWriter struct {
	dir     string
	o       *GenerateOptions
	m       genManifest
	f       *os.File // open shard's partial file (nil until the first row)
	bw      *bufio.Writer
	replies map[uint64]bool
}

func (w *genWriter) manifestPath() string { return filepath.Join(w.dir, GenerateManifestName) }

func (w *genWriter) shardName(i int) string {
	return fmt.Sprintf("part-%05d.%s", i, w.o.Format)
}

func (w *genWriter) partialPath() string {
	return filepath.Join(w.dir, w.m.Open.Name+genPartialSuffix)
}

// openGenWriter starts or resumes the output directory dir.
func openGenWriter(dir string, set genSettings, o GenerateOptions) (*genWriter, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("generate: output directory: %v", err)
	}
	w := &genWriter{dir: dir, o: &o, replies: map[uint64]bool{}}
	raw, err := os.ReadFile(w.manifestPath())
	switch {
	case errors.Is(err, os.ErrNotExist):
		if existing := dataFiles(dir); len(existing) > 0 {
			return nil, fmt.Errorf("generate: %s already holds data files (%s) but no %s; write to a new or empty --out directory", dir, strings.Join(existing, ", "), GenerateManifestName)
		}
		w.m = genManifest{Format: genManifestFormat, Version: 1, Settings: set}
	case err != nil:
		return nil, fmt.Errorf("generate: %v", err)
	default:
		if err := json.Unmarshal(raw, &w.m); err != nil || w.m.Format != genManifestFormat {
			return nil, fmt.Errorf("generate: %s is not a llamatune generate manifest (%v); remove the directory or pick another --out", w.manifestPath(), err)
		}
		if diff := settingsDiff(w.m.Settings, set); diff != "" {
			return nil, fmt.Errorf("generate: %s was started with other settings (%s); resume with the same settings or write to a new --out directory", dir, diff)
		}
		w.m.Complete = false
	}
	if w.m.Open.Name == "" {
		w.m.Open = genShard{Name: w.shardName(len(w.m.Shards))}
	}
	if err := w.recover(); err != nil {
		return nil, err
	}
	if o.DedupOutputs {
		if err := w.loadReplies(); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// dataFiles lists files of dir that dataset readers would take as data.
func dataFiles(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		n := strings.ToLower(e.Name())
		for _, ext := range []string{".jsonl", ".json", ".arrow", ".parquet"} {
			if !e.IsDir() && strings.HasSuffix(n, ext) && !strings.HasPrefix(n, ".") {
				out = append(out, e.Name())
				break
			}
		}
	}
	return out
}

func settingsDiff(was, now genSettings) string {
	a, b := reflect.ValueOf(was), reflect.ValueOf(now)
	var diffs []string
	for i := 0; i < a.NumField(); i++ {
		if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
			name := strings.Split(a.Type().Field(i).Tag.Get("json"), ",")[0]
			diffs = append(diffs, fmt.Sprintf("%s was %v, now %v", name, a.Field(i).Interface(), b.Field(i).Interface()))
		}
	}
	return strings.Join(diffs, "; ")
}

// recover brings the files in line with the manifest after a crash: complete shards whose
// rename did not happen are finished, the open shard is cut back to its committed length, and
// temporary files are removed.
func (w *genWriter) recover() error {
	ents, _ := os.ReadDir(w.dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			os.Remove(filepath.Join(w.dir, e.Name()))
		}
	}
	for _, sh := range w.m.Shards {
		final := filepath.Join(w.dir, sh.Name)
		if _, err := os.Stat(final); err == nil {
			continue
		}
		partial := final + genPartialSuffix
		st, err := os.Stat(partial)
		if err != nil || st.Size() < sh.Bytes {
			return fmt.Errorf("generate: shard %s listed in %s is missing (no %s either); the output directory is damaged — start again in a new --out directory", sh.Name, w.manifestPath(), filepath.Base(partial))
		}
		if err := w.finalize(sh); err != nil {
			return err
		}
	}
	p := w.partialPath()
	st, err := os.Stat(p)
	switch {
	case err == nil && st.Size() < w.m.Open.Bytes:
		return fmt.Errorf("generate: %s has %d bytes but %s counts %d committed; the output directory is damaged — start again in a new --out directory", p, st.Size(), w.manifestPath(), w.m.Open.Bytes)
	case err == nil && w.m.Open.Bytes == 0:
		return os.Remove(p)
	case err == nil:
		return w.openPartial()
	case w.m.Open.Bytes > 0:
		return fmt.Errorf("generate: %s is missing but %s counts %d committed bytes in it; the output directory is damaged — start again in a new --out directory", p, w.manifestPath(), w.m.Open.Bytes)
	}
	return nil
}

// openPartial opens the open shard's file, cut to its committed length, for appending.
func (w *genWriter) openPartial() error {
	f, err := os.OpenFile(w.partialPath(), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("generate: %v", err)
	}
	if err := f.Truncate(w.m.Open.Bytes); err != nil {
		f.Close()
		return fmt.Errorf("generate: %s: %v", w.partialPath(), err)
	}
	if _, err := f.Seek(w.m.Open.Bytes, io.SeekStart); err != nil {
		f.Close()
		return fmt.Errorf("generate: %s: %v", w.partialPath(), err)
	}
	w.f, w.bw = f, bufio.NewWriterSize(f, 1<<20)
	return nil
}

// loadReplies rebuilds the set of written replies (for DedupOutputs) from the shards.
func (w *genWriter) loadReplies() error {
	read := func(path string, format data.Format) error {
		rows, err := data.OpenRows(data.DatasetSpec{Path: path, Format: format, Type: data.TypeMessages})
		if err != nil {
			return fmt.Errorf("generate: re-reading %s for dedup_outputs: %w", path, err)
		}
		defer rows.Close()
		for {
			ex, err := rows.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return fmt.Errorf("generate: re-reading %s for dedup_outputs: %w", path, err)
			}
			if n := len(ex.Messages); n > 0 {
				w.replies[textKey(ex.Messages[n-1].Content)] = true
			}
		}
	}
	for _, sh := range w.m.Shards {
		if err := read(filepath.Join(w.dir, sh.Name), data.FormatAuto); err != nil {
			return err
		}
	}
	if w.m.Open.Bytes > 0 {
		if err := w.bw.Flush(); err != nil {
			return err
		}
		return read(w.partialPath(), data.FormatJSONL)
	}
	return nil
}

type genRow struct {
	Messages []data.Message `json:"messages"`
	Index    int64          `json:"index"`
}

// write appends one conversation to the open shard.
func (w *genWriter) write(index int64, msgs []data.Message, tokens int, st *GenerateStats) error {
	if w.f == nil {
		if err := w.openPartial(); err != nil {
			return err
		}
	}
	b, err := json.Marshal(genRow{Messages: msgs, Index: index})
	if err != nil {
		return fmt.Errorf("generate: row %d: %v", index, err)
	}
	b = append(b, '\n')
	if _, err := w.bw.Write(b); err != nil {
		return fmt.Errorf("generate: writing %s: %v", w.partialPath(), err)
	}
	w.m.Open.Rows++
	w.m.Open.Bytes += int64(len(b))
	st.Written++
	st.Tokens += int64(tokens)
	return nil
}

func (w *genWriter) shardFull() bool { return w.m.Open.Rows >= int64(w.o.ShardRows) }

// commit makes everything written so far durable and records it in the manifest; a full
// shard is closed and its final file written.
func (w *genWriter) commit() error {
	if w.f != nil {
		if err := w.bw.Flush(); err != nil {
			return fmt.Errorf("generate: writing %s: %v", w.partialPath(), err)
		}
		if err := w.f.Sync(); err != nil {
			return fmt.Errorf("generate: syncing %s: %v", w.partialPath(), err)
		}
	}
	if !w.shardFull() {
		return w.writeManifest()
	}
	return w.closeShard()
}

// closeShard moves the open shard to the complete list, records that, then writes its final file.
func (w *genWriter) closeShard() error {
	sh := w.m.Open
	if w.f != nil {
		w.f.Close()
		w.f, w.bw = nil, nil
	}
	w.m.Shards = append(w.m.Shards, sh)
	w.m.Open = genShard{Name: w.shardName(len(w.m.Shards))}
	if err := w.writeManifest(); err != nil {
		return err
	}
	return w.finalize(sh)
}

// finish closes the last shard and marks the output complete.
func (w *genWriter) finish() error {
	if w.m.Open.Rows > 0 {
		if err := w.closeShard(); err != nil {
			return err
		}
	}
	w.m.Complete = true
	return w.writeManifest()
}

// abandon closes files without committing anything more.
func (w *genWriter) abandon() {
	if w.f != nil {
		w.f.Close()
		w.f, w.bw = nil, nil
	}
}

func (w *genWriter) writeManifest() error {
	w.m.Updated = time.Now().UTC().Truncate(time.Second)
	b, err := json.MarshalIndent(w.m, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(w.manifestPath(), append(b, '\n'))
}

// finalize writes a complete shard's final file from its partial file and removes the latter.
func (w *genWriter) finalize(sh genShard) error {
	final := filepath.Join(w.dir, sh.Name)
	partial := final + genPartialSuffix
	if w.o.Format == "arrow" {
		if err := jsonlToArrow(partial, sh.Bytes, final); err != nil {
			return err
		}
		return os.Remove(partial)
	}
	if err := os.Truncate(partial, sh.Bytes); err != nil {
		return fmt.Errorf("generate: %v", err)
	}
	if err := os.Rename(partial, final); err != nil {
		return fmt.Errorf("generate: %v", err)
	}
	return syncDir(w.dir)
}

// writeFileAtomic writes b to path through a temporary file, fsync and rename.
func writeFileAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("generate: %v", err)
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("generate: writing %s: %v", path, err)
	}
	return syncDir(dir)
}

// syncDir is a best-effort checkpoint.SyncDir: its error is not reported.
func syncDir(dir string) error {
	checkpoint.SyncDir(dir)
	return nil
}

// genArrowSchema is the schema of Arrow output shards: a messages dataset.
var genArrowSchema = arrow.NewSchema([]arrow.Field{
	{Name: "messages", Type: arrow.ListOf(arrow.StructOf(
		arrow.Field{Name: "role", Type: arrow.BinaryTypes.String},
		arrow.Field{Name: "content", Type: arrow.BinaryTypes.String},
	))},
	{Name: "index", Type: arrow.PrimitiveTypes.Int64},
}, nil)

// jsonlToArrow converts the first n bytes of a JSONL shard into an Arrow IPC file at final
// (atomically).
func jsonlToArrow(partial string, n int64, final string) error {
	raw, err := os.ReadFile(partial)
	if err != nil {
		return fmt.Errorf("generate: %v", err)
	}
	if int64(len(raw)) < n {
		return fmt.Errorf("generate: %s is shorter than recorded (%d < %d bytes); the output directory is damaged", partial, len(raw), n)
	}
	raw = raw[:n]
	b := array.NewRecordBuilder(memory.DefaultAllocator, genArrowSchema)
	defer b.Release()
	lb := b.Field(0).(*array.ListBuilder)
	sb := lb.ValueBuilder().(*array.StructBuilder)
	rb := sb.FieldBuilder(0).(*array.StringBuilder)
	cb := sb.FieldBuilder(1).(*array.StringBuilder)
	ib := b.Field(1).(*array.Int64Builder)
	for i, line := range bytes.Split(raw, []byte{'\n'}) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var r genRow
		if err := json.Unmarshal(line, &r); err != nil {
			return fmt.Errorf("generate: %s:%d: %v", partial, i+1, err)
		}
		lb.Append(true)
		for _, m := range r.Messages {
			sb.Append(true)
			rb.Append(m.Role)
			cb.Append(m.Content)
		}
		ib.Append(r.Index)
	}
	rec := b.NewRecordBatch()
	defer rec.Release()
	dir := filepath.Dir(final)
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(final)+"-*")
	if err != nil {
		return fmt.Errorf("generate: %v", err)
	}
	tmp := f.Name()
	fw, err := ipc.NewFileWriter(f, ipc.WithSchema(genArrowSchema), ipc.WithAllocator(memory.DefaultAllocator))
	if err == nil {
		err = fw.Write(rec)
		if cerr := fw.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("generate: writing %s: %v", final, err)
	}
	return syncDir(dir)
}

// genProgress shows progress: a bar on a terminal, a plain line every 5 s otherwise.
type genProgress struct {
	bar   *progressbar.ProgressBar
	w     io.Writer
	start time.Time
	next  time.Time
	base  GenerateStats
	last  int64
}

func newGenProgress(w io.Writer, total int64, base GenerateStats) *genProgress {
	p := &genProgress{w: w, start: time.Now(), next: time.Now().Add(5 * time.Second), base: base, last: base.Prompts}
	if w == nil {
		return p
	}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		if total <= 0 {
			total = -1
		}
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription("generating"),
			progressbar.OptionShowCount(),
			progressbar.OptionSetItsString("prompts"),
			progressbar.OptionShowIts(),
			progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
		p.bar.Add64(base.Prompts)
	}
	return p
}

func (p *genProgress) update(s GenerateStats, final bool) {
	if p.w == nil {
		return
	}
	if p.bar != nil {
		p.bar.Add64(s.Prompts - p.last)
		p.last = s.Prompts
		if final {
			p.bar.Finish()
		}
		return
	}
	now := time.Now()
	if !final && now.Before(p.next) {
		return
	}
	p.next = now.Add(5 * time.Second)
	el := max(now.Sub(p.start).Seconds(), 1e-9)
	fmt.Fprintf(p.w, "generate: %d prompts, %d written, %d duplicate, %d dropped, %d failed; %.2f prompts/s, %.0f tokens/s\n",
		s.Prompts, s.Written, s.Duplicates, s.DupOutputs+s.Empty+s.TooLong+s.Invalid, s.Failed,
		float64(s.Prompts-p.base.Prompts)/el, float64(s.Tokens-p.base.Tokens)/el)
}

// GenerateOutputs lists the complete data files of a Generate output directory, in order.
func GenerateOutputs(dir string) ([]string, error) {
	raw, err := os.ReadFile(filepath.Join(dir, GenerateManifestName))
	if err != nil {
		return nil, fmt.Errorf("generate: %v", err)
	}
	var m genManifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("generate: %s: %v", filepath.Join(dir, GenerateManifestName), err)
	}
	out := make([]string, len(m.Shards))
	for i, sh := range m.Shards {
		out[i] = filepath.Join(dir, sh.Name)
	}
	sort.Strings(out)
	return out, nil
}
