package configs

import (
	"errors"
	"fmt"
	"github.com/llamatune/llamatune/internal/switches"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Overrides edit the parsed YAML tree before it is decoded, so an overridden value goes
// through exactly the checks a value written in the file does. A path is keys separated by
// dots with [i] (or .i) for a list index: data.datasets[0].path. Missing keys are created,
// and an index equal to the list length appends. The value is YAML: 1e-4, true, [q_proj,
// v_proj], {path: x.jsonl}; an empty value means null (the default).

// EnvPrefix starts the environment variables that override job keys.
const EnvPrefix = "LLAMATUNE_"

type segment struct {
	key   string
	index int // when key == ""
}

func (s segment) isIndex() bool { return s.key == "" }

func parsePath(p string) ([]segment, error) {
	if p == "" {
		return nil, errors.New("empty key path")
	}
	var segs []segment
	for _, part := range strings.Split(p, ".") {
		key := part
		var idx []string
		if b := strings.IndexByte(part, '['); b >= 0 {
			key = part[:b]
			rest := part[b:]
			for rest != "" {
				e := strings.IndexByte(rest, ']')
				if rest[0] != '[' || e < 0 {
					return nil, fmt.Errorf("bad index in %q; write name[0]", part)
				}
				idx = append(idx, rest[1:e])
				rest = rest[e+1:]
			}
		}
		if key == "" && len(idx) == 0 {
			return nil, fmt.Errorf("empty key in %q", p)
		}
		if key != "" {
			if n, err := strconv.Atoi(key); err == nil {
				if n < 0 {
					return nil, fmt.Errorf("negative index %d in %q", n, p)
				}
				segs = append(segs, segment{index: n})
			} else {
				segs = append(segs, segment{key: key})
			}
		}
		for _, s := range idx {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("bad index [%s] in %q", s, p)
			}
			segs = append(segs, segment{index: n})
		}
	}
	return segs, nil
}

func pathString(segs []segment) string {
	var b strings.Builder
	for i, s := range segs {
		switch {
		case s.isIndex():
			fmt.Fprintf(&b, "[%d]", s.index)
		case i > 0:
			b.WriteString("." + s.key)
		default:
			b.WriteString(s.key)
		}
	}
	return b.String()
}

// fieldType walks the Job type along segs and returns the type of the field they name.
func fieldType(segs []segment) (reflect.Type, error) {
	t := reflect.TypeOf(Job{})
	for i, s := range segs {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		here := pathString(segs[:i+1])
		if s.isIndex() {
			if t.Kind() != reflect.Slice {
				return nil, fmt.Errorf("%s: %s is not a list", here, pathString(segs[:i]))
			}
			t = t.Elem()
			continue
		}
		if t.Kind() != reflect.Struct {
			return nil, fmt.Errorf("%s: %s is a single value, not a section with keys", here, pathString(segs[:i]))
		}
		names, fields := yamlKeys(t)
		f, ok := fields[s.key]
		if !ok {
			return nil, unknownKey(here, 0, s.key, names)
		}
		t = f.Type
	}
	return t, nil
}

// applySet applies one --set key=value.
func applySet(root *yaml.Node, kv string) error {
	k, v, ok := strings.Cut(kv, "=")
	if !ok {
		return fmt.Errorf("--set %s: want key=value, e.g. --set optimizer.lr=1e-4", kv)
	}
	label := "--set " + kv
	segs, err := parsePath(strings.TrimSpace(k))
	if err != nil {
		return fmt.Errorf("%s: %v", label, err)
	}
	return applyOverride(root, segs, v, label)
}

// applyEnv applies the LLAMATUNE_* variables of environ (KEY=value strings) in name order.

func applyEnv(root *yaml.Node, environ []string) []error {
	var vars []string
	for _, e := range environ {
		if strings.HasPrefix(e, EnvPrefix) {
			vars = append(vars, e)
		}
	}
	sort.Strings(vars)
	names, _ := yamlKeys(reflect.TypeOf(Job{}))
	known := map[string]bool{}
	for _, n := range names {
		known[n] = true
	}
	var errs []error
	for _, e := range vars {
		name, value, _ := strings.Cut(e, "=")
		parts := strings.Split(strings.ToLower(strings.TrimPrefix(name, EnvPrefix)), "__")
		if !known[parts[0]] {
			if len(parts) > 1 {
				errs = append(errs, fmt.Errorf("%s: %v", name, unknownKey(parts[0], 0, parts[0], names)))
			} else if !switches.Is(name) { // LLAMATUNE_* variables that are not job keys
				errs = append(errs, fmt.Errorf("%s: neither a job key nor a llamatune switch; nested keys take a double underscore (LLAMATUNE_OPTIMIZER__LR=1e-4)", name))
			}
			continue // a switch of its own, such as LLAMATUNE_NO_FUSED
		}
		segs, err := parsePath(strings.Join(parts, "."))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", name, err))
			continue
		}
		if err := applyOverride(root, segs, value, name+"="+value); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

func applyOverride(root *yaml.Node, segs []segment, value, label string) error {
	path := pathString(segs)
	if segs[0].isIndex() {
		return fmt.Errorf("%s: a path starts with a key, not an index", label)
	}
	t, err := fieldType(segs)
	if err != nil {
		return fmt.Errorf("%s: %v", label, err)
	}
	val, err := valueNode(value, t)
	if err != nil {
		return fmt.Errorf("%s: %s: %v", label, path, err)
	}
	if errs := CheckKeys(val, t, path); len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = strings.ReplaceAll(e.Error(), " (line 0)", "")
		}
		return fmt.Errorf("%s: %s", label, strings.Join(msgs, "; "))
	}
	// Decode the value alone, so that a wrong type or a fraction for an integer key names the
	// override it came from.
	dec := decoder{set: map[string]bool{}}
	dec.decode(val, reflect.New(t).Elem(), path)
	if len(dec.errs) > 0 {
		msgs := make([]string, len(dec.errs))
		for i, e := range dec.errs {
			msgs[i] = e.Error()
		}
		return fmt.Errorf("%s: %s", label, strings.Join(msgs, "; "))
	}
	cur := root
	for i, s := range segs {
		last := i == len(segs)-1
		var next segment
		if !last {
			next = segs[i+1]
		}
		container := func() *yaml.Node {
			if next.isIndex() {
				return &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
			}
			return &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
		}
		fits := func(n *yaml.Node) bool {
			if next.isIndex() {
				return n.Kind == yaml.SequenceNode
			}
			return n.Kind == yaml.MappingNode
		}
		var slot **yaml.Node
		if s.isIndex() {
			if cur.Kind != yaml.SequenceNode {
				return fmt.Errorf("%s: %s is not a list in the job", label, pathString(segs[:i]))
			}
			n := len(cur.Content)
			if s.index > n {
				return fmt.Errorf("%s: %s: index %d is past the end of the list (%d entries); [%d] appends", label, pathString(segs[:i+1]), s.index, n, n)
			}
			if s.index == n {
				cur.Content = append(cur.Content, nil)
			}
			slot = &cur.Content[s.index]
		} else {
			if cur.Kind != yaml.MappingNode {
				return fmt.Errorf("%s: %s is not a section in the job", label, pathString(segs[:i]))
			}
			for k := 0; k+1 < len(cur.Content); k += 2 {
				if cur.Content[k].Value == s.key {
					slot = &cur.Content[k+1] // the last of duplicate keys wins, as in decoding
				}
			}
			if slot == nil {
				cur.Content = append(cur.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s.key}, nil)
				slot = &cur.Content[len(cur.Content)-1]
			}
		}
		if last {
			*slot = val
			return nil
		}
		if *slot != nil && (*slot).Kind == yaml.AliasNode && (*slot).Alias != nil {
			*slot = deepCopy((*slot).Alias) // don't edit the anchored original
		}
		if *slot == nil || !fits(*slot) {
			*slot = container()
		}
		cur = *slot
	}
	return nil
}

// valueNode parses an override value as YAML for a field of type t. Strings keep the raw
// text when it is not a plain YAML scalar (a Jinja template, say).
func valueNode(value string, t reflect.Type) (*yaml.Node, error) {
	if strings.TrimSpace(value) == "" {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: "null"}, nil
	}
	raw := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: value}
	var doc yaml.Node
	err := yaml.Unmarshal([]byte(value), &doc)
	isString := t.Kind() == reflect.String
	if err != nil || len(doc.Content) == 0 {
		if isString {
			return raw, nil
		}
		if err != nil {
			return nil, fmt.Errorf("value %q is not valid YAML: %s", value, strings.TrimPrefix(err.Error(), "yaml: "))
		}
		return nil, fmt.Errorf("value %q is empty", value)
	}
	n := doc.Content[0]
	if isString && n.Kind != yaml.ScalarNode {
		return raw, nil
	}
	clearLines(n)
	return n, nil
}

func clearLines(n *yaml.Node) {
	n.Line, n.Column = 0, 0
	for _, c := range n.Content {
		clearLines(c)
	}
}

func deepCopy(n *yaml.Node) *yaml.Node {
	c := *n
	c.Content = make([]*yaml.Node, len(n.Content))
	for i, x := range n.Content {
		c.Content[i] = deepCopy(x)
	}
	return &c
}
