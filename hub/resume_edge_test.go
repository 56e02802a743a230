package hub

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const edgeSha = "0123456789abcdef0123456789abcdef01234567"
const edgeEtag = "89abcdef0123456789abcdef0123456789abcdef" // a git sha1: no sha256 check

// fakeHub serves one file config.json of announced size `size`; get answers GETs.
func fakeHub(t *testing.T, size int, get func(w http.ResponseWriter, r *http.Request)) (*httptest.Server, *int64) {
	var gets int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/api/models/org/name/revision/"):
			fmt.Fprintf(w, `{"sha":%q,"siblings":[{"rfilename":"config.json"}]}`, edgeSha)
		case r.Method == http.MethodHead:
			w.Header().Set("X-Repo-Commit", edgeSha)
			w.Header().Set("ETag", `"`+edgeEtag+`"`)
			w.Header().Set("Content-Length", fmt.Sprint(size))
		default:
			atomic.AddInt64(&gets, 1)
			get(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &gets
}

// A server whose body is shorter than the announced size and that ignores Range: the
// download must fail after Retries attempts, not loop for ever re-downloading.
func TestResumeShortBodyGivesUp(t *testing.T) {
	body := bytes.Repeat([]byte("x"), 50)
	srv, gets := fakeHub(t, 100, func(w http.ResponseWriter, r *http.Request) { w.Write(body) })
	c := &Client{Endpoint: srv.URL, CacheDir: t.TempDir(), HTTP: srv.Client(), Retries: 3}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := c.Snapshot(ctx, Model, "org/name", "", []string{"config.json"})
	t.Logf("err=%v GETs=%d", err, atomic.LoadInt64(gets))
	if n := atomic.LoadInt64(gets); n > 10 {
		t.Fatalf("%d GETs of one 100-byte file (Retries=3): the loop never gives up", n)
	}
}

// A 206 whose Content-Range does not start at the requested offset must be refused.
func TestResumeContentRangeChecked(t *testing.T) {
	content := make([]byte, 100)
	for i := range content {
		content[i] = byte(i)
	}
	srv, _ := fakeHub(t, len(content), func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") == "" {
			w.Write(content)
			return
		}
		// a broken proxy: 206, but the bytes (and Content-Range) from offset 0
		w.Header().Set("Content-Range", "bytes 0-49/100")
		w.WriteHeader(http.StatusPartialContent)
		w.Write(content[:50])
	})
	cache := t.TempDir()
	blobs := filepath.Join(cache, "models--org--name", "blobs")
	os.MkdirAll(blobs, 0o755)
	os.WriteFile(filepath.Join(blobs, edgeEtag+".incomplete"), content[:50], 0o644)
	c := &Client{Endpoint: srv.URL, CacheDir: cache, HTTP: srv.Client(), Retries: 3}
	dir, err := c.Snapshot(context.Background(), Model, "org/name", "", []string{"config.json"})
	if err != nil {
		t.Logf("refused: %v", err)
		return
	}
	got, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	if !bytes.Equal(got, content) {
		t.Fatalf("corrupt file accepted into the cache: got % x..., want % x...", got[48:54], content[48:54])
	}
}
