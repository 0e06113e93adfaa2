package upstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Kind says what went wrong upstream, coarsely enough that callers can decide what to do:
// the cache serves stale on Unavailable and RateLimited, remembers NotFound and Denied, and
// never caches anything from Invalid.
type Kind int

// The kinds of upstream failure.
const (
	KindNotFound    Kind = iota + 1 // 404: the repository or reference does not exist
	KindDenied                      // 401/403 for the manifest itself, after a token was issued
	KindRateLimited                 // 429
	KindUnavailable                 // 5xx, timeouts, refused or broken connections
	KindInvalid                     // an answer we must not trust: digest mismatch, bad JSON, too large
)

// Sentinels for errors.Is; an *Error matches the one of its Kind.
var (
	ErrNotFound    = errors.New("upstream: not found")
	ErrDenied      = errors.New("upstream: denied")
	ErrRateLimited = errors.New("upstream: rate limited")
	ErrUnavailable = errors.New("upstream: unavailable")
	ErrInvalid     = errors.New("upstream: invalid answer")
)

// Registry error codes that upstream answers carry (Error.Code) and that callers act on:
// the 404s that say which thing is missing. They are the distribution spec's.
const (
	CodeNameUnknown     = "NAME_UNKNOWN"
	CodeManifestUnknown = "MANIFEST_UNKNOWN"
	CodeBlobUnknown     = "BLOB_UNKNOWN"
)

var sentinels = map[Kind]error{
	KindNotFound: ErrNotFound, KindDenied: ErrDenied, KindRateLimited: ErrRateLimited,
	KindUnavailable: ErrUnavailable, KindInvalid: ErrInvalid,
}

// Error is every failure this package returns. Messages never contain credentials or
// tokens: they are built from status lines and the registry's own error text.
type Error struct {
	Kind     Kind
	Upstream string
	// Status is the HTTP status upstream answered, 0 when no answer came.
	Status int
	// Code is the registry error code upstream sent (MANIFEST_UNKNOWN, ...), if any.
	Code    string
	Message string
	// RetryAfter is how long upstream asked us to wait (429, 503), 0 when unsaid.
	RetryAfter time.Duration
	// Timeout is set when upstream did not answer in time.
	Timeout bool
	// TooLarge is set when an answer exceeded a size limit.
	TooLarge bool
	// Credentials is set (with KindUnavailable) when the token endpoint refused regcache's
	// own credentials: an outage to serve stale through, not a denial of one image.
	Credentials bool
	// HeldBack is set (with KindRateLimited) when the request was never sent because
	// upstream's rate limit is in force (see ratelimit.go); RetryAfter is what is left of it.
	HeldBack bool
	// Busy is set (with KindUnavailable) when the request was never sent because the
	// upstream's concurrency bound stayed full (see slots.go); RetryAfter says when to retry.
	Busy bool
	// BreakerOpen is set (with KindUnavailable) when the request was never sent because the
	// upstream's breaker is open (see breaker.go); RetryAfter says when the next probe goes.
	BreakerOpen bool
}

func (e *Error) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("upstream %s: %s (HTTP %d)", e.Upstream, e.Message, e.Status)
	}
	return fmt.Sprintf("upstream %s: %s", e.Upstream, e.Message)
}

// Is lets errors.Is(err, ErrNotFound) and friends work.
func (e *Error) Is(target error) bool { return sentinels[e.Kind] == target }

// KindOf returns the Kind of err, or 0 when err is no *Error.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}

// NotSent reports an error for a request that never left: held back by the rate-limit
// guard, turned away by the concurrency bound, or refused by the open breaker. Its
// RetryAfter is regcache's own wait, not upstream's word.
func NotSent(err error) bool {
	var e *Error
	return errors.As(err, &e) && (e.HeldBack || e.Busy || e.BreakerOpen)
}

// RetryAfter is how long err says to wait before asking again, 0 when it says nothing.
func RetryAfter(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}

// registryErrors is the distribution spec's error body.
type registryErrors struct {
	Errors []struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

// checkResponse turns a non-2xx answer into an *Error, reading (a bounded part of) the body
// for the registry's own code and message.
func (r *Registry) checkResponse(resp *http.Response) error {
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	e := &Error{Upstream: r.name, Status: resp.StatusCode}
	var body registryErrors
	if resp.Request == nil || resp.Request.Method != http.MethodHead {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(data, &body) == nil && len(body.Errors) > 0 {
			e.Code = body.Errors[0].Code
			e.Message = body.Errors[0].Message
		}
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		e.Kind = KindNotFound
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		e.Kind = KindDenied
	case resp.StatusCode == http.StatusTooManyRequests:
		e.Kind = KindRateLimited
		e.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		if e.RetryAfter <= 0 {
			// The guard holds back for its default then; tell the client the same.
			e.RetryAfter = r.rl.defaultHold()
		}
	case resp.StatusCode >= 500:
		e.Kind = KindUnavailable
		e.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	default:
		e.Kind = KindInvalid
	}
	if e.Message == "" {
		e.Message = strings.ToLower(http.StatusText(resp.StatusCode))
	}
	return e
}

// parseRetryAfter reads either delay-seconds or an HTTP date (RFC 9110 §10.2.3).
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0
		}
		// Saturate: a huge delay must not wrap around into a short or negative one.
		return time.Duration(min(secs, int64(time.Duration(1<<63-1)/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
