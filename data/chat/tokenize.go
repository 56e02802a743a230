package chat

import "github.com/llamatune/llamatune/data/tokenizer"

// Tokenize encodes the rendered conversation in one piece (special-token text is parsed, no
// BOS is added: templates write their own) and returns the ids with a per-token train flag.
// A token is trained when its first byte lies in a trained segment, so the whole text is
// tokenized exactly as the model sees it at inference, with no BPE seams at segment edges.
// Labels for the loss are ids shifted by one where train is true, and -100 elsewhere.
func Tokenize(tok tokenizer.Tokenizer, segs []Segment) (ids []int, train []bool) {
	text := Join(segs)
	ids = tok.EncodeWithSpecial(text)
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
