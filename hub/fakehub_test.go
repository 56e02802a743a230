package hub

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// fakeRepo is one repository of the fake Hub.
type fakeRepo struct {
	typ, id string
	commit  string
	files   map[string][]byte
	lfs     map[string]bool // served from the CDN, etag = sha256
	gated   bool
	private bool            // needs the valid token
	vanish  map[string]bool // listed, but resolve answers 404 EntryNotFound
}

// fakeHub is a local Hugging Face Hub: the revision API, resolve with a relative redirect
// (regular files, to /api/resolve-cache/...) or an absolute one to a second "CDN" server
// (LFS files), the ETag / X-Linked-* / X-Repo-Commit headers, Range requests, 401 / 403 /
// 404 with X-Error-Code, and bodies cut mid-way.
type fakeHub struct {
	t     *testing.T
	hub   *httptest.Server
	cdn   *httptest.Server
	token string // the valid token

	mu    sync.Mutex
	repos map[string]*fakeRepo
	// CDN behaviour.
	cutAfter    int64 // > 0: a body is cut (connection closed) after this many bytes ...
	cuts        int   // ... for this many responses (-1: all)
	ignoreRange bool  // answer a Range request with the whole file (200)
	corrupt     bool  // serve wrong bytes
	block       chan struct{}
	started     chan struct{} // with block: closed when a blocked body has started
	ranges      []string      // Range headers the CDN received

	requests atomic.Int64 // to either server
}

func newFakeHub(t *testing.T) *fakeHub {
	f := &fakeHub{t: t, repos: map[string]*fakeRepo{}, token: "hf_good"}
	f.cdn = httptest.NewServer(f.count(http.HandlerFunc(f.serveCDN)))
	f.hub = httptest.NewServer(f.count(http.HandlerFunc(f.serveHub)))
	t.Cleanup(func() { f.hub.Close(); f.cdn.Close() })
	return f
}

func (f *fakeHub) count(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.requests.Add(1)
		h.ServeHTTP(w, r)
	})
}

func sha256Hex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// gitSHA1 is the git blob id of content: the ETag of a regular file.
func gitSHA1(b []byte) string {
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", len(b))
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

func (f *fakeHub) add(r *fakeRepo) *fakeRepo {
	if r.typ == "" {
		r.typ = Model
	}
	if r.commit == "" {
		r.commit = gitSHA1([]byte(r.id))
	}
	if r.lfs == nil {
		r.lfs = map[string]bool{}
	}
	f.mu.Lock()
	f.repos[r.typ+":"+r.id] = r
	f.mu.Unlock()
	return r
}

func (f *fakeHub) client(cache string) *Client {
	return &Client{Endpoint: f.hub.URL, Token: f.token, CacheDir: cache, HTTP: f.hub.Client(), Retries: 3}
}

// authOK: no token, or the valid one; bad: a token that is not.
func (f *fakeHub) auth(r *http.Request) (has, ok bool) {
	a := r.Header.Get("Authorization")
	if a == "" {
		return false, true
	}
	return true, a == "Bearer "+f.token
}

func writeHubError(w http.ResponseWriter, status int, code, msg string) {
	if code != "" {
		w.Header().Set("X-Error-Code", code)
	}
	w.Header().Set("X-Error-Message", msg)
	w.WriteHeader(status)
}

// repoOf finds the repository for the path parts after the type prefix.
func (f *fakeHub) repoOf(typ string, parts []string) (*fakeRepo, []string) {
	if len(parts) < 2 {
		return nil, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.repos[typ+":"+parts[0]+"/"+parts[1]], parts[2:]
}

func (f *fakeHub) serveHub(w http.ResponseWriter, r *http.Request) {
	has, ok := f.auth(r)
	if has && !ok {
		writeHubError(w, http.StatusUnauthorized, "", "Invalid credentials in Authorization header")
		return
	}
	p := strings.TrimPrefix(r.URL.EscapedPath(), "/")
	parts := strings.Split(p, "/")
	switch {
	case len(parts) > 2 && parts[0] == "api" && parts[1] == "resolve-cache":
		// /api/resolve-cache/{models|datasets}/org/name/commit/file...
		f.serveRegular(w, r, strings.TrimSuffix(parts[2], "s"), parts[3:])
	case len(parts) > 1 && parts[0] == "api":
		f.serveAPI(w, r, strings.TrimSuffix(parts[1], "s"), parts[2:])
	case len(parts) > 0 && parts[0] == "datasets":
		f.serveResolve(w, r, Dataset, parts[1:])
	default:
		f.serveResolve(w, r, Model, parts)
	}
}

func (f *fakeHub) access(w http.ResponseWriter, r *http.Request, repo *fakeRepo) bool {
	has, _ := f.auth(r)
	if repo == nil || (repo.private && !has) {
		writeHubError(w, http.StatusUnauthorized, "RepoNotFound", "Repository Not Found")
		return false
	}
	return true
}

// serveAPI: GET /api/{type}s/org/name/revision/{rev}.
func (f *fakeHub) serveAPI(w http.ResponseWriter, r *http.Request, typ string, parts []string) {
	repo, rest := f.repoOf(typ, parts)
	if !f.access(w, r, repo) {
		return
	}
	if len(rest) != 2 || rest[0] != "revision" {
		writeHubError(w, http.StatusNotFound, "", "bad API path")
		return
	}
	if rev := unescape(rest[1]); rev != "main" && rev != repo.commit {
		writeHubError(w, http.StatusNotFound, "RevisionNotFound", "Invalid rev id: "+rev)
		return
	}
	type sib struct {
		RFilename string `json:"rfilename"`
	}
	out := struct {
		ID       string `json:"id"`
		Sha      string `json:"sha"`
		Siblings []sib  `json:"siblings"`
	}{ID: repo.id, Sha: repo.commit}
	for name := range repo.files {
		out.Siblings = append(out.Siblings, sib{name})
	}
	json.NewEncoder(w).Encode(out)
}

func unescape(s string) string {
	r, err := http.NewRequest("GET", "http://x/"+s, nil)
	if err != nil {
		return s
	}
	return strings.TrimPrefix(r.URL.Path, "/")
}

// serveResolve: HEAD/GET org/name/resolve/{rev}/file...
func (f *fakeHub) serveResolve(w http.ResponseWriter, r *http.Request, typ string, parts []string) {
	repo, rest := f.repoOf(typ, parts)
	if !f.access(w, r, repo) {
		return
	}
	if len(rest) < 3 || rest[0] != "resolve" {
		writeHubError(w, http.StatusNotFound, "", "bad path")
		return
	}
	if rev := unescape(rest[1]); rev != "main" && rev != repo.commit {
		writeHubError(w, http.StatusNotFound, "RevisionNotFound", "Invalid rev id: "+rev)
		return
	}
	if repo.gated {
		writeHubError(w, http.StatusForbidden, "GatedRepo", "Access to model "+repo.id+" is restricted. You must have access to it and be authenticated to access it.")
		return
	}
	name := unescape(strings.Join(rest[2:], "/"))
	body, found := repo.files[name]
	w.Header().Set("X-Repo-Commit", repo.commit)
	if !found || repo.vanish[name] {
		writeHubError(w, http.StatusNotFound, "EntryNotFound", name+" does not exist on \"main\"")
		return
	}
	if repo.lfs[name] {
		sum := sha256Hex(body)
		w.Header().Set("ETag", `"`+gitSHA1([]byte("version https://git-lfs.github.com/spec/v1\noid sha256:"+sum))+`"`)
		w.Header().Set("X-Linked-Etag", `"`+sum+`"`)
		w.Header().Set("X-Linked-Size", strconv.Itoa(len(body)))
		w.Header().Set("Location", f.cdn.URL+"/blobs/"+sum+"?signature=abc")
		w.WriteHeader(http.StatusFound)
		return
	}
	w.Header().Set("Location", "/api/resolve-cache/"+typ+"s/"+repo.id+"/"+repo.commit+"/"+strings.Join(rest[2:], "/"))
	w.WriteHeader(http.StatusTemporaryRedirect)
}

// serveRegular: the file itself, with its git sha1 ETag.
func (f *fakeHub) serveRegular(w http.ResponseWriter, r *http.Request, typ string, parts []string) {
	repo, rest := f.repoOf(typ, parts)
	if !f.access(w, r, repo) || len(rest) < 2 {
		return
	}
	name := unescape(strings.Join(rest[1:], "/"))
	body, found := repo.files[name]
	if !found {
		writeHubError(w, http.StatusNotFound, "EntryNotFound", name)
		return
	}
	w.Header().Set("X-Repo-Commit", repo.commit)
	w.Header().Set("ETag", `"`+gitSHA1(body)+`"`)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodGet {
		w.Write(body)
	}
}

func (f *fakeHub) blob(sum string) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, repo := range f.repos {
		for name, b := range repo.files {
			if repo.lfs[name] && sha256Hex(b) == sum {
				return b
			}
		}
	}
	return nil
}

// serveCDN: GET /blobs/{sha256} with Range support, cuts and corruption.
func (f *fakeHub) serveCDN(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "" {
		f.t.Errorf("the CDN received the token (Authorization: %s)", r.Header.Get("Authorization"))
	}
	body := f.blob(strings.TrimPrefix(r.URL.Path, "/blobs/"))
	if body == nil {
		http.NotFound(w, r)
		return
	}
	f.mu.Lock()
	rng := r.Header.Get("Range")
	f.ranges = append(f.ranges, rng)
	cut := f.cutAfter > 0 && f.cuts != 0
	if cut && f.cuts > 0 {
		f.cuts--
	}
	cutAfter, ignore, corrupt, block, started := f.cutAfter, f.ignoreRange, f.corrupt, f.block, f.started
	f.mu.Unlock()
	if corrupt {
		body = append([]byte(nil), body...)
		body[0] ^= 0xff
	}
	start := int64(0)
	status := http.StatusOK
	if rng != "" && !ignore {
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(rng, "bytes="), "-"), 10, 64)
		if err != nil || n >= int64(len(body)) {
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return
		}
		start, status = n, http.StatusPartialContent
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", n, len(body)-1, len(body)))
	}
	rest := body[start:]
	w.Header().Set("Content-Length", strconv.Itoa(len(rest)))
	w.WriteHeader(status)
	if block != nil {
		w.Write(rest[:len(rest)/2])
		w.(http.Flusher).Flush()
		close(started)
		<-r.Context().Done()
		return
	}
	if cut && cutAfter < int64(len(rest)) {
		w.Write(rest[:cutAfter])
		w.(http.Flusher).Flush()
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			f.t.Errorf("hijack: %v", err)
			return
		}
		conn.Close()
		return
	}
	w.Write(rest)
}
