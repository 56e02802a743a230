package chat

import (
	"strings"

	"github.com/llamatune/llamatune/data/tokenizer"
)

// Tokenize encodes the rendered conversation in one piece (special-token text is parsed, no
// BOS is added: templates write their own) and returns the ids with a per-token train flag.
// A token is trained when its first byte lies in a trained segment, so the whole text is
// tokenized exactly as the model sees it at inference, with no BPE seams at segment edges.
// Labels for the loss are ids shifted by one where train is true, and -100 elsewhere.
//
// Special-token text inside the plain byte ranges (the message contents; see
// ContentRanges) is encoded as ordinary text: only the template makes specials.
func Tokenize(tok tokenizer.Tokenizer, segs []Segment, plain [][2]int) (ids []int, train []bool) {
	text := Join(segs)
	ids = tokenizer.EncodeWithSpecialExcept(tok, text, plain)
	ends := tokenizer.TokenEnds(tok, ids)
	spans := Spans(segs)
	train = make([]bool, len(ids))
	start, k := 0, 0
	for i, end := range ends {
		if end > start { // tokens that cover no text (a lone dummy-prefix "▁") keep false
			for k < len(spans) && spans[k][1] <= start {
				k++
			}
			train[i] = k < len(spans) && spans[k][0] <= start
		}
		start = end
	}
	return ids, train
}

// ContentRanges finds, in order, the byte ranges of the message contents that
// hold special-token text inside the rendered text (verbatim, or trimmed as
// templates often do). ok is false when such a content cannot be found, that is
// when the template changed it beyond trimming.
func ContentRanges(tok tokenizer.Tokenizer, text string, contents []string) (ranges [][2]int, ok bool) {
	pos := 0
	for _, c := range contents {
		if !tokenizer.HasSpecial(tok, c) {
			continue
		}
		i := strings.Index(text[pos:], c)
		if i < 0 {
			c = strings.TrimSpace(c)
			if i = strings.Index(text[pos:], c); i < 0 {
				return nil, false
			}
		}
		ranges = append(ranges, [2]int{pos + i, pos + i + len(c)})
		pos += i + len(c)
	}
	return ranges, true
}
