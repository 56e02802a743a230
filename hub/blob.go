package hub

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

var sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// errWrite marks a failure to write the local file (not retried, unlike a cut connection).
type errWrite struct{ err error }

func (e errWrite) Error() string { return e.err.Error() }
func (e errWrite) Unwrap() error { return e.err }

// diskErr names the cache and what to do for a local write failure; a full disk wraps
// ErrDiskFull.
func (c *Client) diskErr(err error, what string) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return newErr(ErrDiskFull, "disk full writing %s into the Hugging Face cache %s: free space there or point HF_HUB_CACHE (or HF_HOME) at a larger disk, then run again; what was received is kept as an .incomplete blob and resumed", what, c.CacheDir)
	}
	return fmt.Errorf("writing %s into the Hugging Face cache %s: %w", what, c.CacheDir, err)
}

// fetchBlob downloads one file into blobs/ETAG: appended to blobs/ETAG.incomplete (resumed
// with a Range request where a previous attempt or run stopped), its size and, for an LFS
// file whose etag is a sha256, its digest checked, then renamed into place.
func (c *Client) fetchBlob(ctx context.Context, blobs string, m fileMeta, p *progress) error {
	final := filepath.Join(blobs, m.etag)
	inc := final + ".incomplete"
	unlock, err := c.lockBlob(ctx, filepath.Dir(blobs), m)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := os.Stat(final); err == nil { // another process fetched it meanwhile
		p.add(m.size)
		return nil
	}
	f, err := os.OpenFile(inc, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return c.diskErr(err, m.name)
	}
	defer f.Close()
	have, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return c.diskErr(err, m.name)
	}
	var h hash.Hash
	if sha256RE.MatchString(m.etag) {
		h = sha256.New()
	}
	if have > m.size { // not this file's: start over
		have = 0
		if err := f.Truncate(0); err != nil {
			return c.diskErr(err, m.name)
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return c.diskErr(err, m.name)
		}
	}
	if h != nil && have > 0 {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return c.diskErr(err, m.name)
		}
		if _, err := io.CopyN(h, f, have); err != nil {
			return c.diskErr(err, m.name)
		}
	}
	p.add(have)
	var w io.Writer = f
	if c.wrapWriter != nil {
		w = c.wrapWriter(f)
	}
	fails := 0
	var lastErr error
	best := have // the most bytes ever held: an attempt that does not pass it is no progress
	for have < m.size {
		if fails >= c.retries() {
			return newErr(ErrConnection, "%s: the connection was cut %d times in a row (%v); %d of %d bytes are kept in %s and the next run resumes from there",
				m.name, fails, lastErr, have, m.size, inc)
		}
		if fails > 0 {
			if err := c.wait(ctx, fails); err != nil {
				return err
			}
		}
		n, restarted, err := c.getRange(ctx, m, f, w, h, have, p)
		if restarted {
			have = 0
		}
		have += n
		if err == nil && have < m.size {
			err = fmt.Errorf("the body ended after %d of %d bytes", have, m.size) // short body: retried, counted
		}
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return context.Cause(ctx)
		case errors.As(err, new(errWrite)):
			return c.diskErr(err, m.name)
		case errors.As(err, new(*hubError)):
			return err
		default:
			lastErr = err
			if have > best {
				best, fails = have, 0
			}
			fails++
		}
	}
	if have != m.size {
		os.Remove(inc)
		return newErr(ErrChecksum, "%s: received %d bytes, the Hub announced %d; the partial file was removed, run again", m.name, have, m.size)
	}
	if h != nil {
		if got := hex.EncodeToString(h.Sum(nil)); got != m.etag {
			f.Close()
			os.Remove(inc)
			return newErr(ErrChecksum, "%s: sha256 %s does not match the Hub's %s; the download was removed, run again (a proxy or the disk corrupted it)", m.name, got, m.etag)
		}
	}
	if err := f.Close(); err != nil {
		return c.diskErr(err, m.name)
	}
	if err := os.Rename(inc, final); err != nil {
		return c.diskErr(err, m.name)
	}
	p.done(m)
	return nil
}

// lockBlob takes .locks/{repo folder}/{etag}.lock in the cache, the lock huggingface_hub
// takes for the same blob, waiting (until ctx ends) while another process holds it. Where
// the file system has no locks it goes on without one.
func (c *Client) lockBlob(ctx context.Context, storage string, m fileMeta) (unlock func(), err error) {
	path := filepath.Join(c.CacheDir, ".locks", filepath.Base(storage), m.etag+".lock")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, c.diskErr(err, path)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, c.diskErr(err, path)
	}
	for waited := false; ; waited = true {
		ok, err := tryLock(f)
		if err != nil || ok {
			return func() { f.Close() }, nil // closing releases the lock
		}
		if !waited {
			c.logf("hub: %s is being downloaded by another process (%s holds the lock); waiting\n", m.name, path)
		}
		t := time.NewTimer(200 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, context.Cause(ctx)
		case <-t.C:
		}
	}
}

// getRange GETs m.location from byte offset have onward and appends it to w (and h). It
// returns the bytes written; restarted is true when the server ignored the Range and sent
// the whole file (the file and hash were reset first). A write failure comes back as
// errWrite; an HTTP error that retrying cannot fix as a *hubError.
func (c *Client) getRange(ctx context.Context, m fileMeta, f *os.File, w io.Writer, h hash.Hash, have int64, p *progress) (n int64, restarted bool, err error) {
	// A watchdog cuts an attempt that receives nothing for Timeout (it is then resumed).
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var watchdog *time.Timer
	if c.Timeout > 0 {
		watchdog = time.AfterFunc(c.Timeout, func() {
			cancel(fmt.Errorf("no data for %s (HF_HUB_DOWNLOAD_TIMEOUT)", c.Timeout))
		})
		defer watchdog.Stop()
	}
	stalled := func(err error) error {
		if ctx.Err() == nil && actx.Err() != nil {
			return context.Cause(actx)
		}
		return err
	}
	req, err := c.newRequest(actx, http.MethodGet, m.location, m.auth)
	if err != nil {
		return 0, false, err
	}
	req.Header.Set("Accept-Encoding", "identity")
	if have > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(have, 10)+"-")
	}
	hc := *c.httpClient()
	hc.CheckRedirect = func(r *http.Request, via []*http.Request) error {
		if len(via) >= 10 {
			return errors.New("too many redirects")
		}
		if r.URL.Host != via[0].URL.Host || r.URL.Scheme != via[0].URL.Scheme {
			r.Header.Del("Authorization") // the token goes to the Hub only (not to a CDN, even a subdomain, nor over a downgraded scheme)
		}
		return nil
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, false, stalled(err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && have > 0:
		if !strings.HasPrefix(resp.Header.Get("Content-Range"), "bytes "+strconv.FormatInt(have, 10)+"-") {
			return 0, false, fmt.Errorf("HTTP 206 with Content-Range %q for a request from byte %d", resp.Header.Get("Content-Range"), have)
		}
	case resp.StatusCode == http.StatusOK:
		if have > 0 { // the server ignored the Range: start over
			if err := f.Truncate(0); err != nil {
				return 0, false, errWrite{err}
			}
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return 0, false, errWrite{err}
			}
			if h != nil {
				h.Reset()
			}
			p.add(-have)
			restarted = true
		}
	case transient(resp.StatusCode):
		return 0, false, fmt.Errorf("HTTP %d", resp.StatusCode)
	default:
		return 0, false, newErr(ErrConnection, "%s: download from %s failed with HTTP %d; run again", m.name, hostOf(m.location), resp.StatusCode)
	}
	buf := make([]byte, 1<<20)
	for {
		k, rerr := resp.Body.Read(buf)
		if watchdog != nil {
			watchdog.Reset(c.Timeout)
		}
		if k > 0 {
			if _, werr := w.Write(buf[:k]); werr != nil {
				return n, restarted, errWrite{werr}
			}
			if h != nil {
				h.Write(buf[:k])
			}
			n += int64(k)
			p.add(int64(k))
		}
		if rerr == io.EOF {
			return n, restarted, nil
		}
		if rerr != nil {
			return n, restarted, stalled(rerr)
		}
	}
}

func hostOf(u string) string {
	if r, err := http.NewRequest(http.MethodGet, u, nil); err == nil {
		return r.URL.Host
	}
	return u
}

// progress shows the bytes of one Snapshot: a bar on a terminal, a line per file
// otherwise, nothing without a writer.
type progress struct {
	w     io.Writer
	bar   *progressbar.ProgressBar
	mu    sync.Mutex
	start time.Time
}

func (c *Client) newProgress(what string, files int, total int64) *progress {
	p := &progress{w: c.Progress, start: time.Now()}
	if p.w == nil {
		return p
	}
	if f, ok := p.w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(p.w),
			progressbar.OptionSetDescription(fmt.Sprintf("downloading %s (%d files)", what, files)),
			progressbar.OptionShowBytes(true),
			progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
		return p
	}
	fmt.Fprintf(p.w, "downloading %s: %d file(s), %.1f MB, into %s\n", what, files, float64(total)/1e6, c.CacheDir)
	return p
}

func (p *progress) add(n int64) {
	if p.bar != nil && n > 0 {
		p.bar.Add64(n)
	}
}

func (p *progress) done(m fileMeta) {
	if p.w != nil && p.bar == nil {
		p.mu.Lock()
		fmt.Fprintf(p.w, "  %s (%.1f MB)\n", m.name, float64(m.size)/1e6)
		p.mu.Unlock()
	}
}

func (p *progress) finish(err error) {
	if p.bar != nil {
		if err == nil {
			p.bar.Finish()
		} else {
			p.bar.Exit()
		}
	}
	if p.w != nil && err == nil {
		fmt.Fprintf(p.w, "downloaded in %s\n", time.Since(p.start).Round(100*time.Millisecond))
	}
}
