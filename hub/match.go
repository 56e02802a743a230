package hub

import (
	"regexp"
	"strings"
)

// DefaultModelFiles are the files of a model repository fetched when no --include is given:
// the configuration, the tokenizer and the safetensors weights, at the top level only (so
// not original/ with its consolidated .pth copies, nor *.bin duplicates).
var DefaultModelFiles = []string{
	"config.json", "generation_config.json", "tokenizer*.json", "tokenizer.model",
	"special_tokens_map.json", "chat_template.jinja", "chat_template.json",
	"*.safetensors", "*.safetensors.index.json",
}

// MetadataModelFiles are DefaultModelFiles without the weights: what `llamatune validate`
// fetches to check a job and estimate its memory.
var MetadataModelFiles = []string{
	"config.json", "generation_config.json", "tokenizer*.json", "tokenizer.model",
	"special_tokens_map.json", "chat_template.jinja", "chat_template.json",
	"*.safetensors.index.json",
}

// Match reports whether a repository file name matches a pattern with fnmatch semantics, as
// huggingface_hub's allow_patterns: '*' matches any run of characters, '/' included; '?'
// one character; [abc] and [!abc] a class; a pattern ending in '/' matches everything
// below that folder.
func Match(pattern, name string) bool {
	if strings.HasSuffix(pattern, "/") {
		pattern += "*"
	}
	re, err := fnmatchRE(pattern)
	if err != nil {
		return pattern == name
	}
	return re.MatchString(name)
}

func fnmatchRE(pattern string) (*regexp.Regexp, error) {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(pattern); i++ {
		switch ch := pattern[i]; ch {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteString(".")
		case '[':
			j := strings.IndexByte(pattern[i+1:], ']')
			if j < 0 {
				b.WriteString(`\[`)
				continue
			}
			class := pattern[i+1 : i+1+j]
			if strings.HasPrefix(class, "!") {
				class = "^" + class[1:]
			}
			b.WriteString("[" + strings.ReplaceAll(class, `\`, `\\`) + "]")
			i += j + 1
		default:
			b.WriteString(regexp.QuoteMeta(string(ch)))
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

// selectFiles is the files of a repository to fetch: those matching one of include, or
// with no include, DefaultModelFiles at the top level for a model and every file for a
// dataset.
func selectFiles(files []string, repoType string, include []string) []string {
	var out []string
	for _, f := range files {
		if wanted(f, repoType, include) {
			out = append(out, f)
		}
	}
	return out
}

func wanted(f, repoType string, include []string) bool {
	if include == nil {
		if repoType == Dataset {
			return true
		}
		if strings.Contains(f, "/") {
			return false
		}
		include = DefaultModelFiles
	}
	for _, p := range include {
		if Match(p, f) {
			return true
		}
	}
	return false
}
