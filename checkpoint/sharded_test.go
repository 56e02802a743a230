package checkpoint

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func tinyModel() []WriteTensor {
	var ts []WriteTensor
	add := func(name string, shape []int) {
		n := 1
		for _, d := range shape {
			n *= d
		}
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(len(ts)) + float32(i)/64
		}
		ts = append(ts, WriteTensor{Name: name, DType: BF16, Shape: shape, Data: EncodeF32AsBF16(v)})
	}
	add("model.embed_tokens.weight", []int{32, 16}) // 1024 bytes
	for l := range 2 {
		p := "model.layers." + string(rune('0'+l)) + "."
		add(p+"input_layernorm.weight", []int{16})      // 32
		add(p+"self_attn.q_proj.weight", []int{16, 16}) // 512
		add(p+"self_attn.k_proj.weight", []int{8, 16})  // 256
		add(p+"mlp.up_proj.weight", []int{24, 16})      // 768
	}
	add("model.norm.weight", []int{16}) // 32
	add("lm_head.weight", []int{32, 16})
	return ts
}

func readIndex(t *testing.T, dir string) IndexJSON {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, IndexFileName))
	if err != nil {
		t.Fatal(err)
	}
	var ix IndexJSON
	if err := json.Unmarshal(b, &ix); err != nil {
		t.Fatal(err)
	}
	return ix
}

func TestWriteShardedSeveralShards(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out") // created by WriteSharded
	ts := tinyModel()
	var total int64
	for _, w := range ts {
		total += int64(len(w.Data))
	}
	const limit = 1100
	if err := WriteSharded(dir, ts, limit, map[string]string{"producer": "llamatune"}); err != nil {
		t.Fatal(err)
	}
	ix := readIndex(t, dir)
	if ix.Metadata.TotalSize != total {
		t.Errorf("total_size = %d, want %d", ix.Metadata.TotalSize, total)
	}
	if len(ix.WeightMap) != len(ts) {
		t.Errorf("weight_map has %d entries, want %d", len(ix.WeightMap), len(ts))
	}
	// Greedy in given order: embed(1024) | ln32+q512+k256 (800) | up768+ln32 (800) ...
	var files []string
	for _, w := range ts {
		f := ix.WeightMap[w.Name]
		if len(files) == 0 || files[len(files)-1] != f {
			if slices.Contains(files, f) {
				t.Errorf("shard %s is not contiguous in tensor order", f)
			}
			files = append(files, f)
		}
	}
	n := len(files)
	if n < 3 {
		t.Fatalf("only %d shards", n)
	}
	for i, f := range files {
		if f != ShardFileName(i+1, n) {
			t.Errorf("shard %d is %s, want %s", i+1, f, ShardFileName(i+1, n))
		}
	}
	if ShardFileName(1, 4) != "model-00001-of-00004.safetensors" {
		t.Errorf("ShardFileName = %s", ShardFileName(1, 4))
	}
	// Each shard within the limit (a single oversize tensor aside), exact tiling.
	for _, f := range files {
		p := filepath.Join(dir, f)
		r := mustOpen(t, p)
		var sum int64
		for _, k := range r.Keys() {
			info, _ := r.Info(k)
			sum += info.NumBytes()
			if ix.WeightMap[k] != f {
				t.Errorf("%s in %s but index says %s", k, f, ix.WeightMap[k])
			}
		}
		if sum > limit && len(r.Keys()) > 1 {
			t.Errorf("%s holds %d bytes > %d", f, sum, limit)
		}
		if r.Metadata()["producer"] != "llamatune" || r.Metadata()["format"] != "pt" {
			t.Errorf("%s metadata = %v", f, r.Metadata())
		}
		b, _ := os.ReadFile(p)
		pf, _ := parseHeader(p, b, int64(len(b)))
		if !fullyCovered(pf.tensors, int64(len(b))-pf.dataStart) {
			t.Errorf("%s is not fully covered", f)
		}
	}
	// The index is HF-shaped: two top-level keys, 2-space indent, newline.
	raw, _ := os.ReadFile(filepath.Join(dir, IndexFileName))
	var generic map[string]json.RawMessage
	json.Unmarshal(raw, &generic)
	if len(generic) != 2 || raw[len(raw)-1] != '\n' || string(raw[:15]) != "{\n  \"metadata\":" {
		t.Errorf("index layout:\n%s", raw)
	}
	if _, err := os.Stat(filepath.Join(dir, SingleFileName)); !os.IsNotExist(err) {
		t.Error("model.safetensors written alongside shards")
	}
	// Read everything back through the directory.
	r := mustOpen(t, dir)
	if len(r.Keys()) != len(ts) || len(r.Files()) != n {
		t.Fatalf("keys %d files %d", len(r.Keys()), len(r.Files()))
	}
	for _, w := range ts {
		raw, err := r.Raw(w.Name)
		if err != nil || string(raw) != string(w.Data) {
			t.Errorf("%s differs after sharded round trip: %v", w.Name, err)
		}
		if err := r.Expect(w.Name, w.Shape); err != nil {
			t.Error(err)
		}
	}
	if r.Metadata()["producer"] != "llamatune" {
		t.Errorf("merged metadata = %v", r.Metadata())
	}
	// Opening the index file itself is the same as opening the directory.
	ri := mustOpen(t, filepath.Join(dir, IndexFileName))
	if !slices.Equal(ri.Keys(), r.Keys()) {
		t.Errorf("index path keys = %v", ri.Keys())
	}
}

func TestWriteShardedOversizeTensorAlone(t *testing.T) {
	dir := t.TempDir()
	ts := []WriteTensor{
		{Name: "small1", DType: U8, Shape: []int{10}, Data: make([]byte, 10)},
		{Name: "big", DType: U8, Shape: []int{100}, Data: make([]byte, 100)},
		{Name: "small2", DType: U8, Shape: []int{10}, Data: make([]byte, 10)},
		{Name: "small3", DType: U8, Shape: []int{10}, Data: make([]byte, 10)},
	}
	if err := WriteSharded(dir, ts, 25, nil); err != nil {
		t.Fatal(err)
	}
	ix := readIndex(t, dir)
	want := map[string]string{
		"small1": ShardFileName(1, 3), "big": ShardFileName(2, 3),
		"small2": ShardFileName(3, 3), "small3": ShardFileName(3, 3),
	}
	for k, v := range want {
		if ix.WeightMap[k] != v {
			t.Errorf("%s -> %s, want %s", k, ix.WeightMap[k], v)
		}
	}
}

func TestWriteShardedSingleAndStaleCleanup(t *testing.T) {
	dir := t.TempDir()
	ts := tinyModel()
	// First a sharded save, plus an unrelated file that must survive.
	if err := WriteSharded(dir, ts, 1100, nil); err != nil {
		t.Fatal(err)
	}
	writeBytes(t, dir, "adapter_model.safetensors", encode(t, nil, nil))
	writeBytes(t, dir, "config.json", []byte("{}"))
	// Then a single-file save into the same directory: shards and index go.
	if err := WriteSharded(dir, ts, 0, nil); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"adapter_model.safetensors", "config.json", SingleFileName}) {
		t.Errorf("directory after single save: %v", names)
	}
	r := mustOpen(t, dir)
	if len(r.Keys()) != len(ts) || len(r.Files()) != 1 {
		t.Errorf("single: %d keys, files %v", len(r.Keys()), r.Files())
	}
	r.Close()
	// Everything fits in a generous limit too.
	if err := WriteSharded(dir, ts, 1<<30, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, IndexFileName)); !os.IsNotExist(err) {
		t.Error("index written for a single-file save")
	}
	// Back to sharded with fewer shards: model.safetensors and old shards go.
	if err := WriteSharded(dir, ts, 3000, nil); err != nil {
		t.Fatal(err)
	}
	ix := readIndex(t, dir)
	shards := map[string]bool{}
	for _, f := range ix.WeightMap {
		shards[f] = true
	}
	ents, _ = os.ReadDir(dir)
	count := 0
	for _, e := range ents {
		if shardNameRE.MatchString(e.Name()) {
			count++
			if !shards[e.Name()] {
				t.Errorf("stale shard %s left", e.Name())
			}
		}
		if e.Name() == SingleFileName {
			t.Error("stale model.safetensors left; it would shadow the index")
		}
	}
	if count != len(shards) {
		t.Errorf("%d shard files, index names %d", count, len(shards))
	}
	mustOpen(t, dir)
}

func TestWriteShardedEmptyAndInvalid(t *testing.T) {
	dir := t.TempDir()
	if err := WriteSharded(dir, nil, 10, nil); err != nil {
		t.Fatal(err)
	}
	r := mustOpen(t, dir)
	if len(r.Keys()) != 0 {
		t.Error("keys in empty model")
	}
	bad := filepath.Join(t.TempDir(), "bad")
	err := WriteSharded(bad, []WriteTensor{{Name: "w", DType: F32, Shape: []int{3}, Data: make([]byte, 4)}}, 0, nil)
	wantErr(t, err, bad, `"w"`)
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Error("invalid input created the output directory")
	}
}

func TestOpenDirectoryErrors(t *testing.T) {
	good := func(t *testing.T) string {
		dir := t.TempDir()
		if err := WriteSharded(dir, tinyModel(), 1100, nil); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	// shard returns the name of shard i of the good layout.
	shard := func(t *testing.T, dir string, i int) string {
		files := map[string]bool{}
		for _, f := range readIndex(t, dir).WeightMap {
			files[f] = true
		}
		return ShardFileName(i, len(files))
	}
	setIndex := func(t *testing.T, dir string, ix IndexJSON) {
		b, _ := json.Marshal(ix)
		writeBytes(t, dir, IndexFileName, b)
	}

	t.Run("missing shard", func(t *testing.T) {
		dir := good(t)
		os.Remove(filepath.Join(dir, shard(t, dir, 2)))
		_, err := Open(dir)
		wantErr(t, err, IndexFileName, shard(t, dir, 2), "missing")
	})
	t.Run("key absent from its shard", func(t *testing.T) {
		dir := good(t)
		ix := readIndex(t, dir)
		ix.WeightMap["model.ghost.weight"] = shard(t, dir, 1)
		setIndex(t, dir, ix)
		_, err := Open(dir)
		wantErr(t, err, IndexFileName, `"model.ghost.weight"`, shard(t, dir, 1))
	})
	t.Run("key in a different shard than mapped", func(t *testing.T) {
		dir := good(t)
		ix := readIndex(t, dir)
		first := shard(t, dir, 1)
		ix.WeightMap["lm_head.weight"] = first
		setIndex(t, dir, ix)
		_, err := Open(dir)
		wantErr(t, err, `"lm_head.weight"`, first)
	})
	t.Run("keys swapped between referenced shards", func(t *testing.T) {
		dir := good(t)
		ix := readIndex(t, dir)
		a, b := "model.embed_tokens.weight", "lm_head.weight"
		ix.WeightMap[a], ix.WeightMap[b] = ix.WeightMap[b], ix.WeightMap[a]
		setIndex(t, dir, ix)
		_, err := Open(dir)
		wantErr(t, err, IndexFileName, `"lm_head.weight"`, "but it is in", shard(t, dir, 1))
	})
	t.Run("duplicate key across shards", func(t *testing.T) {
		dir := t.TempDir()
		a := []WriteTensor{{Name: "w", DType: U8, Shape: []int{1}, Data: []byte{1}}}
		b := []WriteTensor{{Name: "w", DType: U8, Shape: []int{1}, Data: []byte{2}}, {Name: "v", DType: U8, Shape: []int{1}, Data: []byte{3}}}
		if err := WriteFile(filepath.Join(dir, "s1.safetensors"), a, nil); err != nil {
			t.Fatal(err)
		}
		if err := WriteFile(filepath.Join(dir, "s2.safetensors"), b, nil); err != nil {
			t.Fatal(err)
		}
		setIndex(t, dir, IndexJSON{WeightMap: map[string]string{"w": "s1.safetensors", "v": "s2.safetensors"}})
		_, err := Open(dir)
		wantErr(t, err, `"w"`, "s1.safetensors", "s2.safetensors")
	})
	t.Run("neither file", func(t *testing.T) {
		dir := t.TempDir()
		_, err := Open(dir)
		wantErr(t, err, dir, SingleFileName, IndexFileName)
		writeBytes(t, dir, "consolidated.safetensors", encode(t, nil, nil))
		_, err = Open(dir)
		wantErr(t, err, dir, "consolidated.safetensors")
	})
	t.Run("invalid index JSON", func(t *testing.T) {
		dir := good(t)
		writeBytes(t, dir, IndexFileName, []byte(`{"weight_map": {"a": 1}}`))
		_, err := Open(dir)
		wantErr(t, err, IndexFileName, "invalid JSON")
	})
	t.Run("empty weight_map", func(t *testing.T) {
		dir := good(t)
		writeBytes(t, dir, IndexFileName, []byte(`{"metadata": {}}`))
		_, err := Open(dir)
		wantErr(t, err, IndexFileName, "weight_map")
	})
	t.Run("shard path escapes directory", func(t *testing.T) {
		dir := good(t)
		setIndex(t, dir, IndexJSON{WeightMap: map[string]string{"w": "../x.safetensors"}})
		_, err := Open(dir)
		wantErr(t, err, IndexFileName, `"w"`, "../x.safetensors")
	})
	t.Run("corrupt shard names the shard and key", func(t *testing.T) {
		dir := good(t)
		p := filepath.Join(dir, shard(t, dir, 3))
		writeBytes(t, dir, shard(t, dir, 3), rawFile(`{"model.layers.0.mlp.up_proj.weight":{"dtype":"BF16","shape":[24,16],"data_offsets":[0,99]}}`, make([]byte, 99)))
		_, err := Open(dir)
		wantErr(t, err, p, `"model.layers.0.mlp.up_proj.weight"`)
	})
	t.Run("model.safetensors wins like transformers", func(t *testing.T) {
		dir := good(t)
		writeBytes(t, dir, SingleFileName, encode(t, []WriteTensor{{Name: "only", DType: U8, Shape: []int{1}, Data: []byte{9}}}, nil))
		r := mustOpen(t, dir)
		if !slices.Equal(r.Keys(), []string{"only"}) {
			t.Errorf("keys = %v", r.Keys())
		}
	})
}
