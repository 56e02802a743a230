package llama

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/llamatune/llamatune/checkpoint"
)

// A corrupt GGUF: llama.attention.key_length huge and blk.0.attn_q.weight
// missing, so the shape check is skipped and the row order is sized from the
// keys alone.
func TestGGUFHugeKeyLength(t *testing.T) {
	kvs := []checkpoint.GGUFKV{
		{Key: "general.architecture", Value: "llama"},
		{Key: "llama.block_count", Value: uint32(1)},
		{Key: "llama.embedding_length", Value: uint32(8)},
		{Key: "llama.feed_forward_length", Value: uint32(16)},
		{Key: "llama.attention.head_count", Value: uint32(1 << 20)},
		{Key: "llama.attention.key_length", Value: uint32(1 << 30)},
	}
	ts := []checkpoint.GGUFTensor{{Name: "token_embd.weight", Shape: []int{4, 8}, Type: checkpoint.GGMLTypeF32, Data: make([]byte, 4*8*4)}}
	for i := range 9 {
		ts = append(ts, checkpoint.GGUFTensor{Name: fmt.Sprintf("junk%d", i), Shape: []int{2}, Type: checkpoint.GGMLTypeF32, Data: make([]byte, 8)})
	}
	path := filepath.Join(t.TempDir(), "bad.gguf")
	if err := checkpoint.WriteGGUF(path, kvs, ts); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if p := recover(); p != nil {
			t.Fatalf("OpenChecked panicked on a corrupt file: %v", p)
		}
	}()
	_, r, _, _, err := OpenChecked(path)
	t.Logf("err=%v", err)
	if r != nil {
		r.Close()
	}
}
