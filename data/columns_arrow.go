package data

import (
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
)

// arrowBinding maps the columns an example type needs to column indices of one Arrow schema.
type arrowBinding struct {
	typ                                      Type
	text, prompt, completion, messages       int
	ids, labels, posIDs, docStart, numTokens int
	msgRole, msgContent                      int // field indices inside the message struct
	file                                     string
}

func schemaNames(s *arrow.Schema) []string {
	names := make([]string, 0, s.NumFields())
	for _, f := range s.Fields() {
		names = append(names, f.Name)
	}
	return names
}

// detectType picks an example type from the column names present.
func detectType(has func(string) bool, cols Columns) (Type, bool) {
	switch {
	case has(cols.InputIDs):
		return TypeTokenized, true
	case has(cols.Messages):
		return TypeMessages, true
	case has(cols.Prompt) && has(cols.Completion):
		return TypePromptCompletion, true
	case has(cols.Text):
		return TypeText, true
	case has("conversations"):
		return TypeMessages, true
	}
	return "", false
}

// typeHint suggests a mapping for well-known layouts the detection does not
// take on its own.
func typeHint(has func(string) bool) string {
	switch {
	case has("instruction") && has("output"):
		return " (Alpaca-style data: type: prompt_completion, columns: {prompt: instruction, completion: output}; an input column is not merged in)"
	case has("question") && has("answer"):
		return " (type: prompt_completion, columns: {prompt: question, completion: answer})"
	}
	return ""
}

func missingColumn(file, col string, typ Type, have []string) error {
	sorted := append([]string(nil), have...)
	sort.Strings(sorted)
	return fmt.Errorf("%s: column %q (needed for type %s) not found; columns present: [%s] — map the right one under datasets[].columns",
		file, col, typ, strings.Join(sorted, ", "))
}

func bindArrow(s *arrow.Schema, typ Type, cols Columns, file string) (*arrowBinding, error) {
	idx := func(name string) int {
		if name == "" {
			return -1
		}
		is := s.FieldIndices(name)
		if len(is) == 0 {
			return -1
		}
		return is[0]
	}
	has := func(name string) bool { return idx(name) >= 0 }
	if typ == TypeAuto || typ == "" {
		t, ok := detectType(has, cols)
		if !ok {
			return nil, fmt.Errorf("%s: cannot tell the example type from columns [%s]; set datasets[].type and datasets[].columns%s",
				file, strings.Join(schemaNames(s), ", "), typeHint(has))
		}
		typ = t
	}
	b := &arrowBinding{typ: typ, file: file, text: -1, prompt: -1, completion: -1, messages: -1,
		ids: -1, labels: -1, posIDs: -1, docStart: -1, numTokens: -1}
	need := func(col string, dst *int, check func(arrow.DataType) bool, want string) error {
		i := idx(col)
		if i < 0 {
			return missingColumn(file, col, typ, schemaNames(s))
		}
		if !check(s.Field(i).Type) {
			return fmt.Errorf("%s: column %q has type %s, want %s", file, col, s.Field(i).Type, want)
		}
		*dst = i
		return nil
	}
	optional := func(col string, dst *int, check func(arrow.DataType) bool, want string) error {
		if !has(col) {
			return nil
		}
		return need(col, dst, check, want)
	}
	var err error
	switch typ {
	case TypeText:
		err = need(cols.Text, &b.text, isStringType, "string")
	case TypePromptCompletion:
		if err = need(cols.Prompt, &b.prompt, isStringType, "string"); err == nil {
			err = need(cols.Completion, &b.completion, isStringType, "string")
		}
	case TypeMessages:
		col := cols.Messages
		if !has(col) && has("conversations") && col == "messages" {
			col = "conversations"
		}
		if err = need(col, &b.messages, isMessagesType, "list<struct<role: string, content: string>>"); err == nil {
			st := listElem(s.Field(b.messages).Type).(*arrow.StructType)
			b.msgRole, b.msgContent = messageFields(st)
		}
	case TypeTokenized:
		if err = need(cols.InputIDs, &b.ids, isIntListType, "list<int>"); err != nil {
			break
		}
		if err = optional(cols.Labels, &b.labels, isIntListType, "list<int>"); err != nil {
			break
		}
		if err = optional(cols.PositionIDs, &b.posIDs, isIntListType, "list<int>"); err != nil {
			break
		}
		if err = optional(cols.DocStart, &b.docStart, isIntListType, "list<int>"); err != nil {
			break
		}
		err = optional(cols.NumTokens, &b.numTokens, isIntType, "int")
	default:
		err = fmt.Errorf("%s: unknown example type %q", file, typ)
	}
	if err != nil {
		return nil, err
	}
	return b, nil
}

func isStringType(t arrow.DataType) bool {
	switch t.ID() {
	case arrow.STRING, arrow.LARGE_STRING, arrow.STRING_VIEW:
		return true
	}
	return false
}

func isIntType(t arrow.DataType) bool {
	switch t.ID() {
	case arrow.INT8, arrow.INT16, arrow.INT32, arrow.INT64, arrow.UINT8, arrow.UINT16, arrow.UINT32, arrow.UINT64:
		return true
	}
	return false
}

func listElem(t arrow.DataType) arrow.DataType {
	switch lt := t.(type) {
	case *arrow.ListType:
		return lt.Elem()
	case *arrow.LargeListType:
		return lt.Elem()
	case *arrow.FixedSizeListType:
		return lt.Elem()
	case *arrow.ListViewType:
		return lt.Elem()
	}
	return nil
}

func isIntListType(t arrow.DataType) bool {
	e := listElem(t)
	return e != nil && isIntType(e)
}

func messageFields(st *arrow.StructType) (role, content int) {
	role, content = -1, -1
	for _, n := range []string{"role", "from"} {
		if i, ok := st.FieldIdx(n); ok {
			role = i
			break
		}
	}
	for _, n := range []string{"content", "value"} {
		if i, ok := st.FieldIdx(n); ok {
			content = i
			break
		}
	}
	return
}

func isMessagesType(t arrow.DataType) bool {
	st, ok := listElem(t).(*arrow.StructType)
	if !ok {
		return false
	}
	r, c := messageFields(st)
	return r >= 0 && c >= 0 && isStringType(st.Field(r).Type) && isStringType(st.Field(c).Type)
}

type stringArray interface {
	Value(int) string
	IsNull(int) bool
}

func strAt(a arrow.Array, i int) (string, bool) {
	sa, ok := a.(stringArray)
	if !ok || a.IsNull(i) {
		return "", false
	}
	return strings.Clone(sa.Value(i)), true
}

// appendInts appends values[start:end] of an integer array as int32.
func appendInts(dst []int32, vals arrow.Array, start, end int64) ([]int32, bool) {
	if vals.NullN() > 0 {
		for k := start; k < end; k++ {
			if vals.IsNull(int(k)) {
				return dst, false
			}
		}
	}
	switch v := vals.(type) {
	case *array.Int32:
		return append(dst, v.Int32Values()[start:end]...), true
	case *array.Int64:
		for _, x := range v.Int64Values()[start:end] {
			if x > 1<<31-1 || x < -(1<<31) {
				return dst, false
			}
			dst = append(dst, int32(x))
		}
	case *array.Uint32:
		for _, x := range v.Uint32Values()[start:end] {
			if x > 1<<31-1 {
				return dst, false
			}
			dst = append(dst, int32(x))
		}
	case *array.Uint64:
		for _, x := range v.Uint64Values()[start:end] {
			if x > 1<<31-1 {
				return dst, false
			}
			dst = append(dst, int32(x))
		}
	case *array.Int16:
		for _, x := range v.Int16Values()[start:end] {
			dst = append(dst, int32(x))
		}
	case *array.Uint16:
		for _, x := range v.Uint16Values()[start:end] {
			dst = append(dst, int32(x))
		}
	case *array.Int8:
		for _, x := range v.Int8Values()[start:end] {
			dst = append(dst, int32(x))
		}
	case *array.Uint8:
		for _, x := range v.Uint8Values()[start:end] {
			dst = append(dst, int32(x))
		}
	default:
		return dst, false
	}
	return dst, true
}

func intListAt(a arrow.Array, i int) ([]int32, bool) {
	l, ok := a.(array.ListLike)
	if !ok || a.IsNull(i) {
		return nil, false
	}
	s, e := l.ValueOffsets(i)
	out, ok := appendInts(make([]int32, 0, e-s), l.ListValues(), s, e)
	return out, ok
}

func intAt(a arrow.Array, i int) (int64, bool) {
	if a.IsNull(i) {
		return 0, false
	}
	switch v := a.(type) {
	case *array.Int32:
		return int64(v.Value(i)), true
	case *array.Int64:
		return v.Value(i), true
	case *array.Uint32:
		return int64(v.Value(i)), true
	case *array.Int16:
		return int64(v.Value(i)), true
	case *array.Uint16:
		return int64(v.Value(i)), true
	}
	return 0, false
}

// columnNames lists the columns the binding reads.
func (b *arrowBinding) columnNames(s *arrow.Schema) []string {
	var out []string
	for _, c := range []int{b.text, b.prompt, b.completion, b.messages, b.ids, b.labels, b.posIDs, b.docStart, b.numTokens} {
		if c >= 0 {
			out = append(out, s.Field(c).Name)
		}
	}
	return out
}

// row fills ex from row i of rec.
func (b *arrowBinding) row(rec arrow.RecordBatch, i int, ex *Example) error {
	ex.Type = b.typ
	col := func(c int) arrow.Array { return rec.Column(c) }
	name := func(c int) string { return rec.Schema().Field(c).Name }
	var ok bool
	switch b.typ {
	case TypeText:
		if ex.Text, ok = strAt(col(b.text), i); !ok {
			return rowErr(ex.Loc, "column %q is null", name(b.text))
		}
		if !utf8.ValidString(ex.Text) {
			return rowErr(ex.Loc, "column %q is not valid UTF-8; re-encode the text as UTF-8", name(b.text))
		}
	case TypePromptCompletion:
		if ex.Prompt, ok = strAt(col(b.prompt), i); !ok {
			return rowErr(ex.Loc, "column %q is null", name(b.prompt))
		}
		if ex.Completion, ok = strAt(col(b.completion), i); !ok {
			return rowErr(ex.Loc, "column %q is null", name(b.completion))
		}
		for _, c := range []struct {
			s   string
			col int
		}{{ex.Prompt, b.prompt}, {ex.Completion, b.completion}} {
			if !utf8.ValidString(c.s) {
				return rowErr(ex.Loc, "column %q is not valid UTF-8; re-encode the text as UTF-8", name(c.col))
			}
		}
	case TypeMessages:
		a := col(b.messages)
		l := a.(array.ListLike)
		if a.IsNull(i) {
			return rowErr(ex.Loc, "column %q is null", name(b.messages))
		}
		s, e := l.ValueOffsets(i)
		st := l.ListValues().(*array.Struct)
		roles, contents := st.Field(b.msgRole), st.Field(b.msgContent)
		ex.Messages = make([]Message, 0, e-s)
		for k := int(s); k < int(e); k++ {
			if st.IsNull(k) {
				return rowErr(ex.Loc, "column %q: message %d is null", name(b.messages), k-int(s))
			}
			r, ok := strAt(roles, k)
			if !ok {
				return rowErr(ex.Loc, "column %q: message %d has no role", name(b.messages), k-int(s))
			}
			c, _ := strAt(contents, k) // null content = empty (e.g. tool-call turns)
			if !utf8.ValidString(r) || !utf8.ValidString(c) {
				return rowErr(ex.Loc, "column %q: message %d is not valid UTF-8; re-encode the text as UTF-8", name(b.messages), k-int(s))
			}
			ex.Messages = append(ex.Messages, Message{Role: r, Content: c})
		}
	case TypeTokenized:
		if ex.InputIDs, ok = intListAt(col(b.ids), i); !ok {
			return rowErr(ex.Loc, "column %q is null or holds a value outside int32", name(b.ids))
		}
		if b.labels >= 0 {
			if ex.Labels, ok = intListAt(col(b.labels), i); !ok {
				return rowErr(ex.Loc, "column %q is null or holds a value outside int32", name(b.labels))
			}
		}
		if b.posIDs >= 0 {
			if ex.PositionIDs, ok = intListAt(col(b.posIDs), i); !ok {
				return rowErr(ex.Loc, "column %q is null or out of range", name(b.posIDs))
			}
		}
		if b.docStart >= 0 {
			if ex.DocStart, ok = intListAt(col(b.docStart), i); !ok {
				return rowErr(ex.Loc, "column %q is null or out of range", name(b.docStart))
			}
		}
		ex.NumTokens = -1
		if b.numTokens >= 0 {
			n, ok := intAt(col(b.numTokens), i)
			if !ok {
				return rowErr(ex.Loc, "column %q is null", name(b.numTokens))
			}
			ex.NumTokens = int32(n)
		}
	}
	return nil
}
