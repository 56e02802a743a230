package tokenizer

import (
	"hash/maphash"
	"sync/atomic"
)

// wordCache remembers the ids of recently seen words (pre-tokens / SentencePiece chunks).
// It is a fixed-size, lock-free, direct-mapped table: a slot holds one word and a newer word
// with the same slot replaces it. Safe for concurrent use.
type wordCache struct {
	seed  maphash.Seed
	slots []atomic.Pointer[cacheEntry]
}

type cacheEntry struct {
	klen, n uint8
	key     [cacheMaxWord]byte
	ids     [cacheMaxIDs]int32
}

const (
	cacheSlots   = 1 << 16
	cacheMaxWord = 48 // longer words are not cached
	cacheMaxIDs  = 16 // nor words with more ids
)

func newWordCache() *wordCache {
	return &wordCache{seed: maphash.MakeSeed(), slots: make([]atomic.Pointer[cacheEntry], cacheSlots)}
}

func (c *wordCache) slot(w string) *atomic.Pointer[cacheEntry] {
	return &c.slots[maphash.String(c.seed, w)&(cacheSlots-1)]
}

// get appends the cached ids of w to out; ok is false on a miss.
func (c *wordCache) get(w string, out []int) ([]int, bool) {
	e := c.slot(w).Load()
	if e == nil || int(e.klen) != len(w) || string(e.key[:len(w)]) != w {
		return out, false
	}
	for _, id := range e.ids[:e.n] {
		out = append(out, int(id))
	}
	return out, true
}

func (c *wordCache) put(w string, ids []int) {
	if len(w) > cacheMaxWord || len(ids) > cacheMaxIDs {
		return
	}
	e := &cacheEntry{klen: uint8(len(w)), n: uint8(len(ids))}
	copy(e.key[:], w)
	for i, id := range ids {
		e.ids[i] = int32(id)
	}
	c.slot(w).Store(e)
}
