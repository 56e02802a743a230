package data

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"unicode/utf8"
)

// maxJSONLLine bounds the memory one line may take.
const maxJSONLLine = 256 << 20

type jsonlReader struct {
	f     *os.File
	gz    *gzip.Reader
	br    *bufio.Reader
	path  string
	typ   Type
	cols  Columns
	line  int64 // lines consumed
	off   int64 // byte offset of the next line (plain files)
	buf   []byte
	plain bool
}

func openJSONLFile(p string) (*os.File, *gzip.Reader, io.Reader, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, nil, nil, err
	}
	if strings.HasSuffix(strings.ToLower(p), ".gz") {
		gz, err := gzip.NewReader(f)
		if err != nil {
			f.Close()
			return nil, nil, nil, fmt.Errorf("%s: not a gzip file (%v)", p, err)
		}
		return f, gz, gz, nil
	}
	return f, nil, f, nil
}

func openJSONL(p string, typ Type, cols Columns, start Pos) (*jsonlReader, error) {
	if typ == TypeAuto || typ == "" {
		t, err := detectJSONLType(p, cols)
		if err != nil {
			return nil, err
		}
		typ = t
	}
	f, gz, rd, err := openJSONLFile(p)
	if err != nil {
		return nil, err
	}
	r := &jsonlReader{f: f, gz: gz, path: p, typ: typ, cols: cols, plain: gz == nil}
	if r.plain && start.Off > 0 {
		if _, err := f.Seek(start.Off, io.SeekStart); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: seek to byte %d: %v", p, start.Off, err)
		}
		r.off, r.line = start.Off, start.Row
		rd = f
	}
	r.br = bufio.NewReaderSize(rd, 1<<20)
	for r.line < start.Row {
		if _, err := r.readLine(); err != nil {
			r.close()
			if err == io.EOF {
				return nil, fmt.Errorf("%s has fewer lines than the cursor expects (%d); the data changed since the checkpoint", p, start.Row)
			}
			return nil, err
		}
	}
	return r, nil
}

// readLine returns the next physical line without its newline.
func (r *jsonlReader) readLine() ([]byte, error) {
	r.buf = r.buf[:0]
	for {
		chunk, err := r.br.ReadSlice('\n')
		r.buf = append(r.buf, chunk...)
		if len(r.buf) > maxJSONLLine {
			return nil, fmt.Errorf("%s:%d: line longer than %d MiB; is this really JSONL?", r.path, r.line+1, maxJSONLLine>>20)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF {
			if len(r.buf) == 0 {
				return nil, io.EOF
			}
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %v", r.path, r.line+1, err)
		}
		break
	}
	r.line++
	r.off += int64(len(r.buf))
	return bytes.TrimRight(r.buf, "\r\n"), nil
}

func (r *jsonlReader) next() (Example, error) {
	for {
		line, err := r.readLine()
		if err != nil {
			return Example{}, err
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		loc := Loc{File: r.path, Row: r.line, Line: true}
		ex := Example{Loc: loc}
		err = parseJSONLRow(line, r.typ, r.cols, &ex)
		return ex, err
	}
}

func (r *jsonlReader) pos() Pos {
	if r.plain {
		return Pos{Row: r.line, Off: r.off}
	}
	return Pos{Row: r.line}
}

func (r *jsonlReader) close() error {
	if r.gz != nil {
		r.gz.Close()
	}
	return r.f.Close()
}

func detectJSONLType(p string, cols Columns) (Type, error) {
	f, gz, rd, err := openJSONLFile(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if gz != nil {
		defer gz.Close()
	}
	br := bufio.NewReaderSize(rd, 1<<16)
	lineNo := 0
	var firstErr error
	for tries := 0; tries < 100; {
		line, err := br.ReadBytes('\n')
		lineNo++
		if len(bytes.TrimSpace(line)) > 0 {
			tries++
			var m map[string]json.RawMessage
			if jerr := json.Unmarshal(line, &m); jerr != nil {
				if t := bytes.TrimSpace(line); lineNo == 1 && len(t) > 0 && t[0] == '[' {
					return "", fmt.Errorf("%s: looks like one JSON array, not JSON Lines; write one object per line (e.g. jq -c '.[]' in > out.jsonl)", p)
				}
				// A malformed line is the row reader's business (bad_rows); look further.
				if firstErr == nil {
					firstErr = fmt.Errorf("%s:%d: not a JSON object (%v); cannot detect the example type — set datasets[].type", p, lineNo, jerr)
				}
				continue
			}
			t, ok := detectType(func(k string) bool { _, ok := m[k]; return ok }, cols)
			if !ok {
				keys := make([]string, 0, len(m))
				for k := range m {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				return "", fmt.Errorf("%s:%d: cannot tell the example type from keys [%s]; set datasets[].type and datasets[].columns%s",
					p, lineNo, strings.Join(keys, ", "), typeHint(func(k string) bool { _, ok := m[k]; return ok }))
			}
			return t, nil
		}
		if err != nil {
			break
		}
	}
	if firstErr != nil {
		return "", firstErr
	}
	return "", fmt.Errorf("%s: no rows; the dataset is empty", p)
}

// parseJSONLRow decodes one JSON object into ex according to typ.
func parseJSONLRow(line []byte, typ Type, cols Columns, ex *Example) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(line, &m); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return rowErr(ex.Loc, "malformed JSON at byte %d: %v", se.Offset, err)
		}
		return rowErr(ex.Loc, "not a JSON object: %v", err)
	}
	ex.Type = typ
	str := func(col string) (string, error) {
		raw, ok := m[col]
		if !ok {
			return "", rowErr(ex.Loc, "missing key %q (needed for type %s); map it under datasets[].columns", col, typ)
		}
		if isJSONNull(raw) {
			return "", rowErr(ex.Loc, "key %q is null; want a string (give the row its %s or remove it)", col, col)
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", rowErr(ex.Loc, "key %q must be a string, got %s", col, jsonKind(raw))
		}
		if err := checkUTF8(raw, s); err != "" {
			return "", rowErr(ex.Loc, "key %q %s", col, err)
		}
		return s, nil
	}
	ints := func(col string, required bool) ([]int32, error) {
		raw, ok := m[col]
		if !ok || string(raw) == "null" {
			if required {
				return nil, rowErr(ex.Loc, "missing key %q (needed for type %s); map it under datasets[].columns", col, typ)
			}
			return nil, nil
		}
		var v []int64
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, rowErr(ex.Loc, "key %q must be a list of integers, got %s", col, jsonKind(raw))
		}
		out := make([]int32, len(v))
		for i, x := range v {
			if x > 1<<31-1 || x < -(1<<31) {
				return nil, rowErr(ex.Loc, "key %q: value %d at index %d is out of int32 range", col, x, i)
			}
			out[i] = int32(x)
		}
		return out, nil
	}
	var err error
	switch typ {
	case TypeText:
		ex.Text, err = str(cols.Text)
	case TypePromptCompletion:
		if ex.Prompt, err = str(cols.Prompt); err == nil {
			ex.Completion, err = str(cols.Completion)
		}
	case TypeMessages:
		err = parseJSONLMessages(m, cols.Messages, ex)
	case TypeTokenized:
		if ex.InputIDs, err = ints(cols.InputIDs, true); err != nil {
			return err
		}
		if ex.Labels, err = ints(cols.Labels, false); err != nil {
			return err
		}
		if ex.PositionIDs, err = ints(cols.PositionIDs, false); err != nil {
			return err
		}
		if ex.DocStart, err = ints(cols.DocStart, false); err != nil {
			return err
		}
		ex.NumTokens = -1
		if raw, ok := m[cols.NumTokens]; ok {
			var n int32
			if json.Unmarshal(raw, &n) != nil {
				return rowErr(ex.Loc, "key %q must be an integer", cols.NumTokens)
			}
			ex.NumTokens = n
		}
	default:
		return fmt.Errorf("unknown example type %q", typ)
	}
	return err
}

// parseJSONLMessages reads a row's conversation: a list of {role, content}
// (or ShareGPT's {from, value}) under col, or under "conversations" when the
// default "messages" is absent.
func parseJSONLMessages(m map[string]json.RawMessage, col string, ex *Example) error {
	if _, ok := m[col]; !ok && col == "messages" {
		if _, ok := m["conversations"]; ok {
			col = "conversations"
		}
	}
	raw, ok := m[col]
	if !ok {
		return rowErr(ex.Loc, "missing key %q (needed for type messages); map it under datasets[].columns.messages", col)
	}
	var msgs []map[string]json.RawMessage
	if err := json.Unmarshal(raw, &msgs); err != nil {
		return rowErr(ex.Loc, "key %q must be a list of {role, content} objects, got %s", col, jsonKind(raw))
	}
	ex.Messages = make([]Message, 0, len(msgs))
	for i, mm := range msgs {
		var msg Message
		rr, ok := mm["role"]
		if !ok {
			rr, ok = mm["from"]
		}
		if !ok || json.Unmarshal(rr, &msg.Role) != nil {
			return rowErr(ex.Loc, "%s[%d]: missing or non-string \"role\"", col, i)
		}
		if err := checkUTF8(rr, msg.Role); err != "" {
			return rowErr(ex.Loc, "%s[%d]: \"role\" %s", col, i, err)
		}
		cr, ok := mm["content"]
		if !ok {
			cr, ok = mm["value"]
		}
		if ok && string(cr) != "null" {
			if json.Unmarshal(cr, &msg.Content) != nil {
				return rowErr(ex.Loc, "%s[%d]: \"content\" must be a string, got %s", col, i, jsonKind(cr))
			}
			if err := checkUTF8(cr, msg.Content); err != "" {
				return rowErr(ex.Loc, "%s[%d]: \"content\" %s", col, i, err)
			}
		}
		ex.Messages = append(ex.Messages, msg)
	}
	return nil
}

func isJSONNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

// checkUTF8 returns what is wrong when the JSON string raw, decoded as s, was not valid UTF-8:
// encoding/json turns invalid bytes and lone surrogate escapes (\ud800) into U+FFFD without a
// word, and a model would train on those replacement characters. "" when it was valid.
func checkUTF8(raw json.RawMessage, s string) string {
	if !utf8.Valid(raw) {
		off := 0
		for off < len(raw) {
			r, n := utf8.DecodeRune(raw[off:])
			if r == utf8.RuneError && n == 1 {
				break
			}
			off += n
		}
		return fmt.Sprintf("is not valid UTF-8 (byte 0x%02x at offset %d of the value); re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)", raw[off], off)
	}
	if !strings.ContainsRune(s, utf8.RuneError) {
		return ""
	}
	// Valid bytes, yet U+FFFD came out: legitimate only where the text holds U+FFFD itself.
	lower := bytes.ToLower(raw)
	legit := bytes.Count(raw, []byte(string(utf8.RuneError))) + bytes.Count(lower, []byte(`\ufffd`))
	if strings.Count(s, string(utf8.RuneError)) > legit {
		return "holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff), which is not text; fix the writer of the file"
	}
	return ""
}

func jsonKind(raw json.RawMessage) string {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return "nothing"
	}
	switch t[0] {
	case '"':
		return "a string"
	case '{':
		return "an object"
	case '[':
		return "a list"
	case 'n':
		return "null"
	case 't', 'f':
		return "a boolean"
	}
	return "a number"
}
