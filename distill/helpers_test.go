package distill_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/internal/randmodel"
)

var (
	tinyMu   sync.Mutex
	tinyDirs = map[string]string{}
	tinyRoot string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if tinyRoot != "" {
		os.RemoveAll(tinyRoot)
	}
	os.Exit(code)
}

// tinyModel writes (once per key) a tiny model directory and returns it.
func tinyModel(t testing.TB, tok string, seed uint64) string {
	t.Helper()
	tinyMu.Lock()
	defer tinyMu.Unlock()
	key := tok + "/" + string(rune('a'+seed))
	if d, ok := tinyDirs[key]; ok {
		return d
	}
	if tinyRoot == "" {
		r, err := os.MkdirTemp("", "distill-test-")
		if err != nil {
			t.Fatal(err)
		}
		tinyRoot = r
	}
	dir := filepath.Join(tinyRoot, tok+"-"+string(rune('a'+seed)))
	if _, err := randmodel.WriteTinyModel(dir, randmodel.TinyOptions{Tokenizer: tok, Seed: seed, Layers: 2, Hidden: 32}); err != nil {
		t.Fatal(err)
	}
	tinyDirs[key] = dir
	return dir
}

// packBatch packs documents (given by length) into rows of seqLen, padding
// each row's tail with pad, as the data packer does.
func packBatch(rows [][]int, seqLen int, pad int32, vocab int, seed uint64) *data.Batch {
	r := rand.New(rand.NewPCG(seed, 1))
	b := &data.Batch{Rows: len(rows), SeqLen: seqLen}
	n := len(rows) * seqLen
	b.InputIDs = make([]int32, n)
	b.Labels = make([]int32, n)
	b.PositionIDs = make([]int32, n)
	b.DocStart = make([]int32, n)
	for ri, docs := range rows {
		o, pos := ri*seqLen, 0
		for _, l := range docs {
			for k := 0; k < l; k++ {
				id := int32(3 + r.IntN(vocab-3))
				b.InputIDs[o+pos+k] = id
				b.Labels[o+pos+k] = id
				b.PositionIDs[o+pos+k] = int32(k)
				b.DocStart[o+pos+k] = int32(pos)
			}
			b.Labels[o+pos] = data.IgnoreIndex
			pos += l
		}
		for k := pos; k < seqLen; k++ {
			b.InputIDs[o+k] = pad
			b.Labels[o+k] = data.IgnoreIndex
			b.DocStart[o+k] = int32(k)
		}
	}
	return b
}

// hasTarget reports whether position i of b predicts a next token (it is
// not the last of its document nor padding).
func hasTarget(b *data.Batch, i int) bool {
	t := i % b.SeqLen
	return t+1 < b.SeqLen && b.DocStart[i+1] == b.DocStart[i] && b.Labels[i+1] != data.IgnoreIndex
}
