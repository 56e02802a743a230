package data

import (
	"bytes"

	"encoding/json"
	"errors"
	"fmt"
	"github.com/apache/arrow-go/v18/arrow"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// shardFormat is the concrete format of one file.
type shardFormat int

const (
	shardJSONL shardFormat = iota
	shardArrowStream
	shardArrowFile
	shardParquet
)

func (f shardFormat) String() string {
	return [...]string{"jsonl", "arrow-stream", "arrow-file", "parquet"}[f]
}

type shard struct {
	path   string
	format shardFormat
}

// Pos is a position inside one pass over a dataset: the next row to read.
type Pos struct {
	Shard int   `json:"shard"`          // index into the epoch's shard order
	Row   int64 `json:"row"`            // rows (JSONL: lines) of that shard already consumed
	Off   int64 `json:"off,omitempty"`  // JSONL: byte offset of the next line; Arrow file: record batch index
	Base  int64 `json:"base,omitempty"` // Arrow file: first row of that record batch
}

// rowReader streams the rows of one shard.
type rowReader interface {
	// next returns the next row; io.EOF at the end of the shard. A *RowError is about one
	// row only: the reader has moved past it and can go on.
	next() (Example, error)
	pos() Pos // position of the next row (Shard left 0)
	close() error
}

// preparedManifest is written by `llamatune data prepare` next to its Arrow shards.
type preparedManifest struct {
	Format    string   `json:"format"` // "llamatune-prepared"
	Version   int      `json:"version"`
	SeqLen    int      `json:"seq_len"`
	Packing   bool     `json:"packing"`
	PadID     int      `json:"pad_id"`
	Shards    []string `json:"shards"`
	Rows      int64    `json:"rows"`
	Tokens    int64    `json:"tokens"`
	Trained   int64    `json:"trained_tokens"`
	Tokenizer string   `json:"tokenizer,omitempty"`
}

const preparedManifestName = "llamatune_prepared.json"

var knownExts = []string{".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson", ".arrow", ".feather", ".ipc", ".parquet"}

func hasKnownExt(p string) bool {
	l := strings.ToLower(p)
	for _, e := range knownExts {
		if strings.HasSuffix(l, e) {
			return true
		}
	}
	return false
}

// resolveShards lists the files of a dataset in a stable order.
func resolveShards(spec DatasetSpec) ([]shard, error) {
	var paths []string
	fmtHint := spec.Format
	if strings.ContainsAny(spec.Path, "*?[") {
		m, err := filepath.Glob(spec.Path)
		if err != nil {
			return nil, fmt.Errorf("dataset %s: bad glob pattern: %v", spec.Name, err)
		}
		for _, p := range m {
			if st, err := os.Stat(p); err == nil && !st.IsDir() {
				paths = append(paths, p)
			}
		}
		if len(paths) == 0 {
			return nil, fmt.Errorf("dataset %s: glob %q matches no files; check the path", spec.Name, spec.Path)
		}
		sort.Strings(paths)
	} else {
		st, err := os.Stat(spec.Path)
		if err != nil {
			return nil, fmt.Errorf("dataset %s: %v; check datasets[].path", spec.Name, err)
		}
		if !st.IsDir() {
			paths = []string{spec.Path}
		} else {
			ps, hf, err := dirShards(spec)
			if err != nil {
				return nil, err
			}
			paths = ps
			if hf && fmtHint == FormatAuto {
				fmtHint = FormatHF
			}
		}
	}
	shards := make([]shard, 0, len(paths))
	for _, p := range paths {
		f, err := shardFormatOf(p, fmtHint)
		if err != nil {
			return nil, fmt.Errorf("dataset %s: %w", spec.Name, err)
		}
		shards = append(shards, shard{path: p, format: f})
	}
	return shards, nil
}

// dirShards lists the data files of a directory: HF save_to_disk (state.json or
// dataset_dict.json), a llamatune prepared directory, or any folder of shards (recursively).
func dirShards(spec DatasetSpec) ([]string, bool, error) {
	dir := spec.Path
	if b, err := os.ReadFile(filepath.Join(dir, "dataset_dict.json")); err == nil {
		var dd struct {
			Splits []string `json:"splits"`
		}
		if err := json.Unmarshal(b, &dd); err != nil {
			return nil, false, fmt.Errorf("%s: %v", filepath.Join(dir, "dataset_dict.json"), err)
		}
		split := spec.Split
		if split == "" {
			split = "train"
		}
		found := false
		for _, s := range dd.Splits {
			found = found || s == split
		}
		if !found {
			return nil, false, fmt.Errorf("dataset %s: split %q not in %s (splits: %s); set datasets[].split",
				spec.Name, split, filepath.Join(dir, "dataset_dict.json"), strings.Join(dd.Splits, ", "))
		}
		sub := spec
		sub.Path = filepath.Join(dir, split)
		return dirShards(sub)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "state.json")); err == nil {
		var st struct {
			DataFiles []struct {
				Filename string `json:"filename"`
			} `json:"_data_files"`
		}
		if err := json.Unmarshal(b, &st); err != nil {
			return nil, false, fmt.Errorf("%s: %v (is this a datasets.save_to_disk directory?)", filepath.Join(dir, "state.json"), err)
		}
		if len(st.DataFiles) == 0 {
			return nil, false, fmt.Errorf("%s lists no _data_files; the dataset is empty", filepath.Join(dir, "state.json"))
		}
		var out []string
		for _, f := range st.DataFiles {
			out = append(out, filepath.Join(dir, f.Filename))
		}
		return out, true, nil
	}
	if b, err := os.ReadFile(filepath.Join(dir, preparedManifestName)); err == nil {
		var m preparedManifest
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, false, fmt.Errorf("%s: %v", filepath.Join(dir, preparedManifestName), err)
		}
		var out []string
		for _, s := range m.Shards {
			out = append(out, filepath.Join(dir, s))
		}
		if len(out) == 0 {
			return nil, false, fmt.Errorf("%s lists no shards; the dataset is empty", filepath.Join(dir, preparedManifestName))
		}
		return out, false, nil
	}
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != dir && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if hasKnownExt(p) && !strings.HasPrefix(d.Name(), ".") && !strings.HasPrefix(d.Name(), "cache-") {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("dataset %s: %v", spec.Name, err)
	}
	if len(out) == 0 {
		return nil, false, fmt.Errorf("dataset %s: directory %s holds no .jsonl/.arrow/.parquet files", spec.Name, dir)
	}
	sort.Strings(out)
	return out, false, nil
}

var arrowFileMagic = []byte("ARROW1")

func shardFormatOf(p string, hint Format) (shardFormat, error) {
	l := strings.ToLower(p)
	switch hint {
	case FormatJSONL:
		return shardJSONL, nil
	case FormatParquet:
		return shardParquet, nil
	case FormatHF, FormatArrow:
		return sniffArrow(p)
	}
	switch {
	case strings.HasSuffix(l, ".parquet"):
		return shardParquet, nil
	case strings.HasSuffix(l, ".arrow"), strings.HasSuffix(l, ".feather"), strings.HasSuffix(l, ".ipc"):
		return sniffArrow(p)
	case strings.HasSuffix(l, ".jsonl"), strings.HasSuffix(l, ".json"), strings.HasSuffix(l, ".ndjson"),
		strings.HasSuffix(l, ".jsonl.gz"), strings.HasSuffix(l, ".json.gz"):
		return shardJSONL, nil
	}
	// Unknown extension: sniff.
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	head := make([]byte, 8)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, arrowFileMagic):
		return shardArrowFile, nil
	case bytes.HasPrefix(head, []byte("PAR1")):
		return shardParquet, nil
	case bytes.HasPrefix(head, []byte{0xff, 0xff, 0xff, 0xff}):
		return shardArrowStream, nil
	case bytes.HasPrefix(bytes.TrimSpace(head), []byte("{")):
		return shardJSONL, nil
	}
	return 0, fmt.Errorf("%s: unknown file format; name it .jsonl, .arrow or .parquet or set datasets[].format", p)
}

func sniffArrow(p string) (shardFormat, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	head := make([]byte, 6)
	if _, err := io.ReadFull(f, head); err != nil {
		return 0, fmt.Errorf("%s: too short to be an Arrow file (truncated?)", p)
	}
	if bytes.Equal(head, arrowFileMagic) {
		return shardArrowFile, nil
	}
	return shardArrowStream, nil
}

// openShard opens a shard positioned at start.
func openShard(sh shard, typ Type, cols Columns, start Pos) (rowReader, error) {
	switch sh.format {
	case shardJSONL:
		return openJSONL(sh.path, typ, cols, start)
	case shardArrowStream, shardArrowFile, shardParquet:
		src, base, batchIdx, err := openBatchSource(sh, start)
		if err != nil {
			return nil, err
		}
		bind, err := bindArrow(src.schema(), typ, cols, sh.path)
		if err != nil {
			src.close()
			return nil, err
		}
		if pj, ok := src.(interface {
			project([]string) *arrow.Schema
		}); ok {
			// Read only the columns the example type needs (Parquet is columnar).
			if bind, err = bindArrow(pj.project(bind.columnNames(src.schema())), bind.typ, cols, sh.path); err != nil {
				src.close()
				return nil, err
			}
		}
		r := &batchRowReader{src: src, bind: bind, file: sh.path, row: base, batchIdx: batchIdx - 1, batchBase: base, hints: sh.format == shardArrowFile}
		if err := r.skipTo(start.Row); err != nil {
			r.close()
			return nil, err
		}
		return r, nil
	}
	return nil, errors.New("unknown shard format")
}

// detectTypeOf opens the first shard to find out the example type of an auto-typed dataset.
func detectTypeOf(sh shard, cols Columns) (Type, error) {
	switch sh.format {
	case shardJSONL:
		return detectJSONLType(sh.path, cols)
	default:
		src, _, _, err := openBatchSource(sh, Pos{})
		if err != nil {
			return "", err
		}
		defer src.close()
		b, err := bindArrow(src.schema(), TypeAuto, cols, sh.path)
		if err != nil {
			return "", err
		}
		return b.typ, nil
	}
}
