package tokenizer

// TokenEnds returns, for ids produced by Encode or EncodeWithSpecial on text, the byte offset
// in text where each token ends (so token i covers text[ends[i-1]:ends[i]]). It follows
// Decode: for Llama 3 every token is its exact bytes; for Llama 2 "▁" counts as one space
// and the dummy-prefix space at the start (or right after a special token) counts as
// nothing, so a token holding only that space is empty.
func TokenEnds(tok Tokenizer, ids []int) []int {
	ends := make([]int, len(ids))
	pos := 0
	switch t := tok.(type) {
	case *byteLevel:
		for i, id := range ids {
			pos += len(t.IDToken(id))
			ends[i] = pos
		}
	case *sentencePiece:
		atStart := true
		for i, id := range ids {
			n := 0
			if s, ok := t.sp.byID[id]; ok {
				n, atStart = len(s), true
			} else if id >= 0 && id < len(t.m.Pieces) {
				p := t.m.Pieces[id]
				switch p.Type {
				case spByte:
					n, atStart = 1, false
				case spControl:
				case spUnknown:
					n, atStart = len(" \u2047 "), false
				default:
					piece := p.Piece
					if atStart && t.m.AddDummyPrefix && len(piece) >= len("▁") && piece[:len("▁")] == "▁" {
						piece = piece[len("▁"):]
					}
					atStart = false
					for j := 0; j < len(piece); {
						if j+len("▁") <= len(piece) && piece[j:j+len("▁")] == "▁" {
							n++
							j += len("▁")
						} else {
							n++
							j++
						}
					}
				}
			}
			pos += n
			ends[i] = pos
		}
	default:
		for i, id := range ids {
			pos += len(tok.IDToken(id))
			ends[i] = pos
		}
	}
	return ends
}
