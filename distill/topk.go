package distill

import (
	"math"
	"runtime"
	"sync"
)

// MissingLogProb fills the top-k slots of positions a teacher gives nothing
// for (the last token of a document, padding): finite, so that masked
// arithmetic never meets an infinity, and far below any real log-probability.
const MissingLogProb = -1e4

// topKLogSoftmax writes, for each of the rows of logits [rows, vocab], the k
// largest log-softmax values (best first; equal values by smaller id) into
// ids[r*k:] and lps[r*k:]. Rows are spread over the cores.
func topKLogSoftmax(logits []float32, rows, vocab, k int, ids []int32, lps []float32) {
	parallelRows(rows, func(lo, hi int) {
		h := make([]topEntry, 0, k)
		for r := lo; r < hi; r++ {
			rowTopK(logits[r*vocab:(r+1)*vocab], k, ids[r*k:(r+1)*k], lps[r*k:(r+1)*k], &h)
		}
	})
}

// parallelRows runs fn over [0, rows) split into one range per core.
func parallelRows(rows int, fn func(lo, hi int)) {
	workers := max(1, min(runtime.GOMAXPROCS(0), rows))
	if workers == 1 {
		if rows > 0 {
			fn(0, rows)
		}
		return
	}
	per := (rows + workers - 1) / workers
	var wg sync.WaitGroup
	for lo := 0; lo < rows; lo += per {
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			fn(lo, hi)
		}(lo, min(lo+per, rows))
	}
	wg.Wait()
}

type topEntry struct {
	v  float32
	id int32
}

// worse orders entries: a is worse than b when smaller, or equal with a larger id.
func worse(a, b topEntry) bool { return a.v < b.v || (a.v == b.v && a.id > b.id) }

// rowTopK is top-k of one row of logits as log-softmax values.
func rowTopK(row []float32, k int, ids []int32, lps []float32, hp *[]topEntry) {
	mx := float32(math.Inf(-1))
	for _, v := range row {
		if v > mx {
			mx = v
		}
	}
	var sum float64
	for _, v := range row {
		sum += math.Exp(float64(v - mx))
	}
	lse := float64(mx) + math.Log(sum)
	selectTopK(row, k, ids, lps, hp)
	for i := range lps {
		lps[i] = float32(float64(lps[i]) - lse)
	}
}

// selectTopK writes the k largest values of row, best first (equal values
// by smaller index), and their indices into ids and vals; hp is a scratch
// heap kept between calls.
func selectTopK(row []float32, k int, ids []int32, vals []float32, hp *[]topEntry) {
	// Min-heap of the k best so far (root = worst kept).
	h := (*hp)[:0]
	for i, v := range row {
		e := topEntry{v, int32(i)}
		if len(h) < k {
			h = append(h, e)
			for c := len(h) - 1; c > 0; {
				p := (c - 1) / 2
				if !worse(h[c], h[p]) {
					break
				}
				h[c], h[p] = h[p], h[c]
				c = p
			}
			continue
		}
		if !worse(h[0], e) {
			continue
		}
		h[0] = e
		siftDown(h, 0)
	}
	// Pop worst first into the tail.
	for n := len(h); n > 0; n-- {
		ids[n-1] = h[0].id
		vals[n-1] = h[0].v
		h[0] = h[n-1]
		h = h[:n-1]
		siftDown(h, 0)
	}
	*hp = h
}

func siftDown(h []topEntry, i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		m := l
		if r := l + 1; r < len(h) && worse(h[r], h[l]) {
			m = r
		}
		if !worse(h[m], h[i]) {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}
