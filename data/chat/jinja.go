package chat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nikolalohinski/gonja/v2"
	"github.com/nikolalohinski/gonja/v2/builtins"
	"github.com/nikolalohinski/gonja/v2/config"
	"github.com/nikolalohinski/gonja/v2/exec"
	"github.com/nikolalohinski/gonja/v2/loaders"
)

var (
	envOnce sync.Once
	env     *exec.Environment
	jcfg    *config.Config

	cacheMu sync.Mutex
	cache   = map[string]*compiled{}
)

// hfEnvironment mirrors transformers' chat-template environment: trim_blocks, lstrip_blocks,
// raise_exception, strftime_now, and tojson as json.dumps(ensure_ascii=False) keeping key order.
func hfEnvironment() (*exec.Environment, *config.Config) {
	envOnce.Do(func() {
		gonja.SetLoggerOutput(io.Discard)
		filters := exec.NewFilterSet(map[string]exec.FilterFunction{}).Update(builtins.Filters)
		_ = filters.Replace("tojson", filterToJSON)
		_ = filters.Replace("items", filterItems)
		ctx := exec.EmptyContext().Update(builtins.GlobalFunctions).Update(builtins.GlobalVariables)
		ctx.Set("raise_exception", func(_ *exec.Evaluator, params *exec.VarArgs) (string, error) {
			msg := ""
			if len(params.Args) > 0 {
				msg = params.Args[0].String()
			}
			return "", &templateError{msg}
		})
		ctx.Set("strftime_now", func(_ *exec.Evaluator, params *exec.VarArgs) (string, error) {
			if len(params.Args) != 1 || !params.Args[0].IsString() {
				return "", errors.New("strftime_now takes one format string")
			}
			return strftime(time.Now(), params.Args[0].String()), nil
		})
		env = &exec.Environment{
			Context:           ctx,
			Filters:           filters,
			Tests:             builtins.Tests,
			ControlStructures: builtins.ControlStructures,
			Methods:           builtins.Methods,
		}
		jcfg = config.New()
		jcfg.TrimBlocks = true
		jcfg.LeftStripBlocks = true
	})
	return env, jcfg
}

var (
	generationTag = regexp.MustCompile(`\{%([-+]?)\s*(end)?generation\s*([-+]?)%\}`)
	unsupported   = []*regexp.Regexp{
		regexp.MustCompile(`ControlStructure '([^']+)' not found`),
		regexp.MustCompile(`filter '([^']+)' not found`),
		regexp.MustCompile(`test '([^']+)' not found`),
		regexp.MustCompile(`(\w+) is not callable`),
	}
	unsupportedKind = []string{"tag", "filter", "test", "function"}
)

// jinjaError names what a template uses that gonja lacks, when the error says so.
func jinjaError(what string, err error) error {
	msg := err.Error()
	for i, re := range unsupported {
		if m := re.FindStringSubmatch(msg); m != nil {
			return fmt.Errorf("chat: %s: the template uses the %s %q, which llamatune's Jinja engine (gonja) does not support (details: %v)", what, unsupportedKind[i], m[1], err)
		}
	}
	return fmt.Errorf("chat: %s: %v", what, err)
}

type templateError struct{ msg string }

func (e *templateError) Error() string { return e.msg }

type compiled struct {
	tpl *exec.Template
	gen bool // the template marks trained text with {% generation %} blocks
}

// Sentinels that replace {% generation %} / {% endgeneration %} in the output.
const (
	genStart = "\uE000llamatune-generation-start\uE000"
	genEnd   = "\uE000llamatune-generation-end\uE000"
)

func compile(orig string) (*compiled, error) {
	cacheMu.Lock()
	defer cacheMu.Unlock()
	if c, ok := cache[orig]; ok {
		return c, nil
	}
	e, cfg := hfEnvironment()
	// {% generation %} blocks (HF's assistant-mask markers) become self-contained if-blocks
	// that print a sentinel, so trim_blocks / lstrip_blocks act on them as on the originals.
	src := generationTag.ReplaceAllStringFunc(orig, func(tag string) string {
		m := generationTag.FindStringSubmatch(tag)
		sent := genStart
		if m[2] != "" {
			sent = genEnd
		}
		return "{%" + m[1] + " if true %}{{ '" + sent + "' }}{% endif " + m[3] + "%}"
	})
	loader, err := loaders.NewFileSystemLoader("")
	if err != nil {
		return nil, err
	}
	shifted, err := loaders.NewShiftedLoader("chat_template", strings.NewReader(src), loader)
	if err != nil {
		return nil, err
	}
	t, err := exec.NewTemplate("chat_template", cfg, shifted, e)
	if err != nil {
		return nil, jinjaError("cannot parse the Jinja chat template", err)
	}
	if len(cache) > 64 {
		clear(cache)
	}
	c := &compiled{tpl: t, gen: src != orig}
	cache[orig] = c
	return c, nil
}

// renderJinja renders the whole conversation and finds the assistant spans by prefixes.
func renderJinja(src string, msgs []Message, agp bool, o *options) ([]Segment, error) {
	if err := checkRoles(msgs, "system", "user", "assistant", "tool", "ipython"); err != nil {
		return nil, err
	}
	c, err := compile(src)
	if err != nil {
		return nil, err
	}
	t := c.tpl
	var tools any
	if len(o.tools) > 0 {
		if tools, err = decodeOrdered(o.tools); err != nil {
			return nil, fmt.Errorf("chat: tools: %v", err)
		}
	}
	conv := make([]any, len(msgs))
	for i, m := range msgs {
		d := exec.Dict{}
		d.Pairs = append(d.Pairs, &exec.Pair{Key: exec.AsValue("role"), Value: exec.AsValue(m.Role)})
		if m.Content != "" || len(m.ToolCalls) == 0 {
			d.Pairs = append(d.Pairs, &exec.Pair{Key: exec.AsValue("content"), Value: exec.AsValue(m.Content)})
		}
		if len(m.ToolCalls) > 0 {
			tc, err := decodeOrdered(m.ToolCalls)
			if err != nil {
				return nil, fmt.Errorf("chat: message %d: tool_calls: %v", i, err)
			}
			d.Pairs = append(d.Pairs, &exec.Pair{Key: exec.AsValue("tool_calls"), Value: exec.AsValue(tc)})
		}
		conv[i] = d
	}
	render := func(n int, agp bool) (string, error) {
		ctx := map[string]any{
			"messages":              conv[:n:n],
			"add_generation_prompt": agp,
			"bos_token":             orDefault(o.bos, "<|begin_of_text|>"),
			"eos_token":             orDefault(o.eos, "<|eot_id|>"),
		}
		if tools != nil {
			ctx["tools"] = tools
		}
		for k, v := range o.vars {
			ctx[k] = v
		}
		out, err := t.ExecuteToString(exec.NewContext(ctx))
		if err != nil {
			var te *templateError
			if errors.As(err, &te) {
				return "", fmt.Errorf("chat: the template raised an exception: %s", te.msg)
			}
			return "", jinjaError("rendering the Jinja chat template failed", err)
		}
		return out, nil
	}
	full, err := render(len(msgs), agp)
	if err != nil {
		return nil, err
	}
	if c.gen {
		return generationSegments(full, o.trainAll)
	}
	if o.trainAll {
		return []Segment{{Text: full, Train: true}}, nil
	}
	// A template that ignores add_generation_prompt (the original Llama 3 one) appends the
	// assistant header after every render; find that header to cut it off below.
	genPrompt := ""
	if other, err := render(len(msgs), !agp); err == nil && other == full {
		if empty, err := render(0, true); err == nil {
			genPrompt = empty
		}
	}
	var segs []Segment
	pos := 0
	for i, m := range msgs {
		if m.Role != "assistant" {
			continue
		}
		before, err := render(i, true)
		if err != nil {
			return nil, err
		}
		after, err := render(i+1, false)
		if err != nil {
			return nil, err
		}
		if genPrompt != "" && strings.HasSuffix(after, genPrompt) && len(after)-len(genPrompt) >= len(before) {
			after = after[:len(after)-len(genPrompt)]
		}
		start, end := len(before), len(after)
		if !strings.HasPrefix(full, before) || !strings.HasPrefix(full, after) || start < pos || end < start {
			return nil, fmt.Errorf("chat: cannot find assistant message %d in the rendered conversation: the template does not render turn by turn (use TrainOnAll, or a built-in template)", i)
		}
		segs = append(segs, Segment{Text: full[pos:start]}, Segment{Text: full[start:end], Train: true})
		pos = end
	}
	segs = append(segs, Segment{Text: full[pos:]})
	return segs, nil
}

// generationSegments cuts a render at the {% generation %} sentinels.
func generationSegments(full string, trainAll bool) ([]Segment, error) {
	var segs []Segment
	train := false
	for full != "" {
		i, j := strings.Index(full, genStart), strings.Index(full, genEnd)
		k, isStart := i, true
		if k < 0 || (j >= 0 && j < k) {
			k, isStart = j, false
		}
		if k < 0 {
			segs = append(segs, Segment{Text: full, Train: train || trainAll})
			break
		}
		segs = append(segs, Segment{Text: full[:k], Train: train || trainAll})
		if isStart == train {
			return nil, errors.New("chat: {% generation %} / {% endgeneration %} blocks are not balanced in the rendered conversation")
		}
		train = isStart
		if isStart {
			full = full[k+len(genStart):]
		} else {
			full = full[k+len(genEnd):]
		}
	}
	return segs, nil
}

// decodeOrdered decodes JSON keeping object key order (objects become exec.Dict).
func decodeOrdered(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := decodeValue(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after JSON value")
	}
	return v, nil
}

func decodeValue(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			d := exec.Dict{}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return nil, err
				}
				v, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				d.Pairs = append(d.Pairs, &exec.Pair{Key: exec.AsValue(k.(string)), Value: exec.AsValue(v)})
			}
			_, err := dec.Token()
			return d, err
		case '[':
			list := []any{}
			for dec.More() {
				v, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				list = append(list, v)
			}
			_, err := dec.Token()
			return list, err
		}
		return nil, fmt.Errorf("unexpected %v", t)
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return int(i), nil
		}
		return t.Float64()
	default:
		return t, nil
	}
}

func filterItems(e *exec.Evaluator, in *exec.Value, params *exec.VarArgs) *exec.Value {
	if in.IsError() {
		return in
	}
	var out [][]any
	switch d := in.Interface().(type) {
	case exec.Dict:
		for _, p := range d.Pairs {
			out = append(out, []any{p.Key.Interface(), p.Value.Interface()})
		}
	case *exec.Dict:
		for _, p := range d.Pairs {
			out = append(out, []any{p.Key.Interface(), p.Value.Interface()})
		}
	default:
		if !in.IsDict() {
			return exec.AsValue(errors.New("items requires a mapping"))
		}
		for _, k := range in.Keys() {
			v, _ := in.GetItem(k.Interface())
			out = append(out, []any{k.Interface(), v.Interface()})
		}
	}
	return exec.AsValue(out)
}

// filterToJSON is transformers' tojson: json.dumps(x, ensure_ascii=False, indent=indent).
func filterToJSON(e *exec.Evaluator, in *exec.Value, params *exec.VarArgs) *exec.Value {
	if in.IsError() {
		return in
	}
	indent := -1
	for k, v := range params.KwArgs {
		switch k {
		case "indent":
			if !v.IsNil() {
				indent = v.Integer()
			}
		case "ensure_ascii", "sort_keys", "separators":
			if k != "ensure_ascii" && !v.IsNil() && v.IsTrue() {
				return exec.AsValue(fmt.Errorf("tojson: %s is not supported", k))
			}
		default:
			return exec.AsValue(fmt.Errorf("tojson: unknown argument %q", k))
		}
	}
	if len(params.Args) > 0 && !params.Args[0].IsNil() {
		indent = params.Args[0].Integer()
	}
	var b strings.Builder
	if err := writeJSON(&b, in.Interface(), indent, 0); err != nil {
		return exec.AsValue(err)
	}
	return exec.AsSafeValue(b.String())
}

func writeJSON(b *strings.Builder, v any, indent, depth int) error {
	newline := func(d int) {
		if indent >= 0 {
			b.WriteByte('\n')
			b.WriteString(strings.Repeat(" ", indent*d))
		}
	}
	itemSep := ", "
	if indent >= 0 {
		itemSep = ","
	}
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
		return nil
	case *exec.Value:
		return writeJSON(b, x.Interface(), indent, depth)
	case exec.Dict:
		return writeJSON(b, &x, indent, depth)
	case *exec.Dict:
		if len(x.Pairs) == 0 {
			b.WriteString("{}")
			return nil
		}
		b.WriteByte('{')
		for i, p := range x.Pairs {
			if i > 0 {
				b.WriteString(itemSep)
			}
			newline(depth + 1)
			writeJSONString(b, p.Key.String())
			b.WriteString(": ")
			if err := writeJSON(b, p.Value.Interface(), indent, depth+1); err != nil {
				return err
			}
		}
		newline(depth)
		b.WriteByte('}')
		return nil
	case string:
		writeJSONString(b, x)
		return nil
	case bool:
		if x {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
		return nil
	case float64:
		b.WriteString(pyFloat(x))
		return nil
	case float32:
		b.WriteString(pyFloat(float64(x)))
		return nil
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		b.WriteString(strconv.FormatInt(rv.Int(), 10))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		b.WriteString(strconv.FormatUint(rv.Uint(), 10))
	case reflect.Slice, reflect.Array:
		if rv.Len() == 0 {
			b.WriteString("[]")
			return nil
		}
		b.WriteByte('[')
		for i := 0; i < rv.Len(); i++ {
			if i > 0 {
				b.WriteString(itemSep)
			}
			newline(depth + 1)
			if err := writeJSON(b, rv.Index(i).Interface(), indent, depth+1); err != nil {
				return err
			}
		}
		newline(depth)
		b.WriteByte(']')
	case reflect.Map:
		keys := rv.MapKeys()
		sort.Slice(keys, func(i, j int) bool { return fmt.Sprint(keys[i]) < fmt.Sprint(keys[j]) })
		d := &exec.Dict{}
		for _, k := range keys {
			d.Pairs = append(d.Pairs, &exec.Pair{Key: exec.AsValue(fmt.Sprint(k.Interface())), Value: exec.AsValue(rv.MapIndex(k).Interface())})
		}
		return writeJSON(b, d, indent, depth)
	case reflect.Pointer, reflect.Interface:
		if rv.IsNil() {
			b.WriteString("null")
			return nil
		}
		return writeJSON(b, rv.Elem().Interface(), indent, depth)
	default:
		return fmt.Errorf("tojson: cannot serialize %T", v)
	}
	return nil
}

// writeJSONString escapes like Python's json.dumps with ensure_ascii=False.
func writeJSONString(b *strings.Builder, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		default:
			if r < 0x20 {
				fmt.Fprintf(b, `\u%04x`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
}

// pyFloat formats like Python's float repr (as json.dumps does).
func pyFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	a := math.Abs(f)
	if a != 0 && (a < 1e-4 || a >= 1e16) {
		s := strconv.FormatFloat(f, 'e', -1, 64)
		return s
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsAny(s, ".") {
		s += ".0"
	}
	return s
}

// strftime implements the common directives of Python's time.strftime.
func strftime(t time.Time, f string) string {
	var b strings.Builder
	for i := 0; i < len(f); i++ {
		if f[i] != '%' || i+1 == len(f) {
			b.WriteByte(f[i])
			continue
		}
		i++
		switch f[i] {
		case 'd':
			fmt.Fprintf(&b, "%02d", t.Day())
		case 'm':
			fmt.Fprintf(&b, "%02d", int(t.Month()))
		case 'Y':
			fmt.Fprintf(&b, "%d", t.Year())
		case 'y':
			fmt.Fprintf(&b, "%02d", t.Year()%100)
		case 'b':
			b.WriteString(t.Month().String()[:3])
		case 'B':
			b.WriteString(t.Month().String())
		case 'a':
			b.WriteString(t.Weekday().String()[:3])
		case 'A':
			b.WriteString(t.Weekday().String())
		case 'H':
			fmt.Fprintf(&b, "%02d", t.Hour())
		case 'I':
			fmt.Fprintf(&b, "%02d", (t.Hour()+11)%12+1)
		case 'M':
			fmt.Fprintf(&b, "%02d", t.Minute())
		case 'S':
			fmt.Fprintf(&b, "%02d", t.Second())
		case 'p':
			if t.Hour() < 12 {
				b.WriteString("AM")
			} else {
				b.WriteString("PM")
			}
		case 'j':
			fmt.Fprintf(&b, "%03d", t.YearDay())
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(f[i])
		}
	}
	return b.String()
}
