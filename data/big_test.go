package data

import (
	"bufio"
	"encoding/json"
	"fmt"
	"github.com/llamatune/llamatune/internal/switches"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// TestBigStream generates a >= 2 GB pre-tokenized HF save_to_disk dataset (once, in
// LLAMATUNE_BIG_DIR or /tmp/llamatune-big) and streams it through shuffle + packing in a child
// process, reporting peak RSS (VmHWM) and tokens/s. Run with:
//
//	LLAMATUNE_BIG=1 CGO_ENABLED=0 go test ./data/ -run TestBigStream -v -timeout 30m
func TestBigStream(t *testing.T) {
	if switches.On(switches.TestBigChild) {
		bigChild(t)
		return
	}
	if !switches.On(switches.TestBig) {
		t.Skip("set LLAMATUNE_BIG=1 to generate a 2 GB dataset and measure streaming memory and speed")
	}
	dir := switches.Value(switches.TestBigDir)
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "llamatune-big")
	}
	size := int64(2200) << 20
	if _, err := os.Stat(filepath.Join(dir, "state.json")); err != nil {
		start := time.Now()
		if err := genBig(dir, size); err != nil {
			t.Fatal(err)
		}
		t.Logf("generated %s in %v", dir, time.Since(start).Round(time.Second))
	}
	var total int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			total += fi.Size()
		}
	}
	t.Logf("dataset %s: %.2f GB", dir, float64(total)/1e9)
	cmd := exec.Command(os.Args[0], "-test.run=^TestBigStream$", "-test.v")
	cmd.Env = append(os.Environ(), "LLAMATUNE_BIG_CHILD=1", "LLAMATUNE_BIG_DIR="+dir, "GOMAXPROCS=2")
	out, err := cmd.CombinedOutput()
	t.Logf("child:\n%s", out)
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		RSSMB, TokensPerSec float64
	}
	for _, l := range strings.Split(string(out), "\n") {
		if i := strings.Index(l, "RESULT "); i >= 0 {
			json.Unmarshal([]byte(l[i+7:]), &res)
		}
	}
	if res.RSSMB == 0 || res.RSSMB > 300 {
		t.Errorf("peak RSS %.0f MB, want <= 300", res.RSSMB)
	}
	if res.TokensPerSec < 1e6 {
		t.Errorf("%.0f tokens/s, want >= 1M", res.TokensPerSec)
	}
}

func bigChild(t *testing.T) {
	dir := switches.Value(switches.TestBigDir)
	o := Options{Datasets: []DatasetSpec{{Path: dir}}, VocabSize: 128256, SeqLen: 8192, BatchRows: 4, Packing: true,
		ShuffleBuffer: 10000, Seed: 1, Workers: 2}
	p, err := New(o, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	start := time.Now()
	var cur Cursor
	maxCursor := 0
	for n := 0; ; n++ {
		b, err := p.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		cur = b.Cursor
		if n%500 == 0 {
			cj, _ := json.Marshal(cur)
			maxCursor = max(maxCursor, len(cj))
		}
	}
	el := time.Since(start).Seconds()
	s := p.Stats()
	cj, _ := json.Marshal(cur)
	rss := vmHWM()
	t.Logf("examples %d, tokens %d, rows %d, efficiency %.4f, %.1f s, final cursor %d bytes, largest sampled %d bytes", s.Examples, s.Tokens, s.Rows, s.Efficiency(), el, len(cj), maxCursor)
	res, _ := json.Marshal(map[string]float64{"RSSMB": rss, "TokensPerSec": float64(s.Tokens) / el, "Seconds": el, "Tokens": float64(s.Tokens), "Efficiency": s.Efficiency(), "GOMAXPROCS": float64(runtime.GOMAXPROCS(0))})
	fmt.Printf("RESULT %s\n", res)
}

// vmHWM returns the peak resident set size in MB from /proc/self/status.
func vmHWM() float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "VmHWM:") {
			fs := strings.Fields(sc.Text())
			kb, _ := strconv.ParseFloat(fs[1], 64)
			return kb / 1024
		}
	}
	return -1
}

// genBig writes an HF save_to_disk directory of pre-tokenized documents (list<int32>
// input_ids, 20..2000 tokens each) in Arrow IPC stream shards of ~256 MB.
func genBig(dir string, size int64) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	schema := arrow.NewSchema([]arrow.Field{{Name: "input_ids", Type: arrow.ListOf(arrow.PrimitiveTypes.Int32)}}, nil)
	shardBytes := min(int64(256<<20), size)
	nShards := int((size + shardBytes - 1) / shardBytes)
	r := rng{s: 12345}
	var files []map[string]string
	ids := make([]int32, 0, 4096)
	for s := 0; s < nShards; s++ {
		name := fmt.Sprintf("data-%05d-of-%05d.arrow", s, nShards)
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		bw := bufio.NewWriterSize(f, 4<<20)
		w := ipc.NewWriter(bw, ipc.WithSchema(schema), ipc.WithAllocator(memory.NewGoAllocator()))
		var written int64
		for written < shardBytes {
			b := array.NewRecordBuilder(memory.NewGoAllocator(), schema)
			lb := b.Field(0).(*array.ListBuilder)
			vb := lb.ValueBuilder().(*array.Int32Builder)
			for i := 0; i < 1000; i++ {
				n := 20 + r.intn(1981)
				ids = ids[:0]
				for k := 0; k < n; k++ {
					ids = append(ids, int32(r.next()%128000))
				}
				lb.Append(true)
				vb.AppendValues(ids, nil)
				written += int64(4*n + 4)
			}
			rec := b.NewRecordBatch()
			err := w.Write(rec)
			rec.Release()
			b.Release()
			if err != nil {
				return err
			}
		}
		if err := w.Close(); err != nil {
			return err
		}
		if err := bw.Flush(); err != nil {
			return err
		}
		f.Close()
		files = append(files, map[string]string{"filename": name})
	}
	st, _ := json.Marshal(map[string]any{"_data_files": files, "_split": "train"})
	if err := os.WriteFile(filepath.Join(dir, "dataset_info.json"), []byte(`{"features":{"input_ids":{"feature":{"dtype":"int32","_type":"Value"},"_type":"Sequence"}}}`), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "state.json"), st, 0o644)
}
