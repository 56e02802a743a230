package data

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
)

// Rows streams the raw rows (Examples, not tokenized) of one dataset: every shard in file
// order, every row in shard order, no shuffling, mixing, eval split or epochs. It is what tools
// that read a dataset column row by row use (synthetic-data generation reads prompts with it).
//
// Besides the usual example types, Rows reads prompt-only datasets: when the dataset's type is
// auto or prompt_completion and its first shard has the prompt column but no completion
// column, each row comes back as a prompt_completion Example with an empty Completion.
type Rows struct {
	spec       DatasetSpec
	shards     []shard
	typ        Type // type the shards are opened with
	promptOnly bool // opened as text over the prompt column
	cols       Columns
	i          int // current shard
	rd         rowReader
	n          int64
}

// OpenRows opens a dataset for raw row reading. Errors name the dataset and file.
func OpenRows(spec DatasetSpec) (*Rows, error) {
	if spec.Path == "" {
		return nil, fmt.Errorf("dataset %q: path is empty", spec.Name)
	}
	if spec.Name == "" {
		spec.Name = spec.Path
	}
	if spec.Format == "" {
		spec.Format = FormatAuto
	}
	if spec.Type == "" {
		spec.Type = TypeAuto
	}
	switch spec.Type {
	case TypeAuto, TypeText, TypeMessages, TypePromptCompletion, TypeTokenized:
	default:
		return nil, fmt.Errorf("dataset %s: type %q: use text, messages, prompt_completion or tokenized", spec.Name, spec.Type)
	}
	spec.Columns = spec.Columns.withDefaults()
	shards, err := resolveShards(spec)
	if err != nil {
		return nil, err
	}
	r := &Rows{spec: spec, shards: shards, typ: spec.Type, cols: spec.Columns}
	if spec.Type == TypeAuto || spec.Type == TypePromptCompletion {
		names, err := shardColumnNames(shards[0])
		if err != nil {
			return nil, fmt.Errorf("dataset %s: %w", spec.Name, err)
		}
		if slices.Contains(names, spec.Columns.Prompt) && !slices.Contains(names, spec.Columns.Completion) {
			auto := TypeAuto
			if spec.Type == TypeAuto {
				auto, _ = detectType(func(c string) bool { return slices.Contains(names, c) }, spec.Columns)
			}
			if auto == TypeAuto || auto == "" {
				r.promptOnly, r.typ = true, TypeText
				r.cols.Text = spec.Columns.Prompt
			}
		}
	}
	if r.typ == TypeAuto {
		if r.typ, err = detectTypeOf(shards[0], spec.Columns); err != nil {
			return nil, fmt.Errorf("dataset %s: %w", spec.Name, err)
		}
	}
	return r, nil
}

// Type is the example type of the rows (prompt_completion for a prompt-only dataset).
func (r *Rows) Type() Type {
	if r.promptOnly {
		return TypePromptCompletion
	}
	return r.typ
}

// PromptOnly reports whether the dataset has a prompt column and no completion column.
func (r *Rows) PromptOnly() bool { return r.promptOnly }

// Read returns how many rows Next has returned so far (bad rows included).
func (r *Rows) Read() int64 { return r.n }

// Next returns the next row, io.EOF after the last. A *RowError (IsRowError) is about that row
// only: the reader has moved past it and the next call goes on with the following row.
func (r *Rows) Next() (Example, error) {
	for {
		if r.i >= len(r.shards) {
			return Example{}, io.EOF
		}
		if r.rd == nil {
			rd, err := openShard(r.shards[r.i], r.typ, r.cols, Pos{})
			if err != nil {
				return Example{}, fmt.Errorf("dataset %s: %w", r.spec.Name, err)
			}
			r.rd = rd
		}
		ex, err := r.rd.next()
		if err == io.EOF {
			r.rd.close()
			r.rd = nil
			r.i++
			continue
		}
		r.n++
		if err != nil {
			return ex, err
		}
		if r.promptOnly {
			ex.Type, ex.Prompt, ex.Text = TypePromptCompletion, ex.Text, ""
		}
		return ex, nil
	}
}

// Close releases the open shard.
func (r *Rows) Close() error {
	if r.rd != nil {
		err := r.rd.close()
		r.rd = nil
		return err
	}
	return nil
}

// shardColumnNames lists the columns of a shard: the schema of Arrow/Parquet files, the keys
// of the first JSON object of a JSONL file.
func shardColumnNames(sh shard) ([]string, error) {
	if sh.format != shardJSONL {
		src, _, _, err := openBatchSource(sh, Pos{})
		if err != nil {
			return nil, err
		}
		defer src.close()
		return schemaNames(src.schema()), nil
	}
	f, gz, rd, err := openJSONLFile(sh.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if gz != nil {
		defer gz.Close()
	}
	br := bufio.NewReaderSize(rd, 1<<16)
	for tries := 0; tries < 100; tries++ {
		line, err := br.ReadBytes('\n')
		if t := bytes.TrimSpace(line); len(t) > 0 {
			var m map[string]json.RawMessage
			if json.Unmarshal(t, &m) == nil {
				names := make([]string, 0, len(m))
				for k := range m {
					names = append(names, k)
				}
				return names, nil
			}
		}
		if err != nil {
			break
		}
	}
	return nil, nil // let type detection report what is wrong
}
