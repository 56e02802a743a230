package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// The Llama 3 pre-tokenizer splits text with this regex (tokenizer.json, Split, Isolated):
//
//	(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//
// llama3Next is a hand-written matcher equal to it: it returns the end of the piece that
// starts at i. Alternatives are tried in the regex's order with its greedy/backtracking
// outcome worked out per alternative:
//   - \s*[\r\n]+ over a whitespace run ends right after the last \r or \n in the run;
//   - \s+(?!\S) takes the whole run at the end of text, otherwise the run minus its last
//     character (when that leaves at least one); else \s+ takes the whole run.
//
// Classes: \p{L} = unicode.IsLetter, \p{N} = unicode.IsNumber, \s = Unicode White_Space
// (unicode.IsSpace). Invalid UTF-8 bytes count as "other" (neither letter, number nor space).

const (
	clsOther = iota
	clsLetter
	clsNumber
	clsSpace   // whitespace other than \r and \n
	clsNewline // \r or \n
)

var asciiClass [128]uint8

func init() {
	for c := 0; c < 128; c++ {
		r := rune(c)
		switch {
		case r == '\r' || r == '\n':
			asciiClass[c] = clsNewline
		case unicode.IsSpace(r):
			asciiClass[c] = clsSpace
		case unicode.IsLetter(r):
			asciiClass[c] = clsLetter
		case unicode.IsNumber(r):
			asciiClass[c] = clsNumber
		default:
			asciiClass[c] = clsOther
		}
	}
}

// classAt returns the class of the rune at s[i] and its width in bytes.
func classAt(s string, i int) (uint8, int) {
	c := s[i]
	if c < utf8.RuneSelf {
		return asciiClass[c], 1
	}
	r, w := utf8.DecodeRuneInString(s[i:])
	if r == utf8.RuneError && w <= 1 {
		return clsOther, 1
	}
	switch {
	case unicode.IsLetter(r):
		return clsLetter, w
	case unicode.IsNumber(r):
		return clsNumber, w
	case unicode.IsSpace(r):
		return clsSpace, w
	}
	return clsOther, w
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 32
	}
	return c
}

// scanClass returns the end of the run of runes of class cls starting at i.
func scanClass(s string, i int, cls uint8) int {
	for i < len(s) {
		c, w := classAt(s, i)
		if c != cls {
			break
		}
		i += w
	}
	return i
}

// llama3Next returns the end of the pre-token starting at i (i < len(s)).
func llama3Next(s string, i int) int {
	n := len(s)
	// (?i:'s|'t|'re|'ve|'m|'ll|'d)
	if s[i] == '\'' && i+1 < n {
		switch lowerASCII(s[i+1]) {
		case 's', 't', 'm', 'd':
			return i + 2
		case 'r', 'v':
			if i+2 < n && lowerASCII(s[i+2]) == 'e' {
				return i + 3
			}
		case 'l':
			if i+2 < n && lowerASCII(s[i+2]) == 'l' {
				return i + 3
			}
		}
	}
	cls, w := classAt(s, i)
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if cls == clsLetter {
		return scanClass(s, i+w, clsLetter)
	}
	if (cls == clsOther || cls == clsSpace) && i+w < n {
		if c2, w2 := classAt(s, i+w); c2 == clsLetter {
			return scanClass(s, i+w+w2, clsLetter)
		}
	}
	// \p{N}{1,3}
	if cls == clsNumber {
		j := i + w
		for k := 0; k < 2 && j < n; k++ {
			c2, w2 := classAt(s, j)
			if c2 != clsNumber {
				break
			}
			j += w2
		}
		return j
	}
	// ' ?[^\s\p{L}\p{N}]+[\r\n]*'
	start := -1
	if cls == clsOther {
		start = i
	} else if s[i] == ' ' && i+1 < n {
		if c2, _ := classAt(s, i+1); c2 == clsOther {
			start = i + 1
		}
	}
	if start >= 0 {
		j := scanClass(s, start, clsOther)
		for j < n && (s[j] == '\r' || s[j] == '\n') {
			j++
		}
		return j
	}
	// Whitespace: \s*[\r\n]+ | \s+(?!\S) | \s+
	j, lastNL, lastStart := i, -1, i
	for j < n {
		c2, w2 := classAt(s, j)
		if c2 == clsNewline {
			lastNL = j + 1
		} else if c2 != clsSpace {
			break
		}
		lastStart = j
		j += w2
	}
	if lastNL > 0 {
		return lastNL
	}
	if j == n {
		return j
	}
	if lastStart > i {
		return lastStart
	}
	return j
}
