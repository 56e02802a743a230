package data

import (
	"errors"
	"fmt"
)

// Loc names where a row came from, for error messages.
type Loc struct {
	File string
	Row  int64 // 0-based row within the shard (Arrow/Parquet) or 1-based line (JSONL)
	Line bool  // Row is a line number
}

func (l Loc) String() string {
	if l.Line {
		return fmt.Sprintf("%s:%d", l.File, l.Row)
	}
	return fmt.Sprintf("%s (row %d)", l.File, l.Row)
}

// Example is one raw row after column mapping, before tokenization.
type Example struct {
	Type        Type
	Text        string
	Prompt      string
	Completion  string
	Messages    []Message
	InputIDs    []int32
	Labels      []int32 // nil: same as InputIDs
	PositionIDs []int32 // prepared (packed) rows: restart at 0 per document
	DocStart    []int32 // prepared rows
	NumTokens   int32   // prepared rows: non-pad tokens (-1 unknown)
	Dataset     int
	Loc         Loc
}

// RowError is a problem with one row of user data. With BadRows=skip it is counted and skipped.
type RowError struct {
	Loc Loc
	Msg string
}

func (e *RowError) Error() string {
	return fmt.Sprintf("%s: %s", e.Loc, e.Msg)
}

func rowErr(loc Loc, format string, args ...any) error {
	return &RowError{Loc: loc, Msg: fmt.Sprintf(format, args...)}
}

// failRow adds what to do to a row error that stops the pipeline.
func failRow(err error) error {
	return fmt.Errorf("%w (fix or remove the row, or set data.bad_rows: skip)", err)
}

// IsRowError reports whether err is about a single bad row (as opposed to a file or schema problem).
func IsRowError(err error) bool {
	var re *RowError
	return errors.As(err, &re)
}

// rng is splitmix64: tiny, fast, and its whole state is one uint64 that goes into the cursor.
type rng struct{ s uint64 }

func (r *rng) next() uint64 {
	r.s += 0x9e3779b97f4a7c15
	z := r.s
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// float returns a uniform number in [0, 1).
func (r *rng) float() float64 { return float64(r.next()>>11) / (1 << 53) }

// intn returns a uniform number in [0, n).
func (r *rng) intn(n int) int {
	if n <= 1 {
		return 0
	}
	// Lemire's multiply-shift with rejection for exact uniformity.
	un := uint64(n)
	for {
		x := r.next()
		hi, lo := mul64(x, un)
		if lo >= un || lo >= (-un)%un {
			return int(hi)
		}
	}
}

func mul64(a, b uint64) (hi, lo uint64) {
	const mask32 = 1<<32 - 1
	a0, a1 := a&mask32, a>>32
	b0, b1 := b&mask32, b>>32
	w0 := a0 * b0
	t := a1*b0 + w0>>32
	w1 := t&mask32 + a0*b1
	hi = a1*b1 + t>>32 + w1>>32
	lo = a * b
	return
}

// mix hashes several values into one seed.
func mix(vals ...uint64) uint64 {
	h := uint64(0x6a09e667f3bcc909)
	for _, v := range vals {
		r := rng{h ^ v}
		h = r.next()
	}
	return h
}

// permutation returns a seeded Fisher–Yates permutation of [0, n).
func permutation(n int, seed uint64) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = i
	}
	r := rng{seed}
	for i := n - 1; i > 0; i-- {
		j := r.intn(i + 1)
		p[i], p[j] = p[j], p[i]
	}
	return p
}

// strHash is FNV-1a.
func strHash(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}
