package hub

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llamatune/llamatune/hub/hubtest"
)

// weights is a pseudo-random LFS file body of n bytes.
func weights(n int) []byte {
	b := make([]byte, n)
	x := uint32(12345)
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}

// modelRepo adds a small model repository: two regular files, LFS weights, and files the
// defaults skip (original/, *.bin, README.md).
func modelRepo(f *hubtest.Server) *hubtest.Repo {
	return f.Add(&hubtest.Repo{ID: "meta-llama/Tiny-1B", Files: map[string][]byte{
		"config.json":                    []byte(`{"model_type":"llama"}`),
		"tokenizer.json":                 []byte(`{"model":{}}`),
		"model.safetensors":              weights(300_000),
		"original/consolidated.00.pth":   weights(1000),
		"pytorch_model.bin":              weights(500),
		"README.md":                      []byte("# tiny"),
		"original/params.json":           []byte("{}"),
		"model.safetensors.index.json.x": []byte("not matched"),
	}, LFS: map[string]bool{"model.safetensors": true, "original/consolidated.00.pth": true, "pytorch_model.bin": true}})
}

// client is a Client of the fake Hub with no wait between retries.
func client(f *hubtest.Server, cache string) *Client {
	return &Client{Endpoint: f.Hub.URL, Token: f.Token, CacheDir: cache, HTTP: f.Hub.Client(), Retries: 3}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

func readLink(t *testing.T, p string) string {
	t.Helper()
	l, err := os.Readlink(p)
	if err != nil {
		t.Fatalf("%s is not a symlink: %v", p, err)
	}
	return l
}

func TestSnapshotLayout(t *testing.T) {
	f := hubtest.New(t)
	repo := modelRepo(f)
	cache := t.TempDir()
	var log bytes.Buffer
	c := client(f, cache)
	c.Progress = &log
	dir, err := c.Snapshot(context.Background(), Model, repo.ID, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	storage := filepath.Join(cache, "models--meta-llama--Tiny-1B")
	if want := filepath.Join(storage, "snapshots", repo.Commit); dir != want {
		t.Fatalf("dir %s, want %s", dir, want)
	}
	if got := listDir(t, dir); strings.Join(got, " ") != "config.json model.safetensors tokenizer.json" {
		t.Fatalf("snapshot holds %v", got)
	}
	for name, etag := range map[string]string{
		"config.json":       hubtest.GitSHA1(repo.Files["config.json"]),
		"tokenizer.json":    hubtest.GitSHA1(repo.Files["tokenizer.json"]),
		"model.safetensors": hubtest.SHA256Hex(repo.Files["model.safetensors"]),
	} {
		if l := readLink(t, filepath.Join(dir, name)); l != "../../blobs/"+etag {
			t.Errorf("%s -> %s, want ../../blobs/%s", name, l, etag)
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(b, repo.Files[name]) {
			t.Errorf("%s: wrong content (%v)", name, err)
		}
	}
	if got := len(listDir(t, filepath.Join(storage, "blobs"))); got != 3 {
		t.Errorf("blobs/ holds %d files, want 3 (no .incomplete left)", got)
	}
	if b, err := os.ReadFile(filepath.Join(storage, "refs", "main")); err != nil || string(b) != repo.Commit {
		t.Errorf("refs/main = %q (%v), want %s", b, err, repo.Commit)
	}
	if !strings.Contains(log.String(), "model.safetensors") {
		t.Errorf("progress log: %q", log.String())
	}

	// Again: only the revision is asked for.
	n := f.Requests()
	if dir2, err := c.Snapshot(context.Background(), Model, repo.ID, "main", nil); err != nil || dir2 != dir {
		t.Fatalf("second Snapshot: %s, %v", dir2, err)
	}
	if got := f.Requests() - n; got != 1 {
		t.Errorf("second Snapshot sent %d requests, want 1 (the file list)", got)
	}
	// Offline: none.
	n = f.Requests()
	c.Offline = true
	if dir2, err := c.Snapshot(context.Background(), Model, repo.ID, "main", nil); err != nil || dir2 != dir {
		t.Fatalf("offline Snapshot: %s, %v", dir2, err)
	}
	if got := f.Requests() - n; got != 0 {
		t.Errorf("offline Snapshot sent %d requests", got)
	}
	// By commit, and with --include of a sub-folder.
	c.Offline = false
	dir3, err := c.Snapshot(context.Background(), Model, repo.ID, repo.Commit, []string{"original/"})
	if err != nil || dir3 != dir {
		t.Fatalf("Snapshot by commit: %s, %v", dir3, err)
	}
	if l := readLink(t, filepath.Join(dir, "original", "params.json")); l != "../../../blobs/"+hubtest.GitSHA1([]byte("{}")) {
		t.Errorf("original/params.json -> %s", l)
	}
}

// The token follows no redirect of a download to another host.
func TestNoTokenToCDN(t *testing.T) {
	f := hubtest.New(t)
	repo := modelRepo(f)
	f.Set(func(s *hubtest.Server) { s.RegularViaCDN = true }) // the CDN fails the test on a token
	dir, err := client(f, t.TempDir()).Snapshot(context.Background(), Model, repo.ID, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "config.json")); !bytes.Equal(b, repo.Files["config.json"]) {
		t.Errorf("config.json via the CDN: %q", b)
	}
}

// A revision with slashes (a pull request's ref) is escaped in URLs and nests under refs/.
func TestRevisionWithSlash(t *testing.T) {
	f := hubtest.New(t)
	repo := modelRepo(f)
	repo.Revisions = map[string]bool{"refs/pr/1": true}
	cache := t.TempDir()
	dir, err := client(f, cache).Snapshot(context.Background(), Model, repo.ID, "refs/pr/1", []string{"config.json"})
	if err != nil {
		t.Fatal(err)
	}
	storage := filepath.Join(cache, "models--meta-llama--Tiny-1B")
	if dir != filepath.Join(storage, "snapshots", repo.Commit) {
		t.Errorf("dir %s", dir)
	}
	if b, err := os.ReadFile(filepath.Join(storage, "refs", "refs", "pr", "1")); err != nil || string(b) != repo.Commit {
		t.Errorf("refs/refs/pr/1 = %q, %v", b, err)
	}
	c := client(f, cache)
	c.Offline = true
	if d, err := c.Snapshot(context.Background(), Model, repo.ID, "refs/pr/1", []string{"config.json"}); err != nil || d != dir {
		t.Errorf("offline refs/pr/1: %s, %v", d, err)
	}
}

func TestResumeAfterCut(t *testing.T) {
	f := hubtest.New(t)
	repo := modelRepo(f)
	f.Set(func(s *hubtest.Server) { s.CutAfter, s.Cuts = 100_000, 2 })
	cache := t.TempDir()
	dir, err := client(f, cache).Snapshot(context.Background(), Model, repo.ID, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "model.safetensors"))
	if err != nil || !bytes.Equal(b, repo.Files["model.safetensors"]) {
		t.Fatalf("resumed blob differs (%v)", err)
	}
	if want, got := []string{"", "bytes=100000-", "bytes=200000-"}, f.Ranges(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("Range headers %q, want %q", got, want)
	}
}

func TestResumeAcrossRuns(t *testing.T) {
	f := hubtest.New(t)
	repo := modelRepo(f)
	f.Set(func(s *hubtest.Server) { s.CutAfter, s.Cuts = 120_000, 1 })
	cache := t.TempDir()
	c := client(f, cache)
	c.Retries = 1
	_, err := c.Snapshot(context.Background(), Model, repo.ID, "", nil)
	if !errors.Is(err, ErrConnection) || !strings.Contains(err.Error(), "resumes") {
		t.Fatalf("cut download: %v, want ErrConnection saying it resumes", err)
	}
	storage := filepath.Join(cache, "models--meta-llama--Tiny-1B")
	sum := hubtest.SHA256Hex(repo.Files["model.safetensors"])
	if st, err := os.Stat(filepath.Join(storage, "blobs", sum+".incomplete")); err != nil || st.Size() != 120_000 {
		t.Fatalf("the .incomplete blob: %v %v", st, err)
	}
	if _, err := os.Lstat(filepath.Join(storage, "snapshots", repo.Commit, "model.safetensors")); err == nil {
		t.Fatal("snapshots/ has the cut file")
	}
	// The next run resumes; the server ignoring the Range once starts over.
	f.Ranges()
	dir, err := c.Snapshot(context.Background(), Model, repo.ID, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "model.safetensors")); !bytes.Equal(b, repo.Files["model.safetensors"]) {
		t.Fatal("resumed blob differs")
	}
	if got := f.Ranges(); len(got) != 1 || got[0] != "bytes=120000-" {
		t.Errorf("Range headers %q, want [bytes=120000-]", got)
	}

	// A server that ignores Range: the partial file is restarted, the result is right.
	cache2 := t.TempDir()
	f.Set(func(s *hubtest.Server) { s.CutAfter, s.Cuts, s.IgnoreRange = 50_000, 1, true })
	dir, err = client(f, cache2).Snapshot(context.Background(), Model, repo.ID, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "model.safetensors")); !bytes.Equal(b, repo.Files["model.safetensors"]) {
		t.Fatal("restarted blob differs")
	}
}

// An .incomplete blob longer than the file (not this file's bytes) is started over.
func TestOversizedIncomplete(t *testing.T) {
	f := hubtest.New(t)
	repo := modelRepo(f)
	cache := t.TempDir()
	blobs := filepath.Join(cache, "models--meta-llama--Tiny-1B", "blobs")
	os.MkdirAll(blobs, 0o755)
	sum := hubtest.SHA256Hex(repo.Files["model.safetensors"])
	os.WriteFile(filepath.Join(blobs, sum+".incomplete"), weights(400_000), 0o644)
	dir, err := client(f, cache).Snapshot(context.Background(), Model, repo.ID, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "model.safetensors")); !bytes.Equal(b, repo.Files["model.safetensors"]) {
		t.Fatal("blob differs")
	}
}

func TestChecksumMismatch(t *testing.T) {
	f := hubtest.New(t)
	repo := modelRepo(f)
	f.Set(func(s *hubtest.Server) { s.Corrupt = true })
	cache := t.TempDir()
	_, err := client(f, cache).Snapshot(context.Background(), Model, repo.ID, "", nil)
	if !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), "model.safetensors") {
		t.Fatalf("corrupt blob: %v, want ErrChecksum naming the file", err)
	}
	storage := filepath.Join(cache, "models--meta-llama--Tiny-1B")
	if _, err := os.Lstat(filepath.Join(storage, "snapshots", repo.Commit, "model.safetensors")); err == nil {
		t.Error("snapshots/ has the corrupt file")
	}
	for _, name := range listDir(t, filepath.Join(storage, "blobs")) {
		if strings.HasPrefix(name, hubtest.SHA256Hex(repo.Files["model.safetensors"])) {
			t.Errorf("blobs/ keeps %s", name)
		}
	}
}

type fullDisk struct {
	w    io.Writer
	room int
}

func (d *fullDisk) Write(p []byte) (int, error) {
	if len(p) > d.room {
		n, _ := d.w.Write(p[:d.room])
		d.room = 0
		return n, &os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC}
	}
	d.room -= len(p)
	return d.w.Write(p)
}

func TestDiskFull(t *testing.T) {
	f := hubtest.New(t)
	repo := modelRepo(f)
	cache := t.TempDir()
	c := client(f, cache)
	c.wrapWriter = func(w io.Writer) io.Writer { return &fullDisk{w: w, room: 1000} }
	_, err := c.Snapshot(context.Background(), Model, repo.ID, "", nil)
	if !errors.Is(err, ErrDiskFull) || !strings.Contains(err.Error(), cache) || !strings.Contains(err.Error(), "HF_HUB_CACHE") {
		t.Fatalf("full disk: %v, want ErrDiskFull naming the cache and HF_HUB_CACHE", err)
	}
	storage := filepath.Join(cache, "models--meta-llama--Tiny-1B")
	if _, err := os.Lstat(filepath.Join(storage, "snapshots", repo.Commit, "model.safetensors")); err == nil {
		t.Error("snapshots/ has the half-written file")
	}
	// Too little room for the rest: refused before any request for data.
	c.wrapWriter = nil
	c.freeBytes = func(string) int64 { return 1000 }
	f.Ranges()
	_, err = c.Snapshot(context.Background(), Model, repo.ID, "", nil)
	if !errors.Is(err, ErrDiskFull) || !strings.Contains(err.Error(), "GB free") || len(f.Ranges()) != 0 {
		t.Fatalf("no room: %v, want ErrDiskFull before any download", err)
	}
	c.freeBytes = nil

	// With room again, it resumes from what was kept.
	f.Ranges()
	dir, err := c.Snapshot(context.Background(), Model, repo.ID, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "model.safetensors")); !bytes.Equal(b, repo.Files["model.safetensors"]) {
		t.Fatal("blob differs after the disk-full resume")
	}
	if got := f.Ranges(); len(got) != 1 || !strings.HasPrefix(got[0], "bytes=") {
		t.Errorf("Range headers %q, want one resume", got)
	}
}

func TestErrors(t *testing.T) {
	f := hubtest.New(t)
	modelRepo(f)
	f.Add(&hubtest.Repo{ID: "meta-llama/Gated-8B", Gated: true, Files: map[string][]byte{"config.json": []byte("{}"), "model.safetensors": []byte("x")}})
	f.Add(&hubtest.Repo{ID: "org/private", Private: true, Files: map[string][]byte{"config.json": []byte("{}"), "model.safetensors": []byte("x")}})
	f.Add(&hubtest.Repo{ID: "org/vanishing", Files: map[string][]byte{"config.json": []byte("{}"), "model.safetensors": []byte("x")}, Vanish: map[string]bool{"model.safetensors": true}})
	f.Add(&hubtest.Repo{ID: "org/bin-only", Files: map[string][]byte{"config.json": []byte("{}"), "pytorch_model.bin": []byte("x")}})
	for _, tc := range []struct {
		name, repo, rev, token string
		include                []string
		kind                   error
		want                   []string
	}{
		{"missing repo", "org/nope", "", "hf_good", nil, ErrRepoNotFound, []string{"model org/nope not found"}},
		{"private without token", "org/private", "", "", nil, ErrRepoNotFound, []string{"set HF_TOKEN"}},
		{"bad token", "meta-llama/Tiny-1B", "", "hf_bad", nil, ErrUnauthorized, []string{"bad or missing token", "HF_TOKEN", "huggingface-cli login"}},
		{"gated", "meta-llama/Gated-8B", "", "hf_good", nil, ErrGated, []string{"gated", "/meta-llama/Gated-8B", "HF_TOKEN"}},
		{"bad revision", "meta-llama/Tiny-1B", "v9", "hf_good", nil, ErrRevisionNotFound, []string{`revision "v9"`}},
		{"entry vanished", "org/vanishing", "", "hf_good", nil, ErrEntryNotFound, []string{"model.safetensors"}},
		{"include matches nothing", "meta-llama/Tiny-1B", "", "hf_good", []string{"*.gguf"}, nil, []string{"no file matches --include *.gguf"}},
		{"no safetensors", "org/bin-only", "", "hf_good", nil, nil, []string{"no top-level *.safetensors"}},
		{"bad repo id", "org/a--b", "", "hf_good", nil, nil, []string{"not a Hugging Face repository id"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cache := t.TempDir()
			c := client(f, cache)
			c.Token = tc.token
			_, err := c.Snapshot(context.Background(), Model, tc.repo, tc.rev, tc.include)
			if err == nil {
				t.Fatal("no error")
			}
			if tc.kind != nil && !errors.Is(err, tc.kind) {
				t.Errorf("error %v is not %v", err, tc.kind)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			filepath.WalkDir(cache, func(p string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() && strings.Contains(p, "snapshots") {
					t.Errorf("a failed Snapshot left %s", p)
				}
				return nil
			})
		})
	}
}

func TestDataset(t *testing.T) {
	f := hubtest.New(t)
	repo := f.Add(&hubtest.Repo{Type: Dataset, ID: "org/chat-data", Files: map[string][]byte{
		"README.md":                          []byte("# data"),
		"data/train-00000-of-00001.parquet":  weights(2000),
		"data/train-00000-of-00001.jsonl.gz": weights(100),
	}, LFS: map[string]bool{"data/train-00000-of-00001.parquet": true}})
	cache := t.TempDir()
	dir, err := client(f, cache).Snapshot(context.Background(), Dataset, repo.ID, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(cache, "datasets--org--chat-data", "snapshots", repo.Commit); dir != want {
		t.Fatalf("dir %s, want %s", dir, want)
	}
	if l := readLink(t, filepath.Join(dir, "data", "train-00000-of-00001.parquet")); l != "../../../blobs/"+hubtest.SHA256Hex(repo.Files["data/train-00000-of-00001.parquet"]) {
		t.Errorf("parquet -> %s", l)
	}
	if got := listDir(t, filepath.Join(dir, "data")); len(got) != 2 {
		t.Errorf("data/ holds %v", got)
	}
}

// A cache written by huggingface_hub is used offline, and when the Hub is unreachable.
func TestPrepopulatedCache(t *testing.T) {
	cache := t.TempDir()
	storage := filepath.Join(cache, "models--org--cached")
	commit := strings.Repeat("ab", 20)
	blob := filepath.Join(storage, "blobs", hubtest.GitSHA1([]byte("{}")))
	snap := filepath.Join(storage, "snapshots", commit)
	for _, d := range []string{filepath.Dir(blob), snap, filepath.Join(storage, "refs")} {
		os.MkdirAll(d, 0o755)
	}
	os.WriteFile(blob, []byte("{}"), 0o644)
	os.Symlink("../../blobs/"+filepath.Base(blob), filepath.Join(snap, "config.json"))
	os.Symlink("../../blobs/"+filepath.Base(blob), filepath.Join(snap, "model.safetensors"))
	os.WriteFile(filepath.Join(storage, "refs", "main"), []byte(commit), 0o644)

	f := hubtest.New(t)
	c := client(f, cache)
	c.Offline = true
	for _, rev := range []string{"", "main", commit} {
		dir, err := c.Snapshot(context.Background(), Model, "org/cached", rev, nil)
		if err != nil || dir != snap {
			t.Fatalf("offline %q: %s, %v", rev, dir, err)
		}
	}
	if n := f.Requests(); n != 0 {
		t.Errorf("offline sent %d requests", n)
	}
	_, err := c.Snapshot(context.Background(), Model, "org/absent", "", nil)
	if !errors.Is(err, ErrNotCached) || !strings.Contains(err.Error(), "HF_HUB_OFFLINE") {
		t.Errorf("offline, not cached: %v", err)
	}
	_, err = c.Snapshot(context.Background(), Model, "org/cached", "v2", nil)
	if !errors.Is(err, ErrNotCached) {
		t.Errorf("offline, revision not cached: %v", err)
	}
	// Weights missing (fetched by validate, say): the metadata is there, the model is not.
	os.Remove(filepath.Join(snap, "model.safetensors"))
	if _, err := c.Snapshot(context.Background(), Model, "org/cached", "", nil); !errors.Is(err, ErrNotCached) || !strings.Contains(err.Error(), "lacks *.safetensors") {
		t.Errorf("offline, no weights: %v", err)
	}
	if dir, err := c.Snapshot(context.Background(), Model, "org/cached", "", MetadataModelFiles); err != nil || dir != snap {
		t.Errorf("offline, metadata only: %s, %v", dir, err)
	}
	os.Symlink("../../blobs/"+filepath.Base(blob), filepath.Join(snap, "model.safetensors"))

	// Unreachable Hub: the cache answers.
	f.Hub.Close()
	c.Offline = false
	c.Retries = 1
	dir, err := c.Snapshot(context.Background(), Model, "org/cached", "", nil)
	if err != nil || dir != snap {
		t.Fatalf("unreachable Hub: %s, %v", dir, err)
	}
	_, err = c.Snapshot(context.Background(), Model, "org/absent", "", nil)
	if !errors.Is(err, ErrConnection) || !strings.Contains(err.Error(), "cannot reach the Hub") {
		t.Errorf("unreachable Hub, not cached: %v", err)
	}
}

func TestCancel(t *testing.T) {
	f := hubtest.New(t)
	repo := modelRepo(f)
	started := make(chan struct{})
	f.Set(func(s *hubtest.Server) { s.Block, s.Started = make(chan struct{}), started })
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }()
	cache := t.TempDir()
	_, err := client(f, cache).Snapshot(ctx, Model, repo.ID, "", nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	sum := hubtest.SHA256Hex(repo.Files["model.safetensors"])
	st, err := os.Stat(filepath.Join(cache, "models--meta-llama--Tiny-1B", "blobs", sum+".incomplete"))
	if err != nil || st.Size() > 150_000 { // what had arrived when ctx was cancelled
		t.Errorf("the .incomplete blob: %v, %v", st, err)
	}
}

func TestLooksLikeRepoID(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	os.MkdirAll("local/model", 0o755)
	for s, want := range map[string]bool{
		"meta-llama/Llama-3.1-8B-Instruct":      true,
		"meta-llama/Llama-3.1-8B-Instruct@main": true,
		"org/name@0123abcd":                     true,
		"HuggingFaceH4/ultrachat_200k":          true,
		"local/model":                           false, // exists here
		"./org/name":                            false,
		"/org/name":                             false,
		"~/org/name":                            false,
		"name":                                  false,
		"a/b/c":                                 false,
		"data/train.jsonl":                      false,
		"models/x.gguf":                         false,
		"org/name@":                             false,
		"org/a--b":                              false,
		"org/.hidden":                           false,
		"":                                      false,
	} {
		if got := LooksLikeRepoID(s); got != want {
			t.Errorf("LooksLikeRepoID(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		pat, name string
		want      bool
	}{
		{"*.safetensors", "model-00001-of-00004.safetensors", true},
		{"*.safetensors", "original/x.safetensors", true}, // fnmatch: * crosses /
		{"original/", "original/params.json", true},
		{"original/*", "model.safetensors", false},
		{"tokenizer*.json", "tokenizer_config.json", true},
		{"model-0000[12]-*", "model-00002-of-00004.safetensors", true},
		{"model-0000[!12]-*", "model-00002-of-00004.safetensors", false},
		{"config.json", "config.json", true},
		{"config.json", "configXjson", false},
	} {
		if got := Match(tc.pat, tc.name); got != tc.want {
			t.Errorf("Match(%q, %q) = %v", tc.pat, tc.name, got)
		}
	}
	got := selectFiles([]string{"config.json", "model.safetensors", "original/consolidated.00.pth", "pytorch_model.bin", "tokenizer.model", "original/tokenizer.model"}, Model, nil)
	if strings.Join(got, " ") != "config.json model.safetensors tokenizer.model" {
		t.Errorf("default model Files: %v", got)
	}
}

func TestFromEnv(t *testing.T) {
	home := t.TempDir()
	for _, k := range []string{"HF_ENDPOINT", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "XDG_CACHE_HOME"} {
		t.Setenv(k, "")
	}
	t.Setenv("HF_HOME", home)
	os.WriteFile(filepath.Join(home, "token"), []byte("hf_fromfile\n"), 0o600)
	c := FromEnv()
	if c.Endpoint != DefaultEndpoint || c.CacheDir != filepath.Join(home, "hub") || c.Token != "hf_fromfile" || c.Offline {
		t.Errorf("FromEnv = %+v", c)
	}
	t.Setenv("HF_ENDPOINT", "http://mirror.local/")
	t.Setenv("HF_HUB_CACHE", "/elsewhere")
	t.Setenv("HF_TOKEN", "hf_env")
	t.Setenv("HF_HUB_OFFLINE", "1")
	c = FromEnv()
	if c.Endpoint != "http://mirror.local" || c.CacheDir != "/elsewhere" || c.Token != "hf_env" || !c.Offline {
		t.Errorf("FromEnv = %+v", c)
	}
}

// A transfer that stalls is cut after Timeout (and, Retries spent, fails clearly; the
// resume after a cut is TestResumeAfterCut's).
func TestStall(t *testing.T) {
	f := hubtest.New(t)
	repo := modelRepo(f)
	f.Set(func(s *hubtest.Server) { s.Block, s.Started = make(chan struct{}), make(chan struct{}) })
	cache := t.TempDir()
	c := client(f, cache)
	c.Timeout, c.Retries = 50*time.Millisecond, 1
	_, err := c.Snapshot(context.Background(), Model, repo.ID, "", nil)
	if !errors.Is(err, ErrConnection) || !strings.Contains(err.Error(), "HF_HUB_DOWNLOAD_TIMEOUT") || !strings.Contains(err.Error(), "resumes") {
		t.Fatalf("stalled download: %v", err)
	}
	if got := f.Ranges(); len(got) != 1 {
		t.Errorf("Range headers %q, want one attempt", got)
	}
}

// A blob another process is downloading (its huggingface_hub lock held) is waited for;
// cancelling the wait returns promptly.
func TestBlobLock(t *testing.T) {
	f := hubtest.New(t)
	repo := modelRepo(f)
	cache := t.TempDir()
	sum := hubtest.SHA256Hex(repo.Files["model.safetensors"])
	lock := filepath.Join(cache, ".locks", "models--meta-llama--Tiny-1B", sum+".lock")
	os.MkdirAll(filepath.Dir(lock), 0o755)
	held, err := os.OpenFile(lock, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := tryLock(held); !ok || err != nil {
		t.Skipf("no file locks here: %v", err)
	}
	c := client(f, cache)
	pr, pw := io.Pipe()
	c.Progress = pw
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := pr.Read(buf)
			if err != nil {
				return
			}
			if strings.Contains(string(buf[:n]), "another process") {
				cancel() // seen waiting: give up
			}
		}
	}()
	_, err = c.Snapshot(ctx, Model, repo.ID, "", nil)
	pw.Close()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("waiting on a held lock: %v", err)
	}
	held.Close() // released: the download goes through
	c.Progress = nil
	if _, err := c.Snapshot(context.Background(), Model, repo.ID, "", nil); err != nil {
		t.Fatal(err)
	}
}
