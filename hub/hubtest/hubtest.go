// Package hubtest is a fake Hugging Face Hub for tests: the revision API, resolve with a
// relative redirect (regular files) or an absolute one to a second "CDN" server (LFS files),
// the ETag / X-Linked-Etag / X-Linked-Size / X-Repo-Commit headers, Range requests, 401 / 403
// (GatedRepo) / 404 (RepoNotFound, RevisionNotFound, EntryNotFound) and bodies cut mid-way.
// It never reaches the network.
package hubtest

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

// Repo is one repository of the fake Hub.
type Repo struct {
	Type    string // "model" (default) or "dataset"
	ID      string // org/name
	Commit  string // default: a sha1 of the ID
	Files   map[string][]byte
	LFS     map[string]bool // served from the CDN, etag = sha256
	Gated   bool            // resolve answers 403 GatedRepo
	Private bool            // needs a token
	Vanish  map[string]bool // listed, but resolve answers 404 EntryNotFound
	// Revisions are branch or tag names besides main (e.g. refs/pr/1) that resolve to Commit.
	Revisions map[string]bool
}

// Server is a local Hugging Face Hub: the revision API, resolve with a relative redirect
// (regular files, to /api/resolve-cache/...) or an absolute one to a second "CDN" server
// (LFS files), the ETag / X-Linked-* / X-Repo-Commit headers, Range requests, 401 / 403 /
// 404 with X-Error-Code, and bodies cut mid-way.
type Server struct {
	Hub   *httptest.Server // the Hub (HF_ENDPOINT)
	CDN   *httptest.Server // where LFS files are redirected
	Token string           // the valid token (default hf_good)

	t testing.TB

	mu    sync.Mutex
	repos map[string]*Repo
	// CDN behaviour; change it with Set.
	CutAfter    int64         // > 0: a body is cut (connection closed) after this many bytes ...
	Cuts        int           // ... for this many responses (-1: all)
	IgnoreRange bool          // answer a Range request with the whole file (200)
	Corrupt     bool          // serve wrong bytes
	Block       chan struct{} // non-nil: send half a body, then wait for the client to go
	Started     chan struct{} // with Block: closed when the half body was sent
	ranges      []string      // Range headers the CDN received
	startOnce   sync.Once
	// RegularViaCDN: a GET of a regular file on the Hub redirects to the CDN (which must not
	// receive the token).
	RegularViaCDN bool

	requests atomic.Int64 // to either server
}

// New starts a fake Hub and its CDN; t.Cleanup stops them.
func New(t testing.TB) *Server {
	f := &Server{t: t, repos: map[string]*Repo{}, Token: "hf_good"}
	f.CDN = httptest.NewServer(f.count(http.HandlerFunc(f.serveCDN)))
	f.Hub = httptest.NewServer(f.count(http.HandlerFunc(f.serveHub)))
	t.Cleanup(func() { f.Hub.Close(); f.CDN.Close() })
	return f
}

func (f *Server) count(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.requests.Add(1)
		h.ServeHTTP(w, r)
	})
}

// SHA256Hex is the sha256 of b in hex: the ETag of an LFS file.
func SHA256Hex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// GitSHA1 is the git blob id of content: the ETag of a regular file.
func GitSHA1(b []byte) string {
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", len(b))
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

// Add serves a repository (filling in Type, Commit and LFS) and returns it.
func (f *Server) Add(r *Repo) *Repo {
	if r.Type == "" {
		r.Type = "model"
	}
	if r.Commit == "" {
		r.Commit = GitSHA1([]byte(r.ID))
	}
	if r.LFS == nil {
		r.LFS = map[string]bool{}
	}
	f.mu.Lock()
	f.repos[r.Type+":"+r.ID] = r
	f.mu.Unlock()
	return r
}

// Set changes the server's behaviour (fields below mu) between requests.
func (f *Server) Set(change func(s *Server)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(f)
}

// Ranges returns the Range headers the CDN received ("" for none) and forgets them.
func (f *Server) Ranges() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.ranges
	f.ranges = nil
	return r
}

// Requests is the number of requests either server received.
func (f *Server) Requests() int64 { return f.requests.Load() }

// authOK: no token, or the valid one; bad: a token that is not.
func (f *Server) auth(r *http.Request) (has, ok bool) {
	a := r.Header.Get("Authorization")
	if a == "" {
		return false, true
	}
	return true, a == "Bearer "+f.Token
}

func writeHubError(w http.ResponseWriter, status int, code, msg string) {
	if code != "" {
		w.Header().Set("X-Error-Code", code)
	}
	w.Header().Set("X-Error-Message", msg)
	w.WriteHeader(status)
}

// repoOf finds the repository for the path parts after the type prefix.
func (f *Server) repoOf(typ string, parts []string) (*Repo, []string) {
	if len(parts) < 2 {
		return nil, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.repos[typ+":"+parts[0]+"/"+parts[1]], parts[2:]
}

func (f *Server) serveHub(w http.ResponseWriter, r *http.Request) {
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
		f.serveResolve(w, r, "dataset", parts[1:])
	default:
		f.serveResolve(w, r, "model", parts)
	}
}

func (f *Server) access(w http.ResponseWriter, r *http.Request, repo *Repo) bool {
	has, _ := f.auth(r)
	if repo == nil || (repo.Private && !has) {
		writeHubError(w, http.StatusUnauthorized, "RepoNotFound", "Repository Not Found")
		return false
	}
	return true
}

// serveAPI: GET /api/{type}s/org/name/revision/{rev}.
func (f *Server) serveAPI(w http.ResponseWriter, r *http.Request, typ string, parts []string) {
	repo, rest := f.repoOf(typ, parts)
	if !f.access(w, r, repo) {
		return
	}
	if len(rest) != 2 || rest[0] != "revision" {
		writeHubError(w, http.StatusNotFound, "", "bad API path")
		return
	}
	if rev := unescape(rest[1]); rev != "main" && rev != repo.Commit && !repo.Revisions[rev] {
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
	}{ID: repo.ID, Sha: repo.Commit}
	for name := range repo.Files {
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
func (f *Server) serveResolve(w http.ResponseWriter, r *http.Request, typ string, parts []string) {
	repo, rest := f.repoOf(typ, parts)
	if !f.access(w, r, repo) {
		return
	}
	if len(rest) < 3 || rest[0] != "resolve" {
		writeHubError(w, http.StatusNotFound, "", "bad path")
		return
	}
	if rev := unescape(rest[1]); rev != "main" && rev != repo.Commit && !repo.Revisions[rev] {
		writeHubError(w, http.StatusNotFound, "RevisionNotFound", "Invalid rev id: "+rev)
		return
	}
	if repo.Gated {
		writeHubError(w, http.StatusForbidden, "GatedRepo", "Access to model "+repo.ID+" is restricted. You must have access to it and be authenticated to access it.")
		return
	}
	name := unescape(strings.Join(rest[2:], "/"))
	body, found := repo.Files[name]
	w.Header().Set("X-Repo-Commit", repo.Commit)
	if !found || repo.Vanish[name] {
		writeHubError(w, http.StatusNotFound, "EntryNotFound", name+" does not exist on \"main\"")
		return
	}
	if repo.LFS[name] {
		sum := SHA256Hex(body)
		w.Header().Set("ETag", `"`+GitSHA1([]byte("version https://git-lfs.github.com/spec/v1\noid sha256:"+sum))+`"`)
		w.Header().Set("X-Linked-Etag", `"`+sum+`"`)
		w.Header().Set("X-Linked-Size", strconv.Itoa(len(body)))
		w.Header().Set("Location", f.CDN.URL+"/blobs/"+sum+"?signature=abc")
		w.WriteHeader(http.StatusFound)
		return
	}
	w.Header().Set("Location", "/api/resolve-cache/"+typ+"s/"+repo.ID+"/"+repo.Commit+"/"+strings.Join(rest[2:], "/"))
	w.WriteHeader(http.StatusTemporaryRedirect)
}

// serveRegular: the file itself, with its git sha1 ETag.
func (f *Server) serveRegular(w http.ResponseWriter, r *http.Request, typ string, parts []string) {
	repo, rest := f.repoOf(typ, parts)
	if !f.access(w, r, repo) || len(rest) < 2 {
		return
	}
	name := unescape(strings.Join(rest[1:], "/"))
	body, found := repo.Files[name]
	if !found {
		writeHubError(w, http.StatusNotFound, "EntryNotFound", name)
		return
	}
	w.Header().Set("X-Repo-Commit", repo.Commit)
	w.Header().Set("ETag", `"`+GitSHA1(body)+`"`)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	f.mu.Lock()
	viaCDN := f.RegularViaCDN
	f.mu.Unlock()
	if r.Method == http.MethodGet && viaCDN {
		w.Header().Del("Content-Length")
		http.Redirect(w, r, f.CDN.URL+"/raw/"+GitSHA1(body), http.StatusFound)
		return
	}
	if r.Method == http.MethodGet {
		w.Write(body)
	}
}

func (f *Server) blob(sum string) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, repo := range f.repos {
		for name, b := range repo.Files {
			if repo.LFS[name] && SHA256Hex(b) == sum || strings.TrimPrefix(sum, "raw/") == GitSHA1(b) {
				return b
			}
		}
	}
	return nil
}

// serveCDN: GET /blobs/{sha256} with Range support, cuts and corruption.
func (f *Server) serveCDN(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "" {
		f.t.Errorf("the CDN received the token (Authorization: %s)", r.Header.Get("Authorization"))
	}
	body := f.blob(strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, "/blobs/"), "/"))
	if body == nil {
		http.NotFound(w, r)
		return
	}
	f.mu.Lock()
	rng := r.Header.Get("Range")
	f.ranges = append(f.ranges, rng)
	cut := f.CutAfter > 0 && f.Cuts != 0
	if cut && f.Cuts > 0 {
		f.Cuts--
	}
	cutAfter, ignore, corrupt, block, started := f.CutAfter, f.IgnoreRange, f.Corrupt, f.Block, f.Started
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
		f.startOnce.Do(func() { close(started) })
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
