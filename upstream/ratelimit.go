package upstream

// The rate-limit guard. Docker Hub counts a manifest GET as a pull and answers 429 once an
// address has spent its pulls (100 per 6 h for anonymous clients), while HEADs stay free;
// other registries throttle whole request streams. The guard remembers what upstream said
// and, while upstream has asked us to wait, refuses requests before they leave, so that the
// cache serves stale instead and no request spends (or extends) the limit.
//
// What arms it: the answer to a request made by doWith (manifests, tags pages, blobs).
//   - 429 to a manifest GET: the pull limit. Manifest GETs are held back until the retry
//     time; HEADs, tags pages and blobs go on (Docker Hub's pull limit spares them: a
//     tags page is no pull, and a blob is only fetched for a manifest we already have).
//   - 429 to a tags page: tags pages are held back, nothing else, unless the answer says
//     the limit is the account's or the address's (RateLimit-Remaining: 0, Docker Hub's
//     way), when everything is. A registry throttling one costly listing must not stop
//     every other client's manifests for as long as it asks (an hour, seen from ECR).
//   - 429 to a HEAD, or to a blob GET: upstream limits requests that are not pulls, so no
//     request of any kind is known to be spared. Everything is held back.
//   - The retry time is Retry-After (seconds or HTTP-date), capped at maxRateLimitHold; a
//     429 that names none (absent, unparsable, zero, in the past) holds for
//     Options.RateLimitHold (default DefaultRateLimitHold, 60 s): one probe a minute is
//     cheap, and hammering a limited upstream is not.
//
// Whose answers count: answers from the registry's own origin, and answers to manifest
// requests from wherever the registry redirected them (registry.k8s.io and lscr.io serve
// manifests from redirect targets, whose limits are then the ones we run into). A blob
// answer from a redirect target (a CDN) never counts: a CDN throttling one download says
// nothing about the registry's API, and its headers are its own. The token realm
// (auth.docker.io, ghcr.io/token) is not watched: it is a separate service, and its 429
// reaches the caller as KindRateLimited without holding the registry back. Neither the
// realm nor the /v2/ ping (also unwatched) is ever asked on behalf of a held-back request:
// the guard refuses before authorization.
//
// RateLimit-Limit / RateLimit-Remaining (Docker Hub: "100;w=21600", or a plain "100") are
// recorded from the same answers, for metrics; they never hold anything back by
// themselves, since Docker Hub's window slides and the first GET after remaining reaches 0
// is the one that tells (with a 429) when to stop.

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultRateLimitHold is how long a 429 without a usable Retry-After holds requests back.
const DefaultRateLimitHold = 60 * time.Second

// maxRateLimitHold bounds a Retry-After (Docker Hub's window is 6 h); a registry that asks
// for longer gets asked again after this, which costs one request.
const maxRateLimitHold = 6 * time.Hour

// RateLimitState is what the guard knows about one upstream's rate limit.
type RateLimitState struct {
	// Known is set once a RateLimit-Limit or RateLimit-Remaining header was seen; Limit and
	// Remaining are -1 until their own header was.
	Known     bool
	Limit     int
	Remaining int
	// Window is the w= of the header (Docker Hub: 6 h), 0 when unsaid.
	Window time.Duration
	// Updated is when the headers were last seen.
	Updated time.Time
	// GETBlockedUntil is when manifest GETs may go again after a 429 to one;
	// TagsBlockedUntil is when tags pages may go again after a 429 to one; AllBlockedUntil
	// is when anything may go again after a 429 to anything else. Times in the past (or
	// zero) block nothing.
	GETBlockedUntil  time.Time
	TagsBlockedUntil time.Time
	AllBlockedUntil  time.Time
}

// target is what a guarded request asks for: the holds differ by it.
type target uint8

const (
	targetOther    target = iota // blobs
	targetManifest               // manifests/<ref>
	targetTags                   // tags/list
)

// targetOf tells a doWith path ("manifests/<ref>", "tags/list?n=..") for the guard.
func targetOf(path string) target {
	switch {
	case strings.HasPrefix(path, "manifests/"):
		return targetManifest
	case strings.HasPrefix(path, "tags/list"):
		return targetTags
	}
	return targetOther
}

// rateGuard is the per-Registry guard state. The zero value is ready for use.
type rateGuard struct {
	mu sync.Mutex
	// now is the clock (nil: time.Now); hold is the no-Retry-After hold (0: the default).
	now  func() time.Time
	hold time.Duration

	known                         bool
	limit, remaining              int
	window                        time.Duration
	updated                       time.Time
	getUntil, tagsUntil, allUntil time.Time
}

func (g *rateGuard) clock() time.Time {
	if g.now != nil {
		return g.now()
	}
	return time.Now()
}

func (g *rateGuard) defaultHold() time.Duration {
	if g.hold > 0 {
		return g.hold
	}
	return DefaultRateLimitHold
}

// held reports whether a request of method for t must not be sent now: until when, and
// whether it is held by the hold on everything (rather than the one on its own kind).
func (g *rateGuard) held(method string, t target) (until, now time.Time, all, ok bool) {
	now = g.clock()
	g.mu.Lock()
	defer g.mu.Unlock()
	if now.Before(g.allUntil) {
		until, all = g.allUntil, true
	}
	own := time.Time{}
	switch {
	case method == http.MethodGet && t == targetManifest:
		own = g.getUntil
	case t == targetTags:
		own = g.tagsUntil
	}
	if now.Before(own) && own.After(until) {
		until = own
	}
	return until, now, all, !until.IsZero()
}

// observe records one counted answer: its rate-limit headers, and a 429's hold.
func (g *rateGuard) observe(method string, t target, status int, h http.Header) {
	now := g.clock()
	limit, lw, limitOK := parseRateLimit(h.Get("RateLimit-Limit"))
	remaining, rw, remainingOK := parseRateLimit(h.Get("RateLimit-Remaining"))
	if !limitOK && !remainingOK && status != http.StatusTooManyRequests {
		return
	}
	var hold time.Duration
	if status == http.StatusTooManyRequests {
		hold = parseRetryAfter(h.Get("Retry-After"), now)
		if hold <= 0 {
			hold = g.defaultHold()
		}
		hold = min(hold, maxRateLimitHold)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if limitOK || remainingOK {
		if !g.known {
			g.limit, g.remaining = -1, -1
		}
		g.known, g.updated = true, now
		if limitOK {
			g.limit = limit
		}
		if remainingOK {
			g.remaining = remaining
		}
		if w := max(lw, rw); w > 0 {
			g.window = w
		}
	}
	if hold > 0 {
		until := now.Add(hold)
		switch {
		case method == http.MethodGet && t == targetManifest:
			g.getUntil = later(g.getUntil, until)
		case t == targetTags && !(remainingOK && remaining == 0):
			g.tagsUntil = later(g.tagsUntil, until)
		default:
			g.allUntil = later(g.allUntil, until)
		}
	}
}

func (g *rateGuard) state() RateLimitState {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := RateLimitState{Known: g.known, Limit: -1, Remaining: -1, Window: g.window, Updated: g.updated,
		GETBlockedUntil: g.getUntil, TagsBlockedUntil: g.tagsUntil, AllBlockedUntil: g.allUntil}
	if g.known {
		s.Limit, s.Remaining = g.limit, g.remaining
	}
	return s
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// RateLimit returns what is known of the upstream's rate limit and any hold in force.
func (r *Registry) RateLimit() RateLimitState { return r.rl.state() }

// holdBack refuses, without any network traffic, a request the guard holds back.
func (r *Registry) holdBack(method, path string) error {
	t := targetOf(path)
	until, now, all, ok := r.rl.held(method, t)
	if !ok {
		return nil
	}
	what := "manifest GETs"
	switch {
	case all:
		what = "all requests"
	case t == targetTags:
		what = "tags listings"
	}
	return &Error{Kind: KindRateLimited, Upstream: r.name, HeldBack: true, RetryAfter: until.Sub(now),
		Message: "holding back " + what + ": upstream rate limit until " + until.UTC().Format(time.RFC3339)}
}

// observeRateLimit feeds the answer to a doWith request to the guard, if it counts (see the
// top of this file).
func (r *Registry) observeRateLimit(method, path string, resp *http.Response) {
	t := targetOf(path)
	if t != targetManifest && (resp.Request == nil || !sameOrigin(r.base, resp.Request.URL)) {
		return
	}
	r.rl.observe(method, t, resp.StatusCode, resp.Header)
}

// parseRateLimit reads a RateLimit-Limit or RateLimit-Remaining value: a count, optionally
// with a window in seconds ("100;w=21600", Docker Hub's form) or as a plain count ("100").
// Of a list ("10, 10;w=1, 50;w=60", an early IETF draft) the first count is the one in
// force, with the window of the first entry that names that count and a window.
func parseRateLimit(v string) (n int, window time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, 0, false
	}
	items := strings.Split(v, ",")
	n, window, ok = parseRateLimitItem(items[0])
	if !ok {
		return 0, 0, false
	}
	for _, it := range items[1:] {
		if window > 0 {
			break
		}
		if m, w, ok := parseRateLimitItem(it); ok && m == n {
			window = w
		}
	}
	return n, window, true
}

func parseRateLimitItem(s string) (int, time.Duration, bool) {
	count, params, _ := strings.Cut(s, ";")
	n, err := strconv.Atoi(strings.TrimSpace(count))
	if err != nil || n < 0 {
		return 0, 0, false
	}
	var window time.Duration
	for p := range strings.SplitSeq(params, ";") {
		k, val, found := strings.Cut(strings.TrimSpace(p), "=")
		if !found || !strings.EqualFold(strings.TrimSpace(k), "w") {
			continue
		}
		// A window too long for a Duration would wrap around: treat it as unsaid.
		if secs, err := strconv.Atoi(strings.Trim(strings.TrimSpace(val), `"`)); err == nil && secs > 0 && int64(secs) <= int64(time.Duration(1<<63-1)/time.Second) {
			window = time.Duration(secs) * time.Second
		}
	}
	return n, window, true
}
