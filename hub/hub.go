// Package hub fetches models and datasets by name from the Hugging Face Hub into the cache
// that huggingface_hub (transformers, datasets, huggingface-cli) uses, so that a repository
// either side downloaded is found by the other with no copy.
//
// Layout (DESIGN.md has no row for it yet): hub/ sits beside data/ and checkpoint/ as a leaf
// that only the standard library and progressbar feed; cmd/llamatune uses it for
// `llamatune download` and for job keys (model:, distill.teacher.model:, datasets' path:)
// that name a Hub repository ("org/name" or "org/name@revision") instead of a local path.
//
// Protocol (as huggingface_hub speaks it):
//   - GET {endpoint}/api/{models|datasets}/{repo}/revision/{revision} → the commit "sha" and
//     the file list "siblings[].rfilename".
//   - HEAD {endpoint}[/datasets]/{repo}/resolve/{commit}/{file} with Accept-Encoding: identity,
//     following relative redirects only: X-Repo-Commit, X-Linked-Etag or ETag (the blob
//     name: the sha256 of an LFS file, the git sha1 of a regular one), X-Linked-Size or
//     Content-Length, and Location (the CDN URL of an LFS file, fetched without the token).
//   - GET of that location into blobs/{etag}.incomplete, resumed with Range after a cut,
//     checked (size; sha256 when the etag is one), renamed to blobs/{etag}.
//   - snapshots/{commit}/{file} → ../../blobs/{etag} (a relative symlink) and
//     refs/{revision} holding the commit.
//
// Environment: HF_HUB_DOWNLOAD_TIMEOUT and HF_HUB_ETAG_TIMEOUT (seconds, default 10), HF_ENDPOINT (default https://huggingface.co), HF_HOME (default
// $XDG_CACHE_HOME/huggingface or ~/.cache/huggingface), HF_HUB_CACHE (default $HF_HOME/hub),
// HF_TOKEN or the token file $HF_TOKEN_PATH (default $HF_HOME/token, what
// `huggingface-cli login` writes), HF_HUB_OFFLINE=1 (the cache only, no request).
package hub

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// DefaultEndpoint is the public Hub.
const DefaultEndpoint = "https://huggingface.co"

// Repository types.
const (
	Model   = "model"
	Dataset = "dataset"
)

// Client fetches repositories into a huggingface_hub cache. The zero value is usable once
// CacheDir is set (no token, the public Hub, http.DefaultClient, no progress, no wait
// between retries); FromEnv fills it from the environment as huggingface_hub does.
type Client struct {
	Endpoint string       // the Hub's base URL ("" = DefaultEndpoint)
	Token    string       // sent as Authorization: Bearer to the Hub (never to the CDN)
	CacheDir string       // the hub cache: models--org--name/{blobs,snapshots,refs} below it
	Offline  bool         // use the cache only; never send a request
	HTTP     *http.Client // nil = http.DefaultClient
	Progress io.Writer    // progress bar on a terminal, a line per file otherwise; nil = silent

	Timeout   time.Duration // a download that receives nothing for this long is cut (and resumed); 0 = never
	Workers   int           // files downloaded at once (0 = 4)
	Retries   int           // attempts in a row without new bytes before a cut download fails (0 = 5)
	RetryWait time.Duration // wait before attempt n is n*RetryWait

	// wrapWriter, in tests, wraps the writer of an .incomplete file (to simulate a full disk).
	wrapWriter func(io.Writer) io.Writer
	// freeBytes, in tests, replaces the free space of the cache's disk.
	freeBytes func(dir string) int64
}

// FromEnv is a Client configured from HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, HF_TOKEN /
// HF_TOKEN_PATH and HF_HUB_OFFLINE, with the legacy names huggingface_hub still reads
// (HUGGINGFACE_HUB_CACHE, HUGGING_FACE_HUB_TOKEN, TRANSFORMERS_OFFLINE).
func FromEnv() *Client {
	home := os.Getenv("HF_HOME")
	if home == "" {
		cache := os.Getenv("XDG_CACHE_HOME")
		if cache == "" {
			if h, err := os.UserHomeDir(); err == nil {
				cache = filepath.Join(h, ".cache")
			} else {
				cache = ".cache"
			}
		}
		home = filepath.Join(cache, "huggingface")
	}
	c := &Client{
		Endpoint:  strings.TrimRight(os.Getenv("HF_ENDPOINT"), "/"),
		CacheDir:  firstEnv("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"),
		Token:     firstEnv("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"),
		Offline:   isTrue(os.Getenv("HF_HUB_OFFLINE")) || isTrue(os.Getenv("TRANSFORMERS_OFFLINE")),
		RetryWait: time.Second,
		Timeout:   envSeconds("HF_HUB_DOWNLOAD_TIMEOUT", 10*time.Second),
		HTTP: &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			ResponseHeaderTimeout: envSeconds("HF_HUB_ETAG_TIMEOUT", 10*time.Second),
			TLSHandshakeTimeout:   10 * time.Second,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   8,
			ForceAttemptHTTP2:     true,
		}},
	}
	if c.Endpoint == "" {
		c.Endpoint = DefaultEndpoint
	}
	if c.CacheDir == "" {
		c.CacheDir = filepath.Join(home, "hub")
	}
	if abs, err := filepath.Abs(c.CacheDir); err == nil {
		c.CacheDir = abs // snapshot paths go into jobs, resolved against other directories
	}
	if c.Token == "" {
		path := os.Getenv("HF_TOKEN_PATH")
		if path == "" {
			path = filepath.Join(home, "token")
		}
		if b, err := os.ReadFile(path); err == nil {
			c.Token = strings.TrimSpace(string(b))
		}
	}
	return c
}

// envSeconds reads a whole number of seconds (huggingface_hub's HF_HUB_*_TIMEOUT).
func envSeconds(name string, def time.Duration) time.Duration {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	return def
}

func firstEnv(names ...string) string {
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			return v
		}
	}
	return ""
}

// isTrue is huggingface_hub's _is_true: 1, ON, YES or TRUE in any case.
func isTrue(v string) bool {
	switch strings.ToUpper(strings.TrimSpace(v)) {
	case "1", "ON", "YES", "TRUE":
		return true
	}
	return false
}

func (c *Client) endpoint() string {
	if c.Endpoint == "" {
		return DefaultEndpoint
	}
	return strings.TrimRight(c.Endpoint, "/")
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP == nil {
		return http.DefaultClient
	}
	return c.HTTP
}

// repoNamePart is one part of a repository id: letters, digits, '_', '-', '.', no "--" or
// "..", not starting or ending with '-' or '.' (huggingface_hub's validate_repo_id).
var repoNamePart = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$`)

// ValidRepoID reports whether id is a Hub repository id: "name" or "org/name", at most 96
// characters.
func ValidRepoID(id string) bool {
	if id == "" || len(id) > 96 || strings.Contains(id, "--") || strings.Contains(id, "..") {
		return false
	}
	parts := strings.Split(id, "/")
	if len(parts) > 2 {
		return false
	}
	for _, p := range parts {
		if !repoNamePart.MatchString(p) {
			return false
		}
	}
	return true
}

// ParseRef splits "org/name@revision" into the repository id and the revision ("" when
// absent).
func ParseRef(ref string) (repoID, revision string) {
	if i := strings.LastIndexByte(ref, '@'); i >= 0 {
		return ref[:i], ref[i+1:]
	}
	return ref, ""
}

// fileExts are endings of local files that are never repository names.
var fileExts = []string{".gguf", ".jsonl", ".json", ".ndjson", ".parquet", ".arrow", ".feather", ".ipc",
	".safetensors", ".bin", ".pt", ".pth", ".yaml", ".yml", ".txt", ".csv", ".gz", ".model", ".zip", ".tar"}

// LooksLikeRepoID reports whether s, written where a local path is expected, names a Hub
// repository instead: "org/name" or "org/name@revision", with no leading ./, ../, / or ~,
// no file extension of a local data or model file (.gguf, .jsonl, .parquet, ...), and not
// an existing path relative to the working directory.
func LooksLikeRepoID(s string) bool {
	id, rev := ParseRef(s)
	if strings.Contains(s, "@") && rev == "" {
		return false
	}
	if strings.Count(id, "/") != 1 || !ValidRepoID(id) {
		return false
	}
	lower := strings.ToLower(id)
	for _, e := range fileExts {
		if strings.HasSuffix(lower, e) {
			return false
		}
	}
	if _, err := os.Lstat(s); err == nil {
		return false
	}
	return true
}

// repoFolder is the cache folder of a repository: "models--org--name" (or datasets--).
func repoFolder(repoType, repoID string) string {
	return repoType + "s--" + strings.ReplaceAll(repoID, "/", "--")
}

// RepoDir is the cache directory of a repository, which need not exist.
func (c *Client) RepoDir(repoType, repoID string) string {
	return filepath.Join(c.CacheDir, repoFolder(repoType, repoID))
}

var commitRE = regexp.MustCompile(`^[0-9a-f]{40}$`)

// checkArgs validates a repository type, id and revision (defaulting it to main).
func checkArgs(repoType, repoID, revision string) (string, error) {
	if repoType != Model && repoType != Dataset {
		return "", fmt.Errorf("repo type %q: use model or dataset", repoType)
	}
	if !ValidRepoID(repoID) {
		return "", fmt.Errorf("%q is not a Hugging Face repository id: use org/name (letters, digits, '-', '_', '.'), optionally @revision", repoID)
	}
	if revision == "" {
		revision = "main"
	}
	if strings.Contains(revision, "..") || strings.HasPrefix(revision, "/") || strings.ContainsAny(revision, "\\\x00") {
		return "", fmt.Errorf("revision %q: not a branch, tag or commit", revision)
	}
	return revision, nil
}
