// Package tokenizer implements the two tokenizers of the Llama family in pure Go:
//
//   - Llama 3: byte-level BPE (tokenizer.json from Hugging Face, or Meta's tiktoken-format
//     tokenizer.model with "base64token rank" lines), with a hand-written pre-tokenizer that
//     is equivalent to the Llama 3 split regex.
//   - Llama 2: SentencePiece BPE (tokenizer.model protobuf) with add_dummy_prefix, "▁" for
//     spaces, score-ordered merges and <0xNN> byte fallback.
//
// Encode treats its input as plain text: special-token strings such as "<|eot_id|>" or "<s>"
// are tokenized like any other text. EncodeWithSpecial recognizes the literal text of the
// special (added) tokens; use it on rendered chat templates.
package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/llamatune/llamatune/checkpoint"
)

// Tokenizer turns text into token ids and back.
type Tokenizer interface {
	// Encode tokenizes plain text. Special-token strings are NOT recognized. No BOS/EOS is added.
	Encode(text string) []int
	// EncodeWithSpecial recognizes the literal text of special tokens (e.g. "<|eot_id|>")
	// and emits their ids; the text between them is encoded as by Encode. No BOS/EOS is added.
	EncodeWithSpecial(text string) []int
	// Decode turns ids back into text. Special tokens decode to their literal text.
	Decode(ids []int) string
	// BatchEncode encodes texts in parallel over all cores; result i belongs to texts[i].
	BatchEncode(texts []string) [][]int
	// VocabSize is the number of ids, special tokens included (max id + 1).
	VocabSize() int
	// BOS is the begin-of-sequence id (<|begin_of_text|> or <s>), -1 when unknown.
	BOS() int
	// EOS is the end-of-sequence (end of document) id: <|end_of_text|> for Llama 3 even when
	// an Instruct tokenizer_config.json names <|eot_id|> as eos_token (see EOT), </s> for
	// Llama 2; the config's eos_token only when the vocabulary has neither. -1 when unknown.
	EOS() int
	// EOT is the end-of-turn id (<|eot_id|> for Llama 3 chat), -1 when the vocabulary has none.
	// For Llama 2 it is </s>.
	EOT() int
	// Pad is the pad_token id of tokenizer_config.json, -1 when none is set.
	Pad() int
	// TokenID looks up a token by its text (special tokens by their literal text; Llama 3
	// byte-level tokens by their raw bytes, Llama 2 pieces with "▁").
	TokenID(s string) (int, bool)
	// IDToken returns the text of one token ("" when out of range).
	IDToken(id int) string
	// Kind is "llama3" or "llama2".
	Kind() string
}

// Load reads the tokenizer of a Hugging Face / Meta model directory. It uses, in this order:
// tokenizer.json (Llama 3 byte-level BPE), tokenizer.model (SentencePiece protobuf, or a
// tiktoken-format Llama 3 file). tokenizer_config.json, when present, sets bos/eos/pad and
// adds the tokens of its added_tokens_decoder. A path ending in .gguf is read
// with LoadGGUF (the tokenizer in the file's tokenizer.ggml.* metadata).
func Load(modelDir string) (Tokenizer, error) {
	if checkpoint.IsGGUF(modelDir) {
		return LoadGGUF(modelDir)
	}
	cfg, err := readConfig(filepath.Join(modelDir, "tokenizer_config.json"))
	if err != nil {
		return nil, err
	}
	jsonPath := filepath.Join(modelDir, "tokenizer.json")
	modelPath := filepath.Join(modelDir, "tokenizer.model")
	if _, err := os.Stat(jsonPath); err == nil {
		return wrap(loadLlama3JSON(jsonPath, cfg))
	}
	if _, err := os.Stat(modelPath); err == nil {
		data, err := os.ReadFile(modelPath)
		if err != nil {
			return nil, err
		}
		if looksLikeTiktoken(data) {
			return wrap(newLlama3Tiktoken(data, modelPath, cfg))
		}
		return wrap(newLlama2(data, modelPath, cfg))
	}
	return nil, fmt.Errorf("tokenizer: %s has neither tokenizer.json nor tokenizer.model; point --model at a Hugging Face model directory", modelDir)
}

// wrap avoids returning a typed nil inside a non-nil interface.
func wrap[T Tokenizer](t T, err error) (Tokenizer, error) {
	if err != nil {
		return nil, err
	}
	return t, nil
}

// tokenConfig is the part of tokenizer_config.json the tokenizer needs.
type tokenConfig struct {
	BOS, EOS, Pad string
	Added         map[int]addedToken
	ChatTemplate  string
}

type addedToken struct {
	Content string
	Special bool
}

// tokenString accepts "text" or {"content": "text", ...}.
func tokenString(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var o struct {
		Content string `json:"content"`
	}
	if json.Unmarshal(raw, &o) == nil {
		return o.Content
	}
	return ""
}

func readConfig(path string) (*tokenConfig, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return parseConfig(data, path)
}

// ParseChatTemplate returns the chat_template of a tokenizer_config.json ("" when none).
// When the config holds a list of named templates, the one named "default" is returned.
func ParseChatTemplate(configJSON []byte) (string, error) {
	cfg, err := parseConfig(configJSON, "tokenizer_config.json")
	if err != nil {
		return "", err
	}
	return cfg.ChatTemplate, nil
}

func parseConfig(data []byte, path string) (*tokenConfig, error) {
	var raw struct {
		BOS          json.RawMessage `json:"bos_token"`
		EOS          json.RawMessage `json:"eos_token"`
		Pad          json.RawMessage `json:"pad_token"`
		ChatTemplate json.RawMessage `json:"chat_template"`
		Added        map[string]struct {
			Content string `json:"content"`
			Special bool   `json:"special"`
		} `json:"added_tokens_decoder"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %v", path, err)
	}
	cfg := &tokenConfig{BOS: tokenString(raw.BOS), EOS: tokenString(raw.EOS), Pad: tokenString(raw.Pad), Added: map[int]addedToken{}}
	for k, v := range raw.Added {
		var id int
		if _, err := fmt.Sscan(k, &id); err != nil {
			return nil, fmt.Errorf("tokenizer: %s: added_tokens_decoder key %q is not an id", path, k)
		}
		cfg.Added[id] = addedToken{v.Content, v.Special}
	}
	if len(raw.ChatTemplate) > 0 && string(raw.ChatTemplate) != "null" {
		var s string
		if json.Unmarshal(raw.ChatTemplate, &s) == nil {
			cfg.ChatTemplate = s
		} else {
			var list []struct{ Name, Template string }
			if err := json.Unmarshal(raw.ChatTemplate, &list); err != nil {
				return nil, fmt.Errorf("tokenizer: %s: chat_template is neither a string nor a list of {name, template}", path)
			}
			for _, t := range list {
				if t.Name == "default" || cfg.ChatTemplate == "" {
					cfg.ChatTemplate = t.Template
				}
			}
		}
	}
	return cfg, nil
}

// specials recognizes the literal text of added tokens (leftmost, longest match).
type specials struct {
	byText map[string]int
	byID   map[int]string
	first  [256][]string // candidates by first byte, longest first
}

func newSpecials() *specials {
	return &specials{byText: map[string]int{}, byID: map[int]string{}}
}

func (s *specials) add(text string, id int) {
	if text == "" {
		return
	}
	if old, ok := s.byText[text]; ok {
		delete(s.byID, old)
	}
	if oldText, ok := s.byID[id]; ok {
		delete(s.byText, oldText)
	}
	s.byText[text] = id
	s.byID[id] = text
}

func (s *specials) build() {
	for i := range s.first {
		s.first[i] = nil
	}
	for t := range s.byText {
		s.first[t[0]] = append(s.first[t[0]], t)
	}
	for i := range s.first {
		c := s.first[i]
		sort.Slice(c, func(a, b int) bool {
			if len(c[a]) != len(c[b]) {
				return len(c[a]) > len(c[b])
			}
			return c[a] < c[b]
		})
	}
}

// split calls text(seg) for each run of ordinary text and special(id) for each special token.
func (s *specials) split(str string, text func(string), special func(int)) {
	s.splitExcept(str, nil, text, special)
}

// splitExcept is split, ignoring special-token text that starts at a byte i
// with plain(i) true (plain is called with increasing i; nil: none).
func (s *specials) splitExcept(str string, plain func(int) bool, text func(string), special func(int)) {
	start := 0
	for i := 0; i < len(str); i++ {
		cands := s.first[str[i]]
		if cands == nil || (plain != nil && plain(i)) {
			continue
		}
		for _, c := range cands {
			if strings.HasPrefix(str[i:], c) {
				if i > start {
					text(str[start:i])
				}
				special(s.byText[c])
				i += len(c) - 1
				start = i + 1
				break
			}
		}
	}
	if start < len(str) {
		text(str[start:])
	}
}

// batchEncode runs enc over texts on all cores, keeping order.
func batchEncode(texts []string, enc func(string) []int) [][]int {
	out := make([][]int, len(texts))
	workers := runtime.GOMAXPROCS(0)
	if workers > len(texts) {
		workers = len(texts)
	}
	if workers <= 1 {
		for i, t := range texts {
			out[i] = enc(t)
		}
		return out
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	const chunk = 16
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				lo := int(next.Add(chunk)) - chunk
				if lo >= len(texts) {
					return
				}
				hi := min(lo+chunk, len(texts))
				for i := lo; i < hi; i++ {
					out[i] = enc(texts[i])
				}
			}
		}()
	}
	wg.Wait()
	return out
}

// EncodeWithSpecialExcept is EncodeWithSpecial, except that special-token
// text starting inside one of the plain byte ranges [start, end) of text is
// encoded as ordinary text. Chat rendering passes the ranges of the message
// contents, so that a user who types "<|eot_id|>" never produces the special
// token: specials come only from the template.
func EncodeWithSpecialExcept(tok Tokenizer, text string, plain [][2]int) []int {
	var sp *specials
	var enc func(string, []int) []int
	switch t := tok.(type) {
	case *byteLevel:
		var w bpeWork
		sp, enc = t.sp, func(s string, out []int) []int { return t.encodeText(s, out, &w) }
	case *sentencePiece:
		sp, enc = t.sp, t.encodeText
	default:
		return tok.EncodeWithSpecial(text)
	}
	out := make([]int, 0, len(text)/3+1)
	k := 0
	isPlain := func(i int) bool {
		for k < len(plain) && plain[k][1] <= i {
			k++
		}
		return k < len(plain) && plain[k][0] <= i
	}
	sp.splitExcept(text, isPlain, func(s string) { out = enc(s, out) }, func(id int) { out = append(out, id) })
	return out
}

// HasSpecial reports whether s contains the text of a special token.
func HasSpecial(tok Tokenizer, s string) bool {
	found := false
	var sp *specials
	switch t := tok.(type) {
	case *byteLevel:
		sp = t.sp
	case *sentencePiece:
		sp = t.sp
	default:
		return false
	}
	sp.split(s, func(string) {}, func(int) { found = true })
	return found
}
