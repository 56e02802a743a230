package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// revisionInfo is the part of GET /api/{type}s/{repo}/revision/{rev} we use.
type revisionInfo struct {
	Sha      string `json:"sha"`
	Siblings []struct {
		RFilename string `json:"rfilename"`
	} `json:"siblings"`
}

// fileMeta is what a HEAD of resolve/{commit}/{file} says about one file.
type fileMeta struct {
	name     string // the repository path, '/'-separated
	etag     string // the blob name: sha256 (LFS) or git sha1
	size     int64
	location string // where to GET it
	auth     bool   // send the token there (same host as the endpoint)
}

// Snapshot makes the files of repoID at revision ("" = main) that match include (nil = the
// defaults: DefaultModelFiles for a model, everything for a dataset) present in the cache
// and returns the snapshot directory, $CACHE/{models|datasets}--org--name/snapshots/COMMIT,
// ready to use as a local model or dataset directory. Files already there are not fetched
// again; a cut download resumes from its .incomplete blob. With Offline set, or when the
// Hub cannot be reached, the cached snapshot of the revision is returned (an error wrapping
// ErrNotCached when there is none). Cancelling ctx stops every transfer promptly; what was
// received stays in .incomplete files for the next run.
func (c *Client) Snapshot(ctx context.Context, repoType, repoID, revision string, include []string) (string, error) {
	revision, err := checkArgs(repoType, repoID, revision)
	if err != nil {
		return "", err
	}
	if c.CacheDir == "" {
		return "", errors.New("hub: no cache directory; set HF_HOME or HF_HUB_CACHE")
	}
	storage := c.RepoDir(repoType, repoID)
	if c.Offline {
		return c.cached(storage, repoType, repoID, revision, include, "HF_HUB_OFFLINE is set")
	}
	info, err := c.revisionInfo(ctx, repoType, repoID, revision)
	if err != nil {
		if errors.Is(err, ErrConnection) && ctx.Err() == nil {
			if dir, cerr := c.cached(storage, repoType, repoID, revision, include, ""); cerr == nil {
				c.logf("hub: %v; using the cached snapshot %s\n", err, dir)
				return dir, nil
			}
		}
		return "", err
	}
	if !commitRE.MatchString(info.Sha) {
		return "", newErr(ErrConnection, "%s %s@%s: the Hub's answer has no commit sha (got %q): is HF_ENDPOINT=%s a Hugging Face Hub?", repoType, repoID, revision, info.Sha, c.endpoint())
	}
	var all []string
	for _, s := range info.Siblings {
		if err := checkRepoPath(s.RFilename); err != nil {
			return "", fmt.Errorf("%s %s@%s: %w", repoType, repoID, revision, err)
		}
		all = append(all, s.RFilename)
	}
	files := selectFiles(all, repoType, include)
	if err := checkSelection(repoType, repoID, revision, all, files, include); err != nil {
		return "", err
	}
	if err := writeRef(storage, revision, info.Sha); err != nil {
		return "", c.diskErr(err, "refs/"+revision)
	}
	snap := filepath.Join(storage, "snapshots", info.Sha)
	var missing []string
	for _, f := range files {
		if _, err := os.Stat(filepath.Join(snap, filepath.FromSlash(f))); err != nil {
			missing = append(missing, f)
		}
	}
	if len(missing) == 0 {
		return snap, nil
	}
	metas, err := c.heads(ctx, repoType, repoID, info.Sha, missing)
	if err != nil {
		return "", err
	}
	if err := c.fetchAll(ctx, storage, repoType, repoID, revision, metas); err != nil {
		return "", err
	}
	for _, m := range metas {
		if err := link(storage, info.Sha, m); err != nil {
			return "", c.diskErr(err, m.name)
		}
	}
	return snap, nil
}

// checkSelection refuses an empty selection, and a model without safetensors weights
// when the defaults chose the files.
func checkSelection(repoType, repoID, revision string, all, files, include []string) error {
	if len(files) == 0 {
		if include != nil {
			return fmt.Errorf("%s %s@%s: no file matches --include %s (files: %s)", repoType, repoID, revision, strings.Join(include, " "), sample(all))
		}
		return fmt.Errorf("%s %s@%s has no files", repoType, repoID, revision)
	}
	if repoType == Model && include == nil {
		for _, f := range files {
			if strings.HasSuffix(f, ".safetensors") {
				return nil
			}
		}
		return fmt.Errorf("model %s@%s has no top-level *.safetensors weights (files: %s): llamatune reads safetensors; pick a revision or repository that has them, or name files with --include", repoID, revision, sample(all))
	}
	return nil
}

func sample(names []string) string {
	if len(names) > 8 {
		return strings.Join(names[:8], ", ") + fmt.Sprintf(", ... (%d in all)", len(names))
	}
	return strings.Join(names, ", ")
}

// checkRepoPath refuses a file name from the Hub that would land outside the snapshot.
func checkRepoPath(name string) error {
	if name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, "\\") || strings.Contains(name, "\x00") {
		return fmt.Errorf("unsafe file name %q in the repository listing", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == "" || part == "." || part == ".." {
			return fmt.Errorf("unsafe file name %q in the repository listing", name)
		}
	}
	return nil
}

// cached resolves revision from the cache alone: refs/REVISION (or the commit itself) and
// its snapshot directory. why, when set, says why the network is not used.
func (c *Client) cached(storage, repoType, repoID, revision string, include []string, why string) (string, error) {
	fail := func(format string, args ...any) (string, error) {
		msg := fmt.Sprintf(format, args...)
		if why != "" {
			msg += "; " + why + ": unset it to download, or run llamatune download " + repoID + " where the Hub is reachable"
		}
		return "", newErr(ErrNotCached, "%s", msg)
	}
	commit := revision
	if !commitRE.MatchString(revision) {
		b, err := os.ReadFile(filepath.Join(storage, "refs", filepath.FromSlash(revision)))
		if err != nil {
			return fail("%s %s@%s is not in the cache %s (no refs/%s)", repoType, repoID, revision, c.CacheDir, revision)
		}
		commit = strings.TrimSpace(string(b))
	}
	snap := filepath.Join(storage, "snapshots", commit)
	if st, err := os.Stat(snap); err != nil || !st.IsDir() {
		return fail("%s %s@%s is not in the cache %s (no snapshots/%s)", repoType, repoID, revision, c.CacheDir, commit)
	}
	if repoType == Model && (include == nil || slices.Equal(include, MetadataModelFiles)) {
		if _, err := os.Stat(filepath.Join(snap, "config.json")); err != nil {
			return fail("%s %s@%s: the cached snapshot %s has no config.json", repoType, repoID, revision, snap)
		}
	}
	if repoType == Model && include == nil {
		if missing := missingWeights(snap); missing != "" {
			return fail("%s %s@%s: the cached snapshot %s lacks %s (fetched without its weights, or cut)", repoType, repoID, revision, snap, missing)
		}
	}
	return snap, nil
}

// missingWeights names a safetensors file a cached model snapshot lacks: a shard its
// index lists, or any weights at all ("" when complete).
func missingWeights(snap string) string {
	if b, err := os.ReadFile(filepath.Join(snap, "model.safetensors.index.json")); err == nil {
		var idx struct {
			WeightMap map[string]string `json:"weight_map"`
		}
		if json.Unmarshal(b, &idx) == nil && len(idx.WeightMap) > 0 {
			for _, f := range idx.WeightMap {
				if _, err := os.Stat(filepath.Join(snap, filepath.FromSlash(f))); err != nil {
					return f
				}
			}
			return ""
		}
	}
	if m, _ := filepath.Glob(filepath.Join(snap, "*.safetensors")); len(m) == 0 {
		return "*.safetensors"
	}
	return ""
}

// writeRef records refs/REVISION = commit (atomically), unless revision is the commit.
func writeRef(storage, revision, commit string) error {
	if revision == commit {
		return nil
	}
	ref := filepath.Join(storage, "refs", filepath.FromSlash(revision))
	if b, err := os.ReadFile(ref); err == nil && string(b) == commit {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(ref), 0o755); err != nil {
		return err
	}
	tmp := fmt.Sprintf("%s.%d.tmp", ref, os.Getpid())
	if err := os.WriteFile(tmp, []byte(commit), 0o644); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, ref)
}

// link makes snapshots/COMMIT/FILE a relative symlink to blobs/ETAG, as huggingface_hub's
// _create_symlink does (a hard link, then a copy, where symlinks fail).
func link(storage, commit string, m fileMeta) error {
	blob := filepath.Join(storage, "blobs", m.etag)
	ptr := filepath.Join(storage, "snapshots", commit, filepath.FromSlash(m.name))
	if err := os.MkdirAll(filepath.Dir(ptr), 0o755); err != nil {
		return err
	}
	rel, err := filepath.Rel(filepath.Dir(ptr), blob)
	if err != nil {
		return err
	}
	os.Remove(ptr) // a dangling link of a removed blob
	if err := os.Symlink(rel, ptr); err == nil || errors.Is(err, os.ErrExist) {
		return nil
	}
	if err := os.Link(blob, ptr); err == nil {
		return nil
	}
	return copyFile(blob, ptr)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, dst)
}

// apiURL is the revision-info URL of a repository.
func (c *Client) apiURL(repoType, repoID, revision string) string {
	return c.endpoint() + "/api/" + repoType + "s/" + repoID + "/revision/" + url.PathEscape(revision)
}

// resolveURL is huggingface_hub's hf_hub_url: {endpoint}[/datasets]/{repo}/resolve/{rev}/{file}.
func (c *Client) resolveURL(repoType, repoID, revision, file string) string {
	prefix := ""
	if repoType == Dataset {
		prefix = "/datasets"
	}
	parts := strings.Split(file, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return c.endpoint() + prefix + "/" + repoID + "/resolve/" + url.PathEscape(revision) + "/" + strings.Join(parts, "/")
}

// newRequest is a request carrying the User-Agent and, when auth, the token.
func (c *Client) newRequest(ctx context.Context, method, u string, auth bool) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "llamatune/hub")
	if auth && c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	return req, nil
}

// do sends requests made by mk, retrying transport errors and transient statuses (429,
// 5xx) up to Retries times. It returns the last response (the caller closes its body) or
// an error wrapping ErrConnection.
func (c *Client) do(ctx context.Context, hc *http.Client, what string, mk func() (*http.Request, error)) (*http.Response, error) {
	var lastErr error
	for attempt := 0; attempt < c.retries(); attempt++ {
		if attempt > 0 {
			if err := c.wait(ctx, attempt); err != nil {
				return nil, err
			}
		}
		req, err := mk()
		if err != nil {
			return nil, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return nil, context.Cause(ctx)
			}
			lastErr = err
			var op *net.OpError
			if errors.As(err, &op) && op.Op == "dial" {
				break // no route, refused, unknown host: retrying will not help (the cache may)
			}
			continue
		}
		if transient(resp.StatusCode) && attempt+1 < c.retries() {
			resp.Body.Close()
			lastErr = fmt.Errorf("HTTP %d", resp.StatusCode)
			continue
		}
		return resp, nil
	}
	return nil, newErr(ErrConnection, "cannot reach the Hub at %s for %s: %v; check the connection and HF_ENDPOINT (HF_HUB_OFFLINE=1 uses the cache only)", c.endpoint(), what, lastErr)
}

func (c *Client) retries() int {
	if c.Retries <= 0 {
		return 5
	}
	return c.Retries
}

// wait sleeps attempt*RetryWait or until ctx ends.
func (c *Client) wait(ctx context.Context, attempt int) error {
	if c.RetryWait <= 0 {
		return context.Cause(ctx)
	}
	t := time.NewTimer(time.Duration(attempt) * c.RetryWait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// revisionInfo lists the files of a revision and its commit.
func (c *Client) revisionInfo(ctx context.Context, repoType, repoID, revision string) (*revisionInfo, error) {
	u := c.apiURL(repoType, repoID, revision)
	resp, err := c.do(ctx, c.httpClient(), repoType+" "+repoID, func() (*http.Request, error) {
		return c.newRequest(ctx, http.MethodGet, u, true)
	})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, c.statusError(resp, repoType, repoID, revision, "")
	}
	var info revisionInfo
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&info); err != nil {
		return nil, newErr(ErrConnection, "%s %s@%s: bad answer from %s: %v", repoType, repoID, revision, u, err)
	}
	return &info, nil
}

// heads fetches the metadata of files in parallel.
func (c *Client) heads(ctx context.Context, repoType, repoID, commit string, files []string) ([]fileMeta, error) {
	metas := make([]fileMeta, len(files))
	err := c.parallel(ctx, len(files), func(ctx context.Context, i int) error {
		m, err := c.head(ctx, repoType, repoID, commit, files[i])
		metas[i] = m
		return err
	})
	return metas, err
}

// head is huggingface_hub's get_hf_file_metadata: a HEAD with Accept-Encoding: identity
// that follows relative redirects only; an absolute one (to the LFS/CDN host) is where the
// file is fetched from.
func (c *Client) head(ctx context.Context, repoType, repoID, commit, file string) (fileMeta, error) {
	hc := *c.httpClient()
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	u := c.resolveURL(repoType, repoID, commit, file)
	base, _ := url.Parse(c.endpoint())
	for hops := 0; hops < 10; hops++ {
		cur, err := url.Parse(u)
		if err != nil {
			return fileMeta{}, fmt.Errorf("%s: bad URL %q: %v", file, u, err)
		}
		resp, err := c.do(ctx, &hc, file+" of "+repoID, func() (*http.Request, error) {
			req, err := c.newRequest(ctx, http.MethodHead, u, cur.Host == base.Host && cur.Scheme == base.Scheme)
			if err == nil {
				req.Header.Set("Accept-Encoding", "identity")
			}
			return req, err
		})
		if err != nil {
			return fileMeta{}, err
		}
		resp.Body.Close()
		location := u
		redirect := resp.StatusCode >= 300 && resp.StatusCode < 400
		if redirect {
			loc, err := url.Parse(resp.Header.Get("Location"))
			if err != nil || resp.Header.Get("Location") == "" {
				return fileMeta{}, newErr(ErrConnection, "%s of %s: redirect (HTTP %d) without a valid Location", file, repoID, resp.StatusCode)
			}
			next := cur.ResolveReference(loc)
			if loc.Host == "" {
				u = next.String()
				continue // a relative redirect: the Hub itself (a renamed repo, resolve-cache)
			}
			location = next.String()
		} else if resp.StatusCode != http.StatusOK {
			return fileMeta{}, c.statusError(resp, repoType, repoID, commit, file)
		}
		m := fileMeta{name: file, location: location}
		m.etag = normalizeETag(resp.Header.Get("X-Linked-Etag"))
		if m.etag == "" {
			m.etag = normalizeETag(resp.Header.Get("ETag"))
		}
		size := resp.Header.Get("X-Linked-Size")
		if size == "" && !redirect {
			size = resp.Header.Get("Content-Length")
			if size == "" && resp.ContentLength >= 0 {
				size = strconv.FormatInt(resp.ContentLength, 10)
			}
		}
		m.size, err = strconv.ParseInt(size, 10, 64)
		switch {
		case resp.Header.Get("X-Repo-Commit") == "":
			return m, newErr(ErrConnection, "%s of %s: no X-Repo-Commit header: is HF_ENDPOINT=%s a Hugging Face Hub (or is a proxy in the way)?", file, repoID, c.endpoint())
		case m.etag == "" || strings.ContainsAny(m.etag, `/\`) || m.etag == "." || m.etag == "..":
			return m, newErr(ErrConnection, "%s of %s: no usable ETag (%q); cannot name its blob", file, repoID, m.etag)
		case err != nil || m.size < 0:
			return m, newErr(ErrConnection, "%s of %s: no file size (X-Linked-Size / Content-Length)", file, repoID)
		}
		if loc, err := url.Parse(location); err == nil {
			m.auth = loc.Host == base.Host
		}
		return m, nil
	}
	return fileMeta{}, newErr(ErrConnection, "%s of %s: too many redirects", file, repoID)
}

// normalizeETag strips W/ and the quotes (huggingface_hub's _normalize_etag).
func normalizeETag(e string) string {
	return strings.Trim(strings.TrimPrefix(e, "W/"), `"`)
}

// parallel runs f(ctx, i) for i < n on Workers goroutines; the first error cancels the
// rest and is returned.
func (c *Client) parallel(ctx context.Context, n int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	workers := c.Workers
	if workers <= 0 {
		workers = 4
	}
	next := make(chan int)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for w := 0; w < min(workers, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(ctx, i); err != nil {
					once.Do(func() { first = err; cancel(err) })
				}
			}
		}()
	}
feed:
	for i := 0; i < n; i++ {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if first != nil {
		return first
	}
	return context.Cause(ctx)
}

// fetchAll downloads the blobs of metas not in blobs/ yet, each once.
func (c *Client) fetchAll(ctx context.Context, storage, repoType, repoID, revision string, metas []fileMeta) error {
	blobs := filepath.Join(storage, "blobs")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return c.diskErr(err, "blobs/")
	}
	seen := map[string]bool{}
	var todo []fileMeta
	var total int64
	for _, m := range metas {
		if seen[m.etag] {
			continue
		}
		seen[m.etag] = true
		if _, err := os.Stat(filepath.Join(blobs, m.etag)); err == nil {
			continue
		}
		todo = append(todo, m)
		total += m.size
	}
	if len(todo) == 0 {
		return nil
	}
	need := total
	for _, m := range todo {
		if st, err := os.Stat(filepath.Join(blobs, m.etag+".incomplete")); err == nil {
			need -= min(st.Size(), m.size)
		}
	}
	free := freeBytes(blobs)
	if c.freeBytes != nil {
		free = c.freeBytes(blobs)
	}
	if free >= 0 && free < need {
		return newErr(ErrDiskFull, "%s@%s needs %.2f GB more in the Hugging Face cache %s but its disk has %.2f GB free: free space there or point HF_HUB_CACHE (or HF_HOME) at a larger disk",
			repoID, revision, float64(need)/1e9, c.CacheDir, float64(free)/1e9)
	}
	sort.SliceStable(todo, func(a, b int) bool { return todo[a].size > todo[b].size }) // big ones first
	p := c.newProgress(fmt.Sprintf("%s@%s", repoID, revision), len(todo), total)
	err := c.parallel(ctx, len(todo), func(ctx context.Context, i int) error {
		return c.fetchBlob(ctx, blobs, todo[i], p)
	})
	p.finish(err)
	return err
}

// logf writes a line to Progress, if any.
func (c *Client) logf(format string, args ...any) {
	if c.Progress != nil {
		fmt.Fprintf(c.Progress, format, args...)
	}
}
