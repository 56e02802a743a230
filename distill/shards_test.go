package distill_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/float16"

	"github.com/llamatune/llamatune/data"
	"github.com/llamatune/llamatune/data/tokenizer"
	"github.com/llamatune/llamatune/distill"
	"github.com/llamatune/llamatune/distill/fakeserver"
)

var words = strings.Fields("the quick brown fox jumps over a lazy dog while seven wise owls watch from an old oak tree near the river bank at dusk and dawn")

// shardData writes a JSONL text dataset and returns pipeline options over it.
func shardData(t *testing.T, modelDir string, docs, seqLen, rows int) data.Options {
	t.Helper()
	r := rand.New(rand.NewPCG(9, 9))
	var sb strings.Builder
	for i := 0; i < docs; i++ {
		n := 3 + r.IntN(30)
		var ws []string
		for j := 0; j < n; j++ {
			ws = append(ws, words[r.IntN(len(words))])
		}
		fmt.Fprintf(&sb, "{\"text\": %q}\n", strings.Join(ws, " "))
	}
	path := filepath.Join(t.TempDir(), "train.jsonl")
	if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(modelDir)
	if err != nil {
		t.Fatal(err)
	}
	return data.Options{Datasets: []data.DatasetSpec{{Path: path}}, Tokenizer: tok, SeqLen: seqLen, BatchRows: rows,
		Packing: true, PadID: -1, ShuffleBuffer: 16, Seed: 3}
}

func opener(o data.Options) func(*data.Cursor) (distill.BatchSource, error) {
	return func(c *data.Cursor) (distill.BatchSource, error) { return data.New(o, c) }
}

// readAll reads every batch of a shard directory with its top-k.
func readAll(t *testing.T, dir string, rows int, from *data.Cursor) ([]*data.Batch, []*distill.TopK) {
	t.Helper()
	sr, err := distill.OpenShards(dir, distill.ShardReaderOptions{BatchRows: rows, From: from})
	if err != nil {
		t.Fatal(err)
	}
	defer sr.Close()
	var bs []*data.Batch
	var tks []*distill.TopK
	for {
		b, err := sr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		tk, err := sr.TopK(context.Background(), b, sr.Manifest().K)
		if err != nil {
			t.Fatal(err)
		}
		bs, tks = append(bs, b), append(tks, tk)
	}
	return bs, tks
}

func flatten(bs []*data.Batch, tks []*distill.TopK) (ids, lab, pos, ds, tid []int32, tlp []float32) {
	for i, b := range bs {
		ids = append(ids, b.InputIDs...)
		lab = append(lab, b.Labels...)
		pos = append(pos, b.PositionIDs...)
		ds = append(ds, b.DocStart...)
		tid = append(tid, tks[i].IDs...)
		tlp = append(tlp, tks[i].LogProbs...)
	}
	return
}

func TestShardsWriteResumeRead(t *testing.T) {
	te := inProcessTeacher(t)
	const k, seqLen, rows = 8, 64, 2
	o := shardData(t, tinyModel(t, "llama2", 0), 70, seqLen, rows)
	ctx := context.Background()

	// Uninterrupted run; shards of 3 batches.
	full := t.TempDir()
	man, err := distill.WriteShards(ctx, distill.WriteShardsOptions{Dir: full, Teacher: te, K: k, Open: opener(o), ShardTokens: 3 * rows * seqLen})
	if err != nil {
		t.Fatal(err)
	}
	if !man.Complete || len(man.Shards) < 3 || man.K != k || man.SeqLen != seqLen || man.VocabHash != te.Info().VocabHash || man.DataHash == "" {
		t.Fatalf("manifest %+v", man)
	}
	t.Logf("%d rows, %d tokens, %d shards, %d bytes: %.1f B/token at k=%d", man.Rows, man.Tokens, len(man.Shards), man.Bytes, man.BytesPerToken(), k)

	// Killed after shard 1, with a half-written shard left behind, then resumed.
	part := t.TempDir()
	kill := errors.New("killed")
	_, err = distill.WriteShards(ctx, distill.WriteShardsOptions{Dir: part, Teacher: te, K: k, Open: opener(o), ShardTokens: 3 * rows * seqLen,
		AfterShard: func(i int) error {
			if i == 1 {
				return kill
			}
			return nil
		}})
	if !errors.Is(err, kill) {
		t.Fatalf("err %v", err)
	}
	os.WriteFile(filepath.Join(part, "part-00002.arrow.tmp"), []byte("partial"), 0o644)
	os.WriteFile(filepath.Join(part, "part-00003.arrow"), []byte("unlisted"), 0o644)
	var resumed bool
	man2, err := distill.WriteShards(ctx, distill.WriteShardsOptions{Dir: part, Teacher: te, K: k, Open: opener(o), ShardTokens: 3 * rows * seqLen,
		Progress: func(p distill.ShardProgress) { resumed = p.Resumed }})
	if err != nil {
		t.Fatal(err)
	}
	if !resumed || man2.Rows != man.Rows || man2.Tokens != man.Tokens || len(man2.Shards) != len(man.Shards) {
		t.Fatalf("resumed: %v, rows %d/%d, tokens %d/%d, shards %d/%d", resumed, man2.Rows, man.Rows, man2.Tokens, man.Tokens, len(man2.Shards), len(man.Shards))
	}
	if _, err := os.Stat(filepath.Join(part, "part-00002.arrow.tmp")); err == nil {
		t.Fatal("partial shard left behind")
	}

	// Both read back identically, and equal the pipeline + teacher directly.
	b1, t1 := readAll(t, full, rows, nil)
	b2, t2 := readAll(t, part, rows, nil)
	a := fmt.Sprint(flatten(b1, t1))
	if a != fmt.Sprint(flatten(b2, t2)) {
		t.Fatal("resumed run differs from the uninterrupted one")
	}
	p, err := data.New(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var direct []*data.Batch
	var dtk []*distill.TopK
	for {
		b, err := p.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		tk, err := te.TopK(ctx, b, k)
		if err != nil {
			t.Fatal(err)
		}
		direct, dtk = append(direct, b), append(dtk, tk)
	}
	// Stored log-probs are f16: round the direct ones the same way, and
	// order equal ones by id as the reader does.
	for _, tk := range dtk {
		for p := 0; p < len(tk.IDs)/k; p++ {
			type e struct {
				id int32
				lp float32
			}
			es := make([]e, k)
			for j := range es {
				es[j] = e{tk.IDs[p*k+j], float16.New(tk.LogProbs[p*k+j]).Float32()}
			}
			sort.Slice(es, func(a, b int) bool { return es[a].lp > es[b].lp || (es[a].lp == es[b].lp && es[a].id < es[b].id) })
			for j := range es {
				tk.IDs[p*k+j], tk.LogProbs[p*k+j] = es[j].id, es[j].lp
			}
		}
	}
	if fmt.Sprint(flatten(direct, dtk)) != a {
		t.Fatal("shards differ from the pipeline and teacher")
	}

	// Resume the reader from a batch cursor; smaller k; k too large; unknown batch.
	from := b1[2].Cursor
	b3, t3 := readAll(t, full, rows, &from)
	if fmt.Sprint(flatten(b3, t3)) != fmt.Sprint(flatten(b1[3:], t1[3:])) {
		t.Fatal("reader resumed from a cursor differs")
	}
	sr, err := distill.OpenShards(full, distill.ShardReaderOptions{BatchRows: 3})
	if err != nil {
		t.Fatal(err)
	}
	b, err := sr.Next()
	if err != nil || b.Rows != 3 {
		t.Fatalf("batch %v err %v", b, err)
	}
	small, err := sr.TopK(ctx, b, 3)
	if err != nil || small.K != 3 || small.IDs[3] != t1[0].IDs[k] {
		t.Fatalf("k=3: %v", err)
	}
	if _, err := sr.TopK(ctx, b, k+1); err == nil || !strings.Contains(err.Error(), "top-8") {
		t.Fatalf("k too large: %v", err)
	}
	if _, err := sr.TopK(ctx, b1[0], k); err == nil {
		t.Fatal("foreign batch accepted")
	}
	sr.Close()

	// Finished directory: a rerun is a no-op; another teacher is refused on an unfinished one.
	if m3, err := distill.WriteShards(ctx, distill.WriteShardsOptions{Dir: full, Teacher: te, K: k, Open: opener(o)}); err != nil || m3.Rows != man.Rows {
		t.Fatalf("rerun: %v", err)
	}
}

func TestShardsDamaged(t *testing.T) {
	te := inProcessTeacher(t)
	o := shardData(t, tinyModel(t, "llama2", 0), 20, 32, 1)
	dir := t.TempDir()
	if _, err := distill.WriteShards(context.Background(), distill.WriteShardsOptions{Dir: dir, Teacher: te, K: 4, Open: opener(o)}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "part-00000.arrow")
	raw, _ := os.ReadFile(p)
	// Truncated: the size check names the file.
	os.WriteFile(p, raw[:len(raw)/2], 0o644)
	if _, err := distill.OpenShards(dir, distill.ShardReaderOptions{}); err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("truncated: %v", err)
	}
	// Same size, garbage inside: the Arrow reader fails naming the file.
	bad := append([]byte(nil), raw...)
	for i := len(bad) - 64; i < len(bad); i++ {
		bad[i] ^= 0x5a
	}
	os.WriteFile(p, bad, 0o644)
	sr, err := distill.OpenShards(dir, distill.ShardReaderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sr.Close()
	if _, err := sr.Next(); err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("damaged: %v", err)
	}
	if _, err := distill.OpenShards(t.TempDir(), distill.ShardReaderOptions{}); err == nil || !strings.Contains(err.Error(), "teacher-logits") {
		t.Fatalf("empty dir: %v", err)
	}
}

// TestShardsFromServerTeacher writes shards through the server teacher while
// the fake server fails at random: the result equals a run without faults,
// and every position with a target has the teacher's answer.
func TestShardsFromServerTeacher(t *testing.T) {
	te := inProcessTeacher(t)
	o := shardData(t, tinyModel(t, "llama2", 0), 24, 48, 2)
	write := func(faults []fakeserver.Fault) ([]*data.Batch, []*distill.TopK) {
		fs := fakeserver.New(fakeserver.Options{Model: te.Model(), Faults: faults, Seed: 2})
		defer fs.Close()
		cl := newClient(t, fs, te.Info(), func(o *distill.ServerOptions) { o.MaxRetries = 20 })
		dir := t.TempDir()
		if _, err := distill.WriteShards(context.Background(), distill.WriteShardsOptions{Dir: dir, Teacher: cl, K: 5, Open: opener(o), ShardTokens: 200}); err != nil {
			t.Fatal(err)
		}
		return readAll(t, dir, 2, nil)
	}
	b1, t1 := write(nil)
	b2, t2 := write([]fakeserver.Fault{{Kind: fakeserver.Status5xx, Probability: 0.2}, {Kind: fakeserver.Malformed, Probability: 0.1}, {Kind: fakeserver.Status429, Probability: 0.1}})
	if fmt.Sprint(flatten(b1, t1)) != fmt.Sprint(flatten(b2, t2)) {
		t.Fatal("shards written under faults differ")
	}
	for bi, b := range b2 {
		for i := 0; i < b.Rows*b.SeqLen; i++ {
			if hasTarget(b, i) && t2[bi].LogProbs[i*5] <= distill.MissingLogProb {
				t.Fatalf("batch %d position %d has no teacher answer", bi, i)
			}
		}
	}
}
