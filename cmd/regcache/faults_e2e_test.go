package main

// The fault matrix: every upstream failure regcache has to survive, for the three kinds of
// request (manifests by tag, tags/list, blobs) and for both states of the cache (a stale
// answer to fall back on, or nothing). Each cell has its own registrytest registry (Bearer
// auth, like ghcr and Docker Hub) and its own regcache, so cells cannot disturb each other;
// they run concurrently. A cell
//
//  1. seeds the registry, and for the cached state warms regcache and lets tag_ttl pass;
//  2. installs the fault and asks: the outcome (status, registry error code, X-Cache,
//     Retry-After, a stream cut short) must be the expected one, within the configured
//     upstream timeout plus slack, and every 200 must carry upstream's true content; a
//     cached tag or tags listing is then asked ten times more, as fast as the cell can, and
//     upstream must have been asked at most once per 300 ms from the fault's start (the
//     tag's backoff, capped at tag_ttl, or its freshness once revalidated);
//  3. removes the fault and, once any rate-limit hold, backoff or negative_ttl has passed,
//     asks again: without a restart, every answer is upstream's true content byte for
//     byte, and no digest the fault made up is served.
//
// Every upstream dial goes through a dialer that allows 127.0.0.1 only: a redirect to
// 169.254.169.254 must be refused before any dial.
//
// docs/reliability.md's table is checked against the matrix: every cell has its row and
// every row says what the cell holds true. `REGCACHE_WAIT_HOLD=1 go test -run FaultMatrix
// ./cmd/regcache` also waits out the 60 s default rate-limit hold (the quick run checks
// that the hold is in force and skips the wait), and then checks those rows' recovery too.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"regcache/internal/harness"
	"regcache/internal/loopback"
	"regcache/upstream/registrytest"
)

const (
	cellRepo     = "fm/app"
	cellUpstream = "up.test"
	cellTTL      = 300 * time.Millisecond // tag_ttl and negative_ttl of every cell
	// timeoutSlack is what a loaded machine (two cores, -race, a hundred cells, other work) may
	// add to the configured upstream timeout. It still catches a hang: the client gives up
	// after 20 s.
	timeoutSlack = 8 * time.Second
	// bypassHeader marks the test's own requests to a registry, which faults let through.
	bypassHeader = "X-Fault-Matrix-Bypass"
)

// requestKind is the kind of client request a cell is about.
type requestKind int

const (
	kindManifests requestKind = iota
	kindTags
	kindBlobs
)

func (k requestKind) String() string { return [...]string{"manifests", "tags", "blobs"}[k] }

// faultHandler answers an upstream request instead of the registry when it returns true.
type faultHandler func(c *cell, w http.ResponseWriter, r *http.Request) bool

// matrixFault is one row group of the matrix.
type matrixFault struct {
	name  string
	kinds []requestKind
	// slow cells configure `timeout: 1s` upstream; the others 10s, which only a machine
	// loaded by other work could make an honest upstream miss.
	slow bool
	// handle is the fault; refused instead makes the dialer refuse the upstream.
	handle  faultHandler
	refused bool
	// hold is the rate-limit hold the fault arms, waited out before recovery.
	hold time.Duration
	// index cells ask for an index and its children instead of a tag.
	index bool
	// cdn cells redirect to a second loopback server no upstream names, which must be
	// asked (the redirect followed) and never be sent credentials.
	cdn bool
	// lies marks faults whose cut-short streams carry bytes that are not upstream's.
	lies bool
	// want is the outcome of each request (in cell.requests order) by "kind/state".
	want map[string][]string
}

// --- expectations --------------------------------------------------------------------------

// outcomes are what each request of a fault's cells must get, by "kind/state".
type outcomes map[string][]string

// downOutcomes is the expectation for an upstream that is unavailable: stale answers where
// regcache holds one, a registry error with status s otherwise (its gateway code: see
// proxy/errors.go). Small blobs are content-addressed and kept in memory: a hit whatever
// upstream does. Large blobs are never held, so they always need upstream.
func downOutcomes(s string) outcomes {
	e := s + " " + map[string]string{"502": "UPSTREAM_FAILED", "503": "UNAVAILABLE", "504": "UPSTREAM_TIMEOUT"}[s]
	return outcomes{
		"manifests/cached": {"200 STALE", "200 STALE"}, "manifests/uncached": {e, s},
		"tags/cached": {"200 STALE"}, "tags/uncached": {e},
		"blobs/cached": {"200 HIT", e}, "blobs/uncached": {e, e},
	}
}

// limitedOutcomes is the expectation for an upstream answering 429.
func limitedOutcomes(retryAfter string) outcomes {
	e := "429 TOOMANYREQUESTS Retry-After: " + retryAfter
	return outcomes{
		"manifests/cached": {"200 STALE", "200 STALE"}, "manifests/uncached": {e, "429 Retry-After: " + retryAfter},
		"tags/cached": {"200 STALE"}, "tags/uncached": {e},
		"blobs/cached": {"200 HIT", e}, "blobs/uncached": {e, e},
	}
}

// with overrides the expectations for some kind/state keys (pairs of key and outcomes).
func (w outcomes) with(key string, want ...string) outcomes {
	out := outcomes{}
	for k, v := range w {
		out[k] = v
	}
	out[key] = want
	return out
}

var allKinds = []requestKind{kindManifests, kindTags, kindBlobs}

// freshHead is a HEAD right after a GET refreshed the tag: a hit, or (when the machine is
// so loaded that tag_ttl passed in between) a revalidation.
const freshHead = "200 HIT|200 REVALIDATED"

// outcomeMatches reports whether an outcome is one of want's alternatives ("a|b"). A
// Retry-After may have counted down by up to two seconds on a loaded machine.
func outcomeMatches(got, want string) bool {
	for _, alt := range strings.Split(want, "|") {
		if got == alt {
			return true
		}
		gp, gra, gok := strings.Cut(got, "Retry-After: ")
		wp, wra, wok := strings.Cut(alt, "Retry-After: ")
		g, gerr := strconv.Atoi(gra)
		w, werr := strconv.Atoi(wra)
		if gok && wok && gp == wp && gerr == nil && werr == nil && g <= w && g >= w-2 && g >= 1 {
			return true
		}
	}
	return false
}

// matrixFaults is the matrix. Outcomes read "<status> <code or X-Cache>[ Retry-After: n]";
// a HEAD error has no body, hence no code; "cut short" is a 200 whose body ended before
// its Content-Length; "no answer" is a connection closed before any status line.
var matrixFaults = []*matrixFault{
	{name: "upstream 500", kinds: allKinds, handle: failWith(http.StatusInternalServerError), want: downOutcomes("502")},
	{name: "upstream 502", kinds: allKinds, handle: failWith(http.StatusBadGateway), want: downOutcomes("502")},
	{name: "upstream 503", kinds: allKinds, handle: failWith(http.StatusServiceUnavailable), want: downOutcomes("503")},
	{name: "429 with Retry-After: 1", kinds: allKinds, handle: rateLimited429(time.Second), hold: time.Second, want: limitedOutcomes("1")},
	{name: "429 without Retry-After", kinds: allKinds, handle: rateLimited429(0), hold: 60 * time.Second, want: limitedOutcomes("60")},
	{name: "connection refused", kinds: allKinds, refused: true, want: downOutcomes("502")},
	{name: "connection reset mid-body", kinds: allKinds, handle: resetMidBody,
		want: downOutcomes("502").with("blobs/cached", "200 HIT", "200 MISS cut short").
			with("blobs/uncached", "502 UPSTREAM_FAILED", "200 MISS cut short")},
	{name: "stall past the 1 s timeout", kinds: allKinds, slow: true, handle: neverAnswer, want: downOutcomes("504")},
	{name: "slow drip, 1 byte / 300 ms", kinds: allKinds, slow: true, handle: drip,
		// The large blob's stream is cut once a second brings less than 32 KiB. Its headers
		// came at once, but regcache had not passed them on yet: the client sees the
		// connection close. (On a loaded machine even the headers may miss the 1 s: 504.)
		want: downOutcomes("504").with("blobs/cached", "200 HIT", "no answer|504 UPSTREAM_TIMEOUT").
			with("blobs/uncached", "504 UPSTREAM_TIMEOUT", "no answer|504 UPSTREAM_TIMEOUT")},
	{name: "redirect loop", kinds: allKinds, handle: redirectLoop, want: downOutcomes("502")},
	{name: "redirect to an unconfigured host", kinds: allKinds, handle: redirectToCDN, cdn: true, want: outcomes{
		"manifests/cached": {"200 REVALIDATED", freshHead}, "manifests/uncached": {"200 MISS", freshHead},
		"tags/cached": {"200 MISS"}, "tags/uncached": {"200 MISS"},
		"blobs/cached": {"200 HIT", "200 MISS"}, "blobs/uncached": {"200 MISS", "200 MISS"},
	}},
	{name: "redirect to 169.254.169.254", kinds: allKinds, handle: redirectToMetadata, want: downOutcomes("502")},
	{name: "token endpoint 500", kinds: allKinds, handle: breakTokenEndpoint(token500), want: downOutcomes("502")},
	{name: "token endpoint answers no JSON", kinds: allKinds, handle: breakTokenEndpoint(tokenGarbage), want: downOutcomes("502")},
	{name: "token endpoint answers no token", kinds: allKinds, handle: breakTokenEndpoint(tokenEmpty), want: downOutcomes("502")},
	{name: "lying body (digest mismatch)", kinds: []requestKind{kindManifests, kindBlobs}, handle: lyingBody, lies: true, want: outcomes{
		"manifests/cached": {"200 REVALIDATED", freshHead}, "manifests/uncached": {"502 MANIFEST_INVALID", "200 MISS"},
		"blobs/cached": {"200 HIT", "200 MISS cut short"}, "blobs/uncached": {"502 MANIFEST_INVALID", "200 MISS cut short"},
	}},
	{name: "Content-Length claims more than sent", kinds: allKinds, handle: shortBody, want: outcomes{
		"manifests/cached": {"200 REVALIDATED", freshHead}, "manifests/uncached": {"502 UPSTREAM_FAILED", "200 MISS"},
		"tags/cached": {"200 STALE"}, "tags/uncached": {"502 UPSTREAM_FAILED"},
		"blobs/cached": {"200 HIT", "200 MISS cut short"}, "blobs/uncached": {"502 UPSTREAM_FAILED", "200 MISS cut short"},
	}},
	// A HEAD's Content-Length is a claim about the body a GET would bring: here it names
	// the right digest and 100 bytes too many. Once the body is verified, its size wins.
	{name: "HEAD claims a wrong Content-Length", kinds: []requestKind{kindManifests}, handle: wrongHeadLength, want: outcomes{
		"manifests/cached": {"200 REVALIDATED", freshHead}, "manifests/uncached": {"200 MISS", freshHead},
	}},
	{name: "6 MiB manifest", kinds: []requestKind{kindManifests}, handle: hugeManifest, want: outcomes{
		"manifests/cached": {"200 STALE", "200 STALE"}, "manifests/uncached": {"502 MANIFEST_INVALID", "502"},
	}},
	{name: "invalid JSON, correct digest", kinds: []requestKind{kindManifests, kindTags}, handle: invalidJSON, want: outcomes{
		"manifests/cached": {"200 REVALIDATED", freshHead}, "manifests/uncached": {"502 MANIFEST_INVALID", "200 MISS"},
		"tags/cached": {"200 STALE"}, "tags/uncached": {"502 MANIFEST_INVALID"},
	}},
	{name: "index children missing upstream", kinds: []requestKind{kindManifests}, index: true, handle: childrenMissing, want: outcomes{
		"manifests/cached":   {"200 REVALIDATED", "404 MANIFEST_UNKNOWN", "404"},
		"manifests/uncached": {"200 MISS", "404 MANIFEST_UNKNOWN", "404"},
	}},
}

// --- the faults ----------------------------------------------------------------------------

func failWith(code int) faultHandler {
	f := registrytest.Status(code)
	return func(c *cell, w http.ResponseWriter, r *http.Request) bool { return c.isData(r) && f(w, r) }
}

func rateLimited429(retryAfter time.Duration) faultHandler {
	f := registrytest.RateLimited(retryAfter)
	return func(c *cell, w http.ResponseWriter, r *http.Request) bool {
		if !c.isData(r) {
			return false
		}
		defer func() {
			c.mu.Lock()
			c.last429 = time.Now() // each 429 arms the hold anew
			c.mu.Unlock()
		}()
		return f(w, r)
	}
}

// resetMidBody sends upstream's true answer up to the middle of its body (of its header block,
// for a HEAD) and resets the connection.
func resetMidBody(c *cell, w http.ResponseWriter, r *http.Request) bool {
	if !c.isData(r) {
		return false
	}
	tr := c.truth(r)
	conn := hijack(w)
	head := rawHead(tr.status, tr.header, int64(len(tr.body)))
	if r.Method == http.MethodHead {
		_, _ = conn.Write(head[:len(head)/2])
	} else {
		_, _ = conn.Write(append(head, tr.body[:len(tr.body)/2]...))
	}
	resetConn(conn)
	return true
}

// neverAnswer never answers; it lets go when regcache hangs up.
func neverAnswer(c *cell, w http.ResponseWriter, r *http.Request) bool {
	if !c.isData(r) {
		return false
	}
	select {
	case <-r.Context().Done():
	case <-c.stop:
	}
	return true
}

// drip sends upstream's true answer one byte every 300 ms: the body after an immediate
// header block, or for a HEAD (which has no body) the header block itself.
func drip(c *cell, w http.ResponseWriter, r *http.Request) bool {
	if !c.isData(r) {
		return false
	}
	tr := c.truth(r)
	conn := hijack(w)
	defer conn.Close()
	head := rawHead(tr.status, tr.header, int64(len(tr.body)))
	slow := head
	if r.Method != http.MethodHead {
		if _, err := conn.Write(head); err != nil {
			return true
		}
		slow = tr.body
	}
	for i := range slow {
		select {
		case <-c.stop:
			return true
		case <-time.After(300 * time.Millisecond):
		}
		if _, err := conn.Write(slow[i : i+1]); err != nil {
			return true
		}
	}
	return true
}

func redirectLoop(c *cell, w http.ResponseWriter, r *http.Request) bool {
	if !c.isData(r) {
		return false
	}
	q := r.URL.Query()
	n, _ := strconv.Atoi(q.Get("loop"))
	q.Set("loop", strconv.Itoa(n+1))
	http.Redirect(w, r, r.URL.Path+"?"+q.Encode(), http.StatusTemporaryRedirect)
	return true
}

// redirectToCDN sends every data request to another loopback server that no upstream
// names, like a registry sending blobs to its CDN; that server answers upstream's truth.
func redirectToCDN(c *cell, w http.ResponseWriter, r *http.Request) bool {
	if !c.isData(r) {
		return false
	}
	http.Redirect(w, r, c.cdn.URL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	return true
}

func redirectToMetadata(c *cell, w http.ResponseWriter, r *http.Request) bool {
	if !c.isData(r) {
		return false
	}
	http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/iam/security-credentials/", http.StatusTemporaryRedirect)
	return true
}

// breakTokenEndpoint breaks the token endpoint and, since the tokens regcache holds from before
// would otherwise keep working, refuses them (as when they expire): every data request is
// challenged.
func breakTokenEndpoint(respond func(w http.ResponseWriter)) faultHandler {
	return func(c *cell, w http.ResponseWriter, r *http.Request) bool {
		switch {
		case r.URL.Path == "/token":
			respond(w)
		case c.isData(r):
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="registrytest"`, c.reg.URL))
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"token expired"}]}`)
		default:
			return false
		}
		return true
	}
}

func token500(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusInternalServerError)
	_, _ = io.WriteString(w, `{"errors":[{"code":"UNKNOWN","message":"token service down"}]}`)
}

func tokenGarbage(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/html")
	_, _ = io.WriteString(w, "<html><body>Service temporarily unavailable</body></html>")
}

func tokenEmpty(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, `{"expires_in":300,"issued_at":"2026-01-01T00:00:00Z"}`)
}

// lyingBody answers GETs with upstream's true headers and a body of the same length with
// one byte changed. A HEAD has no body to lie with and passes.
func lyingBody(c *cell, w http.ResponseWriter, r *http.Request) bool {
	if !c.isData(r) || r.Method != http.MethodGet {
		return false
	}
	tr := c.truth(r)
	body := bytes.Clone(tr.body)
	body[len(body)/2] ^= 0x01
	c.addBogus(digest.FromBytes(body).String())
	relay(w, tr.status, tr.header, body)
	return true
}

// shortBody answers GETs with a Content-Length 100 bytes larger than the (true) body it
// sends, then closes the connection.
func shortBody(c *cell, w http.ResponseWriter, r *http.Request) bool {
	if !c.isData(r) || r.Method != http.MethodGet {
		return false
	}
	tr := c.truth(r)
	conn := hijack(w)
	_, _ = conn.Write(append(rawHead(tr.status, tr.header, int64(len(tr.body))+100), tr.body...))
	_ = conn.Close()
	return true
}

// wrongHeadLength answers HEADs with upstream's true headers but a Content-Length 100 bytes
// larger than the manifest. GETs pass.
func wrongHeadLength(c *cell, w http.ResponseWriter, r *http.Request) bool {
	if !c.isData(r) || r.Method != http.MethodHead {
		return false
	}
	tr := c.truth(r)
	for _, k := range []string{"Content-Type", "Docker-Content-Digest"} {
		w.Header().Set(k, tr.header.Get(k))
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(tr.body)+100))
	w.WriteHeader(tr.status)
	return true
}

// hugeIndex is a 6 MiB OCI index, past the 4 MiB manifest limit, with its true digest.
var hugeIndex = sync.OnceValues(func() ([]byte, string) {
	b := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],` +
		`"annotations":{"pad":"` + strings.Repeat("x", 6<<20) + `"}}`)
	return b, digest.FromBytes(b).String()
})

func hugeManifest(c *cell, w http.ResponseWriter, r *http.Request) bool {
	if !c.isData(r) {
		return false
	}
	body, d := hugeIndex()
	c.addBogus(d)
	return registrytest.Serve("application/vnd.oci.image.index.v1+json", d, body)(w, r)
}

// invalidJSON answers GETs with a body that is no JSON; for a manifest, with its true
// digest. A HEAD passes.
func invalidJSON(c *cell, w http.ResponseWriter, r *http.Request) bool {
	if !c.isData(r) || r.Method != http.MethodGet {
		return false
	}
	h := http.Header{}
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` + "\x00 truncated")
	h.Set("Content-Type", "application/json")
	if c.kind == kindManifests {
		h.Set("Content-Type", "application/vnd.oci.image.index.v1+json")
		h.Set("Docker-Content-Digest", digest.FromBytes(body).String())
		c.addBogus(digest.FromBytes(body).String())
	}
	relay(w, http.StatusOK, h, body)
	return true
}

// childrenMissing answers 404 for the index's children, as a registry that lost them.
func childrenMissing(c *cell, w http.ResponseWriter, r *http.Request) bool {
	if !c.isData(r) {
		return false
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusNotFound)
	_, _ = io.WriteString(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`)
	return true
}

// --- raw HTTP helpers ----------------------------------------------------------------------

func hijack(w http.ResponseWriter) net.Conn {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		panic("fault matrix: cannot hijack: " + err.Error())
	}
	return conn
}

// resetConn closes conn with a TCP reset instead of a FIN.
func resetConn(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// rawHead is a status line and header block with the given Content-Length.
func rawHead(status int, h http.Header, contentLength int64) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	for _, k := range []string{"Content-Type", "Docker-Content-Digest"} {
		if v := h.Get(k); v != "" {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\nConnection: close\r\n\r\n", contentLength)
	return b.Bytes()
}

// relay answers with status, the content headers of h and body.
func relay(w http.ResponseWriter, status int, h http.Header, body []byte) {
	for _, k := range []string{"Content-Type", "Docker-Content-Digest"} {
		if v := h.Get(k); v != "" {
			w.Header().Set(k, v)
		}
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// --- the dialer ----------------------------------------------------------------------------

// upstreamDialer is every upstream dial of a test's regcache: 127.0.0.1 only (anything
// else is recorded, by the loopback.Dialer, and fails the test), and while the upstream is
// down, ECONNREFUSED for it, or with blackHole no answer at all: the dial waits until its
// context ends (at most 10 s), as for a host whose packets are dropped. downDials counts
// the dials the upstream did not take.
type upstreamDialer struct {
	loopback.Dialer
	upstream        string
	down, blackHole atomic.Bool
	downDials       atomic.Int64
	mu              sync.Mutex
	conns           []net.Conn
	downAt          []time.Time // when each of downDials came
}

func (d *upstreamDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if addr == d.upstream && d.down.Load() {
		d.downDials.Add(1)
		d.mu.Lock()
		d.downAt = append(d.downAt, time.Now())
		d.mu.Unlock()
		if d.blackHole.Load() {
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Second):
			}
			return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect", syscall.ETIMEDOUT)}
		}
		return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	}
	conn, err := d.Dialer.DialContext(ctx, network, addr)
	if err == nil && addr == d.upstream {
		d.mu.Lock()
		d.conns = append(d.conns, conn)
		d.mu.Unlock()
	}
	return conn, err
}

// setDown stops (or restarts) the upstream: new dials are refused (or swallowed) and open
// connections are reset, as when its server process dies.
func (d *upstreamDialer) setDown(down bool) {
	d.down.Store(down)
	if !down {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.conns {
		resetConn(c)
	}
	d.conns = nil
}

// --- a cell --------------------------------------------------------------------------------

// upstreamAnswer is what upstream really answers to a request.
type upstreamAnswer struct {
	status int
	header http.Header
	body   []byte
}

// expected is what a client request must get when it succeeds.
type expected struct {
	body      []byte   // GET body, byte for byte (manifests, blobs)
	digest    string   // Docker-Content-Digest
	mediaType string   // Content-Type, for manifests
	tags      []string // tags/list: the list (regcache writes its own JSON)
}

type cellRequest struct {
	label, method, path string
	want                expected
}

type cell struct {
	t      *testing.T
	f      *matrixFault
	kind   requestKind
	cached bool
	reg    *registrytest.Registry
	rc     *harness.Instance
	client *http.Client // to regcache
	dial   *upstreamDialer
	cdn    *httptest.Server
	active atomic.Bool
	stop   chan struct{}
	timing time.Duration // the upstream timeout configured

	mu       sync.Mutex
	bogus    []string // digests of bodies the fault made up
	cdnAuth  []string // Authorization headers the CDN saw
	cdnSeen  int
	last429  time.Time
	children map[string]bool
	askedAt  []time.Time // data requests upstream took during the fault (a redirect loop's first hop only)

	reqs []cellRequest
}

func (c *cell) addBogus(d string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !slices.Contains(c.bogus, d) {
		c.bogus = append(c.bogus, d)
	}
}

// isData reports a request of the cell's kind: the ones faults act on.
func (c *cell) isData(r *http.Request) bool {
	p := r.URL.Path
	switch {
	case c.f.index:
		i := strings.LastIndex(p, "/manifests/")
		return i >= 0 && c.children[p[i+len("/manifests/"):]]
	case c.kind == kindManifests:
		return strings.Contains(p, "/manifests/")
	case c.kind == kindTags:
		return strings.HasSuffix(p, "/tags/list")
	}
	return strings.Contains(p, "/blobs/")
}

// direct sends a request to the registry past any fault. It runs in fault handlers too,
// possibly while the cell shuts down: a registry it cannot reach is a 502, never a panic
// (seeding checks the status).
func (c *cell) direct(method, uri, accept string) upstreamAnswer {
	header := []string{bypassHeader, "1"}
	if accept != "" {
		header = append(header, "Accept", accept)
	}
	r, err := harness.AskRegistry(c.reg, method, uri, header...)
	if err != nil {
		return upstreamAnswer{status: http.StatusBadGateway, header: http.Header{}, body: []byte("fault matrix: " + err.Error())}
	}
	body := r.Body
	if method == http.MethodHead {
		// The true length of the body a GET would bring.
		n, _ := strconv.Atoi(r.Header.Get("Content-Length"))
		body = make([]byte, max(n, 0))
	}
	return upstreamAnswer{status: r.Status, header: r.Header, body: body}
}

// truth is upstream's own answer to the request a fault intercepted.
func (c *cell) truth(r *http.Request) upstreamAnswer {
	q := r.URL.Query()
	q.Del("loop")
	uri := r.URL.Path
	if len(q) > 0 {
		uri += "?" + q.Encode()
	}
	return c.direct(r.Method, uri, r.Header.Get("Accept"))
}

var largeBlob = sync.OnceValue(func() []byte {
	b := make([]byte, 1536<<10) // 1.5 MiB: over max_blob_size, so it streams
	_, _ = rand.Read(b)
	return b
})

func newCell(t *testing.T, f *matrixFault, kind requestKind, cached bool) *cell {
	c := &cell{t: t, f: f, kind: kind, cached: cached, stop: make(chan struct{}), timing: 10 * time.Second}
	if f.slow {
		c.timing = time.Second
	}
	t.Cleanup(func() { close(c.stop) })
	c.reg = registrytest.New(t, registrytest.Bearer)
	c.reg.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get(bypassHeader) != "" || !c.active.Load() {
			return false
		}
		if c.isData(r) && !r.URL.Query().Has("loop") {
			c.mu.Lock()
			c.askedAt = append(c.askedAt, time.Now())
			c.mu.Unlock()
		}
		return f.handle != nil && f.handle(c, w, r)
	})
	if f.cdn {
		c.startCDN()
	}

	c.seed()

	c.dial = &upstreamDialer{upstream: c.reg.Host}
	cfg := "listen: 127.0.0.1:0\ndefault_upstream: " + cellUpstream + "\n" +
		"cache:\n  max_size: 16MiB\n  tag_ttl: 300ms\n  negative_ttl: 300ms\n  revalidate_wait: 10s\n" +
		"upstreams:\n" + harness.Upstream(cellUpstream, c.reg.URL, "timeout: "+c.timing.String())
	// Checked once regcache has stopped (cleanups run last first), background work included.
	t.Cleanup(func() {
		if f := c.dial.Refused(); len(f) > 0 {
			t.Errorf("regcache tried to dial %v; only 127.0.0.1 may be dialled", f)
		}
	})
	c.rc = startRegcacheWith(t, cfg, harness.Options{Dial: c.dial.DialContext})
	c.client = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	return c
}

// startCDN runs the redirect target of redirectToCDN: it answers upstream's truth and
// records what it was sent.
func (c *cell) startCDN() {
	c.cdn = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.cdnSeen++
		if a := r.Header.Get("Authorization"); a != "" {
			c.cdnAuth = append(c.cdnAuth, a)
		}
		c.mu.Unlock()
		tr := c.truth(r)
		if r.Method == http.MethodHead {
			for _, k := range []string{"Content-Type", "Docker-Content-Digest"} {
				w.Header().Set(k, tr.header.Get(k))
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(tr.body)))
			w.WriteHeader(tr.status)
			return
		}
		relay(w, tr.status, tr.header, tr.body)
	}))
	c.t.Cleanup(c.cdn.Close)
}

// seed stores what the cell's requests ask for and records the true answers.
func (c *cell) seed() {
	t := c.t
	prefix := "/v2/" + cellUpstream + "/" + cellRepo
	switch c.kind {
	case kindManifests:
		idx := c.reg.PushIndex(t, cellRepo, "latest", types.OCIImageIndex, "linux/amd64", "linux/arm64/v8")
		want := expected{body: idx.Body, digest: idx.Digest, mediaType: idx.MediaType}
		if !c.f.index {
			c.reqs = []cellRequest{
				{"GET tag", http.MethodGet, prefix + "/manifests/latest", want},
				{"HEAD tag", http.MethodHead, prefix + "/manifests/latest", want},
			}
			return
		}
		var ix struct {
			Manifests []struct {
				MediaType string `json:"mediaType"`
				Digest    string `json:"digest"`
			} `json:"manifests"`
		}
		if err := json.Unmarshal(idx.Body, &ix); err != nil || len(ix.Manifests) == 0 {
			t.Fatalf("seeded index: %v", err)
		}
		c.children = map[string]bool{}
		for _, m := range ix.Manifests {
			c.children[m.Digest] = true
		}
		child := ix.Manifests[0]
		tr := c.direct(http.MethodGet, "/v2/"+cellRepo+"/manifests/"+child.Digest, harness.AcceptAll)
		if tr.status != http.StatusOK {
			t.Fatalf("child manifest upstream: %d", tr.status)
		}
		cw := expected{body: tr.body, digest: child.Digest, mediaType: child.MediaType}
		c.reqs = []cellRequest{
			{"GET index", http.MethodGet, prefix + "/manifests/latest", want},
			{"GET child", http.MethodGet, prefix + "/manifests/" + child.Digest, cw},
			{"HEAD child", http.MethodHead, prefix + "/manifests/" + child.Digest, cw},
		}
	case kindTags:
		c.reg.PushTags(t, cellRepo, []string{"1.0", "1.1", "2.0", "latest"})
		tr := c.direct(http.MethodGet, "/v2/"+cellRepo+"/tags/list", "")
		var list struct{ Tags []string }
		if err := json.Unmarshal(tr.body, &list); err != nil || len(list.Tags) != 4 {
			t.Fatalf("tags upstream: %s", tr.body)
		}
		c.reqs = []cellRequest{{"GET tags/list", http.MethodGet, prefix + "/tags/list", expected{tags: list.Tags}}}
	case kindBlobs:
		c.reg.PushImage(t, cellRepo, "v1", types.OCIManifestSchema1)
		cd, raw := c.reg.ConfigOf(t, cellRepo, "v1")
		large := largeBlob()
		ld := c.reg.PushBlob(t, cellRepo, large)
		c.reqs = []cellRequest{
			{"GET config", http.MethodGet, prefix + "/blobs/" + cd.String(), expected{body: raw, digest: cd.String()}},
			{"GET large", http.MethodGet, prefix + "/blobs/" + ld, expected{body: large, digest: ld}},
		}
	}
}

// answer is what a client got.
type answer struct {
	status   int
	header   http.Header
	body     []byte
	cut      bool  // the body ended early
	noAnswer error // no status line came
	took     time.Duration
}

func (c *cell) ask(method, path string) answer {
	req, err := http.NewRequest(method, c.rc.URL+path, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	if c.kind == kindManifests {
		req.Header.Set("Accept", harness.AcceptAll)
	}
	start := time.Now()
	resp, err := c.client.Do(req)
	if err != nil {
		return answer{noAnswer: err, took: time.Since(start)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, header: resp.Header, body: body, cut: err != nil, took: time.Since(start)}
}

// askPatiently is ask for requests that are no part of a fault (warming, recovery). In
// the cells with a 1 s upstream timeout, a machine loaded by other work may make an honest
// upstream miss it: a 504, or a stream cut for lack of progress, is asked again. A 429
// with Retry-After (a rate-limit hold that a late 429 re-armed) is waited out and asked
// again. At most three times; any other answer counts at once.
func (c *cell) askPatiently(method, path string) answer {
	a := c.ask(method, path)
	for i := 0; i < 3; i++ {
		slowMiss := c.f.slow && (a.status == http.StatusGatewayTimeout || a.cut || a.noAnswer != nil)
		ra, _ := strconv.Atoi(a.header.Get("Retry-After"))
		held := c.f.hold > 0 && a.status == http.StatusTooManyRequests && ra > 0 && ra <= 60
		if !slowMiss && !held {
			break
		}
		c.t.Logf("%s %s: %s on a loaded machine, asking again", method, path, a.outcome(method))
		if held {
			time.Sleep(time.Duration(ra) * time.Second)
		}
		a = c.ask(method, path)
	}
	return a
}

// outcome renders an answer the way matrixFault.want spells it.
func (a answer) outcome(method string) string {
	switch {
	case a.noAnswer != nil:
		return "no answer"
	case a.status == http.StatusOK:
		s := "200 " + a.header.Get("X-Cache")
		if a.cut {
			s += " cut short"
		}
		return s
	}
	s := strconv.Itoa(a.status)
	if method != http.MethodHead {
		var eb struct {
			Errors []struct{ Code string } `json:"errors"`
		}
		if err := json.Unmarshal(a.body, &eb); err != nil || len(eb.Errors) == 0 || eb.Errors[0].Code == "" {
			s += " (not a registry error: " + strconv.Quote(string(a.body)) + ")"
		} else {
			s += " " + eb.Errors[0].Code
		}
	}
	if ra := a.header.Get("Retry-After"); ra != "" {
		s += " Retry-After: " + ra
	}
	return s
}

// check verifies an answer beyond its outcome: a 200 is upstream's truth (or a strict
// prefix of it when cut short), an error is a registry error without a digest.
func (c *cell) check(what string, rq cellRequest, a answer) {
	t := c.t
	t.Helper()
	if a.noAnswer != nil || a.status == 0 {
		return
	}
	if a.status != http.StatusOK {
		if d := a.header.Get("Docker-Content-Digest"); d != "" {
			t.Errorf("%s: an error answer carries Docker-Content-Digest %s", what, d)
		}
		if rq.method != http.MethodHead && !strings.HasPrefix(a.header.Get("Content-Type"), "application/json") {
			t.Errorf("%s: error Content-Type %q", what, a.header.Get("Content-Type"))
		}
		return
	}
	w := rq.want
	if w.digest != "" && a.header.Get("Docker-Content-Digest") != w.digest {
		t.Errorf("%s: Docker-Content-Digest %q, want %s", what, a.header.Get("Docker-Content-Digest"), w.digest)
	}
	if w.mediaType != "" && a.header.Get("Content-Type") != w.mediaType {
		t.Errorf("%s: Content-Type %q, want %s", what, a.header.Get("Content-Type"), w.mediaType)
	}
	if w.tags == nil {
		if cl := a.header.Get("Content-Length"); !a.cut && cl != strconv.Itoa(len(w.body)) {
			t.Errorf("%s: Content-Length %s, want %d", what, cl, len(w.body))
		}
	}
	if rq.method == http.MethodHead {
		return
	}
	switch {
	case a.cut:
		if cl, _ := strconv.Atoi(a.header.Get("Content-Length")); len(a.body) >= cl && cl > 0 {
			t.Errorf("%s: cut short, yet %d of %d bytes came", what, len(a.body), cl)
		}
		if len(a.body) >= len(w.body) {
			t.Errorf("%s: a stream cut short delivered %d bytes, the whole blob is %d", what, len(a.body), len(w.body))
		}
		if !c.f.lies && !bytes.HasPrefix(w.body, a.body) {
			t.Errorf("%s: the %d bytes delivered are not upstream's", what, len(a.body))
		}
	case w.tags != nil:
		var list struct {
			Name string
			Tags []string
		}
		if err := json.Unmarshal(a.body, &list); err != nil || list.Name != cellRepo || !slices.Equal(list.Tags, w.tags) {
			t.Errorf("%s: tags %s, upstream has %q", what, a.body, w.tags)
		}
	case !bytes.Equal(a.body, w.body):
		t.Errorf("%s: body (%d bytes) differs from upstream's (%d bytes)", what, len(a.body), len(w.body))
	}
}

// reliabilityRow is one line of docs/reliability.md.
type reliabilityRow struct {
	order                              int
	fault, kind, state                 string
	gets, asked, cachedAfter, recovers string
	want                               []string // the outcomes the cell requires, one a request
}

func (c *cell) run(order int) reliabilityRow {
	t := c.t
	state := "uncached"
	if c.cached {
		state = "cached"
	}
	key := c.kind.String() + "/" + state
	want := c.f.want[key]
	if len(want) != len(c.reqs) {
		t.Fatalf("matrix: %d outcomes for %s, %d requests", len(want), key, len(c.reqs))
	}

	// 1. Warm and let tag_ttl pass.
	if c.cached {
		for _, rq := range c.reqs {
			if rq.method != http.MethodGet || (c.f.index && rq.label != "GET index") {
				continue // HEADs are answered from the GET; index children are never asked before
			}
			a := c.askPatiently(rq.method, rq.path)
			if a.status != http.StatusOK || a.cut {
				t.Fatalf("warming %s: %s", rq.label, a.outcome(rq.method))
			}
			c.check("warming "+rq.label, rq, a)
		}
		time.Sleep(cellTTL + 100*time.Millisecond)
	}

	// 2. The fault.
	c.active.Store(true)
	if c.f.refused {
		c.dial.setDown(true)
	}
	var gets []string
	for i, rq := range c.reqs {
		a := c.ask(rq.method, rq.path)
		got := a.outcome(rq.method)
		what := rq.label + " during the fault"
		if !outcomeMatches(got, want[i]) {
			t.Errorf("%s: got %q, want %q (after %v)", what, got, want[i], a.took.Round(time.Millisecond))
			if a.noAnswer != nil {
				t.Logf("%s: %v", what, a.noAnswer)
			}
		}
		if limit := c.timing + timeoutSlack; a.took > limit {
			t.Errorf("%s: answered after %v; the upstream timeout is %v", what, a.took.Round(time.Millisecond), c.timing)
		}
		c.check(what, rq, a)
		g := rq.label + " → " + got
		if a.took >= 500*time.Millisecond {
			g += fmt.Sprintf(" (%.1f s)", a.took.Seconds())
		}
		gets = append(gets, g)
	}
	stale := slices.ContainsFunc(want, func(w string) bool { return strings.Contains(w, "STALE") })
	asked := "—"
	if c.cached && c.kind != kindBlobs && !c.f.index {
		asked = c.burst(stale)
	}

	// 3. The fault goes away; regcache must come back by itself.
	c.active.Store(false)
	c.dial.setDown(false)
	recovers := "yes, at once"
	if asked != "—" && stale && c.f.hold == 0 {
		// The last failure's backoff holds the tag back from upstream a little longer.
		time.Sleep(cellTTL + 100*time.Millisecond)
		recovers = "yes, once the tag's backoff (300 ms here) has passed"
	}
	if c.f.hold > 0 {
		c.mu.Lock()
		armed := c.last429
		c.mu.Unlock()
		if c.f.hold > 5*time.Second {
			// Without Retry-After the guard holds everything back for its 60 s default.
			c.heldBack()
			if os.Getenv("REGCACHE_WAIT_HOLD") != "1" {
				return reliabilityRow{order: order, fault: c.f.name, kind: c.kind.String(), state: state, gets: strings.Join(gets, "; "),
					asked: asked, cachedAfter: notWaited, recovers: notWaited, want: want}
			}
		}
		time.Sleep(time.Until(armed.Add(c.f.hold + 200*time.Millisecond)))
		secs := int(c.f.hold / time.Second)
		recovers = fmt.Sprintf("yes, once the default %d s hold has passed (until then held back: no upstream traffic)", secs)
		if c.f.hold <= 5*time.Second {
			recovers = fmt.Sprintf("yes, once Retry-After (%d s) has passed", secs)
		}
	}
	if c.f.index {
		time.Sleep(cellTTL + 100*time.Millisecond) // the children's 404s were remembered for negative_ttl
		recovers = "yes, once negative_ttl (300 ms here) has passed"
	}
	after := c.recover()

	// The redirect target was asked, and never with our credentials.
	c.mu.Lock()
	cdnSeen, cdnAuth := c.cdnSeen, slices.Clone(c.cdnAuth)
	c.mu.Unlock()
	if len(cdnAuth) > 0 {
		t.Errorf("the redirect target received Authorization %q", cdnAuth)
	}
	if c.f.cdn && cdnSeen == 0 {
		t.Errorf("the redirect to the unconfigured host was never followed")
	}
	return reliabilityRow{order: order, fault: c.f.name, kind: c.kind.String(), state: state, gets: strings.Join(gets, "; "),
		asked: asked, cachedAfter: "no: " + after, recovers: recovers, want: want}
}

// burstRounds is how many more times a cached cell asks its requests during the fault, as
// fast as it can: a client polling hard.
const burstRounds = 10

// burst asks a cached tag (or tags listing) burstRounds more times during the fault, checks
// every answer is upstream's truth, and that from the fault's first request on, upstream
// was asked at most once per 300 ms: the tag's backoff while upstream fails (error_backoff
// capped at tag_ttl, 300 ms here) or its freshness once revalidated. It returns the row's
// "upstream asked while it fails".
func (c *cell) burst(stale bool) string {
	t := c.t
	for range burstRounds {
		for _, rq := range c.reqs {
			a := c.ask(rq.method, rq.path)
			what := rq.label + " in a burst during the fault"
			if a.noAnswer != nil || a.status != http.StatusOK || a.cut || stale && a.header.Get("X-Cache") != "STALE" {
				t.Errorf("%s: %s", what, a.outcome(rq.method))
			}
			if limit := c.timing + timeoutSlack; a.took > limit {
				t.Errorf("%s: answered after %v; the upstream timeout is %v", what, a.took.Round(time.Millisecond), c.timing)
			}
			c.check(what, rq, a)
		}
	}
	c.mu.Lock()
	at := slices.Clone(c.askedAt)
	c.mu.Unlock()
	c.dial.mu.Lock()
	at = append(at, c.dial.downAt...)
	c.dial.mu.Unlock()
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	if stale {
		// A backoff counts from the failure, after the request that failed came in.
		for i := 1; i < len(at); i++ {
			if gap := at[i].Sub(at[i-1]); gap < cellTTL {
				t.Errorf("upstream asked twice within %v during the fault (requests %d and %d of %d)", gap.Round(time.Millisecond), i, i+1, len(at))
			}
		}
	} else if n := len(at); n > 2 && at[n-1].Sub(at[0]) < time.Duration(n-2)*cellTTL/2 {
		// A tags listing's freshness counts from when its request began: one request may
		// come in later than the next, so the count is held to the time, not each gap. A tag
		// in use is refreshed ahead, at 80-90% of its TTL (as early as half of it after a slow
		// fetch).
		t.Errorf("upstream asked %d times within %v during the fault", n, at[n-1].Sub(at[0]).Round(time.Millisecond))
	}
	t.Logf("upstream asked %d times for %d client requests during the fault", len(at), (burstRounds+1)*len(c.reqs))
	if stale {
		return "at most once per backoff (300 ms here)"
	}
	return "about once per tag_ttl (300 ms here; refreshed ahead at 50-90% of it)"
}

// heldBack checks, during a long rate-limit hold, that nothing reaches upstream and every
// answer is stale, a hit or a 429 with Retry-After.
func (c *cell) heldBack() {
	t := c.t
	before := c.reg.Total()
	for _, rq := range c.reqs {
		a := c.ask(rq.method, rq.path)
		got := a.outcome(rq.method)
		ok := got == "200 STALE" || got == "200 HIT" || strings.HasPrefix(got, "429") && a.header.Get("Retry-After") != ""
		if !ok {
			t.Errorf("%s during the hold: %s", rq.label, got)
		}
		c.check(rq.label+" during the hold", rq, a)
	}
	if n := c.reg.Total() - before; n != 0 {
		t.Errorf("%d requests reached upstream during its rate-limit hold", n)
	}
}

// recover asks everything again with the fault gone: each answer must be upstream's truth,
// and no made-up digest may be served. It returns what the answers were.
func (c *cell) recover() string {
	t := c.t
	var seen []string
	reqs := slices.Clone(c.reqs)
	// A HEAD of every blob, too: a wrong size remembered would show there.
	if c.kind == kindBlobs {
		for _, rq := range c.reqs {
			reqs = append(reqs, cellRequest{strings.Replace(rq.label, "GET", "HEAD", 1), http.MethodHead, rq.path, rq.want})
		}
	}
	for _, rq := range reqs {
		a := c.askPatiently(rq.method, rq.path)
		if a.status != http.StatusOK || a.cut || a.noAnswer != nil {
			t.Errorf("%s after the fault: %s, want upstream's answer", rq.label, a.outcome(rq.method))
			continue
		}
		c.check(rq.label+" after the fault", rq, a)
		seen = append(seen, rq.label+" "+a.outcome(rq.method))
	}
	c.mu.Lock()
	bogus := slices.Clone(c.bogus)
	c.mu.Unlock()
	for _, d := range bogus {
		kind := "/manifests/"
		if c.kind == kindBlobs {
			kind = "/blobs/"
		}
		a := c.ask(http.MethodGet, "/v2/"+cellUpstream+"/"+cellRepo+kind+d)
		if a.status != http.StatusNotFound {
			t.Errorf("the made-up body %s after the fault: %s, want 404 (upstream never had it)", d, a.outcome(http.MethodGet))
		}
		seen = append(seen, "made-up digest 404")
	}
	return "next " + strings.Join(seen, ", ")
}

// TestFaultMatrix runs every applicable fault × kind × state cell.
func TestFaultMatrix(t *testing.T) {
	t.Parallel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		rows []reliabilityRow
		sem  = make(chan struct{}, 16)
	)
	order := 0
	start := time.Now()
	for _, f := range matrixFaults {
		for _, kind := range f.kinds {
			for _, cached := range []bool{true, false} {
				f, kind, cached, n := f, kind, cached, order
				order++
				state := "uncached"
				if cached {
					state = "cached"
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					sem <- struct{}{}
					defer func() { <-sem }()
					t.Run(f.name+"/"+kind.String()+"/"+state, func(t *testing.T) {
						row := newCell(t, f, kind, cached).run(n)
						t.Logf("| %s | %s | %s | %s | %s | %s | %s |", row.fault, row.kind, row.state, row.gets, row.asked, row.cachedAfter, row.recovers)
						mu.Lock()
						rows = append(rows, row)
						mu.Unlock()
					})
				}()
			}
		}
	}
	wg.Wait()
	t.Logf("%d cells in %v", order, time.Since(start).Round(100*time.Millisecond))
	if len(rows) == order {
		checkReliabilityDoc(t, rows)
	}
}

// notWaited marks the recovery columns of a cell whose 60 s hold was not waited out.
const notWaited = "(not waited out)"

// checkReliabilityDoc holds docs/reliability.md's matrix to the cells: one row per cell and
// no other, each request's outcome one the cell requires, and the recovery as the cell saw
// it. What varies with the machine's load is not compared: the times noted beside slow
// answers, and the X-Cache of the requests after the fault (each is checked against
// upstream's content by the cell itself).
func checkReliabilityDoc(t *testing.T, rows []reliabilityRow) {
	data, err := os.ReadFile(filepath.Join("..", "..", "docs", "reliability.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := map[string][]string{} // "fault|kind|yes" -> the row's cells
	inTable := false
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "| fault | kind | cached? |") {
			inTable = true
			continue
		}
		if !inTable || strings.HasPrefix(line, "|---") {
			continue
		}
		if !strings.HasPrefix(line, "| ") {
			break
		}
		cells := strings.Split(strings.ReplaceAll(strings.TrimSuffix(strings.TrimPrefix(line, "| "), " |"), `\|`, "\x00"), " | ")
		for i := range cells {
			cells[i] = strings.ReplaceAll(cells[i], "\x00", "|")
		}
		if len(cells) != 7 {
			t.Errorf("docs/reliability.md: a matrix row without 7 columns: %s", line)
			continue
		}
		doc[cells[0]+"|"+cells[1]+"|"+cells[2]] = cells[3:]
	}
	slices.SortFunc(rows, func(a, b reliabilityRow) int { return a.order - b.order })
	esc := func(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
	for _, r := range rows {
		cached := map[string]string{"cached": "yes", "uncached": "no"}[r.state]
		key := r.fault + "|" + r.kind + "|" + cached
		got, ok := doc[key]
		delete(doc, key)
		if !ok || !docRowHolds(got, r) {
			t.Errorf("docs/reliability.md: the row for %s/%s/%s does not say what the matrix holds; the matrix saw:\n| %s | %s | %s | %s | %s | %s | %s |",
				r.fault, r.kind, r.state, esc(r.fault), r.kind, cached, esc(r.gets), r.asked, esc(r.cachedAfter), esc(r.recovers))
		}
	}
	for key := range doc {
		t.Errorf("docs/reliability.md: the row for %s is no cell of the matrix", key)
	}
}

var (
	slowNote   = regexp.MustCompile(` \(\d+\.\d s\)$`)
	cacheWords = regexp.MustCompile(`\b(HIT|MISS|REVALIDATED|STALE)\b`)
)

// docRowHolds reports whether a row of the doc (what the client gets, upstream asked,
// cached afterwards, recovers) says what the cell r holds true.
func docRowHolds(doc []string, r reliabilityRow) bool {
	gets := strings.Split(doc[0], "; ")
	seen := strings.Split(r.gets, "; ")
	if len(gets) != len(r.want) || len(seen) != len(r.want) {
		return false
	}
	for i, g := range gets {
		label, outcome, ok := strings.Cut(slowNote.ReplaceAllString(g, ""), " → ")
		seenLabel, _, _ := strings.Cut(seen[i], " → ")
		if !ok || label != seenLabel || !outcomeMatches(outcome, r.want[i]) {
			return false
		}
	}
	if doc[1] != r.asked {
		return false
	}
	if r.recovers == notWaited {
		return true
	}
	return doc[3] == r.recovers && cacheWords.ReplaceAllString(doc[2], "") == cacheWords.ReplaceAllString(r.cachedAfter, "")
}
