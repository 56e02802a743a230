package tokenizer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"unicode/utf8"
)

// SentencePiece piece types (sentencepiece_model.proto).
const (
	spNormal      = 1
	spUnknown     = 2
	spControl     = 3
	spUserDefined = 4
	spUnused      = 5
	spByte        = 6
)

// spModel is the part of a SentencePiece ModelProto the Llama 2 tokenizer needs.
type spModel struct {
	Pieces                []spPiece
	ModelType             int32 // 1 unigram, 2 BPE
	ByteFallback          bool
	UnkID, BOSID, EOSID   int32
	PadID                 int32
	NormalizerName        string
	HasCharsMap           bool
	AddDummyPrefix        bool
	RemoveExtraWhitespace bool
	EscapeWhitespaces     bool
	TreatWSAsSuffix       bool
}

type spPiece struct {
	Piece string
	Score float32
	Type  int32
}

var errTruncated = errors.New("truncated protobuf")

// protoReader walks protobuf wire format.
type protoReader struct {
	b []byte
}

func (r *protoReader) varint() (uint64, error) {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		return 0, errTruncated
	}
	r.b = r.b[n:]
	return v, nil
}

// next returns the field number, wire type, and for length-delimited fields the bytes; for
// varints the value in v; for fixed32/fixed64 the raw value in v.
func (r *protoReader) next() (field int, wire int, v uint64, data []byte, err error) {
	key, err := r.varint()
	if err != nil {
		return
	}
	field, wire = int(key>>3), int(key&7)
	if field == 0 {
		err = errors.New("field number 0")
		return
	}
	switch wire {
	case 0:
		v, err = r.varint()
	case 1:
		if len(r.b) < 8 {
			err = errTruncated
			return
		}
		v = binary.LittleEndian.Uint64(r.b)
		r.b = r.b[8:]
	case 2:
		var n uint64
		if n, err = r.varint(); err != nil {
			return
		}
		if n > uint64(len(r.b)) {
			err = errTruncated
			return
		}
		data = r.b[:n]
		r.b = r.b[n:]
	case 5:
		if len(r.b) < 4 {
			err = errTruncated
			return
		}
		v = uint64(binary.LittleEndian.Uint32(r.b))
		r.b = r.b[4:]
	default:
		err = fmt.Errorf("unsupported wire type %d", wire)
	}
	return
}

// parseSentencePieceModel parses a serialized sentencepiece ModelProto.
func parseSentencePieceModel(b []byte) (*spModel, error) {
	m := &spModel{ModelType: 1, UnkID: 0, BOSID: 1, EOSID: 2, PadID: -1,
		AddDummyPrefix: true, RemoveExtraWhitespace: true, EscapeWhitespaces: true}
	r := protoReader{b}
	for len(r.b) > 0 {
		field, wire, _, data, err := r.next()
		if err != nil {
			return nil, err
		}
		if wire != 2 {
			continue
		}
		switch field {
		case 1: // SentencePiece
			p := spPiece{Type: spNormal}
			pr := protoReader{data}
			for len(pr.b) > 0 {
				f, w, v, d, err := pr.next()
				if err != nil {
					return nil, fmt.Errorf("piece %d: %v", len(m.Pieces), err)
				}
				switch {
				case f == 1 && w == 2:
					if !utf8.Valid(d) {
						return nil, fmt.Errorf("piece %d is not UTF-8", len(m.Pieces))
					}
					p.Piece = string(d)
				case f == 2 && w == 5:
					p.Score = math.Float32frombits(uint32(v))
				case f == 3 && w == 0:
					p.Type = int32(v)
				}
			}
			m.Pieces = append(m.Pieces, p)
		case 2: // TrainerSpec
			tr := protoReader{data}
			for len(tr.b) > 0 {
				f, w, v, _, err := tr.next()
				if err != nil {
					return nil, fmt.Errorf("trainer_spec: %v", err)
				}
				if w != 0 {
					continue
				}
				switch f {
				case 3:
					m.ModelType = int32(v)
				case 24:
					m.TreatWSAsSuffix = v != 0
				case 35:
					m.ByteFallback = v != 0
				case 40:
					m.UnkID = int32(v)
				case 41:
					m.BOSID = int32(v)
				case 42:
					m.EOSID = int32(v)
				case 43:
					m.PadID = int32(v)
				}
			}
		case 3: // NormalizerSpec
			nr := protoReader{data}
			for len(nr.b) > 0 {
				f, w, v, d, err := nr.next()
				if err != nil {
					return nil, fmt.Errorf("normalizer_spec: %v", err)
				}
				switch {
				case f == 1 && w == 2:
					m.NormalizerName = string(d)
				case f == 2 && w == 2:
					m.HasCharsMap = len(d) > 0
				case f == 3 && w == 0:
					m.AddDummyPrefix = v != 0
				case f == 4 && w == 0:
					m.RemoveExtraWhitespace = v != 0
				case f == 5 && w == 0:
					m.EscapeWhitespaces = v != 0
				}
			}
		}
	}
	if len(m.Pieces) == 0 {
		return nil, errors.New("no pieces")
	}
	return m, nil
}

// sentencePiece is the Llama 2 tokenizer: SentencePiece BPE with byte fallback.
type sentencePiece struct {
	m        *spModel
	pieces   map[string]int32 // normal, user-defined and unused pieces
	reserved map[string]int32 // control, unknown and byte pieces
	byteID   [256]int32
	hasBytes bool
	userDef  []string // user-defined pieces, longest first
	// chunkable: no piece holds "▁" right after another character, so text can be cut
	// before every "▁" that follows a non-"▁" character without changing the result.
	chunkable bool
	sp        *specials
	bos, eos  int
	pad       int
	cache     *wordCache
	// whole[id]: BPE of the piece's own text gives just this piece, so a chunk equal to
	// the piece text encodes to it without running BPE.
	whole []bool
}

func newLlama2(data []byte, path string, cfg *tokenConfig) (*sentencePiece, error) {
	m, err := parseSentencePieceModel(data)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %s: not a SentencePiece model: %v", path, err)
	}
	if m.ModelType != 2 {
		return nil, fmt.Errorf("tokenizer: %s: SentencePiece model_type %d is not BPE (2); only Llama 2 style BPE models are supported", path, m.ModelType)
	}
	if m.HasCharsMap && m.NormalizerName != "identity" {
		return nil, fmt.Errorf("tokenizer: %s: normalizer %q (precompiled charsmap) is not supported; Llama 2 uses \"identity\"", path, m.NormalizerName)
	}
	if m.TreatWSAsSuffix {
		return nil, fmt.Errorf("tokenizer: %s: treat_whitespace_as_suffix is not supported", path)
	}
	t := &sentencePiece{m: m, pieces: map[string]int32{}, reserved: map[string]int32{}, sp: newSpecials(), bos: -1, eos: -1, pad: -1, cache: newWordCache()}
	for i := range t.byteID {
		t.byteID[i] = -1
	}
	nbytes := 0
	for i, p := range m.Pieces {
		id := int32(i)
		switch p.Type {
		case spNormal, spUserDefined, spUnused:
			if _, dup := t.pieces[p.Piece]; !dup {
				t.pieces[p.Piece] = id
			}
			if p.Type == spUserDefined && p.Piece != "" {
				t.userDef = append(t.userDef, p.Piece)
			}
		case spByte:
			var b byte
			if _, err := fmt.Sscanf(p.Piece, "<0x%02X>", &b); err != nil || len(p.Piece) != 6 {
				return nil, fmt.Errorf("tokenizer: %s: byte piece %d %q is not <0xNN>", path, i, p.Piece)
			}
			t.byteID[b] = id
			nbytes++
			t.reserved[p.Piece] = id
		default:
			t.reserved[p.Piece] = id
			if p.Type == spControl {
				t.sp.add(p.Piece, i)
			}
		}
	}
	t.hasBytes = nbytes == 256
	if m.ByteFallback && !t.hasBytes {
		return nil, fmt.Errorf("tokenizer: %s: byte_fallback is set but the model has %d of 256 byte pieces", path, nbytes)
	}
	if m.UnkID < 0 || int(m.UnkID) >= len(m.Pieces) {
		return nil, fmt.Errorf("tokenizer: %s: unk_id %d out of range", path, m.UnkID)
	}
	sort.SliceStable(t.userDef, func(i, j int) bool { return len(t.userDef[i]) > len(t.userDef[j]) }) // longest first
	t.chunkable = len(t.userDef) == 0
	for p := range t.pieces {
		if i := strings.Index(p[1:], "▁"); len(p) > 1 && i >= 0 {
			// any "▁" after position 0 must follow another "▁"
			for k := 1; k < len(p); {
				if strings.HasPrefix(p[k:], "▁") && !strings.HasSuffix(p[:k], "▁") {
					t.chunkable = false
					break
				}
				_, w := utf8.DecodeRuneInString(p[k:])
				k += w
			}
		}
	}
	if m.BOSID >= 0 && int(m.BOSID) < len(m.Pieces) {
		t.bos = int(m.BOSID)
	}
	if m.EOSID >= 0 && int(m.EOSID) < len(m.Pieces) {
		t.eos = int(m.EOSID)
	}
	if m.PadID >= 0 && int(m.PadID) < len(m.Pieces) {
		t.pad = int(m.PadID)
	}
	if cfg != nil {
		for id, a := range cfg.Added {
			if id < len(m.Pieces) && m.Pieces[id].Piece == a.Content && m.Pieces[id].Type != spControl && m.Pieces[id].Type != spUnknown {
				continue
			}
			t.sp.add(a.Content, id)
		}
		if id, ok := t.TokenID(cfg.BOS); ok && cfg.BOS != "" {
			t.bos = id
		}
		if id, ok := t.TokenID(cfg.EOS); ok && cfg.EOS != "" {
			t.eos = id
		}
		if id, ok := t.TokenID(cfg.Pad); ok && cfg.Pad != "" {
			t.pad = id
		}
	}
	t.sp.build()
	t.whole = make([]bool, len(m.Pieces))
	var w spWork
	var buf []int
	for i, p := range m.Pieces {
		if p.Type == spNormal || p.Type == spUserDefined {
			buf = t.encodeChunkUncached(p.Piece, buf[:0], &w)
			t.whole[i] = len(buf) == 1 && buf[0] == i
		}
	}
	return t, nil
}

func (t *sentencePiece) Kind() string { return "llama2" }
func (t *sentencePiece) VocabSize() int {
	n := len(t.m.Pieces)
	for id := range t.sp.byID {
		n = max(n, id+1)
	}
	return n
}
func (t *sentencePiece) BOS() int { return t.bos }
func (t *sentencePiece) EOS() int { return t.eos }
func (t *sentencePiece) EOT() int { return t.eos }
func (t *sentencePiece) Pad() int { return t.pad }

func (t *sentencePiece) TokenID(s string) (int, bool) {
	if id, ok := t.sp.byText[s]; ok {
		return id, true
	}
	if id, ok := t.pieces[s]; ok {
		return int(id), true
	}
	if id, ok := t.reserved[s]; ok {
		return int(id), true
	}
	return 0, false
}

func (t *sentencePiece) IDToken(id int) string {
	if s, ok := t.sp.byID[id]; ok {
		return s
	}
	if id >= 0 && id < len(t.m.Pieces) {
		return t.m.Pieces[id].Piece
	}
	return ""
}

// normalize applies the identity normalizer: optional whitespace cleanup, the dummy prefix
// and "▁" for spaces.
func (t *sentencePiece) normalize(text string) string {
	if t.m.RemoveExtraWhitespace {
		text = strings.Join(strings.FieldsFunc(text, func(r rune) bool { return r == ' ' }), " ")
	}
	if text == "" {
		return ""
	}
	if t.m.AddDummyPrefix {
		text = " " + text
	}
	if t.m.EscapeWhitespaces {
		text = strings.ReplaceAll(text, " ", "▁")
	}
	return text
}

func (t *sentencePiece) Encode(text string) []int {
	return t.encodeText(text, make([]int, 0, len(text)/3+1))
}

func (t *sentencePiece) EncodeWithSpecial(text string) []int {
	out := make([]int, 0, len(text)/3+1)
	t.sp.split(text, func(s string) { out = t.encodeText(s, out) }, func(id int) { out = append(out, id) })
	return out
}

func (t *sentencePiece) BatchEncode(texts []string) [][]int { return batchEncode(texts, t.Encode) }

func (t *sentencePiece) encodeText(text string, out []int) []int {
	norm := t.normalize(text)
	if norm == "" {
		return out
	}
	var w spWork
	if !t.chunkable {
		return t.encodeChunk(norm, out, &w)
	}
	const ws = "▁"
	start := 0
	for i := 1; i < len(norm); i++ {
		// cut before "▁" when the previous byte ends a non-"▁" character
		if norm[i] == ws[0] && strings.HasPrefix(norm[i:], ws) && !strings.HasSuffix(norm[:i], ws) {
			out = t.encodeChunk(norm[start:i], out, &w)
			start = i
			i += len(ws) - 1
		}
	}
	return t.encodeChunk(norm[start:], out, &w)
}

type spWork struct {
	starts []int32 // symbol start offsets; symbol k is s[starts[k]:starts[k+1]]
	scores []float32
	ok     []bool
	nodes  []spNode
	heap   []spItem
}

// encodeChunk runs SentencePiece BPE on s: start from characters (user-defined pieces whole),
// repeatedly merge the adjacent pair whose concatenation is a piece with the highest score
// (leftmost on ties), then map symbols to ids with byte fallback.
func (t *sentencePiece) encodeChunk(s string, out []int, w *spWork) []int {
	if id, ok := t.pieces[s]; ok && t.whole[id] {
		return append(out, int(id))
	}
	if len(s) <= cacheMaxWord {
		out, ok := t.cache.get(s, out)
		if ok {
			return out
		}
		n := len(out)
		out = t.encodeChunkUncached(s, out, w)
		t.cache.put(s, out[n:])
		return out
	}
	return t.encodeChunkUncached(s, out, w)
}

func (t *sentencePiece) encodeChunkUncached(s string, out []int, w *spWork) []int {
	starts := w.starts[:0]
	for i := 0; i < len(s); {
		starts = append(starts, int32(i))
		n := 0
		for _, u := range t.userDef {
			if strings.HasPrefix(s[i:], u) {
				n = len(u)
				break
			}
		}
		if n == 0 {
			_, n = utf8.DecodeRuneInString(s[i:])
		}
		i += n
	}
	starts = append(starts, int32(len(s)))
	if len(starts) > 96 {
		w.starts = starts
		return t.encodeChunkLong(s, out, w)
	}
	// Short chunk: scan for the best pair each round.
	scores := w.scores[:0]
	oks := w.ok[:0]
	for k := 0; k+2 < len(starts); k++ {
		sc, ok := t.pairScore(s, starts[k], starts[k+2])
		scores = append(scores, sc)
		oks = append(oks, ok)
	}
	for len(starts) > 2 {
		bi := -1
		var best float32
		for k, ok := range oks {
			if ok && (bi < 0 || scores[k] > best) {
				bi, best = k, scores[k]
			}
		}
		if bi < 0 {
			break
		}
		// merge symbols bi and bi+1: drop boundary bi+1
		starts = append(starts[:bi+1], starts[bi+2:]...)
		scores = append(scores[:bi], scores[bi+1:]...)
		oks = append(oks[:bi], oks[bi+1:]...)
		if bi > 0 {
			scores[bi-1], oks[bi-1] = t.pairScore(s, starts[bi-1], starts[bi+1])
		}
		if bi+2 < len(starts) {
			scores[bi], oks[bi] = t.pairScore(s, starts[bi], starts[bi+2])
		}
	}
	for k := 0; k+1 < len(starts); k++ {
		out = t.emit(s[starts[k]:starts[k+1]], out)
	}
	w.starts, w.scores, w.ok = starts, scores, oks
	return out
}

func (t *sentencePiece) pairScore(s string, a, b int32) (float32, bool) {
	id, ok := t.pieces[s[a:b]]
	if !ok {
		return 0, false
	}
	return t.m.Pieces[id].Score, true
}

// emit appends the id of a final symbol, falling back to bytes (or unk).
func (t *sentencePiece) emit(sym string, out []int) []int {
	if id, ok := t.pieces[sym]; ok {
		return append(out, int(id))
	}
	if id, ok := t.reserved[sym]; ok && t.m.Pieces[id].Type != spByte {
		return append(out, int(id))
	}
	if t.m.ByteFallback {
		for i := 0; i < len(sym); i++ {
			out = append(out, int(t.byteID[sym[i]]))
		}
		return out
	}
	// SentencePiece merges consecutive unknown symbols into one <unk>.
	if n := len(out); n > 0 && out[n-1] == int(t.m.UnkID) {
		return out
	}
	return append(out, int(t.m.UnkID))
}

type spNode struct {
	start, end int32
	prev, next int32
}

type spItem struct {
	score       float32
	left, right int32
	size        int32 // len of the merged piece when pushed (stale check)
}

func spLess(a, b spItem) bool { // max score first, then leftmost
	if a.score != b.score {
		return a.score > b.score
	}
	return a.left < b.left
}

func (t *sentencePiece) encodeChunkLong(s string, out []int, w *spWork) []int {
	starts := w.starts
	n := len(starts) - 1
	nodes := w.nodes[:0]
	for k := 0; k < n; k++ {
		nodes = append(nodes, spNode{starts[k], starts[k+1], int32(k - 1), int32(k + 1)})
	}
	nodes[n-1].next = -1
	h := w.heap[:0]
	push := func(l, r int32) {
		if l < 0 || r < 0 {
			return
		}
		sc, ok := t.pairScore(s, nodes[l].start, nodes[r].end)
		if !ok {
			return
		}
		it := spItem{sc, l, r, nodes[r].end - nodes[l].start}
		h = append(h, it)
		for i := len(h) - 1; i > 0; {
			p := (i - 1) / 2
			if !spLess(h[i], h[p]) {
				break
			}
			h[i], h[p] = h[p], h[i]
			i = p
		}
	}
	pop := func() spItem {
		top := h[0]
		m := len(h) - 1
		h[0] = h[m]
		h = h[:m]
		for i := 0; ; {
			l, r, b := 2*i+1, 2*i+2, i
			if l < m && spLess(h[l], h[b]) {
				b = l
			}
			if r < m && spLess(h[r], h[b]) {
				b = r
			}
			if b == i {
				break
			}
			h[i], h[b] = h[b], h[i]
			i = b
		}
		return top
	}
	for k := int32(0); k+1 < int32(n); k++ {
		push(k, k+1)
	}
	for len(h) > 0 {
		it := pop()
		l, r := it.left, it.right
		if nodes[l].start < 0 || nodes[r].start < 0 || nodes[l].next != r || nodes[r].end-nodes[l].start != it.size {
			continue
		}
		nodes[l].end = nodes[r].end
		nodes[l].next = nodes[r].next
		if nx := nodes[r].next; nx >= 0 {
			nodes[nx].prev = l
		}
		nodes[r].start = -1
		push(nodes[l].prev, l)
		push(l, nodes[l].next)
	}
	for k := int32(0); k >= 0; k = nodes[k].next {
		out = t.emit(s[nodes[k].start:nodes[k].end], out)
	}
	w.nodes, w.heap = nodes, h
	return out
}

// Decode joins pieces, turns "▁" into spaces and <0xNN> pieces into bytes. The space of the
// dummy prefix is dropped at the start and right after a special token.
func (t *sentencePiece) Decode(ids []int) string {
	var b strings.Builder
	atStart := true
	for _, id := range ids {
		if s, ok := t.sp.byID[id]; ok {
			b.WriteString(s)
			atStart = true
			continue
		}
		if id < 0 || id >= len(t.m.Pieces) {
			continue
		}
		p := t.m.Pieces[id]
		switch p.Type {
		case spByte:
			b.WriteByte(byte(t.byteValue(p.Piece)))
			atStart = false
			continue
		case spControl:
			continue
		case spUnknown:
			b.WriteString(" \u2047 ")
			atStart = false
			continue
		}
		piece := p.Piece
		if atStart && t.m.AddDummyPrefix && strings.HasPrefix(piece, "▁") {
			piece = piece[len("▁"):]
		}
		atStart = false
		b.WriteString(strings.ReplaceAll(piece, "▁", " "))
	}
	return b.String()
}

func (t *sentencePiece) byteValue(piece string) int {
	var v int
	fmt.Sscanf(piece, "<0x%02X>", &v)
	return v
}
