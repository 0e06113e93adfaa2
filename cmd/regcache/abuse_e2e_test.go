package main

// Abuse: every abusive input gets a 4xx registry error or is cut off by a server: limit,
// while regcache keeps serving everyone else, with memory bounded. Requests go over raw
// TCP where a real client would normalize what we send. Everything is on 127.0.0.1 and
// bounded in time and count. Helpers in this file are prefixed "ab".

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"regcache/configs"
	"regcache/internal/harness"
	"regcache/upstream/registrytest"
)

// abRunning is a regcache started by abStart.
type abRunning struct {
	addr   string // host:port
	base   string // http://host:port
	app    *app
	client *http.Client
	served chan error // Serve's result
	once   sync.Once
}

// abStart runs regcache from cfgYAML on 127.0.0.1 with a silent logger (a log kept in
// memory would itself grow with every request). It is shut down with a real deadline when
// the test ends, unless the test did so itself.
func abStart(t testing.TB, cfgYAML string) *abRunning {
	t.Helper()
	cfg, err := configs.Parse([]byte(cfgYAML))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	srv, err := build(cfg, zap.NewNop(), buildOptions{})
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &abRunning{
		addr: ln.Addr().String(), base: "http://" + ln.Addr().String(), app: srv.(*app),
		client: &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 128}},
		served: make(chan error, 1),
	}
	go func() { r.served <- srv.Serve(ln) }()
	t.Cleanup(func() { r.shutdown(t) })
	return r
}

// shutdown closes the client's connections and stops regcache, waiting up to 10 s. Only
// the first call does anything.
func (r *abRunning) shutdown(t testing.TB) {
	t.Helper()
	r.once.Do(func() { r.stop(t) })
}

func (r *abRunning) stop(t testing.TB) {
	t.Helper()
	r.client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.app.ShutdownWithContext(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	select {
	case <-r.served:
	case <-ctx.Done():
		t.Error("Serve did not return after shutdown")
	}
}

// get asks path and returns the status and body.
func (r *abRunning) get(t testing.TB, path string) (int, []byte) {
	t.Helper()
	resp, err := r.client.Get(r.base + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: body: %v", path, err)
	}
	return resp.StatusCode, body
}

// metric reads one unlabelled value from /metrics.
func (r *abRunning) metric(t testing.TB, name string) float64 {
	t.Helper()
	code, body := r.get(t, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	return metricFrom(t, body, name)
}

// metricFrom reads one unlabelled value from a /metrics body.
func metricFrom(t testing.TB, body []byte, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("/metrics has no %s", name)
	return 0
}

// abConfig is a config with one upstream, reg.test (the default), a cache of maxSize,
// and a server: block made of serverLines (each indented two spaces), if any.
func abConfig(upstreamURL, maxSize string, serverLines ...string) string {
	if maxSize == "" {
		maxSize = "64MiB"
	}
	s := "listen: 127.0.0.1:0\ndefault_upstream: reg.test\ncache:\n  max_size: " + maxSize + "\n"
	if len(serverLines) > 0 {
		s += "server:\n"
		for _, l := range serverLines {
			s += "  " + l + "\n"
		}
	}
	return s + "upstreams:\n" + harness.Upstream("reg.test", upstreamURL)
}

// abNormal is an ordinary client's request for a cached manifest: it must be answered 200,
// quickly, whatever abuse is going on. It returns how long the answer took.
func abNormal(t testing.TB, r *abRunning, path string) time.Duration {
	t.Helper()
	start := time.Now()
	code, body := r.get(t, path)
	if code != 200 {
		t.Fatalf("normal client: GET %s: %d %s", path, code, body)
	}
	return time.Since(start)
}

// abRaw sends raw on a new connection and reads one response. A nil response and an
// error mean the server closed (or reset) the connection without a readable answer.
func abRaw(t testing.TB, addr, raw string) (*http.Response, []byte, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		return nil, nil, err
	}
	// The method decides whether a body follows (none for HEAD).
	method, _, _ := strings.Cut(raw, " ")
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		return nil, nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, body, err
}

// abErrorCode checks that body is a registry error and returns its first code.
func abErrorCode(t testing.TB, resp *http.Response, body []byte) string {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json (a registry error): %.200s", ct, body)
	}
	var eb struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	if err := json.Unmarshal(body, &eb); err != nil || len(eb.Errors) == 0 || eb.Errors[0].Code == "" {
		t.Errorf("body %.200q is no registry error (%v)", body, err)
		return ""
	}
	return eb.Errors[0].Code
}

// abSeed starts a registry holding team/app:v1 and returns it with the normal client's path.
func abSeed(t testing.TB) (*registrytest.Registry, string) {
	t.Helper()
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	return reg, "/v2/team/app/manifests/v1"
}

// TestAbuseManyUnknownNames: 100,000 distinct names upstream does not know, asked by 64
// workers at once. Each is answered 404; the coalescing maps are empty afterwards (cache
// Stats and /metrics regcache_upstream_inflight); and the heap grows by less than the
// bound below. Under the race detector (about four times slower) 10,000 names are asked;
// REGCACHE_ABUSE_NAMES sets another count.
//
// The bound: what regcache keeps per name is its negative-cache entry (kept for the whole
// test: negative_ttl 10m), and the cache's accounted cost is held to max_size (3 MiB here,
// full after ~8,000 names). An entry's real heap is ~1.3 times its accounted cost
// (measured: the upstream error it keeps is not in the cost), so the cache may hold up to
// 1.5 x 3 = 4.5 MiB. Everything else is per connection, not per name: 64 client and 64
// upstream connections with their buffers, pools and GC slack, 16 MiB (measured: ~7). A
// bound of 20 MiB fails for anything that keeps more than ~100 bytes per name outside the
// cache over 100,000 names (~1 KiB over 10,000).
func TestAbuseManyUnknownNames(t *testing.T) {
	if testing.Short() {
		t.Skip("short: 100,000 requests")
	}
	const (
		workers = 64
		bound   = 20 << 20
	)
	names := int64(100_000)
	if abRace {
		names = 10_000
	}
	if v, err := strconv.ParseInt(os.Getenv("REGCACHE_ABUSE_NAMES"), 10, 64); err == nil && v > 0 {
		names = v
	}
	reg := registrytest.New(t, registrytest.NoAuth)
	reg.SetFault(registrytest.OnManifests(registrytest.Status(http.StatusNotFound)))
	r := abStart(t, abConfig(reg.URL, "3MiB\n  negative_ttl: 10m"))
	// Warm up: connections, pools and the first upstream contact are not growth.
	for i := range 2 * workers {
		r.get(t, fmt.Sprintf("/v2/warm/app-%d/manifests/latest", i))
	}
	var before, after runtime.MemStats
	abSettle(1)
	runtime.ReadMemStats(&before)
	start := time.Now()
	var nextName, notFound atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Pointer[string]
	for range workers {
		wg.Go(func() {
			for {
				i := nextName.Add(1) - 1
				if i >= names || failed.Load() != nil {
					return
				}
				resp, err := r.client.Get(fmt.Sprintf("%s/v2/unknown/app-%06d/manifests/latest", r.base, i))
				if err != nil {
					msg := err.Error()
					failed.Store(&msg)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusNotFound {
					notFound.Add(1)
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	if msg := failed.Load(); msg != nil {
		t.Fatalf("request failed: %s", *msg)
	}
	abSettle(1)
	runtime.ReadMemStats(&after)
	growth := int64(after.HeapInuse) - int64(before.HeapInuse)
	stats := r.app.cache.Stats()
	t.Logf("%d distinct unknown names in %v (%.0f/s, %d workers): heap in use %.1f MiB -> %.1f MiB (growth %.1f MiB, bound %d MiB); "+
		"cache holds %.1f MiB of max %d MiB; %d upstream manifest requests",
		names, took.Round(time.Millisecond), float64(names)/took.Seconds(), workers, float64(before.HeapInuse)/(1<<20),
		float64(after.HeapInuse)/(1<<20), float64(growth)/(1<<20), bound>>20, float64(stats.SizeBytes)/(1<<20), stats.MaxBytes>>20,
		reg.Count("GET", "manifest"))
	if notFound.Load() != names {
		t.Errorf("%d of %d answered 404", notFound.Load(), names)
	}
	if growth > bound {
		t.Errorf("heap grew by %.1f MiB for %d unknown names, bound %d MiB", float64(growth)/(1<<20), names, bound>>20)
	}
	// Nothing is left in flight, as the cache and /metrics both say.
	deadline := time.Now().Add(5 * time.Second)
	for r.app.cache.Stats().InFlight != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := r.app.cache.Stats().InFlight; n != 0 {
		t.Errorf("cache: %d upstream fetches still in flight", n)
	}
	if v := r.metric(t, "regcache_upstream_inflight"); v != 0 {
		t.Errorf("regcache_upstream_inflight = %v, want 0", v)
	}
}

// TestAbuseBadRequests: path traversal in plain and encoded forms, backslashes, names
// over 255 characters and invalid digests are each answered 4xx with a registry error,
// before anything is asked upstream.
func TestAbuseBadRequests(t *testing.T) {
	reg, normal := abSeed(t)
	r := abStart(t, abConfig(reg.URL, ""))
	abNormal(t, r, normal)
	reg.ResetCounts()
	hex64 := strings.Repeat("ab", 32)
	cases := []struct {
		path   string
		status int
		code   string
	}{
		// Traversal, as sent and encoded.
		{"/v2/../etc/passwd", 404, "UNSUPPORTED"},
		{"/v2/../etc/passwd/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/library/../../nginx/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/./library/nginx/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/library/nginx/manifests/../../../etc/passwd", 400, "TAG_INVALID"},
		{"/v2/library/nginx/blobs/../../../etc/passwd", 400, "DIGEST_INVALID"},
		{"/v2/library/..;/nginx/tags/list", 400, "NAME_INVALID"},
		{"/v2/%2e%2e/%2e%2e/etc/passwd/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/%2E%2E/etc/passwd/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/..%2f..%2fetc/passwd/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/library%2fnginx/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/library%2Fnginx/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/library/nginx/manifests/..%2f..%2fetc%2fpasswd", 400, "NAME_INVALID"},
		{"/v2/library/nginx/manifests/%252e%252e", 400, "TAG_INVALID"}, // double encoding decodes once, to "%2e%2e"
		// Backslashes, raw and encoded.
		{`/v2/library\..\..\etc\passwd/manifests/latest`, 400, "NAME_INVALID"},
		{`/v2/library/nginx\..\x/manifests/latest`, 400, "NAME_INVALID"},
		{"/v2/library%5cnginx/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/library%5C..%5Cx/manifests/latest", 400, "NAME_INVALID"},
		// Other malformed names.
		{"/v2/library/nginx%00/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/a%zz/manifests/latest", 400, "NAME_INVALID"},
		{"/v2//library//nginx/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/LIBRARY/nginx/manifests/latest", 400, "NAME_INVALID"},
		// Names over 255 characters, in one component or many.
		{"/v2/" + strings.Repeat("a", 256) + "/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/" + strings.Repeat("ab/", 90) + "x/manifests/latest", 400, "NAME_INVALID"},
		{"/v2/" + strings.Repeat("a", 4000) + "/tags/list", 400, "NAME_INVALID"},
		{"/v2/" + strings.Repeat("a", 300) + "/blobs/sha256:" + hex64, 400, "NAME_INVALID"},
		{"/v2/library/nginx/manifests/" + strings.Repeat("t", 129), 400, "TAG_INVALID"},
		// Invalid digests: wrong length, upper-case hex, unknown or unsupported algorithms.
		{"/v2/library/nginx/manifests/sha256:abc", 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/manifests/sha256:" + hex64 + "ab", 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/blobs/sha256:" + hex64[:63], 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/manifests/sha256:" + strings.ToUpper(hex64), 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/blobs/sha256:" + strings.ToUpper(hex64), 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/manifests/md5:" + hex64[:32], 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/manifests/sha1:" + hex64[:40], 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/blobs/foo:" + hex64, 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/manifests/sha512:" + hex64, 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/blobs/sha256:", 400, "DIGEST_INVALID"},
		{"/v2/library/nginx/blobs/latest", 400, "DIGEST_INVALID"},
		// Registries nobody configured, by path or ns=, metadata addresses included.
		{"/v2/169.254.169.254/latest/manifests/x", 404, "NAME_UNKNOWN"},
		{"/v2/library/nginx/manifests/latest?ns=169.254.169.254", 404, "NAME_UNKNOWN"},
		{"/v2/library/nginx/manifests/latest?ns=../../etc", 404, "NAME_UNKNOWN"},
		// Tags pages with a bad n.
		{"/v2/library/nginx/tags/list?n=-1", 400, "PAGINATION_NUMBER_INVALID"},
		{"/v2/library/nginx/tags/list?n=99999999999999999999", 400, "PAGINATION_NUMBER_INVALID"},
	}
	for _, tc := range cases {
		for _, method := range []string{"GET", "HEAD"} {
			raw := method + " " + tc.path + " HTTP/1.1\r\nHost: regcache.test\r\nAccept: */*\r\n\r\n"
			resp, body, err := abRaw(t, r.addr, raw)
			if err != nil {
				t.Errorf("%s %.80s: no answer: %v", method, tc.path, err)
				continue
			}
			if resp.StatusCode != tc.status {
				t.Errorf("%s %.80s: %d %.200s, want %d", method, tc.path, resp.StatusCode, body, tc.status)
				continue
			}
			if method == "GET" {
				if code := abErrorCode(t, resp, body); code != tc.code {
					t.Errorf("GET %.80s: code %s, want %s", tc.path, code, tc.code)
				}
			}
		}
	}
	if n := reg.Total(); n != 0 {
		t.Errorf("%d requests reached upstream for refused input, want 0", n)
	}
	// An absolute-form target naming some other host is routed by its path alone: only the
	// configured upstream is ever asked, never the host in the request line.
	resp, body, err := abRaw(t, r.addr, "GET http://169.254.169.254"+normal+" HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("absolute-form request: %v %v %.200s", err, resp, body)
	}
	abNormal(t, r, normal)
}

// TestAbuseOversizedRequests: a request line or headers beyond max_header_size are
// answered 431 (or the connection is cut) and a body beyond max_request_body 413, and the
// server goes on serving. The limits are the configured ones, not fasthttp's defaults.
func TestAbuseOversizedRequests(t *testing.T) {
	reg, normal := abSeed(t)
	r := abStart(t, abConfig(reg.URL, "", "max_header_size: 8KiB", "max_request_body: 4KiB"))
	abNormal(t, r, normal)
	pad := func(n int) string { return strings.Repeat("x", n) }
	refused := func(name, raw string, want int) {
		t.Helper()
		resp, body, err := abRaw(t, r.addr, raw)
		switch {
		case err != nil:
			// The server answered and closed while we were still sending: the answer may be
			// lost to the reset. Cut off is fine too.
			t.Logf("%s: connection cut (%v)", name, err)
		case resp.StatusCode != want:
			t.Errorf("%s: %d %.200s, want %d", name, resp.StatusCode, body, want)
		default:
			abErrorCode(t, resp, body)
			if !resp.Close {
				t.Errorf("%s: connection kept open after %d", name, want)
			}
		}
		abNormal(t, r, normal)
	}
	refused("one 12 KiB header", "GET "+normal+" HTTP/1.1\r\nHost: x\r\nX-Pad: "+pad(12<<10)+"\r\n\r\n", 431)
	refused("one 1 MiB header", "GET "+normal+" HTTP/1.1\r\nHost: x\r\nX-Pad: "+pad(1<<20)+"\r\n\r\n", 431)
	many := strings.Repeat("X-Many: "+pad(100)+"\r\n", 200) // 20 KiB in small headers
	refused("200 headers of 100 bytes", "GET "+normal+" HTTP/1.1\r\nHost: x\r\n"+many+"\r\n", 431)
	refused("a 16 KiB request line", "GET /v2/"+pad(16<<10)+"/manifests/latest HTTP/1.1\r\nHost: x\r\n\r\n", 431)
	refused("a 16 KiB Authorization", "GET "+normal+" HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "+pad(16<<10)+"\r\n\r\n", 431)
	refused("a 64 KiB body announced", "POST /api/v1/digests HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 65536\r\n\r\n", 413)
	refused("a 5 KiB chunked body", "POST /api/v1/digests HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1400\r\n"+pad(5<<10)+"\r\n0\r\n\r\n", 413)

	// Under the limits all is well: a 6 KiB header is read, and the answer is the manifest.
	resp, body, err := abRaw(t, r.addr, "GET "+normal+" HTTP/1.1\r\nHost: x\r\nX-Pad: "+pad(6<<10)+"\r\n\r\n")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("6 KiB header under an 8 KiB limit: %v %v %.200s", err, resp, body)
	}
}

// TestAbuseRequestBodies: a body on a GET (by Content-Length or chunked) is read and
// ignored, never a panic, and never parsed as a second request (no smuggling), and
// conflicting framing is refused.
func TestAbuseRequestBodies(t *testing.T) {
	reg, normal := abSeed(t)
	r := abStart(t, abConfig(reg.URL, ""))
	abNormal(t, r, normal)
	smuggled := "GET /v2/team/app/manifests/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	for _, tc := range []struct{ name, framing, body string }{
		{"Content-Length", "Content-Length: " + strconv.Itoa(len(smuggled)) + "\r\n", smuggled},
		{"chunked", "Transfer-Encoding: chunked\r\n", fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled)},
		{"JSON on a manifest GET", "Content-Type: application/json\r\nContent-Length: 17\r\n", `{"images":["x"]}` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", r.addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			// The request with a body, then an ordinary one on the same connection.
			_, _ = io.WriteString(c, "GET "+normal+" HTTP/1.1\r\nHost: x\r\n"+tc.framing+"\r\n"+tc.body+
				"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
			br := bufio.NewReader(c)
			var got []int
			for range 2 {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("after %v: %v", got, err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				got = append(got, resp.StatusCode)
			}
			if got[0] != 200 || got[1] != 200 {
				t.Fatalf("statuses %v, want [200 200]", got)
			}
			// Exactly two answers: the body was not taken for a third request.
			_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if n, _ := br.Read(make([]byte, 1)); n != 0 {
				t.Fatal("a third answer: the body was parsed as a request")
			}
		})
	}
	// Both framings at once (the classic smuggling vector) is refused or framed by
	// Transfer-Encoding as RFC 9112 §6.3 says; either way no smuggled request is answered.
	raw := "GET " + normal + " HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled
	c, err := net.DialTimeout("tcp", r.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, raw)
	br := bufio.NewReader(c)
	for i := 0; ; i++ {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			break
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if i == 0 && resp.StatusCode != 200 && (resp.StatusCode < 400 || resp.StatusCode >= 500) {
			t.Errorf("CL+TE: %d %.200s, want 200 or 4xx", resp.StatusCode, body)
		}
		if i == 1 && resp.StatusCode != 404 {
			// What follows a chunked body is a new request: the smuggled tag, which upstream
			// does not have. Anything else means the framing was misread.
			t.Errorf("CL+TE second answer %d %.200s", resp.StatusCode, body)
		}
		if i > 1 {
			t.Fatalf("CL+TE: %d answers", i+1)
		}
	}
	abNormal(t, r, normal)
}

// TestAbuseSlowloris: clients that send one header byte every 500 ms are cut once
// read_timeout (2 s here) has passed since their first byte, and clients that connect and
// send nothing once it has passed since they connected, while a normal client is served
// throughout without waiting on them.
func TestAbuseSlowloris(t *testing.T) {
	const (
		readTimeout = 2 * time.Second
		tick        = 500 * time.Millisecond
		trickling   = 50
		silent      = 10
	)
	reg, normal := abSeed(t)
	r := abStart(t, abConfig(reg.URL, "", "read_timeout: 2s", "idle_timeout: 10s"))
	abNormal(t, r, normal)

	type result struct {
		silent bool
		after  time.Duration // from connecting to being cut; -1: never cut
	}
	results := make(chan result, trickling+silent)
	var wg sync.WaitGroup
	for i := range trickling + silent {
		c, err := net.DialTimeout("tcp", r.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		quiet := i >= trickling
		wg.Go(func() {
			defer c.Close()
			// Whatever the server sends (a 408, or nothing) ends the wait, as does a close.
			closed := make(chan struct{})
			go func() {
				_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
				_, _ = io.Copy(io.Discard, c)
				close(closed)
			}()
			header := "GET " + normal + " HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("z", 100)
			for i := 0; i < len(header); i++ {
				select {
				case <-closed:
					results <- result{quiet, time.Since(start)}
					return
				case <-time.After(tick):
				}
				if quiet {
					continue
				}
				if _, err := c.Write([]byte{header[i]}); err != nil {
					<-closed
					results <- result{quiet, time.Since(start)}
					return
				}
			}
			results <- result{quiet, -1} // a header trickled over a minute: never cut
		})
	}
	// Meanwhile a normal client is answered promptly, again and again.
	var worst time.Duration
	normals := 0
	for deadline := time.Now().Add(readTimeout + 2*tick + time.Second); time.Now().Before(deadline); {
		worst = max(worst, abNormal(t, r, normal))
		normals++
		time.Sleep(50 * time.Millisecond)
	}
	wg.Wait()
	close(results)
	var lo, hi [2]time.Duration // [trickling, silent]
	lo = [2]time.Duration{time.Hour, time.Hour}
	for res := range results {
		if res.after < 0 {
			t.Fatal("a slow client was never cut")
		}
		k := 0
		if res.silent {
			k = 1
		}
		lo[k], hi[k] = min(lo[k], res.after), max(hi[k], res.after)
	}
	ms := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	t.Logf("read_timeout %v: %d clients sending a byte every %v cut %v to %v after connecting; %d silent clients cut %v to %v; "+
		"%d normal requests meanwhile, slowest %v", readTimeout, trickling, tick, ms(lo[0]), ms(hi[0]), silent, ms(lo[1]), ms(hi[1]),
		normals, worst.Round(10*time.Microsecond))
	// Not cut early (with slack for a loaded machine, where the client may note its start
	// late).
	if lo[0] < readTimeout || lo[1] < readTimeout*3/4 {
		t.Errorf("a slow client was cut before read_timeout %v (%v, %v)", readTimeout, lo[0], lo[1])
	}
	// The first byte goes one tick after connecting; the cut is seen at the next tick at
	// the latest. Allow three seconds more for a loaded machine.
	if hi[0] > tick+readTimeout+tick+3*time.Second || hi[1] > readTimeout+tick+3*time.Second {
		t.Errorf("slow clients were cut only after %v (trickling) and %v (silent); read_timeout %v", hi[0], hi[1], readTimeout)
	}
	if worst > 3*time.Second {
		t.Errorf("a normal request took %v while slow clients were connected", worst)
	}
}

// TestAbuseMaxConnsPerIP: with max_conns_per_ip 8, a ninth connection from the same
// address is refused (429, closed), and a slot freed is usable again.
func TestAbuseMaxConnsPerIP(t *testing.T) {
	const limit = 8
	reg, normal := abSeed(t)
	r := abStart(t, abConfig(reg.URL, "", "max_conns_per_ip: "+strconv.Itoa(limit)))
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	ask := func(c net.Conn) (*http.Response, error) {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET "+normal+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return nil, err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return resp, err
	}
	for i := range limit {
		c, err := net.DialTimeout("tcp", r.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if resp, err := ask(c); err != nil || resp.StatusCode != 200 {
			t.Fatalf("connection %d of %d: %v %v", i+1, limit, resp, err)
		}
	}
	over := func() (*http.Response, error) {
		c, err := net.DialTimeout("tcp", r.addr, 5*time.Second)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		// The server answers as it accepts, before any request: read first.
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			resp.Body.Close()
			if n, _ := c.Read(make([]byte, 1)); n != 0 {
				t.Error("refused connection left open")
			}
		}
		return resp, err
	}
	for i := range 3 {
		resp, err := over()
		if err == nil && resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("connection %d over the limit: %d, want 429", i+1, resp.StatusCode)
		}
		// err: reset before the answer could be read; refused either way.
	}
	// The connections within the limit are unaffected.
	if resp, err := ask(conns[0]); err != nil || resp.StatusCode != 200 {
		t.Fatalf("a connection within the limit, again: %v %v", resp, err)
	}
	// Freeing one slot admits one more.
	conns[0].Close()
	conns = conns[1:]
	var admitted net.Conn
	for deadline := time.Now().Add(3 * time.Second); admitted == nil; {
		c, err := net.DialTimeout("tcp", r.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if resp, err := ask(c); err == nil && resp.StatusCode == 200 {
			admitted = c
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("a freed slot was never usable again")
		}
		time.Sleep(50 * time.Millisecond)
	}
	conns = append(conns, admitted)
}

// abSettle waits, at most 12 s, until what earlier work left behind can be collected, and
// collects it. A stopped fasthttp server stays reachable (with its whole regcache: cache,
// connections, pools) from its worker-pool cleaner goroutine until that wakes from its
// 10 s sleep, and sync.Pool keeps objects through one collection as victims. keep is the
// number of running fasthttp servers the caller still has.
func abSettle(keep int) {
	deadline := time.Now().Add(12 * time.Second)
	buf := make([]byte, 1<<20)
	for time.Now().Before(deadline) {
		n := runtime.Stack(buf, true)
		if strings.Count(string(buf[:n]), "fasthttp.(*workerPool).Start.func2") <= keep {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	abCollect()
}

// abCollect collects garbage three times: sync.Pool victims go on the second.
func abCollect() {
	for range 3 {
		runtime.GC()
	}
}

// abFDLimit is RLIMIT_NOFILE's soft limit (Go raises it to the hard limit at start-up).
func abFDLimit(t testing.TB) uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Skipf("cannot read the open-file limit: %v", err)
	}
	return rl.Cur
}

// abHoldIdle opens n keep-alive connections to addr in batches of 500, asks /healthz once
// on each (so that the server's idle_timeout, not read_timeout, is what applies), and then
// waits on each for the server to close it. It reports "open <n>" once all are open, and
// "closed <k> <min ms> <max ms>" once every one was closed or wait passed: k closed by the
// server, each after min to max ms of idleness (from its answer to its close).
func abHoldIdle(addr string, n int, wait time.Duration, report func(string)) error {
	var (
		mu       sync.Mutex
		conns    = make([]net.Conn, 0, n)
		closed   int
		lo, hi   time.Duration
		failed   error
		watchers sync.WaitGroup
	)
	lo = time.Hour
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	req := []byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	open := func() error {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			return err
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		var resp *http.Response
		if _, err = c.Write(req); err == nil {
			if resp, err = http.ReadResponse(bufio.NewReader(c), nil); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					err = fmt.Errorf("/healthz: %d", resp.StatusCode)
				}
			}
		}
		if err != nil {
			c.Close()
			return err
		}
		idleSince := time.Now()
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		watchers.Go(func() {
			_ = c.SetDeadline(idleSince.Add(wait))
			n, err := c.Read(make([]byte, 1))
			if n != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
				return // it sent something, or is still open
			}
			d := time.Since(idleSince) // EOF or reset: the server closed it
			mu.Lock()
			closed++
			lo, hi = min(lo, d), max(hi, d)
			mu.Unlock()
		})
		return nil
	}
	for opened := 0; opened < n; {
		batch := min(500, n-opened)
		var wg sync.WaitGroup
		for range batch {
			wg.Go(func() {
				if err := open(); err != nil {
					mu.Lock()
					failed = err
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if failed != nil {
			return fmt.Errorf("opening connection %d of %d: %w", opened+1, n, failed)
		}
		opened += batch
	}
	report(fmt.Sprintf("open %d", n))
	watchers.Wait()
	report(fmt.Sprintf("closed %d %d %d", closed, lo.Milliseconds(), hi.Milliseconds()))
	return nil
}

// TestAbuseIdleHelper is not a test: TestAbuseIdleConnections runs the test binary again
// with it to hold the client ends of the idle connections in a second process, so that
// each process needs only ~10,000 file descriptors.
func TestAbuseIdleHelper(t *testing.T) {
	addr := os.Getenv("REGCACHE_ABUSE_IDLE_ADDR")
	if addr == "" {
		t.Skip("helper process for TestAbuseIdleConnections")
	}
	n, _ := strconv.Atoi(os.Getenv("REGCACHE_ABUSE_IDLE_N"))
	if err := abHoldIdle(addr, n, 40*time.Second, func(s string) { fmt.Println("ABUSE-IDLE " + s) }); err != nil {
		fmt.Println("ABUSE-IDLE error " + err.Error())
	}
}

// TestAbuseIdleConnections: 10,000 idle keep-alive connections are all closed once
// idle_timeout (2 s here) passes, a normal client is served throughout, and the server's
// heap holds less than 4 KiB per idle connection: an idle connection gives its read and
// write buffers (max_header_size + 4 KiB) back to the pools, so 10,000 of them cost ~10 MiB,
// not ~230 MiB.
//
// Both ends of 10,000 connections in one process take 20,000+ descriptors. With an
// open-file limit of at least 25,000 both ends stay here; with less (the limit here is
// 20,000) the client ends go to a second process; below 12,000 the test is skipped.
func TestAbuseIdleConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("short: opens 10,000 connections")
	}
	const n = 10_000
	const idleTimeout = 2 * time.Second
	limit := abFDLimit(t)
	inProcess := limit >= 25_000
	if !inProcess && limit < 12_000 {
		t.Skipf("open-file limit %d is below 12,000: 10,000 idle connections need more (raise ulimit -n)", limit)
	}
	reg, normal := abSeed(t)
	// read_timeout stays long: a close well before it can only be idle_timeout's.
	r := abStart(t, abConfig(reg.URL, "", "read_timeout: 30s", "idle_timeout: 2s"))
	abNormal(t, r, normal)
	var before runtime.MemStats
	abSettle(1)
	runtime.ReadMemStats(&before)

	lines := make(chan string, 4)
	errc := make(chan error, 1)
	if inProcess {
		t.Logf("open-file limit %d: both ends in this process", limit)
		go func() { errc <- abHoldIdle(r.addr, n, 40*time.Second, func(s string) { lines <- s }) }()
	} else {
		t.Logf("open-file limit %d is below 25,000: the client ends are held by a helper process", limit)
		cmd := exec.Command(os.Args[0], "-test.run=^TestAbuseIdleHelper$", "-test.count=1", "-test.v=false")
		cmd.Env = append(os.Environ(), "REGCACHE_ABUSE_IDLE_ADDR="+r.addr, "REGCACHE_ABUSE_IDLE_N="+strconv.Itoa(n))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if s, ok := strings.CutPrefix(sc.Text(), "ABUSE-IDLE "); ok {
					if e, bad := strings.CutPrefix(s, "error "); bad {
						errc <- errors.New(e)
						return
					}
					lines <- s
				}
			}
			errc <- fmt.Errorf("helper process ended: %v", sc.Err())
		}()
	}
	next := func(timeout time.Duration) string {
		t.Helper()
		select {
		case s := <-lines:
			return s
		case err := <-errc:
			t.Fatalf("idle client: %v", err)
		case <-time.After(timeout):
			t.Fatalf("idle client said nothing for %v", timeout)
		}
		return ""
	}
	start := time.Now()
	if s := next(90 * time.Second); s != "open "+strconv.Itoa(n) {
		t.Fatalf("idle client: %q", s)
	}
	opened := time.Since(start)
	// While they are idle: the server holds them, and serves others promptly.
	var during runtime.MemStats
	abCollect() // no waiting here: the connections go at idle_timeout
	runtime.ReadMemStats(&during)
	var worst time.Duration
	for range 10 {
		worst = max(worst, abNormal(t, r, normal))
		time.Sleep(100 * time.Millisecond)
	}
	var k int
	var loMS, hiMS int64
	if _, err := fmt.Sscanf(next(60*time.Second), "closed %d %d %d", &k, &loMS, &hiMS); err != nil {
		t.Fatal(err)
	}
	worst = max(worst, abNormal(t, r, normal))
	held := int64(during.HeapInuse) - int64(before.HeapInuse)
	if inProcess {
		held = -1 // both ends share the heap: not the server's alone
	}
	t.Logf("%d connections opened and made idle in %v; %d closed by the server %d to %d ms after each went idle (idle_timeout %v); "+
		"slowest normal request meanwhile %v; server heap held while idle %.1f MiB (%.0f B a connection)",
		n, opened.Round(time.Millisecond), k, loMS, hiMS, idleTimeout, worst.Round(10*time.Microsecond), float64(held)/(1<<20), float64(held)/n)
	if k != n {
		t.Fatalf("%d of %d idle connections closed, want all", k, n)
	}
	// Closing 10,000 connections at once is a burst of work, and a loaded machine stretches
	// it (and delays when the client notes a connection idle, so the lower bound is loose
	// too): the upper bound is generous, yet far below read_timeout (30 s, which does not
	// apply to keep-alive waits anyway) and the client's own 40 s wait, so only
	// idle_timeout can have closed them.
	if lo, hi := time.Duration(loMS)*time.Millisecond, time.Duration(hiMS)*time.Millisecond; lo < idleTimeout/2 || hi > idleTimeout+15*time.Second {
		t.Errorf("idle connections were closed after %v to %v of idleness, idle_timeout %v", lo, hi, idleTimeout)
	}
	if worst > 5*time.Second {
		t.Errorf("a normal request took %v with %d idle connections open", worst, n)
	}
	if !inProcess && held > n*4<<10 {
		t.Errorf("%d idle connections held %.1f MiB of heap, more than 4 KiB each: are their buffers kept?", n, float64(held)/(1<<20))
	}
}

// TestAbuseShutdownLeavesNoGoroutines: after traffic that reaches upstream (manifests,
// a 404, a blob, a tags page) and a shutdown, no goroutine of regcache's is left, the
// upstream transports' idle connections included, checked while the upstream still runs
// (its closing them would hide a leak).
func TestAbuseShutdownLeavesNoGoroutines(t *testing.T) {
	reg := registrytest.New(t, registrytest.Bearer)
	pushed := reg.PushImage(t, "team/app", "v1", types.OCIManifestSchema1)
	var m struct {
		Config struct{ Digest string } `json:"config"`
	}
	if err := json.Unmarshal(pushed.Body, &m); err != nil {
		t.Fatal(err)
	}
	// Whatever runs already (other tests' leftovers, the upstream's server) is not ours.
	ignore := []goleak.Option{
		goleak.IgnoreCurrent(),
		// fasthttp's process-wide Date header clock, started once and never stopped.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		// fasthttp's worker-pool cleaner notices Stop only after its current sleep
		// (MaxIdleWorkerDuration, 10 s): bounded, and not ours to shorten.
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
	}
	r := abStart(t, abConfig(reg.URL, ""))
	for _, p := range []string{
		"/v2/team/app/manifests/v1", "/v2/team/app/manifests/v1", "/v2/team/app/manifests/nope",
		"/v2/team/app/blobs/" + m.Config.Digest, "/v2/team/app/tags/list", "/metrics",
	} {
		r.get(t, p)
	}
	if reg.Count("GET", "token") == 0 {
		t.Fatal("upstream was never asked for a token: the test does not exercise auth")
	}
	r.shutdown(t)
	if err := goleak.Find(ignore...); err != nil {
		t.Fatalf("goroutines left after shutdown: %v", err)
	}
}
