package hub

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Kinds of failure; test one with errors.Is.
var (
	ErrUnauthorized     = errors.New("bad or missing token")
	ErrGated            = errors.New("gated repository")
	ErrRepoNotFound     = errors.New("repository not found")
	ErrRevisionNotFound = errors.New("revision not found")
	ErrEntryNotFound    = errors.New("file not found")
	ErrNotCached        = errors.New("not in the cache")
	ErrDiskFull         = errors.New("disk full")
	ErrChecksum         = errors.New("checksum mismatch")
	ErrConnection       = errors.New("connection failed")
)

// hubError is an error of one kind with a message saying what to do.
type hubError struct {
	kind error
	msg  string
}

func (e *hubError) Error() string { return e.msg }
func (e *hubError) Unwrap() error { return e.kind }

func newErr(kind error, format string, args ...any) error {
	return &hubError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// repoPage is the repository's web page on the endpoint.
func (c *Client) repoPage(repoType, repoID string) string {
	if repoType == Dataset {
		return c.endpoint() + "/datasets/" + repoID
	}
	return c.endpoint() + "/" + repoID
}

// statusError turns a Hub error response into an error naming the repository (and file)
// and saying what to do. It reads X-Error-Code (GatedRepo, RepoNotFound, RevisionNotFound,
// EntryNotFound) and X-Error-Message as huggingface_hub's hf_raise_for_status does.
func (c *Client) statusError(resp *http.Response, repoType, repoID, revision, file string) error {
	code := resp.Header.Get("X-Error-Code")
	hubMsg := resp.Header.Get("X-Error-Message")
	suffix := ""
	if hubMsg != "" {
		suffix = " (the Hub says: " + hubMsg + ")"
	}
	what := repoType + " " + repoID
	switch {
	case code == "GatedRepo" || (resp.StatusCode == http.StatusForbidden && strings.Contains(strings.ToLower(hubMsg), "gated")):
		return newErr(ErrGated, "%s is gated: accept the license at %s with your account and set HF_TOKEN (or run huggingface-cli login) to a token of that account%s",
			what, c.repoPage(repoType, repoID), suffix)
	case code == "RepoNotFound":
		if c.Token == "" {
			return newErr(ErrRepoNotFound, "%s not found on %s: check the name; if it is private, set HF_TOKEN (or run huggingface-cli login)%s", what, c.endpoint(), suffix)
		}
		return newErr(ErrRepoNotFound, "%s not found on %s, or the token has no access to it: check the name and the token's permissions%s", what, c.endpoint(), suffix)
	case code == "RevisionNotFound":
		return newErr(ErrRevisionNotFound, "revision %q of %s not found: check the branch, tag or commit (see %s/tree/main)%s", revision, what, c.repoPage(repoType, repoID), suffix)
	case code == "EntryNotFound":
		return newErr(ErrEntryNotFound, "file %s not found in %s@%s: check --include and the revision%s", file, what, revision, suffix)
	case resp.StatusCode == http.StatusUnauthorized:
		return newErr(ErrUnauthorized, "bad or missing token for %s: set HF_TOKEN or run huggingface-cli login%s", what, suffix)
	case resp.StatusCode == http.StatusForbidden:
		return newErr(ErrUnauthorized, "access to %s denied (HTTP 403): the token lacks permission for it; check it at %s/settings/tokens%s", what, c.endpoint(), suffix)
	case resp.StatusCode == http.StatusNotFound:
		if file != "" {
			return newErr(ErrEntryNotFound, "file %s of %s@%s not found (HTTP 404)%s", file, what, revision, suffix)
		}
		return newErr(ErrRepoNotFound, "%s@%s not found (HTTP 404): check the name and revision%s", what, revision, suffix)
	}
	target := what
	if file != "" {
		target = file + " of " + what
	}
	return newErr(ErrConnection, "%s: the Hub answered HTTP %d%s; try again later", target, resp.StatusCode, suffix)
}

// transient reports whether an HTTP status is worth retrying.
func transient(status int) bool {
	return status == http.StatusTooManyRequests || status == http.StatusRequestTimeout || status >= 500
}
