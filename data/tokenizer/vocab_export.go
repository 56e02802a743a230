package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/llamatune/llamatune/checkpoint"
)

// Token types as GGUF (tokenizer.ggml.token_type) and SentencePiece number them.
const (
	TokenNormal      = 1
	TokenUnknown     = 2
	TokenControl     = 3
	TokenUserDefined = 4
	TokenUnused      = 5
	TokenByte        = 6
)

// Vocab is a model directory's tokenizer in the form llama.cpp's GGUF
// tokenizer.ggml.* keys hold it, built the way convert_hf_to_gguf.py builds
// it: Llama 3 byte-level BPE from tokenizer.json (model "gpt2", tokens in
// GPT-2's byte-to-unicode spelling, merges "a b"), Llama 2 SentencePiece from
// tokenizer.model (model "llama", pieces with scores and types).
type Vocab struct {
	Model  string    // "gpt2" (byte-level BPE) or "llama" (SentencePiece)
	Pre    string    // tokenizer.ggml.pre: "llama-bpe" or "default"
	Tokens []string  // one per id, padded to the requested size with "[PADi]"
	Scores []float32 // SentencePiece only
	Types  []int32   // Token* constants
	Merges []string  // byte-level BPE only, "left right" in rank order
	// Special ids, -1 when not set.
	BOS, EOS, UNK, Pad int
	AddBOS, AddEOS     bool
	AddBOSSet          bool // AddBOS/AddEOS were found in the files
	ChatTemplate       string
	// NoSpacePrefix: SentencePiece without add_dummy_prefix (a GGUF's
	// tokenizer.ggml.add_space_prefix false); Llama 2 adds the prefix.
	NoSpacePrefix bool
}

// ExportVocab reads the tokenizer files of modelDir (tokenizer.model when it
// is a SentencePiece model, else tokenizer.json, plus tokenizer_config.json)
// and returns the vocabulary padded to vocabSize entries (vocabSize ≤ 0: the
// tokenizer's own size). Errors name the file and say what is missing.
//
// modelDir may be a GGUF file (its tokenizer.ggml.* keys, see VocabFromGGUF).
func ExportVocab(modelDir string, vocabSize int) (*Vocab, error) {
	if checkpoint.IsGGUF(modelDir) {
		v, err := vocabFromGGUFFile(modelDir)
		if err != nil {
			return nil, err
		}
		return v.padded(vocabSize), nil
	}
	cfgPath := filepath.Join(modelDir, "tokenizer_config.json")
	cfgData, err := os.ReadFile(cfgPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer: read %s: %w", cfgPath, err)
	}
	var tc exportConfig
	if len(cfgData) > 0 {
		if err := tc.parse(cfgData, cfgPath); err != nil {
			return nil, err
		}
	}
	modelPath := filepath.Join(modelDir, "tokenizer.model")
	jsonPath := filepath.Join(modelDir, "tokenizer.json")
	if data, err := os.ReadFile(modelPath); err == nil && !looksLikeTiktoken(data) {
		return exportSentencePiece(data, modelPath, modelDir, &tc, vocabSize)
	}
	if data, err := os.ReadFile(jsonPath); err == nil {
		return exportByteLevel(data, jsonPath, &tc, vocabSize)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer: read %s: %w", jsonPath, err)
	}
	if fileExistsTok(modelPath) {
		return nil, fmt.Errorf("tokenizer: %s is Meta's tiktoken format, which GGUF export cannot convert; put the Hugging Face tokenizer.json of the model next to it", modelPath)
	}
	return nil, fmt.Errorf("tokenizer: %s has neither tokenizer.model (SentencePiece) nor tokenizer.json; copy the base model's tokenizer files there", modelDir)
}

func fileExistsTok(p string) bool { _, err := os.Stat(p); return err == nil }

// exportConfig is what the vocabulary export reads from tokenizer_config.json.
type exportConfig struct {
	BOS, EOS, UNK, Pad string
	AddBOS, AddEOS     *bool
	ChatTemplate       string
	Added              map[int]exportAdded
}

type exportAdded struct {
	Content string
	Special bool
}

func (c *exportConfig) parse(data []byte, path string) error {
	var raw struct {
		BOS    json.RawMessage `json:"bos_token"`
		EOS    json.RawMessage `json:"eos_token"`
		UNK    json.RawMessage `json:"unk_token"`
		Pad    json.RawMessage `json:"pad_token"`
		AddBOS *bool           `json:"add_bos_token"`
		AddEOS *bool           `json:"add_eos_token"`
		Added  map[string]struct {
			Content string `json:"content"`
			Special bool   `json:"special"`
		} `json:"added_tokens_decoder"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return fmt.Errorf("tokenizer: %s: %v", path, err)
	}
	tmpl, err := ParseChatTemplate(data)
	if err != nil {
		return fmt.Errorf("tokenizer: %s: %v", path, err)
	}
	c.BOS, c.EOS, c.UNK, c.Pad = tokenString(raw.BOS), tokenString(raw.EOS), tokenString(raw.UNK), tokenString(raw.Pad)
	c.AddBOS, c.AddEOS, c.ChatTemplate = raw.AddBOS, raw.AddEOS, tmpl
	c.Added = map[int]exportAdded{}
	for k, v := range raw.Added {
		var id int
		if _, err := fmt.Sscan(k, &id); err != nil || id < 0 {
			return fmt.Errorf("tokenizer: %s: added_tokens_decoder key %q is not a token id", path, k)
		}
		c.Added[id] = exportAdded{v.Content, v.Special}
	}
	return nil
}

// looksSpecial is convert_hf_to_gguf.py's does_token_look_special.
func looksSpecial(s string) bool {
	switch s {
	case "<pad>", "<mask>", "<2mass>", "[@BOS@]":
		return true
	}
	return (strings.HasPrefix(s, "<|") && strings.HasSuffix(s, "|>")) ||
		(strings.HasPrefix(s, "<｜") && strings.HasSuffix(s, "｜>"))
}

func (v *Vocab) lookupSpecials(tc *exportConfig, find func(string) int) {
	v.BOS, v.EOS, v.UNK, v.Pad = -1, -1, -1, -1
	if tc.BOS != "" {
		v.BOS = find(tc.BOS)
	}
	if tc.EOS != "" {
		v.EOS = find(tc.EOS)
	}
	if tc.UNK != "" {
		v.UNK = find(tc.UNK)
	}
	if tc.Pad != "" {
		v.Pad = find(tc.Pad)
	}
	if tc.AddBOS != nil {
		v.AddBOS, v.AddBOSSet = *tc.AddBOS, true
	}
	if tc.AddEOS != nil {
		v.AddEOS = *tc.AddEOS
	}
	v.ChatTemplate = tc.ChatTemplate
}

func exportSentencePiece(data []byte, path, dir string, tc *exportConfig, vocabSize int) (*Vocab, error) {
	m, err := parseSentencePieceModel(data)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %s: not a SentencePiece model: %v", path, err)
	}
	n := len(m.Pieces)
	if vocabSize <= 0 {
		vocabSize = n
		for id := range tc.Added {
			vocabSize = max(vocabSize, id+1)
		}
	}
	v := &Vocab{Model: "llama", Pre: "default", Tokens: make([]string, vocabSize),
		Scores: make([]float32, vocabSize), Types: make([]int32, vocabSize)}
	for i := range v.Tokens {
		v.Tokens[i], v.Scores[i], v.Types[i] = fmt.Sprintf("[PAD%d]", i), -10000, TokenUnused
	}
	for i, p := range m.Pieces {
		if i >= vocabSize {
			break
		}
		t := int32(TokenNormal) // user-defined pieces count as normal, as in convert_hf_to_gguf.py
		switch p.Type {
		case spUnknown:
			t = TokenUnknown
		case spControl:
			t = TokenControl
		case spUnused:
			t = TokenUnused
		case spByte:
			t = TokenByte
		}
		v.Tokens[i], v.Scores[i], v.Types[i] = p.Piece, p.Score, t
	}
	// added_tokens.json (old HF layout), then tokenizer_config.json's added_tokens_decoder.
	if raw, err := os.ReadFile(filepath.Join(dir, "added_tokens.json")); err == nil {
		var added map[string]int
		if err := json.Unmarshal(raw, &added); err != nil {
			return nil, fmt.Errorf("tokenizer: %s: %v", filepath.Join(dir, "added_tokens.json"), err)
		}
		for tok, id := range added {
			if id >= 0 && id < vocabSize {
				v.Tokens[id], v.Scores[id], v.Types[id] = tok, -1000, TokenUserDefined
			}
		}
	}
	for id, a := range tc.Added {
		if id >= vocabSize {
			continue
		}
		tok := a.Content
		if a.Special || looksSpecial(tok) {
			v.Types[id] = TokenControl
		} else {
			tok = strings.ReplaceAll(tok, "▁", " ")
			v.Types[id] = TokenUserDefined
		}
		v.Tokens[id], v.Scores[id] = tok, -1000
	}
	byText := make(map[string]int, len(v.Tokens))
	for i := len(v.Tokens) - 1; i >= 0; i-- {
		byText[v.Tokens[i]] = i
	}
	find := func(s string) int {
		if id, ok := byText[s]; ok {
			return id
		}
		return -1
	}
	v.lookupSpecials(tc, find)
	inRange := func(id int32) int {
		if id >= 0 && int(id) < vocabSize {
			return int(id)
		}
		return -1
	}
	if v.BOS < 0 {
		v.BOS = inRange(m.BOSID)
	}
	if v.EOS < 0 {
		v.EOS = inRange(m.EOSID)
	}
	if v.UNK < 0 {
		v.UNK = inRange(m.UnkID)
	}
	if v.Pad < 0 && tc.Pad == "" {
		v.Pad = inRange(m.PadID)
	}
	return v, nil
}

func exportByteLevel(data []byte, path string, tc *exportConfig, vocabSize int) (*Vocab, error) {
	var f tokenizerJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %v", path, err)
	}
	if f.Model.Type != "BPE" || !bytes.Contains(f.PreTokenizer, []byte("ByteLevel")) {
		return nil, fmt.Errorf("tokenizer: %s: model.type %q with this pre_tokenizer is not a byte-level BPE (Llama 3) tokenizer; GGUF export of a Llama 2 model needs its tokenizer.model", path, f.Model.Type)
	}
	maxID := -1
	for _, id := range f.Model.Vocab {
		maxID = max(maxID, id)
	}
	type added struct {
		content string
		special bool
	}
	addedByID := map[int]added{}
	for _, a := range f.AddedTokens {
		addedByID[a.ID] = added{a.Content, a.Special}
		maxID = max(maxID, a.ID)
	}
	for id, a := range tc.Added {
		if _, ok := addedByID[id]; !ok {
			addedByID[id] = added{a.Content, a.Special}
			maxID = max(maxID, id)
		}
	}
	if vocabSize <= 0 {
		vocabSize = maxID + 1
	}
	v := &Vocab{Model: "gpt2", Pre: "llama-bpe", Tokens: make([]string, vocabSize), Types: make([]int32, vocabSize)}
	have := make([]bool, vocabSize)
	for tok, id := range f.Model.Vocab {
		if id < 0 {
			return nil, fmt.Errorf("tokenizer: %s: vocab entry %q has negative id %d", path, tok, id)
		}
		if id < vocabSize {
			v.Tokens[id], v.Types[id], have[id] = tok, TokenNormal, true
		}
	}
	for id, a := range addedByID {
		if id < 0 || id >= vocabSize {
			continue
		}
		t := int32(TokenUserDefined)
		if a.special || looksSpecial(a.content) {
			t = TokenControl
		}
		v.Tokens[id], v.Types[id], have[id] = a.content, t, true
	}
	for i := range have {
		if !have[i] {
			v.Tokens[i], v.Types[i] = fmt.Sprintf("[PAD%d]", i), TokenUnused
		}
	}
	// merges: ["a b", ...] or [["a", "b"], ...]
	var asStrings []string
	if err := json.Unmarshal(f.Model.Merges, &asStrings); err == nil {
		v.Merges = asStrings
	} else {
		var pairs [][]string
		if err := json.Unmarshal(f.Model.Merges, &pairs); err != nil {
			return nil, fmt.Errorf("tokenizer: %s: model.merges is neither a list of \"a b\" strings nor of [a, b] pairs: %v", path, err)
		}
		v.Merges = make([]string, len(pairs))
		for i, p := range pairs {
			if len(p) != 2 {
				return nil, fmt.Errorf("tokenizer: %s: model.merges[%d] has %d parts, want 2", path, i, len(p))
			}
			v.Merges[i] = p[0] + " " + p[1]
		}
	}
	byText := make(map[string]int, len(v.Tokens))
	for i := len(v.Tokens) - 1; i >= 0; i-- {
		if have[i] {
			byText[v.Tokens[i]] = i
		}
	}
	v.lookupSpecials(tc, func(s string) int {
		if id, ok := byText[s]; ok {
			return id
		}
		return -1
	})
	if !v.AddBOSSet {
		addEOS := v.AddEOS
		v.AddBOS, v.AddEOS, v.AddBOSSet = templateAdds(f.PostProcessor)
		if tc.AddEOS != nil {
			v.AddEOS = addEOS // tokenizer_config.json's add_eos_token wins over the template
		}
	}
	if !v.AddBOSSet && v.BOS >= 0 {
		// Early Llama 3 tokenizer.json files have no TemplateProcessing; the
		// model still expects <|begin_of_text|> first (llama.cpp's default
		// for llama-bpe), so say so explicitly.
		v.AddBOS, v.AddBOSSet = true, true
	}
	return v, nil
}

// templateAdds reads a TemplateProcessing post-processor (possibly inside a
// Sequence) the way gguf-py's SpecialVocab does: a special token before the
// sequence means add_bos, one after it add_eos.
func templateAdds(raw json.RawMessage) (addBOS, addEOS, found bool) {
	type item struct {
		SpecialToken *struct {
			ID string `json:"id"`
		} `json:"SpecialToken"`
		Sequence *struct {
			ID string `json:"id"`
		} `json:"Sequence"`
	}
	var pp struct {
		Type       string            `json:"type"`
		Single     []item            `json:"single"`
		Processors []json.RawMessage `json:"processors"`
	}
	if len(raw) == 0 || json.Unmarshal(raw, &pp) != nil {
		return false, false, false
	}
	if pp.Type == "Sequence" {
		for _, p := range pp.Processors {
			if b, e, ok := templateAdds(p); ok {
				return b, e, true
			}
		}
		return false, false, false
	}
	if pp.Type != "TemplateProcessing" || len(pp.Single) == 0 {
		return false, false, false
	}
	return pp.Single[0].SpecialToken != nil, len(pp.Single) > 1 && pp.Single[len(pp.Single)-1].SpecialToken != nil, true
}

// GGUFKVs are v as GGUF tokenizer.ggml.* metadata, the keys VocabFromGGUF
// reads back (export writes them after the llama.* keys).
func (v *Vocab) GGUFKVs() []checkpoint.GGUFKV {
	var kv []checkpoint.GGUFKV
	kv = append(kv,
		checkpoint.GGUFKV{Key: "tokenizer.ggml.model", Value: v.Model},
		checkpoint.GGUFKV{Key: "tokenizer.ggml.pre", Value: v.Pre},
		checkpoint.GGUFKV{Key: "tokenizer.ggml.tokens", Value: v.Tokens})
	if v.Scores != nil {
		kv = append(kv, checkpoint.GGUFKV{Key: "tokenizer.ggml.scores", Value: v.Scores})
	}
	kv = append(kv, checkpoint.GGUFKV{Key: "tokenizer.ggml.token_type", Value: v.Types})
	if v.Merges != nil {
		kv = append(kv, checkpoint.GGUFKV{Key: "tokenizer.ggml.merges", Value: v.Merges})
	}
	for _, s := range []struct {
		key string
		id  int
	}{{"tokenizer.ggml.bos_token_id", v.BOS}, {"tokenizer.ggml.eos_token_id", v.EOS},
		{"tokenizer.ggml.unknown_token_id", v.UNK}, {"tokenizer.ggml.padding_token_id", v.Pad}} {
		if s.id >= 0 && s.id < len(v.Tokens) {
			kv = append(kv, checkpoint.GGUFKV{Key: s.key, Value: uint32(s.id)})
		}
	}
	if v.AddBOSSet {
		kv = append(kv,
			checkpoint.GGUFKV{Key: "tokenizer.ggml.add_bos_token", Value: v.AddBOS},
			checkpoint.GGUFKV{Key: "tokenizer.ggml.add_eos_token", Value: v.AddEOS})
	}
	if v.ChatTemplate != "" {
		kv = append(kv, checkpoint.GGUFKV{Key: "tokenizer.chat_template", Value: v.ChatTemplate})
	}
	return kv
}
