package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"regcache/upstream/registrytest"
)

func TestParseRateLimit(t *testing.T) {
	for _, tc := range []struct {
		name, v string
		n       int
		window  time.Duration
		ok      bool
	}{
		{"Docker Hub limit", "100;w=21600", 100, 6 * time.Hour, true},
		{"Docker Hub remaining", "76;w=21600", 76, 6 * time.Hour, true},
		{"Docker Hub authenticated", "200;w=21600", 200, 6 * time.Hour, true},
		{"remaining zero", "0;w=21600", 0, 6 * time.Hour, true},
		{"plain count", "100", 100, 0, true},
		{"spaces", "  100 ; w = 60 ", 100, time.Minute, true},
		{"upper-case W", "100;W=60", 100, time.Minute, true},
		{"quoted window", `100;w="60"`, 100, time.Minute, true},
		{"other params ignored", "100;comment=x;w=60", 100, time.Minute, true},
		{"bad window ignored", "100;w=soon", 100, 0, true},
		{"IETF draft list", "10, 10;w=1, 50;w=60", 10, time.Second, true},
		{"list without matching window", "10, 50;w=60", 10, 0, true},
		{"missing", "", 0, 0, false},
		{"garbage", "lots", 0, 0, false},
		{"garbage with window", "x;w=21600", 0, 0, false},
		{"negative", "-1;w=21600", 0, 0, false},
		{"fraction", "1.5", 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, w, ok := parseRateLimit(tc.v)
			if n != tc.n || w != tc.window || ok != tc.ok {
				t.Fatalf("parseRateLimit(%q) = %d, %v, %v; want %d, %v, %v", tc.v, n, w, ok, tc.n, tc.window, tc.ok)
			}
		})
	}
}

// fakeClock is a settable clock for the guard.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func hdr(pairs ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(pairs); i += 2 {
		h.Add(pairs[i], pairs[i+1])
	}
	return h
}

// guardAllows lists which of the request kinds the guard lets go now.
func guardAllows(g *rateGuard) map[string]bool {
	out := map[string]bool{}
	for _, k := range []struct {
		name   string
		method string
		t      target
	}{
		{"GET manifest", http.MethodGet, targetManifest},
		{"HEAD manifest", http.MethodHead, targetManifest},
		{"GET tags", http.MethodGet, targetTags},
		{"GET other", http.MethodGet, targetOther},
		{"HEAD other", http.MethodHead, targetOther},
	} {
		_, _, _, held := g.held(k.method, k.t)
		out[k.name] = !held
	}
	return out
}

func expectAllows(t *testing.T, what string, g *rateGuard, allowed ...string) {
	t.Helper()
	got := guardAllows(g)
	for k, ok := range got {
		want := false
		for _, a := range allowed {
			want = want || a == k
		}
		if ok != want {
			t.Fatalf("%s: %s allowed=%v, want %v (all: %v)", what, k, ok, want, got)
		}
	}
}

var everything = []string{"GET manifest", "HEAD manifest", "GET tags", "GET other", "HEAD other"}

func TestRateGuardDecisionsOverTime(t *testing.T) {
	clk := newFakeClock()
	g := &rateGuard{now: clk.Now}
	expectAllows(t, "fresh guard", g, everything...)
	if s := g.state(); s.Known || s.Limit != -1 || s.Remaining != -1 || !s.GETBlockedUntil.IsZero() || !s.AllBlockedUntil.IsZero() {
		t.Fatalf("fresh state %+v", s)
	}

	// A 429 to a manifest GET holds manifest GETs back, and nothing else.
	g.observe(http.MethodGet, targetManifest, http.StatusTooManyRequests, hdr("Retry-After", "30"))
	expectAllows(t, "after GET 429", g, "HEAD manifest", "GET tags", "GET other", "HEAD other")
	until, now, all, _ := g.held(http.MethodGet, targetManifest)
	if until.Sub(now) != 30*time.Second || all {
		t.Fatalf("GET hold: %v left, all=%v; want 30s, false", until.Sub(now), all)
	}
	clk.Advance(29 * time.Second)
	expectAllows(t, "29 s later", g, "HEAD manifest", "GET tags", "GET other", "HEAD other")
	clk.Advance(time.Second)
	expectAllows(t, "at the retry time", g, everything...)

	// A 429 to a HEAD holds everything back.
	g.observe(http.MethodHead, targetManifest, http.StatusTooManyRequests, hdr("Retry-After", "10"))
	expectAllows(t, "after HEAD 429", g)
	if _, _, all, _ := g.held(http.MethodHead, targetManifest); !all {
		t.Fatal("HEAD hold is not reported as a hold on everything")
	}
	clk.Advance(10 * time.Second)
	expectAllows(t, "after the HEAD hold", g, everything...)

	// A 429 to a blob GET: upstream limits more than pulls.
	g.observe(http.MethodGet, targetOther, http.StatusTooManyRequests, hdr("Retry-After", "5"))
	expectAllows(t, "after a blob GET 429", g)
	clk.Advance(5 * time.Second)
	expectAllows(t, "after that hold", g, everything...)

	// A 429 to a tags page holds tags pages alone (an hour here, as ECR asked)...
	g.observe(http.MethodGet, targetTags, http.StatusTooManyRequests, hdr("Retry-After", "3600", "RateLimit-Remaining", "12"))
	expectAllows(t, "after a tags 429", g, "GET manifest", "HEAD manifest", "GET other", "HEAD other")
	if until, now, all, _ := g.held(http.MethodGet, targetTags); until.Sub(now) != time.Hour || all {
		t.Fatalf("tags hold: %v left, all=%v; want 1h, false", until.Sub(now), all)
	}
	clk.Advance(time.Hour)
	expectAllows(t, "after the tags hold", g, everything...)
	// ...unless upstream says the account or address has nothing left: then everything.
	g.observe(http.MethodGet, targetTags, http.StatusTooManyRequests, hdr("Retry-After", "5", "RateLimit-Remaining", "0;w=21600"))
	expectAllows(t, "after a tags 429 with RateLimit-Remaining: 0", g)
	clk.Advance(5 * time.Second)
	expectAllows(t, "after that hold", g, everything...)

	// A shorter later hold never shortens a longer one.
	g.observe(http.MethodGet, targetManifest, http.StatusTooManyRequests, hdr("Retry-After", "100"))
	g.observe(http.MethodGet, targetManifest, http.StatusTooManyRequests, hdr("Retry-After", "1"))
	clk.Advance(50 * time.Second)
	expectAllows(t, "longer hold kept", g, "HEAD manifest", "GET tags", "GET other", "HEAD other")
	// Both holds at once: a manifest GET waits for the later one.
	g.observe(http.MethodHead, targetManifest, http.StatusTooManyRequests, hdr("Retry-After", "10"))
	until, now, all, _ = g.held(http.MethodGet, targetManifest)
	if until.Sub(now) != 50*time.Second || !all {
		t.Fatalf("GET under both holds: %v left, all=%v; want 50s, true", until.Sub(now), all)
	}
	if until, now, _, _ := g.held(http.MethodHead, targetManifest); until.Sub(now) != 10*time.Second {
		t.Fatalf("HEAD under both holds: %v left, want 10s", until.Sub(now))
	}
	clk.Advance(10 * time.Second)
	expectAllows(t, "HEAD hold over, GET hold on", g, "HEAD manifest", "GET tags", "GET other", "HEAD other")
	clk.Advance(40 * time.Second)
	expectAllows(t, "all over", g, everything...)

	// Answers other than 429 never hold anything back, whatever their headers say.
	g.observe(http.MethodGet, targetManifest, http.StatusOK, hdr("RateLimit-Remaining", "0;w=21600", "Retry-After", "60"))
	g.observe(http.MethodGet, targetManifest, http.StatusServiceUnavailable, hdr("Retry-After", "60"))
	expectAllows(t, "200 with remaining 0, 503 with Retry-After", g, everything...)
}

func TestRateGuardRetryAfterForms(t *testing.T) {
	for _, tc := range []struct {
		name       string
		retryAfter string // "" leaves the header out
		hold       time.Duration
		want       time.Duration
	}{
		{"seconds", "2", 0, 2 * time.Second},
		{"HTTP-date", "Sun, 01 Jun 2025 12:01:30 GMT", 0, 90 * time.Second},
		{"HTTP-date in the past", "Sun, 01 Jun 2025 11:00:00 GMT", 0, DefaultRateLimitHold},
		{"missing", "", 0, DefaultRateLimitHold},
		{"missing, configured hold", "", 5 * time.Second, 5 * time.Second},
		{"garbage", "later", 0, DefaultRateLimitHold},
		{"zero", "0", 0, DefaultRateLimitHold},
		{"absurd, capped", "31536000", 0, maxRateLimitHold},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newFakeClock()
			g := &rateGuard{now: clk.Now, hold: tc.hold}
			h := http.Header{}
			if tc.retryAfter != "" {
				h.Set("Retry-After", tc.retryAfter)
			}
			g.observe(http.MethodGet, targetManifest, http.StatusTooManyRequests, h)
			until, now, _, ok := g.held(http.MethodGet, targetManifest)
			if !ok || until.Sub(now) != tc.want {
				t.Fatalf("held %v for %v, want %v", ok, until.Sub(now), tc.want)
			}
			if s := g.state(); !s.GETBlockedUntil.Equal(now.Add(tc.want)) || !s.AllBlockedUntil.IsZero() {
				t.Fatalf("state %+v", s)
			}
		})
	}
}

func TestRateGuardRecordsHeaders(t *testing.T) {
	clk := newFakeClock()
	g := &rateGuard{now: clk.Now}
	g.observe(http.MethodHead, targetManifest, http.StatusOK, hdr("ratelimit-limit", "100;w=21600", "ratelimit-remaining", "76;w=21600"))
	s := g.state()
	if !s.Known || s.Limit != 100 || s.Remaining != 76 || s.Window != 6*time.Hour || !s.Updated.Equal(clk.Now()) {
		t.Fatalf("state %+v", s)
	}
	clk.Advance(time.Minute)
	// Only one of the two headers: the other keeps its last value.
	g.observe(http.MethodGet, targetManifest, http.StatusOK, hdr("RateLimit-Remaining", "75"))
	if s := g.state(); s.Limit != 100 || s.Remaining != 75 || s.Window != 6*time.Hour || !s.Updated.Equal(clk.Now()) {
		t.Fatalf("after remaining 75: %+v", s)
	}
	// No headers, or garbage: nothing changes.
	g.observe(http.MethodGet, targetManifest, http.StatusOK, http.Header{})
	g.observe(http.MethodGet, targetManifest, http.StatusOK, hdr("RateLimit-Remaining", "many"))
	if s := g.state(); s.Remaining != 75 {
		t.Fatalf("after garbage: %+v", s)
	}
	// A registry that sends only Remaining, plain.
	g2 := &rateGuard{now: clk.Now}
	g2.observe(http.MethodGet, targetManifest, http.StatusOK, hdr("RateLimit-Remaining", "9"))
	if s := g2.state(); !s.Known || s.Limit != -1 || s.Remaining != 9 || s.Window != 0 {
		t.Fatalf("remaining only: %+v", s)
	}
}

func TestCheckResponse429WithoutRetryAfterTellsTheHold(t *testing.T) {
	for _, hold := range []time.Duration{0, 7 * time.Second} {
		r := &Registry{name: "up"}
		r.rl.hold = hold
		err := r.checkResponse(&http.Response{StatusCode: 429, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("")),
			Request: &http.Request{Method: http.MethodGet}})
		want := hold
		if want == 0 {
			want = DefaultRateLimitHold
		}
		var e *Error
		if !errors.As(err, &e) || e.Kind != KindRateLimited || e.RetryAfter != want || e.HeldBack {
			t.Fatalf("hold %v: %+v, want RetryAfter %v", hold, err, want)
		}
	}
}

// newGuardedRegistry is a Registry for reg whose guard runs on clk.
func newGuardedRegistry(t *testing.T, reg *registrytest.Registry, clk *fakeClock, hold time.Duration) *Registry {
	t.Helper()
	r, err := New(Options{Name: "reg", URL: reg.URL, Timeout: 10 * time.Second, RateLimitHold: hold})
	if err != nil {
		t.Fatal(err)
	}
	r.rl.now = clk.Now
	t.Cleanup(r.Close)
	return r
}

func expectHeldBack(t *testing.T, what string, err error, max time.Duration) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || e.Kind != KindRateLimited || !e.HeldBack {
		t.Fatalf("%s: %v, want a held-back rate-limit error", what, err)
	}
	if e.RetryAfter <= 0 || e.RetryAfter > max || e.Status != 0 || !strings.Contains(e.Message, "holding back") {
		t.Fatalf("%s: %+v, want RetryAfter in (0, %v], no status, a holding-back message", what, e, max)
	}
}

// Against a real registry: a 429 to a manifest GET stops manifest GETs at the door (no
// token, no request), lets HEADs, tags and blobs go, and lifts at the retry time; a 429 to
// a HEAD stops everything. Docker Hub's headers on ordinary answers are recorded.
func TestRateLimitGuardAgainstRegistry(t *testing.T) {
	reg := registrytest.New(t, registrytest.Bearer)
	const repo = "library/nginx"
	p := reg.PushImage(t, repo, "latest", types.DockerManifestSchema2)
	clk := newFakeClock()
	r := newGuardedRegistry(t, reg, clk, 5*time.Second)
	ctx := context.Background()

	hub := registrytest.WithHeaders("ratelimit-limit", "100;w=21600", "ratelimit-remaining", "76;w=21600")
	reg.SetFault(registrytest.Chain(hub,
		registrytest.Once(registrytest.OnMethod(http.MethodGet, registrytest.OnManifests(registrytest.RateLimited(2*time.Second))))))

	if _, err := r.HeadManifest(ctx, repo, "latest"); err != nil {
		t.Fatal(err)
	}
	if s := r.RateLimit(); !s.Known || s.Limit != 100 || s.Remaining != 76 || s.Window != 6*time.Hour {
		t.Fatalf("after a HEAD with Docker Hub headers: %+v", s)
	}

	// The 429 itself comes back as upstream's, and arms the guard.
	_, err := r.GetManifest(ctx, repo, "latest")
	var e *Error
	if !errors.As(err, &e) || e.Kind != KindRateLimited || e.HeldBack || e.Status != 429 || e.RetryAfter != 2*time.Second {
		t.Fatalf("first GET: %+v", err)
	}
	if s := r.RateLimit(); !s.GETBlockedUntil.Equal(clk.Now().Add(2*time.Second)) || !s.AllBlockedUntil.IsZero() {
		t.Fatalf("after the GET 429: %+v", s)
	}

	total := reg.Total()
	_, err = r.GetManifest(ctx, repo, "latest")
	expectHeldBack(t, "GET by tag during the GET hold", err, 2*time.Second)
	_, err = r.GetManifest(ctx, repo, p.Digest)
	expectHeldBack(t, "GET by digest during the GET hold", err, 2*time.Second)
	if reg.Total() != total {
		t.Fatalf("held-back GETs reached upstream: %d requests, want %d", reg.Total(), total)
	}
	heads := reg.Count(http.MethodHead, "manifest")
	if m, err := r.HeadManifest(ctx, repo, "latest"); err != nil || string(m.Digest) != p.Digest {
		t.Fatalf("HEAD during the GET hold: %v %v", m, err)
	}
	if reg.Count(http.MethodHead, "manifest") != heads+1 {
		t.Fatal("the HEAD did not reach upstream")
	}
	if _, err := r.Tags(ctx, repo, PageRequest{}); err != nil {
		t.Fatalf("tags during the GET hold: %v", err)
	}
	cfg := configDigest(t, p.Body)
	if data, _, err := r.GetBlob(ctx, repo, cfg, "", 1<<20); err != nil || data == nil {
		t.Fatalf("blob during the GET hold: %v", err)
	}

	clk.Advance(2 * time.Second)
	if m, err := r.GetManifest(ctx, repo, "latest"); err != nil || string(m.Digest) != p.Digest {
		t.Fatalf("GET at the retry time: %v %v", m, err)
	}

	// A 429 to a HEAD with no Retry-After holds everything for the configured 5 s.
	reg.SetFault(registrytest.Once(registrytest.OnMethod(http.MethodHead, registrytest.OnManifests(registrytest.RateLimited(0)))))
	if _, err := r.HeadManifest(ctx, repo, "latest"); KindOf(err) != KindRateLimited {
		t.Fatalf("HEAD answered 429: %v", err)
	}
	total = reg.Total()
	_, err = r.HeadManifest(ctx, repo, "latest")
	expectHeldBack(t, "HEAD during the HEAD hold", err, 5*time.Second)
	_, err = r.GetManifest(ctx, repo, "latest")
	expectHeldBack(t, "GET during the HEAD hold", err, 5*time.Second)
	_, err = r.Tags(ctx, repo, PageRequest{})
	expectHeldBack(t, "tags during the HEAD hold", err, 5*time.Second)
	_, err = r.OpenBlob(ctx, http.MethodGet, repo, cfg, "")
	expectHeldBack(t, "blob during the HEAD hold", err, 5*time.Second)
	if reg.Total() != total {
		t.Fatalf("held-back requests reached upstream: %d requests, want %d", reg.Total(), total)
	}
	clk.Advance(5 * time.Second)
	if _, err := r.HeadManifest(ctx, repo, "latest"); err != nil {
		t.Fatalf("HEAD after the hold: %v", err)
	}
	if _, err := r.GetManifest(ctx, repo, "latest"); err != nil {
		t.Fatalf("GET after the hold: %v", err)
	}
}

// A held-back request costs nothing at all, not even the /v2/ ping or a token.
func TestRateLimitHeldBackBeforeAuth(t *testing.T) {
	reg := registrytest.New(t, registrytest.Bearer)
	clk := newFakeClock()
	r := newGuardedRegistry(t, reg, clk, 0)
	r.rl.observe(http.MethodHead, targetManifest, http.StatusTooManyRequests, hdr("Retry-After", "30"))
	_, err := r.GetManifest(context.Background(), "a/b", "latest")
	expectHeldBack(t, "fresh registry under a hold", err, 30*time.Second)
	if n := reg.Total(); n != 0 {
		t.Fatalf("%d requests reached upstream (ping or token included), want 0", n)
	}
}

// A 429 from the token realm is the auth service's, not the registry's: it is passed on
// but holds nothing back.
func TestRateLimitTokenRealm429DoesNotArm(t *testing.T) {
	reg := registrytest.New(t, registrytest.Bearer)
	p := reg.PushImage(t, "a/b", "latest", types.DockerManifestSchema2)
	clk := newFakeClock()
	r := newGuardedRegistry(t, reg, clk, 0)
	reg.SetFault(registrytest.Once(func(w http.ResponseWriter, req *http.Request) bool {
		return req.URL.Path == "/token" && registrytest.RateLimited(30*time.Second)(w, req)
	}))
	_, err := r.GetManifest(context.Background(), "a/b", "latest")
	var e *Error
	if !errors.As(err, &e) || e.Kind != KindRateLimited || e.HeldBack {
		t.Fatalf("token 429: %v", err)
	}
	if s := r.RateLimit(); !s.GETBlockedUntil.IsZero() || !s.AllBlockedUntil.IsZero() {
		t.Fatalf("a token-realm 429 armed the guard: %+v", s)
	}
	if m, err := r.GetManifest(context.Background(), "a/b", "latest"); err != nil || string(m.Digest) != p.Digest {
		t.Fatalf("GET after the token 429: %v %v", m, err)
	}
}

// Redirect targets: a manifest answer from wherever the registry sent us counts (that is
// where registry.k8s.io's and lscr.io's manifests live); a blob answer from a CDN does not.
func TestRateLimitRedirectTargets(t *testing.T) {
	var manifestGETs atomic.Int32
	cdn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("RateLimit-Remaining", "3;w=60")
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	t.Cleanup(cdn.Close)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/v2/" {
			return
		}
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/manifests/") {
			manifestGETs.Add(1)
		}
		http.Redirect(w, req, cdn.URL+req.URL.Path, http.StatusTemporaryRedirect)
	}))
	t.Cleanup(origin.Close)
	r, err := New(Options{Name: "redir", URL: origin.URL, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	ctx := context.Background()

	d := digest.FromString("config")
	_, err = r.OpenBlob(ctx, http.MethodGet, "a/b", d, "")
	if KindOf(err) != KindRateLimited {
		t.Fatalf("blob from a throttling CDN: %v", err)
	}
	if s := r.RateLimit(); s.Known || !s.GETBlockedUntil.IsZero() || !s.AllBlockedUntil.IsZero() {
		t.Fatalf("a CDN's blob answer reached the guard: %+v", s)
	}
	_, err = r.GetManifest(ctx, "a/b", "latest")
	if e := (*Error)(nil); !errors.As(err, &e) || e.Kind != KindRateLimited || e.HeldBack {
		t.Fatalf("manifest GET from a throttling redirect target: %v", err)
	}
	if s := r.RateLimit(); !s.Known || s.Remaining != 3 || s.GETBlockedUntil.IsZero() {
		t.Fatalf("a redirect target's manifest answer did not reach the guard: %+v", s)
	}
	_, err = r.GetManifest(ctx, "a/b", "latest")
	expectHeldBack(t, "second manifest GET", err, 30*time.Second)
	if n := manifestGETs.Load(); n != 1 {
		t.Fatalf("origin saw %d manifest GETs, want 1", n)
	}
}

// configDigest reads the config digest out of an image manifest.
func configDigest(t *testing.T, body []byte) digest.Digest {
	t.Helper()
	var m struct {
		Config struct {
			Digest digest.Digest `json:"digest"`
		} `json:"config"`
	}
	if err := json.Unmarshal(body, &m); err != nil || m.Config.Digest == "" {
		t.Fatalf("no config digest in %s (%v)", body, err)
	}
	return m.Config.Digest
}
