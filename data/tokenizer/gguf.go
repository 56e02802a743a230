package tokenizer

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/llamatune/llamatune/checkpoint"
)

// The tokenizer of a GGUF model: VocabFromGGUF reads the tokenizer.ggml.*
// keys (the inverse of ExportVocab + export.GGUFMetadata), and HFFiles turns
// a Vocab back into the Hugging Face files (tokenizer.json for byte-level
// BPE, tokenizer.model for SentencePiece, and tokenizer_config.json), which
// is also how a GGUF tokenizer is loaded: the same bytes an HF export writes
// are parsed by the loaders the HF files go through.

// VocabFromGGUF reads the vocabulary of a GGUF file: tokenizer.ggml.model
// "gpt2" (Llama 3 byte-level BPE, with tokenizer.ggml.pre "llama-bpe") or
// "llama" (Llama 2 SentencePiece). Errors name the file and key.
func VocabFromGGUF(g *checkpoint.GGUFFile) (*Vocab, error) {
	path := g.Path()
	bad := func(key, f string, a ...any) error {
		return fmt.Errorf("tokenizer: %s: %s: %s", path, key, fmt.Sprintf(f, a...))
	}
	model, ok, err := g.String("tokenizer.ggml.model")
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("tokenizer: %s has no tokenizer.ggml.model; the GGUF carries no tokenizer (use the HF model directory)", path)
	}
	v := &Vocab{Model: model, BOS: -1, EOS: -1, UNK: -1, Pad: -1}
	switch model {
	case "gpt2":
		pre, _, err := g.String("tokenizer.ggml.pre")
		if err != nil {
			return nil, err
		}
		switch pre {
		case "llama-bpe", "llama3", "":
			v.Pre = "llama-bpe" // a file without pre is an early Llama 3 conversion
		default:
			return nil, bad("tokenizer.ggml.pre", "%q is not the Llama 3 pre-tokenizer (llama-bpe); llamatune implements only that one for byte-level BPE, use the HF model directory", pre)
		}
	case "llama":
		v.Pre = "default"
	default:
		return nil, bad("tokenizer.ggml.model", "%q is not supported (gpt2: Llama 3 byte-level BPE, llama: Llama 2 SentencePiece); use the HF model directory", model)
	}
	tokens, ok := get[[]string](g, "tokenizer.ggml.tokens")
	if !ok || len(tokens) == 0 {
		return nil, bad("tokenizer.ggml.tokens", "missing, empty or not a string array")
	}
	v.Tokens = tokens
	v.Types = make([]int32, len(tokens))
	for i := range v.Types {
		v.Types[i] = TokenNormal
	}
	if x, present := g.Get("tokenizer.ggml.token_type"); present {
		types, ok := x.([]int32)
		if !ok || len(types) != len(tokens) {
			return nil, bad("tokenizer.ggml.token_type", "want an int32 array of %d entries (one per token), got %T", len(tokens), x)
		}
		v.Types = types
	}
	if model == "llama" {
		scores, ok := get[[]float32](g, "tokenizer.ggml.scores")
		if !ok || len(scores) != len(tokens) {
			return nil, bad("tokenizer.ggml.scores", "want a float32 array of %d entries (one per token)", len(tokens))
		}
		v.Scores = scores
	} else {
		merges, ok := get[[]string](g, "tokenizer.ggml.merges")
		if !ok {
			return nil, bad("tokenizer.ggml.merges", "missing or not a string array; a byte-level BPE needs its merges")
		}
		v.Merges = merges
	}
	for _, s := range []struct {
		key string
		dst *int
	}{{"tokenizer.ggml.bos_token_id", &v.BOS}, {"tokenizer.ggml.eos_token_id", &v.EOS},
		{"tokenizer.ggml.unknown_token_id", &v.UNK}, {"tokenizer.ggml.padding_token_id", &v.Pad}} {
		id, ok, err := g.Uint(s.key)
		if err != nil {
			return nil, err
		}
		if ok && id < uint64(len(tokens)) {
			*s.dst = int(id)
		}
	}
	if model == "llama" && v.UNK < 0 {
		v.UNK = 0 // SentencePiece's default, as llama.cpp assumes
	}
	if b, ok := get[bool](g, "tokenizer.ggml.add_bos_token"); ok {
		v.AddBOS, v.AddBOSSet = b, true
	}
	if b, ok := get[bool](g, "tokenizer.ggml.add_eos_token"); ok {
		v.AddEOS = b
	}
	if !v.AddBOSSet {
		v.AddBOS, v.AddBOSSet = v.BOS >= 0, true // llama.cpp's default for both models
	}
	if b, ok := get[bool](g, "tokenizer.ggml.add_space_prefix"); ok && model == "llama" {
		v.NoSpacePrefix = !b
	}
	if t, ok, err := g.String("tokenizer.chat_template"); err != nil {
		return nil, err
	} else if ok {
		v.ChatTemplate = t
	}
	return v, nil
}

func get[T any](g *checkpoint.GGUFFile, key string) (T, bool) {
	x, ok := g.Get(key)
	t, isT := x.(T)
	return t, ok && isT
}

// HFFiles returns the Hugging Face tokenizer files of v: tokenizer.json
// (model "gpt2") or tokenizer.model (model "llama"), and
// tokenizer_config.json (bos/eos/unk/pad, add_bos/eos_token, the added
// tokens and chat_template). Load reads them back into the same tokenizer;
// transformers reads them as PreTrainedTokenizerFast / LlamaTokenizer.
func (v *Vocab) HFFiles() (map[string][]byte, error) {
	if len(v.Types) != len(v.Tokens) || (v.Model == "llama" && len(v.Scores) != len(v.Tokens)) {
		return nil, fmt.Errorf("tokenizer: vocabulary of %d tokens has %d types and %d scores", len(v.Tokens), len(v.Types), len(v.Scores))
	}
	files := map[string][]byte{}
	switch v.Model {
	case "gpt2":
		b, err := v.tokenizerJSON()
		if err != nil {
			return nil, err
		}
		files["tokenizer.json"] = b
	case "llama":
		files["tokenizer.model"] = v.sentencePieceModel()
	default:
		return nil, fmt.Errorf("tokenizer: vocabulary model %q is not gpt2 or llama", v.Model)
	}
	cfg, err := v.tokenizerConfig()
	if err != nil {
		return nil, err
	}
	files["tokenizer_config.json"] = cfg
	return files, nil
}

// Tokenizer builds the tokenizer v describes (through HFFiles). name is used
// in errors (the GGUF file's path, say).
func (v *Vocab) Tokenizer(name string) (Tokenizer, error) {
	files, err := v.HFFiles()
	if err != nil {
		return nil, err
	}
	cfg, err := parseConfig(files["tokenizer_config.json"], name+" (tokenizer.ggml.*)")
	if err != nil {
		return nil, err
	}
	if v.Model == "gpt2" {
		return wrap(parseLlama3JSON(files["tokenizer.json"], name+" (tokenizer.ggml.*)", cfg))
	}
	return wrap(newLlama2(files["tokenizer.model"], name+" (tokenizer.ggml.*)", cfg))
}

// LoadGGUF reads the tokenizer stored in a GGUF file's metadata.
func LoadGGUF(path string) (Tokenizer, error) {
	v, err := vocabFromGGUFFile(path)
	if err != nil {
		return nil, err
	}
	return v.Tokenizer(path)
}

// vocabFromGGUFFile opens the GGUF file at path and reads its tokenizer.
func vocabFromGGUFFile(path string) (*Vocab, error) {
	g, err := checkpoint.OpenGGUF(path)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	return VocabFromGGUF(g)
}

// isAdded reports whether token type t is an added (not merged) token.
func isAdded(t int32) bool { return t == TokenControl || t == TokenUserDefined }

type hfAddedToken struct {
	ID         int    `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

// tokenizerJSON writes a Llama 3 style tokenizer.json: byte-level BPE with
// the Llama 3 split regex, ignore_merges (as llama.cpp's llama-bpe), and a
// TemplateProcessing post-processor adding BOS/EOS as the vocabulary says.
func (v *Vocab) tokenizerJSON() ([]byte, error) {
	vocab := make(map[string]int, len(v.Tokens))
	var added []hfAddedToken
	for id, tok := range v.Tokens {
		switch t := v.Types[id]; {
		case isAdded(t):
			added = append(added, hfAddedToken{ID: id, Content: tok, Normalized: t != TokenControl, Special: t == TokenControl})
		case t == TokenUnused:
			// padding ([PADi]) rows of the embedding: no token
		default:
			if _, dup := vocab[tok]; !dup {
				vocab[tok] = id
			}
		}
	}
	type item map[string]any
	token := func(id int) string { return v.Tokens[id] }
	specials := item{}
	seq := func(typeID int) []item { // [BOS] $A|$B [EOS]
		var out []item
		add := func(id int) {
			out = append(out, item{"SpecialToken": item{"id": token(id), "type_id": typeID}})
			specials[token(id)] = item{"id": token(id), "ids": []int{id}, "tokens": []string{token(id)}}
		}
		if v.AddBOS && v.BOS >= 0 {
			add(v.BOS)
		}
		out = append(out, item{"Sequence": item{"id": string(rune('A' + typeID)), "type_id": typeID}})
		if v.AddEOS && v.EOS >= 0 {
			add(v.EOS)
		}
		return out
	}
	single := seq(0)
	pair := append(seq(0), seq(1)...)
	doc := map[string]any{
		"version":      "1.0",
		"truncation":   nil,
		"padding":      nil,
		"added_tokens": added,
		"normalizer":   nil,
		"pre_tokenizer": item{"type": "Sequence", "pretokenizers": []item{
			{"type": "Split", "pattern": item{"Regex": llama3Pattern}, "behavior": "Isolated", "invert": false},
			{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
		}},
		"post_processor": item{"type": "Sequence", "processors": []item{
			{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
			{"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials},
		}},
		"decoder": item{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
		"model": item{"type": "BPE", "dropout": nil, "unk_token": nil, "continuing_subword_prefix": nil,
			"end_of_word_suffix": nil, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
			"vocab": vocab, "merges": v.Merges},
	}
	if added == nil {
		doc["added_tokens"] = []hfAddedToken{}
	}
	return json.MarshalIndent(doc, "", " ")
}

// tokenizerConfig writes tokenizer_config.json.
func (v *Vocab) tokenizerConfig() ([]byte, error) {
	name := func(id int) any {
		if id < 0 || id >= len(v.Tokens) {
			return nil
		}
		return v.Tokens[id]
	}
	decoder := map[string]hfAddedToken{}
	for id, tok := range v.Tokens {
		if t := v.Types[id]; isAdded(t) || (v.Model == "llama" && (t == TokenControl || t == TokenUnknown)) {
			decoder[fmt.Sprint(id)] = hfAddedToken{Content: tok, Normalized: t == TokenUserDefined, Special: t != TokenUserDefined}
		}
	}
	type added struct {
		Content    string `json:"content"`
		LStrip     bool   `json:"lstrip"`
		Normalized bool   `json:"normalized"`
		RStrip     bool   `json:"rstrip"`
		SingleWord bool   `json:"single_word"`
		Special    bool   `json:"special"`
	}
	dec := make(map[string]added, len(decoder))
	for k, a := range decoder {
		dec[k] = added{Content: a.Content, Normalized: a.Normalized, Special: a.Special}
	}
	cfg := map[string]any{
		"add_bos_token":                v.AddBOS,
		"add_eos_token":                v.AddEOS,
		"bos_token":                    name(v.BOS),
		"eos_token":                    name(v.EOS),
		"pad_token":                    name(v.Pad),
		"added_tokens_decoder":         dec,
		"clean_up_tokenization_spaces": v.Model == "gpt2",
		"model_max_length":             1 << 30,
	}
	if v.Model == "llama" {
		cfg["unk_token"] = name(v.UNK)
		cfg["tokenizer_class"] = "LlamaTokenizer"
		cfg["legacy"] = true
	} else {
		cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
		cfg["model_input_names"] = []string{"input_ids", "attention_mask"}
	}
	if v.ChatTemplate != "" {
		cfg["chat_template"] = v.ChatTemplate
	}
	return json.MarshalIndent(cfg, "", "  ")
}

// sentencePieceModel serializes v as a SentencePiece ModelProto (BPE with
// byte fallback, identity normalizer, a dummy prefix and "▁" for spaces, as
// Llama 2's tokenizer.model).
func (v *Vocab) sentencePieceModel() []byte {
	var pb protoWriter
	bytes := 0
	for id, tok := range v.Tokens {
		t := v.Types[id]
		if t < TokenNormal || t > TokenByte {
			t = TokenNormal
		}
		// SentencePiece needs exactly one UNKNOWN piece, at unk_id; llama.cpp's
		// converter marks <unk> CONTROL when tokenizer_config.json calls it special.
		switch unk := max(v.UNK, 0); {
		case id == unk:
			t = TokenUnknown
		case t == TokenUnknown:
			t = TokenControl
		}
		if t == TokenByte {
			bytes++
		}
		if t == TokenUserDefined {
			tok = strings.ReplaceAll(tok, " ", "▁") // ExportVocab spells added tokens with spaces
		}
		var p protoWriter
		p.bytes(1, []byte(tok))
		p.fixed32(2, math.Float32bits(v.Scores[id]))
		p.varint(3, uint64(t))
		pb.bytes(1, p.b)
	}
	id := func(x int) uint64 { return uint64(int64(x)) } // -1 as protobuf's 10-byte varint
	var tr protoWriter
	tr.varint(3, 2) // model_type BPE
	if bytes == 256 {
		tr.varint(35, 1) // byte_fallback
	}
	tr.varint(40, id(max(v.UNK, 0)))
	tr.varint(41, id(v.BOS))
	tr.varint(42, id(v.EOS))
	tr.varint(43, id(v.Pad))
	pb.bytes(2, tr.b)
	var nr protoWriter
	nr.bytes(1, []byte("identity"))
	prefix := uint64(1)
	if v.NoSpacePrefix {
		prefix = 0
	}
	nr.varint(3, prefix) // add_dummy_prefix
	nr.varint(4, 0)      // remove_extra_whitespaces
	nr.varint(5, 1)      // escape_whitespaces
	pb.bytes(3, nr.b)
	return pb.b
}

// protoWriter appends protobuf wire format.
type protoWriter struct{ b []byte }

func (w *protoWriter) tag(field, wire int) { w.b = binary.AppendUvarint(w.b, uint64(field<<3|wire)) }

func (w *protoWriter) varint(field int, v uint64) {
	w.tag(field, 0)
	w.b = binary.AppendUvarint(w.b, v)
}

func (w *protoWriter) fixed32(field int, v uint32) {
	w.tag(field, 5)
	w.b = binary.LittleEndian.AppendUint32(w.b, v)
}

func (w *protoWriter) bytes(field int, b []byte) {
	w.tag(field, 2)
	w.b = binary.AppendUvarint(w.b, uint64(len(b)))
	w.b = append(w.b, b...)
}

// ReadConfigJSON returns the tokenizer_config.json of a model: the file in
// an HF directory (an error wrapping os.ErrNotExist when it has none), or
// for a GGUF file the one HFFiles builds from its metadata (bos/eos tokens,
// added tokens, chat_template).
func ReadConfigJSON(model string) ([]byte, error) {
	if !checkpoint.IsGGUF(model) {
		return os.ReadFile(filepath.Join(model, "tokenizer_config.json"))
	}
	v, err := vocabFromGGUFFile(model)
	if err != nil {
		return nil, err
	}
	return v.tokenizerConfig()
}

// padded returns v with [PADi] tokens (unused) up to n entries, as
// ExportVocab pads to the model's vocab_size; v itself when it has n or more.
func (v *Vocab) padded(n int) *Vocab {
	if n <= len(v.Tokens) {
		return v
	}
	c := *v
	c.Tokens = append([]string(nil), v.Tokens...)
	c.Types = append([]int32(nil), v.Types...)
	if v.Scores != nil {
		c.Scores = append([]float32(nil), v.Scores...)
	}
	for i := len(v.Tokens); i < n; i++ {
		c.Tokens = append(c.Tokens, fmt.Sprintf("[PAD%d]", i))
		c.Types = append(c.Types, TokenUnused)
		if c.Scores != nil {
			c.Scores = append(c.Scores, -10000)
		}
	}
	return &c
}
