package tokenizer

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// byteLevel is the Llama 3 tokenizer: byte-level BPE over pre-tokens.
type byteLevel struct {
	vocab        map[string]int // raw bytes of a token → id
	tokens       []string       // id → raw bytes ("" for holes)
	byteID       [256]int32
	merges       map[uint64]uint64 // left<<32|right → rank<<32|merged id
	ignoreMerges bool              // a pre-token found whole in vocab is emitted as is
	sp           *specials
	bos, eos     int
	eot, pad     int
	size         int
}

// bytesToUnicode is GPT-2's byte → printable rune table used by byte-level BPE vocabularies.
func bytesToUnicode() (enc [256]rune, dec map[rune]byte) {
	dec = map[rune]byte{}
	n := 0
	for b := 0; b < 256; b++ {
		if ('!' <= b && b <= '~') || (0xA1 <= b && b <= 0xAC) || (0xAE <= b && b <= 0xFF) {
			enc[b] = rune(b)
		} else {
			enc[b] = rune(256 + n)
			n++
		}
		dec[enc[b]] = byte(b)
	}
	return
}

// decodeByteLevel turns a vocabulary string (GPT-2 byte runes) into raw bytes.
func decodeByteLevel(s string, dec map[rune]byte) (string, bool) {
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		c, ok := dec[r]
		if !ok {
			return "", false
		}
		b.WriteByte(c)
	}
	return b.String(), true
}

func loadLlama3JSON(path string, cfg *tokenConfig) (*byteLevel, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseLlama3JSON(data, path, cfg)
}

// tokenizerJSON is the part of HF's tokenizer.json that the loader and the
// GGUF vocabulary export read.
type tokenizerJSON struct {
	AddedTokens []struct {
		ID      int    `json:"id"`
		Content string `json:"content"`
		Special bool   `json:"special"`
	} `json:"added_tokens"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Normalizer    json.RawMessage `json:"normalizer"`
	Model         struct {
		Type         string          `json:"type"`
		Vocab        map[string]int  `json:"vocab"`
		Merges       json.RawMessage `json:"merges"`
		IgnoreMerges bool            `json:"ignore_merges"`
		ByteFallback bool            `json:"byte_fallback"`
	} `json:"model"`
}

func parseLlama3JSON(data []byte, path string, cfg *tokenConfig) (*byteLevel, error) {
	var f tokenizerJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %v", path, err)
	}
	if f.Model.Type != "BPE" {
		return nil, fmt.Errorf("tokenizer: %s: model.type is %q; only BPE (Llama 3 byte-level) tokenizer.json files are supported", path, f.Model.Type)
	}
	if !bytes.Contains(f.PreTokenizer, []byte("ByteLevel")) {
		return nil, fmt.Errorf("tokenizer: %s: pre_tokenizer is not ByteLevel; this looks like a Llama 2 style tokenizer.json, load its tokenizer.model instead", path)
	}
	if n := bytes.TrimSpace(f.Normalizer); len(n) > 0 && string(n) != "null" {
		return nil, fmt.Errorf("tokenizer: %s: has a normalizer (%.80s); Llama 3 tokenizers have none, and llamatune does not implement normalizers", path, n)
	}
	if err := checkLlama3PreTokenizer(f.PreTokenizer); err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %v", path, err)
	}
	_, dec := bytesToUnicode()
	t := &byteLevel{vocab: make(map[string]int, len(f.Model.Vocab)), ignoreMerges: f.Model.IgnoreMerges, sp: newSpecials(), bos: -1, eos: -1, eot: -1, pad: -1}
	maxID := -1
	encToID := f.Model.Vocab
	for s, id := range f.Model.Vocab {
		raw, ok := decodeByteLevel(s, dec)
		if !ok {
			return nil, fmt.Errorf("tokenizer: %s: vocab entry %q is not byte-level encoded", path, s)
		}
		if id < 0 {
			return nil, fmt.Errorf("tokenizer: %s: vocab entry %q has negative id %d", path, s, id)
		}
		t.vocab[raw] = id
		maxID = max(maxID, id)
	}
	t.tokens = make([]string, maxID+1)
	for raw, id := range t.vocab {
		t.tokens[id] = raw
	}
	for b := 0; b < 256; b++ {
		id, ok := t.vocab[string([]byte{byte(b)})]
		if !ok {
			return nil, fmt.Errorf("tokenizer: %s: vocab lacks the single byte 0x%02X", path, b)
		}
		t.byteID[b] = int32(id)
	}
	// merges: ["a b", ...] (older files) or [["a","b"], ...] (newer files).
	var pairs [][2]string
	var asStrings []string
	if err := json.Unmarshal(f.Model.Merges, &asStrings); err == nil {
		pairs = make([][2]string, len(asStrings))
		for i, m := range asStrings {
			a, b, ok := strings.Cut(m, " ")
			if !ok {
				return nil, fmt.Errorf("tokenizer: %s: merge %d %q has no space", path, i, m)
			}
			pairs[i] = [2]string{a, b}
		}
	} else if err := json.Unmarshal(f.Model.Merges, &pairs); err != nil {
		return nil, fmt.Errorf("tokenizer: %s: model.merges: %v", path, err)
	}
	t.merges = make(map[uint64]uint64, len(pairs))
	for rank, p := range pairs {
		a, okA := encToID[p[0]]
		b, okB := encToID[p[1]]
		m, okM := encToID[p[0]+p[1]]
		if !okA || !okB || !okM {
			return nil, fmt.Errorf("tokenizer: %s: merge %d (%q %q) uses tokens missing from the vocab", path, rank, p[0], p[1])
		}
		key := uint64(a)<<32 | uint64(b)
		if _, dup := t.merges[key]; !dup {
			t.merges[key] = uint64(rank)<<32 | uint64(m)
		}
	}
	t.size = maxID + 1
	for _, a := range f.AddedTokens {
		t.sp.add(a.Content, a.ID)
		t.size = max(t.size, a.ID+1)
	}
	t.finish(cfg)
	return t, nil
}

// llama3Pattern is the split regex of Llama 3's pre-tokenizer, which llama3Next implements.
const llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// checkLlama3PreTokenizer accepts Sequence[Split(llama3Pattern, Isolated), ByteLevel(use_regex=false)].
func checkLlama3PreTokenizer(raw json.RawMessage) error {
	type pre struct {
		Type    string `json:"type"`
		Pattern struct {
			Regex string `json:"Regex"`
		} `json:"pattern"`
		Behavior string `json:"behavior"`
		Invert   bool   `json:"invert"`
		UseRegex *bool  `json:"use_regex"`
		Prefix   bool   `json:"add_prefix_space"`
	}
	var seq struct {
		Type          string `json:"type"`
		Pretokenizers []pre  `json:"pretokenizers"`
	}
	if err := json.Unmarshal(raw, &seq); err != nil {
		return fmt.Errorf("pre_tokenizer: %v", err)
	}
	ok := seq.Type == "Sequence" && len(seq.Pretokenizers) == 2
	if ok {
		sp, bl := seq.Pretokenizers[0], seq.Pretokenizers[1]
		ok = sp.Type == "Split" && sp.Pattern.Regex == llama3Pattern && sp.Behavior == "Isolated" && !sp.Invert &&
			bl.Type == "ByteLevel" && !bl.Prefix && (bl.UseRegex == nil || !*bl.UseRegex)
	}
	if !ok {
		return fmt.Errorf("pre_tokenizer is not Llama 3's (Split on the Llama 3 regex + ByteLevel); other byte-level BPE tokenizers (GPT-2, Qwen, ...) are not supported")
	}
	return nil
}

// looksLikeTiktoken reports whether a tokenizer.model is Meta's "base64 rank" text format.
func looksLikeTiktoken(data []byte) bool {
	line, _, _ := bytes.Cut(data, []byte("\n"))
	a, b, ok := bytes.Cut(bytes.TrimRight(line, "\r"), []byte(" "))
	if !ok || len(a) == 0 {
		return false
	}
	if _, err := strconv.Atoi(string(b)); err != nil {
		return false
	}
	_, err := base64.StdEncoding.DecodeString(string(a))
	return err == nil
}

// llama31Specials lists Meta's names of the 256 Llama 3.1 special tokens (ids base+i).
func llama31Specials() []string {
	names := []string{"<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
		"<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
		"<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"}
	for i := 2; len(names) < 256; i++ {
		names = append(names, fmt.Sprintf("<|reserved_special_token_%d|>", i))
	}
	return names
}

func newLlama3Tiktoken(data []byte, path string, cfg *tokenConfig) (*byteLevel, error) {
	t := &byteLevel{vocab: map[string]int{}, ignoreMerges: true, sp: newSpecials(), bos: -1, eos: -1, eot: -1, pad: -1}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	line := 0
	maxID := -1
	for sc.Scan() {
		line++
		l := strings.TrimSpace(sc.Text())
		if l == "" {
			continue
		}
		a, b, ok := strings.Cut(l, " ")
		if !ok {
			return nil, fmt.Errorf("tokenizer: %s:%d: want \"base64token rank\"", path, line)
		}
		raw, err := base64.StdEncoding.DecodeString(a)
		if err != nil {
			return nil, fmt.Errorf("tokenizer: %s:%d: %v", path, line, err)
		}
		rank, err := strconv.Atoi(b)
		if err != nil || rank < 0 {
			return nil, fmt.Errorf("tokenizer: %s:%d: bad rank %q", path, line, b)
		}
		t.vocab[string(raw)] = rank
		maxID = max(maxID, rank)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %v", path, err)
	}
	t.tokens = make([]string, maxID+1)
	for raw, id := range t.vocab {
		t.tokens[id] = raw
	}
	for b := 0; b < 256; b++ {
		id, ok := t.vocab[string([]byte{byte(b)})]
		if !ok {
			return nil, fmt.Errorf("tokenizer: %s: vocab lacks the single byte 0x%02X", path, b)
		}
		t.byteID[b] = int32(id)
	}
	// tiktoken merges the adjacent pair whose concatenation has the lowest rank. Every
	// token that splits into two tokens gives such a pair, with the token's rank.
	t.merges = map[uint64]uint64{}
	for raw, id := range t.vocab {
		for k := 1; k < len(raw); k++ {
			a, okA := t.vocab[raw[:k]]
			b, okB := t.vocab[raw[k:]]
			if okA && okB {
				t.merges[uint64(a)<<32|uint64(b)] = uint64(id)<<32 | uint64(id)
			}
		}
	}
	base := maxID + 1
	for i, name := range llama31Specials() {
		t.sp.add(name, base+i)
	}
	t.size = base + 256
	t.finish(cfg)
	return t, nil
}

// finish applies tokenizer_config.json and sets the well-known ids.
func (t *byteLevel) finish(cfg *tokenConfig) {
	if cfg != nil {
		for id, a := range cfg.Added {
			if _, inVocab := t.vocab[a.Content]; inVocab && id < len(t.tokens) && t.tokens[id] == a.Content {
				continue
			}
			t.sp.add(a.Content, id)
			t.size = max(t.size, id+1)
		}
	}
	t.sp.build()
	look := func(name string) int {
		if id, ok := t.sp.byText[name]; ok {
			return id
		}
		return -1
	}
	t.bos, t.eos, t.eot = look("<|begin_of_text|>"), look("<|end_of_text|>"), look("<|eot_id|>")
	if cfg != nil {
		if cfg.BOS != "" {
			if id, ok := t.TokenID(cfg.BOS); ok {
				t.bos = id
			}
		}
		if cfg.EOS != "" && t.eos < 0 { // <|end_of_text|> wins over an Instruct config's <|eot_id|>
			if id, ok := t.TokenID(cfg.EOS); ok {
				t.eos = id
			}
		}
		if cfg.Pad != "" {
			if id, ok := t.TokenID(cfg.Pad); ok {
				t.pad = id
			}
		}
	}
}

func (t *byteLevel) Kind() string   { return "llama3" }
func (t *byteLevel) VocabSize() int { return t.size }
func (t *byteLevel) BOS() int       { return t.bos }
func (t *byteLevel) EOS() int       { return t.eos }
func (t *byteLevel) EOT() int       { return t.eot }
func (t *byteLevel) Pad() int       { return t.pad }

func (t *byteLevel) TokenID(s string) (int, bool) {
	if id, ok := t.sp.byText[s]; ok {
		return id, true
	}
	id, ok := t.vocab[s]
	return id, ok
}

func (t *byteLevel) IDToken(id int) string {
	if s, ok := t.sp.byID[id]; ok {
		return s
	}
	if id >= 0 && id < len(t.tokens) {
		return t.tokens[id]
	}
	return ""
}

func (t *byteLevel) Encode(text string) []int {
	out := make([]int, 0, len(text)/4+1)
	var w bpeWork
	return t.encodeText(text, out, &w)
}

func (t *byteLevel) EncodeWithSpecial(text string) []int {
	out := make([]int, 0, len(text)/4+1)
	var w bpeWork
	t.sp.split(text, func(s string) { out = t.encodeText(s, out, &w) }, func(id int) { out = append(out, id) })
	return out
}

func (t *byteLevel) BatchEncode(texts []string) [][]int { return batchEncode(texts, t.Encode) }

func (t *byteLevel) Decode(ids []int) string {
	var b strings.Builder
	for _, id := range ids {
		b.WriteString(t.IDToken(id))
	}
	return b.String()
}

func (t *byteLevel) encodeText(text string, out []int, w *bpeWork) []int {
	for i := 0; i < len(text); {
		j := llama3Next(text, i)
		out = t.encodePiece(text[i:j], out, w)
		i = j
	}
	return out
}

// bpeWork is scratch space reused across pieces of one Encode call.
type bpeWork struct {
	ids   []int32
	ranks []uint64
	prev  []int32
	next  []int32
	heap  []heapItem
}

const noRank = ^uint64(0)

func (t *byteLevel) pairRank(a, b int32) uint64 {
	if v, ok := t.merges[uint64(a)<<32|uint64(b)]; ok {
		return v
	}
	return noRank
}

func (t *byteLevel) encodePiece(p string, out []int, w *bpeWork) []int {
	if len(p) == 1 {
		return append(out, int(t.byteID[p[0]]))
	}
	if t.ignoreMerges {
		if id, ok := t.vocab[p]; ok {
			return append(out, id)
		}
	}
	if len(p) > 64 {
		return t.encodeLong(p, out, w)
	}
	ids := w.ids[:0]
	for i := 0; i < len(p); i++ {
		ids = append(ids, t.byteID[p[i]])
	}
	ranks := w.ranks[:0]
	for i := 0; i+1 < len(ids); i++ {
		ranks = append(ranks, t.pairRank(ids[i], ids[i+1]))
	}
	for len(ids) > 1 {
		best, bi := noRank, -1
		for i, r := range ranks {
			if r < best {
				best, bi = r, i
			}
		}
		if bi < 0 {
			break
		}
		ids[bi] = int32(uint32(best))
		ids = append(ids[:bi+1], ids[bi+2:]...)
		ranks = append(ranks[:bi], ranks[bi+1:]...)
		if bi > 0 {
			ranks[bi-1] = t.pairRank(ids[bi-1], ids[bi])
		}
		if bi < len(ranks) {
			ranks[bi] = t.pairRank(ids[bi], ids[bi+1])
		}
	}
	for _, id := range ids {
		out = append(out, int(id))
	}
	w.ids, w.ranks = ids, ranks
	return out
}

type heapItem struct {
	rank        uint64 // rank<<32|merged id
	left, right int32  // node indices
	lid, rid    int32  // ids when pushed (to detect stale items)
}

func heapLess(a, b heapItem) bool {
	if a.rank>>32 != b.rank>>32 {
		return a.rank>>32 < b.rank>>32
	}
	return a.left < b.left
}

func heapPush(h []heapItem, x heapItem) []heapItem {
	h = append(h, x)
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !heapLess(h[i], h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
	return h
}

func heapPop(h []heapItem) (heapItem, []heapItem) {
	top := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h = h[:n]
	i := 0
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && heapLess(h[l], h[m]) {
			m = l
		}
		if r < n && heapLess(h[r], h[m]) {
			m = r
		}
		if m == i {
			break
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
	return top, h
}

// encodeLong is BPE with a heap and a linked list: O(n log n) for long pre-tokens.
func (t *byteLevel) encodeLong(p string, out []int, w *bpeWork) []int {
	n := len(p)
	ids := append(w.ids[:0], make([]int32, n)...)
	prev := append(w.prev[:0], make([]int32, n)...)
	next := append(w.next[:0], make([]int32, n)...)
	h := w.heap[:0]
	for i := 0; i < n; i++ {
		ids[i] = t.byteID[p[i]]
		prev[i] = int32(i - 1)
		next[i] = int32(i + 1)
	}
	next[n-1] = -1
	push := func(l, r int32) {
		if l < 0 || r < 0 {
			return
		}
		if rk := t.pairRank(ids[l], ids[r]); rk != noRank {
			h = heapPush(h, heapItem{rk, l, r, ids[l], ids[r]})
		}
	}
	for i := 0; i+1 < n; i++ {
		push(int32(i), int32(i+1))
	}
	for len(h) > 0 {
		var it heapItem
		it, h = heapPop(h)
		l, r := it.left, it.right
		if ids[l] < 0 || ids[r] < 0 || next[l] != r || ids[l] != it.lid || ids[r] != it.rid {
			continue
		}
		ids[l] = int32(uint32(it.rank))
		ids[r] = -1
		nx := next[r]
		next[l] = nx
		if nx >= 0 {
			prev[nx] = l
		}
		push(prev[l], l)
		push(l, nx)
	}
	for i := int32(0); i >= 0; i = next[i] {
		out = append(out, int(ids[i]))
	}
	w.ids, w.prev, w.next, w.heap = ids, prev, next, h
	return out
}
